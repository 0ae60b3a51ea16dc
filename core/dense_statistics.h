// Dense statistics: the estimate of a DENSE session (and of a Kronecker factor), in two
// phases, each a representation with one job:
//  - the low-rank start: while at most dim / kLowRankRowsPerDim rows have arrived, F has
//    rank at most that, and the rows themselves are kept (LowRankStatistics,
//    core/low_rank_statistics.h). A step is then exact in float64 by the Woodbury
//    identity, O(rows^2 dim) where the matrix costs dim^3 / 3, and the session's memory
//    is its rows, not dim^2 doubles;
//  - the matrix: the first batch that would exceed the start's capacity hands the rows
//    over to a DenseMatrixStatistics (core/dense_matrix_statistics.h: M by dsyrk, a
//    cached Cholesky factor), which keeps every later row.
// This class only decides which phase answers. Dims below kLowRankRowsPerDim have no
// start.
//
// Not thread-safe: Session serializes every call under its mutex.
#ifndef FISHERD_CORE_DENSE_STATISTICS_H_
#define FISHERD_CORE_DENSE_STATISTICS_H_

#include <cstdint>
#include <memory>

#include "core/dense_matrix_statistics.h"
#include "core/low_rank_statistics.h"
#include "core/statistics.h"

namespace fisherd {

// A dense estimate keeps its rows, not M, while it holds at most dim / this many (so the
// rows take at most 1/16 of M's memory and a step O(dim^3 / 256)).
inline constexpr int64_t kLowRankRowsPerDim = 16;

class DenseStatistics final : public ScoreStatistics {
 public:
  explicit DenseStatistics(const SessionOptions& options);

  int64_t dim() const override { return dim_; }
  uint64_t sample_count() const override { return phase().sample_count(); }
  double weight_sum() const override { return phase().weight_sum(); }
  // Goes to the matrix first when the batch would overflow the start.
  void Add(const PreparedBatch& batch) override;
  void Decay(double rho) override { phase().Decay(rho); }
  absl::Status CheckReady(absl::string_view what) const override {
    return phase().CheckReady(what);
  }
  Eigen::VectorXd Multiply(const Eigen::VectorXd& v) const override { return phase().Multiply(v); }
  absl::StatusOr<SolveResult> Solve(const Eigen::VectorXd& g, double damping) override {
    return phase().Solve(g, damping);
  }
  absl::StatusOr<FisherSummary> Summarize(bool with_eigenvalues) const override {
    return phase().Summarize(with_eigenvalues);
  }
  void CopyEntries(int64_t begin, int64_t count, double* out) const override {
    phase().CopyEntries(begin, count, out);
  }
  int64_t EntriesPerRow() const override { return dim_; }
  // Snapshot layout: the running sums (sample_count, W_raw, log_scale, m_raw), the flag
  // "holding_rows" (true in the low-rank start), then the start's own state in the scope
  // "low_rank_start", or M_raw's upper triangle (the layout of the single class this
  // once was, so that older snapshots load). In the start the sums are derived from its
  // rows when saving; loading checks their log_scale against the start's and takes the
  // rest from the start. The phase is part of the state: a restored start goes to the
  // matrix at the same Add as the original. Loading rejects a start where the dim has
  // none.
  void VisitState(StateVisitor& visitor) override;

  // True in the low-rank start.
  bool in_low_rank_start() const { return start_ != nullptr; }

 private:
  const ScoreStatistics& phase() const;
  ScoreStatistics& phase();

  const int64_t dim_;
  const bool centered_;
  // Exactly one is set: the start while it lasts, then the matrix.
  std::unique_ptr<LowRankStatistics> start_;
  std::unique_ptr<DenseMatrixStatistics> matrix_;
};

}  // namespace fisherd

#endif  // FISHERD_CORE_DENSE_STATISTICS_H_
