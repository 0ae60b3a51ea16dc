#include "core/state_visitor.h"

#include "absl/strings/str_cat.h"

namespace fisherd {

void StateVisitor::CheckSize(absl::string_view what, int64_t actual, int64_t expected) {
  if (!loading() || actual == expected) return;
  // The snapshot's header carries the options this object was built from, so a size
  // that disagrees with them means the snapshot contradicts itself: DATA_LOSS, as for
  // any other corruption found while reading it.
  Fail(absl::DataLossError(absl::StrCat("snapshot value ", what, " has size ", actual,
                                        " where this session's options require ", expected)));
}

void VisitSizedMatrix(StateVisitor& visitor, absl::string_view name, int64_t rows, int64_t cols,
                      Eigen::MatrixXd* values) {
  visitor.Matrix(name, values);
  if (!visitor.loading()) return;
  visitor.CheckSize(absl::StrCat(name, " (rows)"), values->rows(), rows);
  visitor.CheckSize(absl::StrCat(name, " (columns)"), values->cols(), cols);
}

void VisitSizedVector(StateVisitor& visitor, absl::string_view name, int64_t size,
                      Eigen::VectorXd* values) {
  visitor.Vector(name, values);
  if (!visitor.loading()) return;
  visitor.CheckSize(name, values->size(), size);
}

}  // namespace fisherd
