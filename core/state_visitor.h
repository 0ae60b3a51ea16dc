// StateVisitor: how a session's statistics are saved to and restored from a snapshot
// (durable sessions, docs/design.md section 8) without the core knowing any file format.
//
// Each statistics class has ONE function, VisitState, that names every value defining
// its state, in a fixed order. The same function saves (the visitor reads the values)
// and restores (the visitor writes them), so a field cannot be saved and then
// forgotten on load. Caches that are recomputed bit-identically from the state (a
// Cholesky factor of F + lambda I, scratch buffers) are not state and are not visited;
// a restore invalidates them.
//
// Restoring happens on a freshly constructed object of the same options (the snapshot
// header carries the session config), so sizes that follow from the options are
// checked, not trusted: a visitor that is loading reports a mismatch through Fail and
// every later call is ignored.
#ifndef FISHERD_CORE_STATE_VISITOR_H_
#define FISHERD_CORE_STATE_VISITOR_H_

#include <cstdint>
#include <string>

#include "Eigen/Core"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace fisherd {

class StateVisitor {
 public:
  virtual ~StateVisitor() = default;

  // True while restoring: the calls below then overwrite the referenced values.
  virtual bool loading() const = 0;

  // Scalars.
  virtual void Scalar(absl::string_view name, double* value) = 0;
  virtual void Count(absl::string_view name, uint64_t* value) = 0;
  virtual void Integer(absl::string_view name, int64_t* value) = 0;
  virtual void Flag(absl::string_view name, bool* value) = 0;

  // Arrays. When loading, the visitor resizes the target to the saved size; the owner
  // checks sizes that its options determine (CheckSize).
  virtual void Vector(absl::string_view name, Eigen::VectorXd* values) = 0;
  virtual void Matrix(absl::string_view name, Eigen::MatrixXd* values) = 0;
  // The upper triangle with the diagonal of a square n x n column-major matrix: column
  // j's first j + 1 entries, n (n + 1) / 2 values. Loading writes only those entries
  // and leaves the strict lower triangle as it was. REQUIRES: values is n x n (saving
  // and loading alike; the owner allocates it).
  virtual void UpperTriangle(absl::string_view name, Eigen::MatrixXd* values) = 0;

  // Nested parts (a block, a factor): names in a scope are reported as "scope/name".
  virtual void Enter(absl::string_view scope) = 0;
  virtual void Leave() = 0;

  // Marks the restore as failed (the first failure wins); later calls do nothing.
  virtual void Fail(absl::Status status) = 0;
  virtual absl::Status status() const = 0;

  // When loading: fails with a message naming `what` unless actual == expected.
  void CheckSize(absl::string_view what, int64_t actual, int64_t expected);
};

// Saves or restores a Matrix/Vector whose size the caller knows: loads it and checks it
// is rows x cols.
void VisitSizedMatrix(StateVisitor& visitor, absl::string_view name, int64_t rows, int64_t cols,
                      Eigen::MatrixXd* values);
void VisitSizedVector(StateVisitor& visitor, absl::string_view name, int64_t size,
                      Eigen::VectorXd* values);

}  // namespace fisherd

#endif  // FISHERD_CORE_STATE_VISITOR_H_
