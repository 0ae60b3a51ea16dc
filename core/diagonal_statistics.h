// Diagonal statistics: only diag(M) is kept, so F is diagonal and every
// operation is O(dim).
#ifndef FISHERD_CORE_DIAGONAL_STATISTICS_H_
#define FISHERD_CORE_DIAGONAL_STATISTICS_H_

#include "core/statistics.h"

namespace fisherd {

class DiagonalStatistics final : public ScoreStatistics {
 public:
  explicit DiagonalStatistics(const SessionOptions& options);

  int64_t dim() const override { return dim_; }
  uint64_t sample_count() const override { return sample_count_; }
  double weight_sum() const override { return weight_sum_; }

  void Add(const PreparedBatch& batch) override;
  void Decay(double rho) override;
  Eigen::VectorXd Multiply(const Eigen::VectorXd& v) const override;
  absl::StatusOr<SolveResult> Solve(const Eigen::VectorXd& g, double damping) override;
  absl::StatusOr<FisherSummary> Summarize(bool with_eigenvalues) const override;
  void CopyEntries(int64_t begin, int64_t count, double* out) const override;
  int64_t EntriesPerRow() const override { return 1; }

 private:
  // diag(F)[begin, begin + count); centered round-off below zero is clamped to zero.
  Eigen::VectorXd Estimate(int64_t begin, int64_t count) const;
  Eigen::VectorXd Estimate() const { return Estimate(0, dim_); }

  const int64_t dim_;
  const bool centered_;
  Eigen::VectorXd squares_sum_;  // diag(M)
  Eigen::VectorXd mean_sum_;     // m
  double weight_sum_ = 0.0;
  uint64_t sample_count_ = 0;
};

}  // namespace fisherd

#endif  // FISHERD_CORE_DIAGONAL_STATISTICS_H_
