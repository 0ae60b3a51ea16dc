// Diagonal statistics: only diag(M) is kept, so F is diagonal and every
// operation is O(dim).
//
// Decay. The sums are kept raw, with one common factor in the log domain:
// W = exp(log_scale_) W_raw, and so m and diag(M). F = diag(M)_raw / W_raw (less the
// squared mean) does not depend on it, so Decay only adds log(rho) to log_scale_ and
// nothing underflows however many steps a block goes without rows. The next Add of
// weighted rows folds a factor below about 1e-150 into the raw sums (they may underflow
// to 0 then: negligible next to the new rows), so new rows are scaled by at most 1e150.
#ifndef FISHERD_CORE_DIAGONAL_STATISTICS_H_
#define FISHERD_CORE_DIAGONAL_STATISTICS_H_

#include "core/statistics.h"

namespace fisherd {

class DiagonalStatistics final : public ScoreStatistics {
 public:
  explicit DiagonalStatistics(const SessionOptions& options);

  int64_t dim() const override { return dim_; }
  uint64_t sample_count() const override { return sample_count_; }
  // exp(log_scale_) W_raw: W, decayed. After thousands of decays without rows this
  // underflows to 0 (the true value rounded) while F is still defined; CheckReady
  // therefore tests W_raw, not this.
  double weight_sum() const override;

  void Add(const PreparedBatch& batch) override;
  // log_scale_ += log(rho); touches no sum.
  void Decay(double rho) override;
  // OK once W_raw > 0 (any weighted row arrived), however far W itself has decayed.
  absl::Status CheckReady(absl::string_view what) const override;
  Eigen::VectorXd Multiply(const Eigen::VectorXd& v) const override;
  absl::StatusOr<SolveResult> Solve(const Eigen::VectorXd& g, double damping) override;
  absl::StatusOr<FisherSummary> Summarize(bool with_eigenvalues) const override;
  void CopyEntries(int64_t begin, int64_t count, double* out) const override;
  int64_t EntriesPerRow() const override { return 1; }
  // sample_count, W_raw, log_scale, diag(M)_raw and m_raw (dim() each): the sums and
  // their common decay factor as they are, so that F and every later Add (including
  // when it folds the factor) are bit-identical. Nothing is cached.
  void VisitState(StateVisitor& visitor) override;

 private:
  // diag(F)[begin, begin + count); centered round-off below zero is clamped to zero.
  Eigen::VectorXd Estimate(int64_t begin, int64_t count) const;
  Eigen::VectorXd Estimate() const { return Estimate(0, dim_); }

  const int64_t dim_;
  const bool centered_;
  Eigen::VectorXd squares_sum_;  // diag(M)_raw
  Eigen::VectorXd mean_sum_;     // m_raw
  double weight_sum_ = 0.0;      // W_raw
  double log_scale_ = 0.0;       // log of the decay since the last fold (<= 0)
  uint64_t sample_count_ = 0;
};

}  // namespace fisherd

#endif  // FISHERD_CORE_DIAGONAL_STATISTICS_H_
