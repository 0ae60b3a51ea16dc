// Dense statistics: M as a full symmetric matrix, accumulated with one BLAS-3
// symmetric rank-k update (dsyrk) per batch, and the Cholesky factor of
// F + lambda I cached until the statistics change.
#ifndef FISHERD_CORE_DENSE_STATISTICS_H_
#define FISHERD_CORE_DENSE_STATISTICS_H_

#include <vector>

#include "core/statistics.h"

namespace fisherd {

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

  const int64_t dim_;
  const bool centered_;

  // One dim x dim column-major buffer holds two things, so a dense session costs
  // 8 dim^2 bytes and not twice that:
  //  - upper triangle with diagonal: M / scale_ (decay multiplies scale_, not M);
  //  - strict lower triangle: the Cholesky factor L of F_lambda while factor_valid_,
  //    whose diagonal is kept in factor_diagonal_.
  Eigen::MatrixXd storage_;
  double scale_ = 1.0;
  Eigen::VectorXd mean_sum_;  // m
  double weight_sum_ = 0.0;   // W
  uint64_t sample_count_ = 0;

  bool factor_valid_ = false;
  double factor_damping_ = 0.0;
  Eigen::VectorXd factor_diagonal_;
  // AddFloat32's block of one batch product, dim x 256 floats, allocated on first use.
  std::vector<float> scratch_;
};

}  // namespace fisherd

#endif  // FISHERD_CORE_DENSE_STATISTICS_H_
