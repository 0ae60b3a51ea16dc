// Dense statistics: M as a full symmetric matrix, accumulated with one BLAS-3
// symmetric rank-k update (dsyrk) per batch, and the Cholesky factor of
// F + lambda I cached until the statistics change.
//
// Low-rank start: while a session holds at most dim / kLowRankRowsPerDim rows, F has
// rank at most that, and the rows themselves are kept instead of M, in a
// LowRankStatistics (core/low_rank_statistics.h) that answers every question about F:
// a step is then exact in float64 by the Woodbury identity, with one Cholesky of the
// small rows x rows matrix, O(rows^2 dim) where the dense path costs dim^3 / 3 (centered
// through one Householder reflection, see there). W, m and the sample count stay
// running sums here, since they outlive the start. The first batch that would exceed
// the bound folds the rows into M (one dsyrk) and frees them.
//
// Decay. W, m and M are kept raw, with one common factor in the log domain:
//   W = exp(log_scale_) W_raw,  m = exp(log_scale_) m_raw,  M = exp(log_scale_) M_raw.
// F = M_raw / W_raw - (centered term) does not depend on the factor, so Decay only adds
// log(rho) to log_scale_: nothing underflows however many steps a block goes without
// rows (a frozen layer), and F and a cached factor stay bit-identical. The next Add of
// weighted rows folds a factor below 1e-150 into the raw sums first (they may underflow
// to 0 then, which is right: they are negligible next to the new rows), so that new rows
// are scaled by at most 1e150.
#ifndef FISHERD_CORE_DENSE_STATISTICS_H_
#define FISHERD_CORE_DENSE_STATISTICS_H_

#include <memory>
#include <vector>

#include "core/low_rank_statistics.h"
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
  // exp(log_scale_) W_raw: W, decayed. After thousands of decays without rows this
  // underflows to 0 (the true value rounded) while F is still defined; CheckReady
  // therefore tests W_raw, not this.
  double weight_sum() const override;

  void Add(const PreparedBatch& batch) override;
  // log_scale_ += log(rho); touches no sum and no cached factor.
  void Decay(double rho) override;
  // OK once W_raw > 0 (any weighted row arrived), however far W itself has decayed.
  absl::Status CheckReady(absl::string_view what) const override;
  Eigen::VectorXd Multiply(const Eigen::VectorXd& v) const override;
  absl::StatusOr<SolveResult> Solve(const Eigen::VectorXd& g, double damping) override;
  absl::StatusOr<FisherSummary> Summarize(bool with_eigenvalues) const override;
  void CopyEntries(int64_t begin, int64_t count, double* out) const override;
  int64_t EntriesPerRow() const override { return dim_; }
  // sample_count, W_raw, log_scale, m_raw (dim()), whether the low-rank start still
  // holds its rows, then either those rows (the LowRankStatistics' own state, in the
  // scope "low_rank_start") or M_raw's upper triangle. The phase is part of the state:
  // a restored start goes dense at the same Add as the original. The Cholesky factor
  // (strict lower triangle, factor_diagonal_) is a cache and is left invalid. Loading
  // rejects a held start where dim() / kLowRankRowsPerDim is 0 (no start exists) and a
  // start whose decay factor differs from this one's (Materialize relies on equality).
  void VisitState(StateVisitor& visitor) override;

 private:
  // F = (1 / W_raw) * upper(storage_) - centered term; the factor of F_lambda scales
  // every entry of the raw sums by this. The decay factor cancels.
  double RawToEstimate() const { return 1.0 / weight_sum_; }
  Eigen::VectorXd Mean() const { return mean_sum_ / weight_sum_; }
  // F_lambda x, from the upper triangle (one dsymv).
  Eigen::VectorXd DampedProduct(const Eigen::VectorXd& x, double damping) const;
  // Add's float32 kernel (DenseKernel::kFloat32 in core/score_batch.h): adds
  // alpha R^T R into the upper triangle.
  void AddFloat32(const PreparedBatch& batch, double alpha);
  // Factors F + damping I into the strict lower triangle and factor_diagonal_.
  absl::Status Factor(double damping);
  // F_lambda^-1 g by the two triangular solves with the cached factor.
  Eigen::VectorXd CholeskySolve(const Eigen::VectorXd& g);

  // --- low-rank start ---
  bool holding_rows() const { return start_ != nullptr; }
  // M_raw := the held rows' R^T R into the upper triangle, relative to log_scale_;
  // frees them.
  void Materialize();
  // When exp(log_scale_) is below about 1e-150: multiplies W_raw, m_raw and (once
  // materialized) M_raw by it and sets log_scale_ = 0. Add calls it before weighted rows
  // arrive; a low-rank start folds its own rows at the same Add.
  void FoldTinyScale();

  const int64_t dim_;
  const bool centered_;

  // One dim x dim column-major buffer holds two things, so a dense session costs
  // 8 dim^2 bytes and not twice that. It is allocated uninitialized, so its pages
  // cost nothing until Materialize() zeroes the upper triangle:
  //  - upper triangle with diagonal: M_raw = M / exp(log_scale_);
  //  - strict lower triangle: the Cholesky factor L of F_lambda while factor_valid_,
  //    whose diagonal is kept in factor_diagonal_.
  Eigen::MatrixXd storage_;
  double log_scale_ = 0.0;    // log of the decay since the last fold (<= 0)
  Eigen::VectorXd mean_sum_;  // m_raw
  double weight_sum_ = 0.0;   // W_raw
  uint64_t sample_count_ = 0;

  // The low-rank start while it lasts (it answers for F then), else nullptr. Never
  // created when dim / kLowRankRowsPerDim is 0.
  std::unique_ptr<LowRankStatistics> start_;

  bool factor_valid_ = false;
  double factor_damping_ = 0.0;
  Eigen::VectorXd factor_diagonal_;
  // AddFloat32's block of one batch product, dim x 256 floats, allocated on first use.
  std::vector<float> scratch_;
};

}  // namespace fisherd

#endif  // FISHERD_CORE_DENSE_STATISTICS_H_
