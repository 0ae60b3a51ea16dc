// Dense statistics: M as a full symmetric matrix, accumulated with one BLAS-3
// symmetric rank-k update (dsyrk) per batch, and the Cholesky factor of
// F + lambda I cached until the statistics change.
//
// Low-rank start: while a session holds at most dim / kLowRankRowsPerDim rows, F has
// rank at most that, and the rows themselves are kept instead of M. A step is then
// exact in float64 by the Woodbury identity, (lambda I + c R^T R)^-1 =
// (I - R^T (lambda/c I + R R^T)^-1 R) / lambda, with one Cholesky of the small
// rows x rows matrix: O(rows^2 dim) where the dense path costs dim^3 / 3. Centered,
// the mean c R^T b is a combination of the same rows, so F = c R^T (I - c b b^T) R
// where I - c b b^T is the projector off b (c |b|^2 = 1); the identity then runs on
// the rows of R reflected by one Householder reflection, less the one along b. (A
// rank-one downdate by the mean would cancel catastrophically: the mean lies in the
// span of the rows.) The first batch that would exceed the bound folds the rows into
// M (one dsyrk) and frees them.
#ifndef FISHERD_CORE_DENSE_STATISTICS_H_
#define FISHERD_CORE_DENSE_STATISTICS_H_

#include <vector>

#include "core/statistics.h"

namespace fisherd {

// A dense session keeps its rows, not M, while it holds at most dim / this many
// (so the rows take at most 1/16 of M's memory and a step O(dim^3 / 256)).
inline constexpr int64_t kLowRankRowsPerDim = 16;

class DenseStatistics final : public ScoreStatistics {
 public:
  explicit DenseStatistics(const SessionOptions& options);

  int64_t dim() const override { return dim_; }
  uint64_t sample_count() const override { return sample_count_; }
  double weight_sum() const override { return weight_sum_; }

  void Add(const PreparedBatch& batch) override;
  void Decay(double rho) override;
  Eigen::VectorXd Multiply(const Eigen::VectorXd& v) const override;
  absl::StatusOr<SolveResult> Solve(const Eigen::VectorXd& g, double damping) override;
  absl::StatusOr<FisherSummary> Summarize(bool with_eigenvalues) const override;
  void CopyEntries(int64_t begin, int64_t count, double* out) const override;
  int64_t EntriesPerRow() const override { return dim_; }

 private:
  // F = (scale_ / W) * upper(storage_) - centered term; the factor of F_lambda scales
  // every entry of the raw sums by this.
  double RawToEstimate() const { return scale_ / weight_sum_; }
  Eigen::VectorXd Mean() const { return mean_sum_ / weight_sum_; }
  // F_lambda x, from the upper triangle (one dsymv).
  Eigen::VectorXd DampedProduct(const Eigen::VectorXd& x, double damping) const;
  // Add's float32 kernel (DenseKernel::kFloat32 in core/score_batch.h).
  void AddFloat32(const PreparedBatch& batch);
  // Factors F + damping I into the strict lower triangle and factor_diagonal_.
  absl::Status Factor(double damping);
  // F_lambda^-1 g by the two triangular solves with the cached factor.
  Eigen::VectorXd CholeskySolve(const Eigen::VectorXd& g);

  // --- low-rank start (held_rows_) ---
  bool holding_rows() const { return !materialized_; }
  // Appends a batch's root-weighted rows, divided by sqrt(scale_).
  void HoldRows(const PreparedBatch& batch);
  // M := held rows' R^T R into the upper triangle; frees the rows.
  void Materialize();
  // The rows Q the Woodbury identity runs on: R, or centered, the last rows - 1 rows of
  // H R where the Householder reflection H maps b onto the first axis. Q v (one value
  // per row of Q) and Q^T y (dim values).
  Eigen::VectorXd WoodburyRowsTimes(const Eigen::VectorXd& v) const;
  Eigen::VectorXd WoodburyRowsTransposeTimes(const Eigen::VectorXd& y) const;
  // x - 2 u (u . x) / (u . u): the reflection householder_, or x if u is zero.
  Eigen::VectorXd Reflect(const Eigen::VectorXd& x) const;
  // F_lambda^-1 v with the cached factor of the small Gram system.
  Eigen::VectorXd WoodburySolve(const Eigen::VectorXd& v) const;
  // Factors lambda/c I + Q Q^T for the Woodbury rows Q.
  absl::Status FactorLowRank(double damping);

  const int64_t dim_;
  const bool centered_;

  // One dim x dim column-major buffer holds two things, so a dense session costs
  // 8 dim^2 bytes and not twice that. It is allocated uninitialized, so its pages
  // cost nothing until Materialize() zeroes the upper triangle:
  //  - upper triangle with diagonal: M / scale_ (decay multiplies scale_, not M);
  //  - strict lower triangle: the Cholesky factor L of F_lambda while factor_valid_,
  //    whose diagonal is kept in factor_diagonal_.
  Eigen::MatrixXd storage_;
  double scale_ = 1.0;
  Eigen::VectorXd mean_sum_;  // m
  double weight_sum_ = 0.0;   // W
  uint64_t sample_count_ = 0;

  // While !materialized_: row i of held_rows_ is b_i s_i with b_i = sqrt(w_i / scale_
  // at its arrival), held_coefficients_[i] = b_i, so that M = scale_ R^T R and
  // m = scale_ R^T b. At most max_held_rows_ rows, allocated on first use.
  bool materialized_ = false;
  const int64_t max_held_rows_;
  int64_t held_count_ = 0;
  PreparedBatch::RowMajorD held_rows_;
  Eigen::VectorXd held_coefficients_;
  // The low-rank factor (for factor_damping_): Cholesky of lambda/c I + Q Q^T, and
  // (centered) the Householder vector u of the reflection H.
  Eigen::MatrixXd gram_factor_;
  Eigen::VectorXd householder_;

  bool factor_valid_ = false;
  double factor_damping_ = 0.0;
  Eigen::VectorXd factor_diagonal_;
  // AddFloat32's block of one batch product, dim x 256 floats, allocated on first use.
  std::vector<float> scratch_;
};

}  // namespace fisherd

#endif  // FISHERD_CORE_DENSE_STATISTICS_H_
