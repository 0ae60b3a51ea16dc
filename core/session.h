// Session: one named Fisher estimate shared by many workers. Thread-safe.
//
// Ingestion is split so that handler threads hold the lock only for the merge:
// callers validate and prepare a batch (core/score_batch.h) without the lock, then
// AddScores checks the worker's sequence and merges under it.
#ifndef FISHERD_CORE_SESSION_H_
#define FISHERD_CORE_SESSION_H_

#include <cstdint>
#include <functional>
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
  // Durable sessions: the LSN to wait for before acknowledging: the batch's own log
  // record, or for a duplicate the session's last record (the original may still be
  // on its way to disk). 0 without a log.
  uint64_t lsn = 0;
};

// What a step changed besides the values of the sums: the write-ahead log records it so
// that replay reproduces the session exactly (docs/design.md section 8).
struct StepEffect {
  bool taken = false;                    // the step succeeded: step count and refresh clocks moved
  double decay = 1.0;                    // rho applied after the step (1: none)
  std::vector<FactorRefresh> refreshes;  // decompositions the solve refreshed
};

// Durable sessions: how a mutation reaches the write-ahead log. Called under the
// session's lock, in the order mutations are applied (so log order is apply order), once
// the mutation is known to change the session. Returns the record's LSN, or an error
// (the log is full) that the session passes on unchanged.
using LogBatchFn = std::function<absl::StatusOr<uint64_t>()>;
using LogStepFn = std::function<absl::StatusOr<uint64_t>(const StepEffect&)>;

// The counters a snapshot keeps beside the statistics.
struct SessionCounters {
  uint64_t lsn = 0;  // the session's last logged mutation
  uint64_t step_count = 0;
  std::map<std::string, uint64_t> worker_sequences;
};

struct StepResult {
  Eigen::VectorXd natural_gradient;  // n = F_lambda^-1 g
  Eigen::VectorXd update;            // -eta n
  double eta = 0.0;
  double natural_norm_sq = 0.0;  // g^T n
  double predicted_kl = 0.0;     // 1/2 update^T F update, undamped F
  SolverSummary solver;
  uint64_t lsn = 0;  // the step's log record (durable sessions), else 0
};

struct FisherVectorProductResult {
  Eigen::VectorXd product;    // F v
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

// What Session::ReadPart returns: one state of the session, described three ways.
struct PartReading {
  SessionStatsSnapshot stats;
  FisherSummary summary;
  std::vector<double> entries;  // empty unless asked for
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
  AddResult AddScores(const std::string& worker_id, uint64_t sequence, const PreparedBatch& batch)
      ABSL_LOCKS_EXCLUDED(mu_);
  // The same, logging the batch first when `log` is set (and not for a duplicate); an
  // error from `log` is returned with the session unchanged.
  absl::StatusOr<AddResult> AddScores(const std::string& worker_id, uint64_t sequence,
                                      const PreparedBatch& batch, const LogBatchFn& log)
      ABSL_LOCKS_EXCLUDED(mu_);

  // The natural-gradient step for gradient g, then decay unless skipped. On error the
  // session is unchanged. INVALID_ARGUMENT for bad options or a g of wrong length or
  // non-finite; FAILED_PRECONDITION before any sample or for a singular F_lambda.
  absl::StatusOr<StepResult> Step(const Eigen::VectorXd& g, const StepOptions& options)
      ABSL_LOCKS_EXCLUDED(mu_);
  // The same, logging the step's effect when `log` is set: after a successful solve, or
  // after a failed one that refreshed a decomposition (the refresh is state). The
  // decay and step count move only once the record is logged; if logging fails the
  // step fails with its status and its refreshes are forgotten (ForgetRefresh), so the
  // next step refreshes those factors again, logged.
  absl::StatusOr<StepResult> Step(const Eigen::VectorXd& g, const StepOptions& options,
                                  const LogStepFn& log) ABSL_LOCKS_EXCLUDED(mu_);

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
  // One consistent reading of a part, for GetFisher: the session's Stats(), the part's
  // summary and, when `with_entries`, all its entries (PartRows x PartEntriesPerRow,
  // row-major), taken under one hold of the lock so that a batch merged meanwhile can
  // never mix two estimates. The entries are allocated before the lock is taken.
  // Errors as CheckPart, and FAILED_PRECONDITION before the part has weight.
  absl::StatusOr<PartReading> ReadPart(const EstimatePart& part, bool with_eigenvalues,
                                       bool with_entries) ABSL_LOCKS_EXCLUDED(mu_);
  absl::Status CopyPartEntries(const EstimatePart& part, int64_t begin, int64_t count, double* out)
      ABSL_LOCKS_EXCLUDED(mu_);

  SessionStatsSnapshot Stats() ABSL_LOCKS_EXCLUDED(mu_);

  // --- durable sessions (docs/design.md section 8) ---

  // The LSN of the session's last logged mutation (0 before any): readers wait for it
  // to be durable so that they never show what a crash could take back.
  uint64_t last_lsn() ABSL_LOCKS_EXCLUDED(mu_);
  // The LSN of the record that created this incarnation of the session (0 without a
  // log): records name it so that replay never applies a batch that reached a deleted
  // session to a later one of the same name. Set once, before the session is published.
  uint64_t incarnation() const { return incarnation_; }
  // Also makes lsn the session's last logged mutation.
  void set_incarnation(uint64_t lsn) ABSL_LOCKS_EXCLUDED(mu_);
  // Runs `save` under the session's lock with a consistent state: no batch or step can
  // slip between the counters and the statistics it saves.
  void SaveState(const std::function<void(const SessionCounters&, ScoreStatistics&)>& save)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Restores counters and statistics from a snapshot. REQUIRES: a fresh session (no
  // batch, no step) of the snapshot's options. On error (the visitor's status) the
  // session must be discarded.
  absl::Status RestoreState(const SessionCounters& counters, StateVisitor& visitor)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Replays a logged batch (recovery): as AddScores, recording `lsn` as the session's
  // last. A duplicate here means the log is inconsistent: reported, nothing applied.
  absl::Status ReplayBatch(const std::string& worker_id, uint64_t sequence,
                           const PreparedBatch& batch, uint64_t lsn) ABSL_LOCKS_EXCLUDED(mu_);
  // Replays a logged step effect: its refreshes, then the step count and decay.
  absl::Status ReplayStep(const StepEffect& effect, uint64_t lsn) ABSL_LOCKS_EXCLUDED(mu_);

  // Stats().sample_count alone, without building the per-block snapshots.
  uint64_t SampleCount() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  SessionStatsSnapshot StatsLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The statistics of `part`. REQUIRES: CheckPart(part).ok().
  const ScoreStatistics& Part(const EstimatePart& part) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const SessionOptions options_;
  const BlockLayout layout_;
  const int64_t statistics_entries_per_row_;
  absl::Mutex mu_;
  std::unique_ptr<ScoreStatistics> statistics_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, uint64_t> worker_sequences_ ABSL_GUARDED_BY(mu_);
  uint64_t step_count_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t last_lsn_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t incarnation_ = 0;  // written before publication only
};

}  // namespace fisherd

#endif  // FISHERD_CORE_SESSION_H_
