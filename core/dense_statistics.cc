#include "core/dense_statistics.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace fisherd {

DenseStatistics::DenseStatistics(const SessionOptions& options)
    : dim_(options.dim), centered_(options.centered) {
  const int64_t capacity = options.dim / kLowRankRowsPerDim;
  if (capacity > 0) {
    start_ = std::make_unique<LowRankStatistics>(dim_, capacity, centered_);
  } else {
    matrix_ = std::make_unique<DenseMatrixStatistics>(dim_, centered_);
  }
}

const ScoreStatistics& DenseStatistics::phase() const {
  if (start_ != nullptr) return *start_;
  return *matrix_;
}

ScoreStatistics& DenseStatistics::phase() {
  if (start_ != nullptr) return *start_;
  return *matrix_;
}

void DenseStatistics::Add(const PreparedBatch& batch) {
  if (start_ != nullptr && start_->row_count() + batch.rows > start_->capacity()) {
    matrix_ = std::make_unique<DenseMatrixStatistics>(*start_, centered_);
    start_.reset();
  }
  phase().Add(batch);  // a start never wraps: the check above ends it first
}

void DenseStatistics::VisitState(StateVisitor& visitor) {
  DenseRunningSums sums;
  if (!visitor.loading())
    sums = start_ != nullptr ? DenseRunningSums::Of(*start_) : matrix_->sums();
  sums.Visit(visitor, dim_);
  bool holding_rows = start_ != nullptr;
  visitor.Flag("holding_rows", &holding_rows);
  if (visitor.loading()) {
    if (!visitor.status().ok()) return;
    if (holding_rows && start_ == nullptr) {
      visitor.Fail(absl::DataLossError(absl::StrCat(
          "snapshot of a dense statistics of dim ", dim_, " holds low-rank rows, but dims below ",
          kLowRankRowsPerDim, " have no low-rank start")));
      return;
    }
    if (!holding_rows) {
      // A fresh object of a larger dim starts in the low-rank start; this snapshot was
      // taken after it ended. The upper triangle is loaded below.
      start_.reset();
      if (matrix_ == nullptr) matrix_ = std::make_unique<DenseMatrixStatistics>(dim_, centered_);
      matrix_->set_sums(std::move(sums));
    }
  }
  if (holding_rows) {
    visitor.Enter("low_rank_start");
    start_->VisitState(visitor);
    visitor.Leave();
    if (visitor.loading() && visitor.status().ok() && start_->log_scale() != sums.log_scale) {
      visitor.Fail(absl::DataLossError(absl::StrCat(
          "snapshot of a dense statistics is inconsistent: its low-rank start's log_scale ",
          start_->log_scale(), " differs from log_scale ", sums.log_scale,
          " (both receive the same decays and folds)")));
    }
  } else {
    matrix_->VisitMoment(visitor);
  }
}

}  // namespace fisherd
