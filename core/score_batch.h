// A batch of score rows on its way into a session: first checked (ValidateScores),
// then prepared outside any lock (PrepareBatch: float32 -> float64, weighting), and
// finally merged into the statistics under the session's lock.
#ifndef FISHERD_CORE_SCORE_BATCH_H_
#define FISHERD_CORE_SCORE_BATCH_H_

#include <cstdint>

#include "Eigen/Core"
#include "absl/status/status.h"
#include "core/options.h"

namespace fisherd {

// Borrowed view of rows x dim float32 scores, row-major, and optional weights.
struct ScoreBatchView {
  int64_t rows = 0;
  int64_t dim = 0;
  const float* scores = nullptr;   // rows * dim values
  const float* weights = nullptr;  // rows values, or nullptr for all 1
};

// OK, or INVALID_ARGUMENT naming what is wrong: zero rows, a non-finite score (with its
// row and column), a negative or non-finite weight (with its row).
absl::Status ValidateScores(const ScoreBatchView& batch);

// A validated batch converted to what the statistics consume. Building it is the
// O(rows * dim) part of ingestion that needs no lock.
struct PreparedBatch {
  int64_t rows = 0;
  double weight_sum = 0.0;         // sum w_i
  Eigen::VectorXd weighted_sum;    // sum w_i s_i
  // Dense only: row i is sqrt(w_i) s_i, so that M += R^T R is one rank-k update.
  Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> root_weighted;
  // Diagonal only: sum w_i s_i .* s_i.
  Eigen::VectorXd weighted_squares;
};

// REQUIRES: ValidateScores(batch).ok().
PreparedBatch PrepareBatch(const ScoreBatchView& batch, Representation representation);

}  // namespace fisherd

#endif  // FISHERD_CORE_SCORE_BATCH_H_
