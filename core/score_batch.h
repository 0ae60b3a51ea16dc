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

// How a dense batch's R^T R is formed before it is added into the float64 sums.
//  - kFloat64: scores widened to float64, one dsyrk (exact products; the reference).
//  - kFloat32: the batch's product in float32 (ssyrk alone runs 1.7x dsyrk's rate at
//    dim 1024; no widened copy), in chunks of at most kFloat32KernelRows rows, each chunk's
//    product added into the float64 sums (docs/design.md 5: "an fp32 batch kernel added
//    into fp64 totals"). Relative error per chunk ~ sqrt(chunk rows) * 6e-8, and
//    independent between chunks, so the estimate after many samples stays far inside
//    1e-6 of a float64 reference (tests/core/dense_statistics_test.cc).
//  - kAuto: kFloat32 for batches of at least kFloat32KernelMinRows rows at dim
//    kFloat32KernelMinDim or more, where the product dominates the cost of a batch;
//    kFloat64 otherwise, where exactness is cheap. (The float32 kernel adds its block
//    products into the float64 sums in one O(dim^2) pass per batch, which costs more
//    than it saves for a batch of few rows.)
enum class DenseKernel { kAuto, kFloat64, kFloat32 };
inline constexpr int64_t kFloat32KernelMinDim = 256;
inline constexpr int64_t kFloat32KernelMinRows = 128;
inline constexpr int64_t kFloat32KernelRows = 256;

// A validated batch converted to what the statistics consume. Building it is the
// O(rows * dim) part of ingestion that needs no lock.
struct PreparedBatch {
  using RowMajorD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using RowMajorF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  int64_t rows = 0;
  double weight_sum = 0.0;       // sum w_i
  Eigen::VectorXd weighted_sum;  // sum w_i s_i
  // Dense only, exactly one of the two set (see DenseKernel): row i is sqrt(w_i) s_i,
  // so that M += R^T R is one rank-k update.
  RowMajorD root_weighted;       // kFloat64
  RowMajorF root_weighted_f32;   // kFloat32
  Eigen::VectorXd root_weights;  // dense only: sqrt(w_i), the factor in row i above
  // Diagonal only: sum w_i s_i .* s_i.
  Eigen::VectorXd weighted_squares;
  // Layered sessions: the index of the block the rows feed, and the Kronecker factor.
  int64_t block = 0;
  Factor factor = Factor::kNone;
};

// REQUIRES: ValidateScores(batch).ok().
PreparedBatch PrepareBatch(const ScoreBatchView& batch, Representation representation,
                           DenseKernel kernel = DenseKernel::kFloat64);

// The rows of a Kronecker block's activation factor with bias: each row a becomes
// a-bar = [a; 1], so the batch is prepared as dense rows of batch.dim + 1 values
// (float64 products). REQUIRES: ValidateScores(batch).ok().
PreparedBatch PrepareBatchWithOnes(const ScoreBatchView& batch);

// Prepares a validated batch for block `block_index` of a layered session (its kind
// and factor decide the form: diagonal blocks as diagonal, every other kind as dense
// rows, Kronecker activations with bias through PrepareBatchWithOnes) and tags it.
// REQUIRES: ValidateScores(batch).ok(), batch.dim == block.RowWidth(factor) >= 1.
PreparedBatch PrepareBlockBatch(const ScoreBatchView& batch, const BlockOptions& block,
                                int64_t block_index, Factor factor, DenseKernel kernel);

}  // namespace fisherd

#endif  // FISHERD_CORE_SCORE_BATCH_H_
