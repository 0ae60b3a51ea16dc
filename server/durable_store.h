// DurableStore: durable sessions (fisherd --data-dir, docs/design.md section 8).
//
// The promise: when a client holds an acknowledgement (a ScoreAck, a step's answer, a
// created or deleted session), what it acknowledges is on disk, and after any crash it
// is counted exactly once. The parts:
//  - a write-ahead log (storage/journal.h) that every mutation enters under its
//    session's lock, so log order is apply order; one writer thread writes and
//    fdatasyncs whatever has accumulated (group commit) and then releases the acks;
//  - snapshots (server/snapshot_file.h) of every session, periodically, when the log
//    has grown, and on drain; a complete round of them lets the log before the
//    previous round go;
//  - recovery at start: each session's newest valid snapshot, then the log after it,
//    in log order, so the sums are bit-identical to those before the crash.
//
// Layout of the data directory: log/<first LSN>.wal segments and
// snapshots/<session_id>.<LSN>.snap files.
#ifndef FISHERD_SERVER_DURABLE_STORE_H_
#define FISHERD_SERVER_DURABLE_STORE_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/session.h"
#include "fisherd/v1/fisher.pb.h"
#include "server/session_registry.h"

namespace fisherd {
class Journal;
}  // namespace fisherd

namespace fisherd::server {

struct DurabilityOptions {
  std::string data_dir;
  // A round of snapshots at least this often while anything changed (0: only by size and
  // on drain).
  absl::Duration snapshot_interval = absl::Minutes(5);
  // ... and whenever the log has grown by this much since the last round.
  uint64_t snapshot_log_bytes = uint64_t{1} << 30;
  // Size of a preallocated log segment.
  uint64_t segment_bytes = uint64_t{64} << 20;
  // Told the wall time of every fdatasync of the log (JournalOptions::on_sync), for the
  // metrics; empty: nobody is.
  std::function<void(double seconds)> on_log_sync;
};

// What Open found, for the start-up line and the recovery bench.
struct RecoveryReport {
  int64_t sessions = 0;
  int64_t snapshots_loaded = 0;
  int64_t snapshots_skipped = 0;  // invalid, an older one used instead
  int64_t records_replayed = 0;   // applied (the rest were in snapshots or of deleted sessions)
  uint64_t log_bytes_replayed = 0;
  uint64_t records_read = 0;  // every record of the log kept
  uint64_t log_bytes_read = 0;
  std::string torn_tail;  // "" or which file and offset a torn record was dropped at
  double seconds = 0.0;
  std::string Describe() const;
};

class DurableStore final : public RegistryLog {
 public:
  // Opens (creating) the data directory, recovers every session into `registry` (whose
  // limits apply to them as to new sessions), opens the log for appending and starts the
  // snapshot thread, then becomes the registry's log. Errors leave the directory as it
  // was: FAILED_PRECONDITION when it cannot be created or written (naming it),
  // DATA_LOSS naming the file and byte offset of corruption (a damaged log record other
  // than a torn tail, a snapshot that fails its checksum with no valid older one),
  // RESOURCE_EXHAUSTED when the recovered sessions exceed the registry's limits.
  static absl::StatusOr<std::unique_ptr<DurableStore>> Open(const DurabilityOptions& options,
                                                            SessionRegistry* registry,
                                                            RecoveryReport* report);
  // Stops the snapshot thread and closes the log (syncing what is queued). Call Drain
  // first for a final snapshot round.
  ~DurableStore() override;

  DurableStore(const DurableStore&) = delete;
  DurableStore& operator=(const DurableStore&) = delete;

  // --- used by the handlers ---

  // The logger for one batch bound for `session`: it serializes the record now (outside
  // the session's lock) and appends it when the session calls it. RESOURCE_EXHAUSTED
  // from it when the data directory is full.
  LogBatchFn BatchLogger(const v1::ScoreBatch& batch, const Session& session);
  // The logger for a step on `session`.
  LogStepFn StepLogger(const std::string& session_id, const Session& session);
  // Runs `done` once every record up to `lsn` is durable (at once when it is; lsn 0:
  // nothing to wait for). `done` runs on the log's writer thread or the caller's and
  // must not block.
  void WhenDurable(uint64_t lsn, std::function<void()> done);
  void WaitDurable(uint64_t lsn);
  // Blocks until every record appended so far is durable (creations, deletions).
  void WaitAllDurable();

  // --- RegistryLog ---
  absl::StatusOr<uint64_t> LogCreated(const std::string& session_id,
                                      const v1::SessionConfig& config) override;
  absl::StatusOr<uint64_t> LogDeleted(const std::string& session_id, uint64_t incarnation) override;

  // A round of snapshots of every session, then truncation of the log before the
  // previous round. Serialized with the snapshot thread's rounds. The first error
  // (a full disk) is returned after trying every session; nothing is lost by it.
  absl::Status SnapshotAll() ABSL_LOCKS_EXCLUDED(round_mu_);
  // The final round on drain (after the server stopped taking calls), then stops the
  // snapshot thread.
  absl::Status Drain();

  const std::string& data_dir() const { return options_.data_dir; }

 private:
  struct SessionInfo {
    v1::SessionConfig config;
    uint64_t incarnation = 0;
    uint64_t snapshot_lsn = 0;  // of its newest snapshot file (0: none)
    // The log holds no record of the session in (snapshot_lsn, covered_lsn]: the
    // journal's last LSN when that snapshot was written or last found unchanged.
    uint64_t covered_lsn = 0;
    uint64_t older_snapshot_lsn = 0;  // the one kept before it as a fallback (0: none)
    uint64_t older_covered_lsn = 0;
  };

  DurableStore(const DurabilityOptions& options, SessionRegistry* registry);
  absl::Status Recover(RecoveryReport* report);
  void SnapshotLoop();
  // Removes the snapshot files no live session needs (older than its fallback, of
  // sessions that no longer exist, temporary files), then the log segments before the
  // oldest record any live session could need (after its fallback snapshot, or from its
  // creation when it has none).
  absl::Status DropUnneeded() ABSL_EXCLUSIVE_LOCKS_REQUIRED(round_mu_);
  std::vector<std::string> StaleSnapshotsLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(sessions_mu_);

  const DurabilityOptions options_;
  SessionRegistry* const registry_;
  const std::string log_dir_;
  const std::string snapshot_dir_;
  std::unique_ptr<Journal> journal_;

  // Serializes snapshot rounds.
  absl::Mutex round_mu_;

  // Session metadata by id: config and incarnation (for snapshot headers) and files.
  absl::Mutex sessions_mu_;
  std::map<std::string, SessionInfo> sessions_ ABSL_GUARDED_BY(sessions_mu_);

  absl::Mutex stop_mu_;
  bool stopping_ ABSL_GUARDED_BY(stop_mu_) = false;
  std::thread snapshot_thread_;
};

}  // namespace fisherd::server

#endif  // FISHERD_SERVER_DURABLE_STORE_H_
