// Dense matrix statistics: M as a full symmetric matrix, accumulated with one BLAS-3
// symmetric rank-k update (dsyrk) per batch, and the Cholesky factor of F + lambda I
// cached until the statistics change. This is the second phase of a dense estimate
// (core/dense_statistics.h), after its low-rank start, and the representation of the
// Kronecker factors' larger dims.
//
// Decay. W, m and M are kept raw, with one common factor in the log domain:
//   W = exp(log_scale) W_raw,  m = exp(log_scale) m_raw,  M = exp(log_scale) M_raw.
// F = M_raw / W_raw - (centered term) does not depend on the factor, so Decay only adds
// log(rho) to log_scale: nothing underflows however many steps a block goes without
// rows (a frozen layer), and F and a cached factor stay bit-identical. The next Add of
// weighted rows folds a factor below 1e-150 into the raw sums first (they may underflow
// to 0 then, which is right: they are negligible next to the new rows), so that new rows
// are scaled by at most 1e150.
//
// Not thread-safe: Session serializes every call under its mutex.
#ifndef FISHERD_CORE_DENSE_MATRIX_STATISTICS_H_
#define FISHERD_CORE_DENSE_MATRIX_STATISTICS_H_

#include <cstdint>
#include <vector>

#include "Eigen/Core"
#include "core/low_rank_statistics.h"
#include "core/statistics.h"

namespace fisherd {

// What a dense estimate keeps besides M_raw: the sample count, W_raw, the decay's log
// scale and m_raw. Also what it takes over from a low-rank start.
struct DenseRunningSums {
  uint64_t sample_count = 0;
  double weight_sum = 0.0;   // W_raw
  double log_scale = 0.0;    // log of the decay since the last fold (<= 0)
  Eigen::VectorXd mean_sum;  // m_raw, dim values

  // Names them in snapshot order (core/state_visitor.h); a loaded m_raw must have `dim`
  // values.
  void Visit(StateVisitor& visitor, int64_t dim);
  // The sums of the rows a low-rank start holds: W_raw = |b|^2, m_raw = R^T b, relative
  // to the start's own log scale. Exact for a start, whose window never wraps.
  static DenseRunningSums Of(const LowRankStatistics& start);
};

class DenseMatrixStatistics final : public ScoreStatistics {
 public:
  // Zero sums of `dim` values.
  DenseMatrixStatistics(int64_t dim, bool centered);
  // Takes over a low-rank start's estimate: its sums, and M_raw = R^T R of its rows (one
  // dsyrk). The start can be dropped afterwards.
  DenseMatrixStatistics(const LowRankStatistics& start, bool centered);

  DenseMatrixStatistics(const DenseMatrixStatistics&) = delete;
  DenseMatrixStatistics& operator=(const DenseMatrixStatistics&) = delete;

  int64_t dim() const override { return dim_; }
  uint64_t sample_count() const override { return sums_.sample_count; }
  // exp(log_scale) W_raw: W, decayed. After thousands of decays without rows this
  // underflows to 0 (the true value rounded) while F is still defined; CheckReady
  // therefore tests W_raw, not this.
  double weight_sum() const override;

  void Add(const PreparedBatch& batch) override;
  // log_scale += log(rho); touches no sum and no cached factor.
  void Decay(double rho) override;
  // OK once W_raw > 0 (any weighted row arrived), however far W itself has decayed.
  absl::Status CheckReady(absl::string_view what) const override;
  Eigen::VectorXd Multiply(const Eigen::VectorXd& v) const override;
  absl::StatusOr<SolveResult> Solve(const Eigen::VectorXd& g, double damping) override;
  absl::StatusOr<FisherSummary> Summarize(bool with_eigenvalues) const override;
  void CopyEntries(int64_t begin, int64_t count, double* out) const override;
  int64_t EntriesPerRow() const override { return dim_; }
  // The running sums (DenseRunningSums::Visit), then M_raw's upper triangle
  // (VisitMoment). The Cholesky factor is a cache and is left invalid on loading.
  void VisitState(StateVisitor& visitor) override;

  const DenseRunningSums& sums() const { return sums_; }
  // Replaces the running sums (a snapshot being loaded). REQUIRES: sums.mean_sum has
  // dim() values.
  void set_sums(DenseRunningSums sums);
  // M_raw's upper triangle alone, as named in a snapshot.
  void VisitMoment(StateVisitor& visitor);

 private:
  // F = (1 / W_raw) * upper(storage_) - centered term; the factor of F_lambda scales
  // every entry of the raw sums by this. The decay factor cancels.
  double RawToEstimate() const { return 1.0 / sums_.weight_sum; }
  Eigen::VectorXd Mean() const { return sums_.mean_sum / sums_.weight_sum; }
  // F_lambda x, from the upper triangle (one dsymv).
  Eigen::VectorXd DampedProduct(const Eigen::VectorXd& x, double damping) const;
  // Add's float32 kernel (DenseKernel::kFloat32 in core/score_batch.h): adds
  // alpha R^T R into the upper triangle.
  void AddFloat32(const PreparedBatch& batch, double alpha);
  // Factors F + damping I into the strict lower triangle and factor_diagonal_.
  absl::Status Factor(double damping);
  // F_lambda^-1 g by the two triangular solves with the cached factor.
  Eigen::VectorXd CholeskySolve(const Eigen::VectorXd& g);
  // When exp(log_scale) is below about 1e-150: multiplies W_raw, m_raw and M_raw by it
  // and sets log_scale = 0. Add calls it before weighted rows arrive.
  void FoldTinyScale();

  const int64_t dim_;
  const bool centered_;

  // One dim x dim column-major buffer holds two things, so the matrix costs 8 dim^2
  // bytes and not twice that:
  //  - upper triangle with diagonal: M_raw = M / exp(log_scale);
  //  - strict lower triangle: the Cholesky factor L of F_lambda while factor_valid_,
  //    whose diagonal is kept in factor_diagonal_.
  Eigen::MatrixXd storage_;
  DenseRunningSums sums_;

  bool factor_valid_ = false;
  double factor_damping_ = 0.0;
  Eigen::VectorXd factor_diagonal_;
  // AddFloat32's block of one batch product, dim x 256 floats, allocated on first use.
  std::vector<float> scratch_;
};

}  // namespace fisherd

#endif  // FISHERD_CORE_DENSE_MATRIX_STATISTICS_H_
