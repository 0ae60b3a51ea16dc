#include "server/session_registry.h"

#include <algorithm>
#include <new>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/conversions.h"

namespace fisherd::server {
namespace {

constexpr absl::string_view kCollection = "sessions/";
constexpr size_t kMaxSessionIdLength = 63;

std::string Quote(absl::string_view text) {
  // Names come from clients: bound and escape them before echoing.
  constexpr size_t kMax = 100;
  if (text.size() > kMax)
    return absl::StrCat("\"", absl::CHexEscape(text.substr(0, kMax)), "...\"");
  return absl::StrCat("\"", absl::CHexEscape(text), "\"");
}

std::string Mebibytes(uint64_t bytes) {
  return absl::StrFormat("%.1f MiB", static_cast<double>(bytes) / (1024.0 * 1024.0));
}

// " (its largest block is \"fc1\" (kronecker), 40.1 MiB)" for a layered session.
std::string LargestBlock(const SessionOptions& options) {
  if (!options.layered()) return "";
  size_t largest = 0;
  for (size_t i = 1; i < options.blocks.size(); ++i) {
    if (EstimateBlockBytes(options.blocks[i], options.float32_products) >
        EstimateBlockBytes(options.blocks[largest], options.float32_products)) {
      largest = i;
    }
  }
  const BlockOptions& block = options.blocks[largest];
  return absl::StrCat(" (its largest block is blocks[", largest, "] ", Quote(block.name), ", ",
                      BlockKindName(block.kind), ", ",
                      Mebibytes(EstimateBlockBytes(block, options.float32_products)), ")");
}

}  // namespace

absl::Status ValidateSessionId(absl::string_view session_id) {
  if (session_id.empty()) {
    return absl::InvalidArgumentError("session_id is empty; use 1-63 characters of [a-zA-Z0-9_.-]");
  }
  if (session_id.size() > kMaxSessionIdLength) {
    return absl::InvalidArgumentError(
        absl::StrCat("session_id has ", session_id.size(), " characters; at most 63 are allowed"));
  }
  if (!absl::ascii_isalnum(static_cast<unsigned char>(session_id[0]))) {
    return absl::InvalidArgumentError(
        absl::StrCat("session_id ", Quote(session_id), " must start with a letter or a digit"));
  }
  for (size_t i = 0; i < session_id.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(session_id[i]);
    if (!absl::ascii_isalnum(c) && c != '_' && c != '.' && c != '-') {
      return absl::InvalidArgumentError(
          absl::StrCat("session_id ", Quote(session_id),
                       " has a character outside [a-zA-Z0-9_.-] at offset ", i));
    }
  }
  return absl::OkStatus();
}

std::string SessionName(absl::string_view session_id) {
  return absl::StrCat(kCollection, session_id);
}

absl::StatusOr<std::string> ParseSessionName(absl::string_view name, absl::string_view field) {
  if (!absl::StartsWith(name, kCollection)) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, " ", Quote(name), " is not a session name; expected \"sessions/{session_id}\""));
  }
  const absl::string_view id = name.substr(kCollection.size());
  if (absl::Status status = ValidateSessionId(id); !status.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " ", Quote(name), " is not a valid session name: ", status.message()));
  }
  return std::string(id);
}

SessionRegistry::SessionRegistry(const RegistryLimits& limits) : limits_(limits) {}

absl::Status SessionRegistry::CheckBlockLimits(const SessionOptions& options) const {
  // --max-dense-dim bounds every square matrix a block keeps: a dense block's F, each
  // Kronecker factor, a low-rank block's window Gram matrix.
  for (size_t i = 0; i < options.blocks.size(); ++i) {
    const BlockOptions& block = options.blocks[i];
    int64_t side = 0;
    const char* what = "";
    switch (block.kind) {
      case BlockKind::kDense:
        side = block.dim;
        what = "dim";
        break;
      case BlockKind::kKronecker:
        side = std::max(block.FactorDim(Factor::kActivations),
                        block.FactorDim(Factor::kOutputGradients));
        what = side == block.FactorDim(Factor::kActivations)
                   ? "activation factor (in_features + bias)"
                   : "output-gradient factor (out_features)";
        break;
      case BlockKind::kLowRank:
        side = block.max_rows;
        what = "max_rows";
        break;
      case BlockKind::kDiagonal:
        continue;
    }
    if (side > limits_.max_dense_dim) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "blocks[", i, "] ", Quote(block.name), " (", BlockKindName(block.kind), "): its ", what,
          " of ", side, " exceeds --max-dense-dim=", limits_.max_dense_dim, " (the block needs ",
          Mebibytes(EstimateBlockBytes(block, options.float32_products)),
          "); use a BLOCK_KIND_DIAGONAL block, split the layer into several blocks, or a "
          "smaller size"));
    }
  }
  return absl::OkStatus();
}

