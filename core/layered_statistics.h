// LayeredStatistics: the block-diagonal F of a layered session. Each block is a
// ScoreStatistics of its own kind (dense, diagonal, Kronecker, low-rank) over its slice
// of the parameter vector; a batch feeds exactly one block (PreparedBatch::block).
//
// Everything about the whole F follows from the blocks: F v and F_lambda^-1 g slice by
// slice, n^T F n and traces add up, eigenvalue extremes are the blocks' extremes.
//
// Not thread-safe: Session serializes every call under its mutex.
#ifndef FISHERD_CORE_LAYERED_STATISTICS_H_
#define FISHERD_CORE_LAYERED_STATISTICS_H_

#include <memory>
#include <vector>

#include "core/block_layout.h"
#include "core/statistics.h"

namespace fisherd {

class LayeredStatistics final : public ScoreStatistics {
 public:
  // REQUIRES: options.layered(), options.Validate().ok().
  explicit LayeredStatistics(const SessionOptions& options);

  int64_t dim() const override { return layout_.offset(layout_.size()); }
  // Rows and W summed over every block (and both factors of a Kronecker block).
  uint64_t sample_count() const override;
  double weight_sum() const override;

  // REQUIRES: batch.block < block_count(), prepared for that block (PrepareBlockBatch).
  void Add(const PreparedBatch& batch) override;
  void Decay(double rho) override;
  void StepTaken() override;
  // OK when every block is ready; else the first block's error, naming the block.
  absl::Status CheckReady(absl::string_view what) const override;
  Eigen::VectorXd Multiply(const Eigen::VectorXd& v) const override;
  // Solves block by block. A block's failure is returned naming the block. The summary's
  // method is "layered", its blocks the per-block summaries; the residual is the whole
  // vector's, assembled from the blocks'; curvature is the sum of the blocks'.
  absl::StatusOr<SolveResult> Solve(const Eigen::VectorXd& g, double damping) override;
  absl::StatusOr<FisherSummary> Summarize(bool with_eigenvalues) const override;
  // Rows of the block-diagonal F (zeros outside the blocks); dim() values per row.
  // For small sessions and tests: GetFisher streams one block at a time instead.
  void CopyEntries(int64_t begin, int64_t count, double* out) const override;
  int64_t EntriesPerRow() const override { return dim(); }
  // Each block's state, in layout order, in a scope named after the block (names are
  // unique and cannot contain '/').
  void VisitState(StateVisitor& visitor) override;
  // Every block's refreshes, with .block set to its index: in block order, each
  // block's in the order made (blocks are independent, so only that order matters).
  void TakeRefreshes(std::vector<FactorRefresh>* out) override;
  // Routes to block refresh.block. INVALID_ARGUMENT naming the index when there is no
  // such block or it is not a Kronecker block; else the block's answer, naming it.
  absl::Status ReplayRefresh(const FactorRefresh& refresh) override;
  void ForgetRefresh(const FactorRefresh& refresh) override;

  const BlockLayout& layout() const { return layout_; }
  const ScoreStatistics& block(int64_t i) const { return *blocks_[i]; }

 private:
  const BlockLayout layout_;
  std::vector<std::unique_ptr<ScoreStatistics>> blocks_;
};

}  // namespace fisherd

#endif  // FISHERD_CORE_LAYERED_STATISTICS_H_
