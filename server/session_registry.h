// SessionRegistry: the server's named sessions, "sessions/{id}" -> Session, and the
// limits that keep a client from exhausting the machine. Thread-safe.
//
// Sessions are handed out as shared_ptr so that a request that already resolved a
// session finishes on it even if the session is deleted meanwhile; its memory is
// returned when the last such request lets go. Limits are checked, and the memory they
// account for reserved, before a session's statistics are allocated (docs/design.md 4).
#ifndef FISHERD_SERVER_SESSION_REGISTRY_H_
#define FISHERD_SERVER_SESSION_REGISTRY_H_

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "core/options.h"
#include "core/session.h"
#include "fisherd/v1/fisher.pb.h"

namespace fisherd::server {

struct RegistryLimits {
  // Most sessions alive at once (--max-sessions).
  int64_t max_sessions = 64;
  // Largest dim of a dense session (--max-dense-dim), and of every square matrix a
  // layered session's block keeps (a dense block, a Kronecker factor, a low-rank
  // window); diagonal sessions and blocks are bounded only by the memory budget.
  int64_t max_dense_dim = 16384;
  // Sum over live sessions of EstimateSessionBytes (--memory-budget-mb, in bytes here).
  uint64_t memory_budget_bytes = uint64_t{16384} << 20;
};

// OK if `session_id` is 1-63 characters of [a-zA-Z0-9_.-] starting with a letter or a
// digit; INVALID_ARGUMENT saying which rule it breaks otherwise.
absl::Status ValidateSessionId(absl::string_view session_id);

// "sessions/{id}" for a valid id. REQUIRES: ValidateSessionId(session_id).ok().
std::string SessionName(absl::string_view session_id);

// The id of a resource name "sessions/{id}"; INVALID_ARGUMENT naming `field` (e.g.
// "name" or "session") when `name` has another form.
absl::StatusOr<std::string> ParseSessionName(absl::string_view name, absl::string_view field);

// Durable sessions: how the registry logs creations and deletions (server/durable_store.h).
// Each call returns the record's LSN or an error (then nothing changes).
class RegistryLog {
 public:
  virtual ~RegistryLog() = default;
  // Before the new session becomes visible (the name is reserved, so no other record of
  // that name can come between).
  virtual absl::StatusOr<uint64_t> LogCreated(const std::string& session_id,
                                              const v1::SessionConfig& config) = 0;
  // Before the session disappears, under the registry's lock.
  virtual absl::StatusOr<uint64_t> LogDeleted(const std::string& session_id,
                                              uint64_t incarnation) = 0;
};

class SessionRegistry {
 public:
  struct Entry {
    std::string name;  // "sessions/{id}"
    std::shared_ptr<Session> session;
  };

  explicit SessionRegistry(const RegistryLimits& limits);

  SessionRegistry(const SessionRegistry&) = delete;
  SessionRegistry& operator=(const SessionRegistry&) = delete;

  const RegistryLimits& limits() const { return limits_; }

  // Logs every later Create and Delete through `log` (nullptr: none). Set once at start,
  // before serving. REQUIRES: log outlives the registry's use.
  void set_log(RegistryLog* log) { log_ = log; }

  // The name NOT_FOUND errors give this server ("replica \"host:port\""), so that a
  // client behind a proxy that routes sessions over several replicas sees which replica
  // answered that it does not hold the session. Empty (the default): not named. May be
  // set while serving.
  void SetReplicaName(std::string replica) ABSL_LOCKS_EXCLUDED(mu_);

  // Creates "sessions/{session_id}" from the wire config (see SessionOptionsFromProto
  // for its defaults). INVALID_ARGUMENT for a bad id or config, ALREADY_EXISTS when the
  // name is taken (or being created), RESOURCE_EXHAUSTED naming the flag when a limit
  // would be exceeded. The statistics are allocated outside the registry lock, so a
  // large session does not stall lookups of the others.
  absl::StatusOr<Entry> Create(absl::string_view session_id, const v1::SessionConfig& config)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Recovery: the same allocation, without logging, for a session whose creation is
  // already on disk with the given incarnation. Its size limits apply; the count and
  // budget of all sessions are checked once recovery is done (CheckTotals).
  absl::StatusOr<Entry> Recreate(absl::string_view session_id, const v1::SessionConfig& config,
                                 uint64_t incarnation) ABSL_LOCKS_EXCLUDED(mu_);