absl::Status SessionRegistry::Reserve(const std::string& name, const SessionOptions& options,
                                      uint64_t bytes, bool count_limits) {
  if (sessions_.count(name) != 0 || creating_.count(name) != 0) {
    return absl::AlreadyExistsError(absl::StrCat("session ", Quote(name), " already exists"));
  }
  const uint64_t live = sessions_.size() + creating_.size();
  if (count_limits && static_cast<int64_t>(live) >= limits_.max_sessions) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the server already holds ", live, " sessions, its --max-sessions=", limits_.max_sessions,
        " limit; delete a session or raise --max-sessions"));
  }
  if (absl::Status status = CheckBlockLimits(options); !status.ok()) return status;
  if (!options.layered() && options.representation == Representation::kDense &&
      options.dim > limits_.max_dense_dim) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "dense dim ", options.dim, " exceeds --max-dense-dim=", limits_.max_dense_dim,
        " (a dense estimate needs ", Mebibytes(bytes),
        "); use REPRESENTATION_DIAGONAL, which needs O(dim) memory, or a smaller dim"));
  }
  // Written as a subtraction so that a saturated estimate cannot wrap the sum. A session
  // larger than the whole budget is refused in recovery too (CheckTotals would refuse it
  // anyway, but only after allocating it: a damaged data directory naming a diagonal
  // session of 10^12 parameters must be an error, not an allocation that kills us).
  if (bytes > limits_.memory_budget_bytes ||
      (count_limits && reserved_bytes_ > limits_.memory_budget_bytes - bytes)) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "session ", Quote(name), " needs ", Mebibytes(bytes), " of statistics, but ",
        Mebibytes(reserved_bytes_),
        " of the --memory-budget-mb=", limits_.memory_budget_bytes >> 20, " budget are in use; ",
        options.layered() ? "use DIAGONAL or KRONECKER blocks for the largest layers, "
        : options.representation == Representation::kDense
            ? "use REPRESENTATION_DIAGONAL, which needs O(dim) memory, "
            : "use a smaller dim, ",
        "delete a session, or raise --memory-budget-mb", LargestBlock(options)));
  }
  creating_.insert(name);
  reserved_bytes_ += bytes;
  return absl::OkStatus();
}

absl::StatusOr<SessionRegistry::Entry> SessionRegistry::Create(absl::string_view session_id,
                                                               const v1::SessionConfig& config) {
  return CreateSession(session_id, config, /*log=*/log_ != nullptr, 0, /*recovering=*/false);
}

absl::StatusOr<SessionRegistry::Entry> SessionRegistry::Recreate(absl::string_view session_id,
                                                                 const v1::SessionConfig& config,
                                                                 uint64_t incarnation) {
  return CreateSession(session_id, config, /*log=*/false, incarnation, /*recovering=*/true);
}

absl::StatusOr<SessionRegistry::Entry> SessionRegistry::CreateSession(
    absl::string_view session_id, const v1::SessionConfig& config, bool log, uint64_t incarnation,
    bool recovering) {
  if (absl::Status status = ValidateSessionId(session_id); !status.ok()) return status;
  absl::StatusOr<SessionOptions> options = SessionOptionsFromProto(config);
  if (!options.ok()) return options.status();

  const std::string name = SessionName(session_id);
  const uint64_t bytes = EstimateSessionBytes(*options);
  {
    absl::MutexLock lock(&mu_);
    // Recovery counts sessions and bytes only once the log is replayed (CheckTotals): a
    // snapshot of a session whose deletion comes later in the log must not push the
    // others over a limit they were within.
    if (absl::Status status = Reserve(name, *options, bytes, /*count_limits=*/!recovering);
        !status.ok()) {
      return status;
    }
  }

  // The O(dim^2) allocation happens here, with the name and bytes reserved but the lock
  // released. The budget makes failure unlikely, but the OS may still refuse.
  std::shared_ptr<Session> session;
  try {
    session = std::make_shared<Session>(*options);
  } catch (const std::bad_alloc&) {
    absl::MutexLock lock(&mu_);
    creating_.erase(name);
    reserved_bytes_ -= bytes;
    return absl::ResourceExhaustedError(
        absl::StrCat("out of memory allocating ", Mebibytes(bytes), " for session ", Quote(name),
                     "; use REPRESENTATION_DIAGONAL or lower --memory-budget-mb"));
  }

  // Logged once everything that can fail has succeeded, while the name is still
  // reserved: the log then holds exactly the sessions that exist.
  if (log) {
    absl::StatusOr<uint64_t> lsn = log_->LogCreated(std::string(session_id), config);
    if (!lsn.ok()) {
      absl::MutexLock lock(&mu_);
      creating_.erase(name);
      reserved_bytes_ -= bytes;
      return lsn.status();
    }
    incarnation = *lsn;
  }
  session->set_incarnation(incarnation);

  absl::MutexLock lock(&mu_);
  creating_.erase(name);
  sessions_[name] = Slot{session, bytes};
  return Entry{name, std::move(session)};
}

