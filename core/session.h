// Session: one named Fisher estimate shared by many workers. Thread-safe.
//
// Ingestion is split so that handler threads hold the lock only for the merge:
// callers validate and prepare a batch (core/score_batch.h) without the lock, then
// AddScores checks the worker's sequence and merges under it.
#ifndef FISHERD_CORE_SESSION_H_
#define FISHERD_CORE_SESSION_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "Eigen/Core"
#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "core/block_layout.h"
#include "core/options.h"
#include "core/score_batch.h"
#include "core/solve.h"
#include "core/statistics.h"

namespace fisherd {

struct AddResult {
  bool duplicate = false;     // the sequence was at or below the worker's last; not applied
  uint64_t sequence = 0;      // highest applied sequence for the worker (0 for anonymous)
  uint64_t sample_count = 0;  // session total after this call
};

struct StepResult {
  Eigen::VectorXd natural_gradient;  // n = F_lambda^-1 g
  Eigen::VectorXd update;            // -eta n
  double eta = 0.0;
  double natural_norm_sq = 0.0;      // g^T n
  double predicted_kl = 0.0;         // 1/2 update^T F update, undamped F
  SolverSummary solver;
};

struct FisherVectorProductResult {
  Eigen::VectorXd product;  // F v
  double quadratic_kl = 0.0;  // 1/2 v^T F v
};

// One block of a layered session; a Kronecker block's first two figures are its
// activation factor's, the last two its output-gradient factor's.
struct BlockStatsSnapshot {
  std::string name;
  uint64_t sample_count = 0;
  double weight_sum = 0.0;
  uint64_t output_gradient_sample_count = 0;
  double output_gradient_weight_sum = 0.0;
};

struct SessionStatsSnapshot {
  uint64_t sample_count = 0;
  double weight_sum = 0.0;
  uint64_t step_count = 0;
  std::map<std::string, uint64_t> worker_sequences;
  std::vector<BlockStatsSnapshot> blocks;  // layered sessions, in layout order
};

// What GetFisher describes: the whole F (block < 0), one block of a layered session,
// or one factor of a Kronecker block.
struct EstimatePart {
  int64_t block = -1;
  Factor factor = Factor::kNone;
};

// The step size rule of docs/design.md section 1, pure so that it can be tested alone.
// natural_norm_sq = g^T n > 0 unless g == 0, in which case eta is the learning rate
// (or 1) since the update is zero anyway.
double StepSize(const StepOptions& options, double natural_norm_sq);

class Session {
 public:
  // REQUIRES: options.Validate().ok().
  explicit Session(const SessionOptions& options);

  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  const SessionOptions& options() const { return options_; }
  // The blocks of a layered session (empty otherwise); immutable, read without the lock.
  const BlockLayout& layout() const { return layout_; }

  // Applies a prepared batch unless worker_id is non-empty and sequence is at or below
  // the worker's highest applied sequence (then duplicate, unchanged). An empty
  // worker_id is never deduplicated. REQUIRES: batch prepared for this session's
  // representation and dim.
  AddResult AddScores(const std::string& worker_id, uint64_t sequence,
                      const PreparedBatch& batch) ABSL_LOCKS_EXCLUDED(mu_);

  // The natural-gradient step for gradient g, then decay unless skipped. On error the
  // session is unchanged. INVALID_ARGUMENT for bad options or a g of wrong length or
  // non-finite; FAILED_PRECONDITION before any sample or for a singular F_lambda.
  absl::StatusOr<StepResult> Step(const Eigen::VectorXd& g, const StepOptions& options)
      ABSL_LOCKS_EXCLUDED(mu_);

  absl::StatusOr<FisherVectorProductResult> FisherVectorProduct(const Eigen::VectorXd& v)
      ABSL_LOCKS_EXCLUDED(mu_);

  absl::StatusOr<FisherSummary> Summarize(bool with_eigenvalues) ABSL_LOCKS_EXCLUDED(mu_);

  // Copies entries of F (see ScoreStatistics::CopyEntries) under the lock.
  // INVALID_ARGUMENT for a range outside [0, dim); FAILED_PRECONDITION before any sample.
  absl::Status CopyEntries(int64_t begin, int64_t count, double* out) ABSL_LOCKS_EXCLUDED(mu_);
  int64_t EntriesPerRow() const { return statistics_entries_per_row_; }

  // The same for a part of the estimate (EstimatePart). INVALID_ARGUMENT when the part
  // does not exist (a block index out of range, a factor of a block that has none, a
  // block of a session without blocks); FAILED_PRECONDITION before the part has weight.
  // A whole Kronecker block's entries are those of G (x) A (for small blocks only).
  absl::Status CheckPart(const EstimatePart& part) const;
  // Rows the part's CopyEntries covers (its dim, or its factor's) and values per row.
  // REQUIRES: CheckPart(part).ok().
  int64_t PartRows(const EstimatePart& part) const;
  int64_t PartEntriesPerRow(const EstimatePart& part) const;
  absl::StatusOr<FisherSummary> SummarizePart(const EstimatePart& part, bool with_eigenvalues)
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::Status CopyPartEntries(const EstimatePart& part, int64_t begin, int64_t count,
                               double* out) ABSL_LOCKS_EXCLUDED(mu_);

  SessionStatsSnapshot Stats() ABSL_LOCKS_EXCLUDED(mu_);
  // Stats().sample_count alone, without building the per-block snapshots.
  uint64_t SampleCount() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  // The statistics of `part`. REQUIRES: CheckPart(part).ok().
  const ScoreStatistics& Part(const EstimatePart& part) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const SessionOptions options_;
  const BlockLayout layout_;
  const int64_t statistics_entries_per_row_;
  absl::Mutex mu_;
  std::unique_ptr<ScoreStatistics> statistics_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, uint64_t> worker_sequences_ ABSL_GUARDED_BY(mu_);
  uint64_t step_count_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace fisherd

#endif  // FISHERD_CORE_SESSION_H_