  // The session named `name` ("sessions/{id}"). INVALID_ARGUMENT naming `field` for a
  // malformed name; NOT_FOUND naming the session (and the replica, if set) when there is
  // none.
  absl::StatusOr<std::shared_ptr<Session>> Get(absl::string_view name,
                                               absl::string_view field = "name") const
      ABSL_LOCKS_EXCLUDED(mu_);

  // Removes the session; requests already holding it finish normally. Errors as Get.
  absl::Status Delete(absl::string_view name) ABSL_LOCKS_EXCLUDED(mu_);

  // RESOURCE_EXHAUSTED naming the flag when the sessions held exceed --max-sessions or
  // --memory-budget-mb (after recovery, which does not count them one by one).
  absl::Status CheckTotals() const ABSL_LOCKS_EXCLUDED(mu_);

  // All sessions, sorted by name.
  std::vector<Entry> List() const ABSL_LOCKS_EXCLUDED(mu_);

  // Bytes accounted against the memory budget (live sessions, creations under way, and
  // the working memory of calls in flight).
  uint64_t ReservedBytes() const ABSL_LOCKS_EXCLUDED(mu_);

  // What the live sessions hold, for the metrics (server/server_metrics.h): their number
  // and their statistics' bytes as the budget counts them (EstimateSessionBytes), without
  // creations under way or calls' working memory.
  struct Usage {
    int64_t sessions = 0;
    uint64_t statistics_bytes = 0;
  };
  Usage CurrentUsage() const ABSL_LOCKS_EXCLUDED(mu_);

  // Accounts `bytes` of a call's working memory (a streamed step holds its gradient
  // and answer, O(dim) doubles) against the budget, so that many concurrent calls on a
  // large session cannot exhaust the machine. RESOURCE_EXHAUSTED naming `what` and the
  // budget when it does not fit. Every successful call must be paired with
  // ReleaseWorkingMemory(bytes).
  absl::Status ReserveWorkingMemory(uint64_t bytes, absl::string_view what)
      ABSL_LOCKS_EXCLUDED(mu_);
  void ReleaseWorkingMemory(uint64_t bytes) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Slot {
    std::shared_ptr<Session> session;
    uint64_t bytes = 0;
  };

  absl::Status NotFound(absl::string_view name) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Checks every limit for a new session of `options` named `name` and, if all pass,
  // reserves its bytes and the name.
  // count_limits: also --max-sessions and the memory budget (not during recovery).
  absl::Status Reserve(const std::string& name, const SessionOptions& options, uint64_t bytes,
                       bool count_limits) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // RESOURCE_EXHAUSTED naming the first block whose square matrices exceed
  // --max-dense-dim.
  absl::Status CheckBlockLimits(const SessionOptions& options) const;

  // Create and Recreate: log (when logging) and incarnation handling around the
  // allocation.
  absl::StatusOr<Entry> CreateSession(absl::string_view session_id, const v1::SessionConfig& config,
                                      bool log, uint64_t incarnation, bool recovering)
      ABSL_LOCKS_EXCLUDED(mu_);

  const RegistryLimits limits_;
  RegistryLog* log_ = nullptr;
  mutable absl::Mutex mu_;
  std::map<std::string, Slot> sessions_ ABSL_GUARDED_BY(mu_);  // sorted: List is ordered
  std::set<std::string> creating_ ABSL_GUARDED_BY(mu_);        // reserved, not yet built
  uint64_t reserved_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  std::string replica_ ABSL_GUARDED_BY(mu_);
};

}  // namespace fisherd::server

#endif  // FISHERD_SERVER_SESSION_REGISTRY_H_