void SessionRegistry::SetReplicaName(std::string replica) {
  absl::MutexLock lock(&mu_);
  replica_ = std::move(replica);
}

absl::Status SessionRegistry::NotFound(absl::string_view name) const {
  if (replica_.empty())
    return absl::NotFoundError(absl::StrCat("session ", Quote(name), " not found"));
  return absl::NotFoundError(
      absl::StrCat("session ", Quote(name), " not found on replica ", Quote(replica_)));
}

absl::StatusOr<std::shared_ptr<Session>> SessionRegistry::Get(absl::string_view name,
                                                              absl::string_view field) const {
  if (absl::StatusOr<std::string> id = ParseSessionName(name, field); !id.ok()) {
    return id.status();
  }
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find(std::string(name));
  if (it == sessions_.end()) {
    return NotFound(name);
  }
  return it->second.session;
}

absl::Status SessionRegistry::Delete(absl::string_view name) {
  if (absl::StatusOr<std::string> id = ParseSessionName(name, "name"); !id.ok()) {
    return id.status();
  }
  std::shared_ptr<Session> doomed;  // released after the lock, so a free is not under it
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find(std::string(name));
  if (it == sessions_.end()) {
    return NotFound(name);
  }
  if (log_ != nullptr) {
    absl::StatusOr<uint64_t> lsn = log_->LogDeleted(std::string(name.substr(kCollection.size())),
                                                    it->second.session->incarnation());
    if (!lsn.ok()) return lsn.status();
  }
  doomed = std::move(it->second.session);
  reserved_bytes_ -= it->second.bytes;
  sessions_.erase(it);
  return absl::OkStatus();
}

absl::Status SessionRegistry::CheckTotals() const {
  absl::MutexLock lock(&mu_);
  if (static_cast<int64_t>(sessions_.size()) > limits_.max_sessions) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the data directory holds ", sessions_.size(),
        " sessions, more than --max-sessions=", limits_.max_sessions, "; raise it to start"));
  }
  if (reserved_bytes_ > limits_.memory_budget_bytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the data directory's sessions need ", Mebibytes(reserved_bytes_),
                     ", more than --memory-budget-mb=", limits_.memory_budget_bytes >> 20,
                     "; raise it to start"));
  }
  return absl::OkStatus();
}

std::vector<SessionRegistry::Entry> SessionRegistry::List() const {
  absl::MutexLock lock(&mu_);
  std::vector<Entry> entries;
  entries.reserve(sessions_.size());
  for (const auto& [name, slot] : sessions_) entries.push_back(Entry{name, slot.session});
  return entries;
}

absl::Status SessionRegistry::ReserveWorkingMemory(uint64_t bytes, absl::string_view what) {
  absl::MutexLock lock(&mu_);
  if (bytes > limits_.memory_budget_bytes ||
      reserved_bytes_ > limits_.memory_budget_bytes - bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        what, " needs ", Mebibytes(bytes), " of working memory, but ", Mebibytes(reserved_bytes_),
        " of the --memory-budget-mb=", limits_.memory_budget_bytes >> 20,
        " budget are in use; retry when other calls have finished, or raise --memory-budget-mb"));
  }
  reserved_bytes_ += bytes;
  return absl::OkStatus();
}

void SessionRegistry::ReleaseWorkingMemory(uint64_t bytes) {
  absl::MutexLock lock(&mu_);
  reserved_bytes_ -= bytes;
}

uint64_t SessionRegistry::ReservedBytes() const {
  absl::MutexLock lock(&mu_);
  return reserved_bytes_;
}

SessionRegistry::Usage SessionRegistry::CurrentUsage() const {
  absl::MutexLock lock(&mu_);
  Usage usage;
  usage.sessions = static_cast<int64_t>(sessions_.size());
  for (const auto& [name, slot] : sessions_) usage.statistics_bytes += slot.bytes;
  return usage;
}

}  // namespace fisherd::server
