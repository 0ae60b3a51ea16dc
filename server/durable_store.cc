#include "server/durable_store.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "fisherd/durable/v1/records.pb.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "server/batch_decoder.h"
#include "server/conversions.h"
#include "server/snapshot_file.h"
#include "storage/file_util.h"
#include "storage/journal.h"

namespace fisherd::server {
namespace {

namespace dv1 = durable::v1;

absl::Status MakeDirectory(const std::string& path) {
  if (mkdir(path.c_str(), 0755) == 0 || errno == EEXIST) {
    struct stat info;
    if (stat(path.c_str(), &info) == 0 && S_ISDIR(info.st_mode)) return absl::OkStatus();
    return absl::FailedPreconditionError(
        absl::StrCat("data directory ", path, " exists but is not a directory"));
  }
  return absl::FailedPreconditionError(
      absl::StrCat("cannot create data directory ", path, ": ", std::strerror(errno)));
}

// BatchApplied{batch, incarnation} written field by field, so that the batch is
// serialized once into the payload rather than copied into a wrapper message first.
std::string EncodeBatchApplied(const v1::ScoreBatch& batch, uint64_t incarnation) {
  using google::protobuf::io::CodedOutputStream;
  constexpr uint32_t kBatchTag = (1 << 3) | 2;        // field 1, length-delimited
  constexpr uint32_t kIncarnationTag = (2 << 3) | 0;  // field 2, varint
  // Sized exactly and written in place: one copy of the scores into the payload, where a
  // growing string copied them again at every doubling (measured in
  // docs/performance.md's durability profile).
  const size_t batch_bytes = batch.ByteSizeLong();
  const size_t size = CodedOutputStream::VarintSize32(kBatchTag) +
                      CodedOutputStream::VarintSize64(batch_bytes) + batch_bytes +
                      CodedOutputStream::VarintSize32(kIncarnationTag) +
                      CodedOutputStream::VarintSize64(incarnation);
  std::string payload(size, '\0');
  uint8_t* out = reinterpret_cast<uint8_t*>(payload.data());
  out = CodedOutputStream::WriteVarint32ToArray(kBatchTag, out);
  out = CodedOutputStream::WriteVarint64ToArray(batch_bytes, out);
  out = batch.SerializeWithCachedSizesToArray(out);
  out = CodedOutputStream::WriteVarint32ToArray(kIncarnationTag, out);
  CodedOutputStream::WriteVarint64ToArray(incarnation, out);
  return payload;
}

absl::Status LogCorrupt(uint64_t lsn, absl::string_view what) {
  return absl::DataLossError(absl::StrCat("log record ", lsn, ": ", what));
}

}  // namespace

std::string RecoveryReport::Describe() const {
  constexpr double kMiB = 1024.0 * 1024.0;
  std::string text = absl::StrFormat(
      "recovered %d session(s) from %d snapshot(s) and %d log record(s) (%.1f MiB) in %.2f s; "
      "the log kept holds %d record(s) (%.1f MiB)",
      sessions, snapshots_loaded, records_replayed, static_cast<double>(log_bytes_replayed) / kMiB,
      seconds, records_read, static_cast<double>(log_bytes_read) / kMiB);
  if (snapshots_skipped > 0) {
    absl::StrAppend(&text, "; ", snapshots_skipped,
                    " invalid snapshot(s) passed over for older ones");
  }
  if (!torn_tail.empty()) absl::StrAppend(&text, "; ", torn_tail);
  return text;
}

DurableStore::DurableStore(const DurabilityOptions& options, SessionRegistry* registry)
    : options_(options),
      registry_(registry),
      log_dir_(options.data_dir + "/log"),
      snapshot_dir_(options.data_dir + "/snapshots") {}

absl::StatusOr<std::unique_ptr<DurableStore>> DurableStore::Open(const DurabilityOptions& options,
                                                                 SessionRegistry* registry,
                                                                 RecoveryReport* report) {
  const auto start = std::chrono::steady_clock::now();
  std::unique_ptr<DurableStore> store(new DurableStore(options, registry));
  for (const std::string& dir : {options.data_dir, store->log_dir_, store->snapshot_dir_}) {
    if (absl::Status status = MakeDirectory(dir); !status.ok()) return status;
  }
  // Checked before recovery, so that an unwritable directory fails at once and in plain
  // words, not halfway through with a file's error.
  if (access(options.data_dir.c_str(), W_OK) != 0 || access(store->log_dir_.c_str(), W_OK) != 0 ||
      access(store->snapshot_dir_.c_str(), W_OK) != 0) {
    return absl::FailedPreconditionError(absl::StrCat("data directory ", options.data_dir,
                                                      " is not writable: ", std::strerror(errno)));
  }
  if (absl::Status status = store->Recover(report); !status.ok()) return status;
  report->seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  registry->set_log(store.get());
  store->snapshot_thread_ = std::thread([s = store.get()] { s->SnapshotLoop(); });
  return store;
}

absl::Status DurableStore::Recover(RecoveryReport* report) {
  // 1. Each session's newest valid snapshot (older ones are fallbacks).
  absl::StatusOr<std::vector<std::string>> files = ListDirectory(snapshot_dir_);
  if (!files.ok()) return files.status();
  std::map<std::string, std::vector<uint64_t>> snapshots;  // id -> LSNs, newest first
  for (const std::string& file : *files) {
    std::string id;
    uint64_t lsn = 0;
    if (ParseSnapshotFileName(file, &id, &lsn)) snapshots[id].push_back(lsn);
  }
  uint64_t next_lsn = 1;
  for (auto& snapshot : snapshots) {
    // Named references, not a structured binding: the lambda below captures them, which
    // C++17 does not allow for bindings (clang rejects it).
    const std::string& id = snapshot.first;
    std::vector<uint64_t>& lsns = snapshot.second;
    std::sort(lsns.rbegin(), lsns.rend());
    absl::Status first_error;
    bool loaded = false;
    for (size_t k = 0; k < lsns.size() && !loaded; ++k) {
      const std::string path = absl::StrCat(snapshot_dir_, "/", SnapshotFileName(id, lsns[k]));
      absl::Status status = [&]() -> absl::Status {
        absl::StatusOr<std::unique_ptr<SnapshotReader>> reader = SnapshotReader::Open(path);
        if (!reader.ok()) return reader.status();
        const dv1::SnapshotHeader& header = (*reader)->header();
        if (header.session_id() != id || header.lsn() != lsns[k]) {
          return absl::DataLossError(absl::StrCat("snapshot ", path,
                                                  " at offset 0: its header "
                                                  "names session ",
                                                  header.session_id(), " at LSN ", header.lsn()));
        }
        absl::StatusOr<SessionRegistry::Entry> entry =
            registry_->Recreate(id, header.config(), header.incarnation());
        if (!entry.ok()) {
          return absl::Status(entry.status().code(),
                              absl::StrCat("recovering session ", id, " from ", path, ": ",
                                           entry.status().message()));
        }
        if (absl::Status restored = (*reader)->Restore(*entry->session); !restored.ok()) {
          registry_->Delete(entry->name).IgnoreError();
          return restored;
        }
        absl::MutexLock lock(&sessions_mu_);
        SessionInfo& info = sessions_[id];
        info.config = header.config();
        info.incarnation = header.incarnation();
        // Coverage is unknown after a restart: only the snapshots' own LSNs are safe.
        info.snapshot_lsn = info.covered_lsn = lsns[k];
        info.older_snapshot_lsn = info.older_covered_lsn = k + 1 < lsns.size() ? lsns[k + 1] : 0;
        return absl::OkStatus();
      }();
      if (status.ok()) {
        loaded = true;
        ++report->snapshots_loaded;
        next_lsn = std::max(next_lsn, lsns[k] + 1);
      } else {
        if (first_error.ok()) first_error = status;
        if (status.code() != absl::StatusCode::kDataLoss) return status;  // limits, memory
        ++report->snapshots_skipped;
      }
    }
    // No valid snapshot: the log no longer holds what it replaced (it is truncated only
    // after a round of them), so starting without it would lose acknowledged batches.
    if (!loaded) return first_error;
  }

  // 2. The log, in order, after each session's snapshot.
  ReadSummary summary;
  const auto visit = [this, report](uint64_t lsn, uint8_t type,
                                    absl::string_view payload) -> absl::Status {
    const int size = static_cast<int>(payload.size());
    switch (type) {
      case dv1::LOG_RECORD_TYPE_SESSION_CREATED: {
        dv1::SessionCreated created;
        if (!created.ParseFromArray(payload.data(), size)) return LogCorrupt(lsn, "unparsable");
        absl::StatusOr<std::shared_ptr<Session>> live =
            registry_->Get(SessionName(created.session_id()));
        if (live.ok()) {
          // Its snapshot holds this creation, or a later incarnation's snapshot was
          // loaded and this one was deleted in between (its records are skipped below).
          if ((*live)->incarnation() >= lsn) return absl::OkStatus();
          return LogCorrupt(lsn,
                            absl::StrCat("creates session ", created.session_id(),
                                         " which exists since record ", (*live)->incarnation()));
        }
        absl::StatusOr<SessionRegistry::Entry> entry =
            registry_->Recreate(created.session_id(), created.config(), lsn);
        if (!entry.ok()) {
          return absl::Status(entry.status().code(),
                              absl::StrCat("recovering session ", created.session_id(),
                                           " (log record ", lsn, "): ", entry.status().message()));
        }
        absl::MutexLock lock(&sessions_mu_);
        SessionInfo& info = sessions_[created.session_id()];
        info = SessionInfo();
        info.config = created.config();
        info.incarnation = lsn;
        break;
      }
      case dv1::LOG_RECORD_TYPE_SESSION_DELETED: {
        dv1::SessionDeleted deleted;
        if (!deleted.ParseFromArray(payload.data(), size)) return LogCorrupt(lsn, "unparsable");
        const std::string name = SessionName(deleted.session_id());
        absl::StatusOr<std::shared_ptr<Session>> live = registry_->Get(name);
        if (!live.ok() || (*live)->incarnation() != deleted.incarnation()) {
          return absl::OkStatus();  // an incarnation already gone
        }
        if (absl::Status status = registry_->Delete(name); !status.ok()) return status;
        absl::MutexLock lock(&sessions_mu_);
        sessions_.erase(deleted.session_id());
        break;
      }
      case dv1::LOG_RECORD_TYPE_BATCH_APPLIED: {
        dv1::BatchApplied applied;
        if (!applied.ParseFromArray(payload.data(), size)) return LogCorrupt(lsn, "unparsable");
        absl::StatusOr<std::shared_ptr<Session>> live =
            registry_->Get(applied.batch().session(), "session");
        // A batch that reached a session being deleted, or one in its snapshot.
        if (!live.ok() || (*live)->incarnation() != applied.incarnation() ||
            lsn <= (*live)->last_lsn()) {
          return absl::OkStatus();
        }
        absl::StatusOr<PreparedBatch> prepared =
            DecodeScoreBatch(applied.batch(), (*live)->options(), (*live)->layout());
        if (!prepared.ok()) {
          return LogCorrupt(lsn,
                            absl::StrCat("batch does not decode: ", prepared.status().message()));
        }
        if (absl::Status status = (*live)->ReplayBatch(applied.batch().worker_id(),
                                                       applied.batch().sequence(), *prepared, lsn);
            !status.ok()) {
          return LogCorrupt(lsn, status.message());
        }
        break;
      }
      case dv1::LOG_RECORD_TYPE_STEP_APPLIED: {
        dv1::StepApplied step;
        if (!step.ParseFromArray(payload.data(), size)) return LogCorrupt(lsn, "unparsable");
        absl::StatusOr<std::shared_ptr<Session>> live =
            registry_->Get(SessionName(step.session_id()));
        if (!live.ok() || (*live)->incarnation() != step.incarnation() ||
            lsn <= (*live)->last_lsn()) {
          return absl::OkStatus();
        }
        StepEffect effect;
        effect.taken = step.taken();
        effect.decay = step.decay();
        for (const dv1::FactorRefreshed& refresh : step.refreshes()) {
          absl::StatusOr<Factor> factor = FactorFromProto(refresh.factor(), "refreshes.factor");
          if (!factor.ok()) return LogCorrupt(lsn, factor.status().message());
          effect.refreshes.push_back(FactorRefresh{refresh.block(), *factor});
        }
        if (absl::Status status = (*live)->ReplayStep(effect, lsn); !status.ok()) {
          return LogCorrupt(lsn, status.message());
        }
        break;
      }
      default:
        return LogCorrupt(lsn, absl::StrCat("unknown record type ", static_cast<int>(type)));
    }
    ++report->records_replayed;
    report->log_bytes_replayed += payload.size();
    return absl::OkStatus();
  };
  if (absl::Status status = Journal::Read(log_dir_, 0, visit, &summary); !status.ok()) {
    return status;
  }
  if (absl::Status status = registry_->CheckTotals(); !status.ok()) return status;
  report->records_read = summary.records;
  report->log_bytes_read = summary.bytes;
  if (summary.torn_tail) {
    report->torn_tail = absl::StrCat(
        "dropped a torn record (never acknowledged: ", summary.torn_tail_reason, ") at the end of ",
        summary.torn_tail_file, ", offset ", summary.torn_tail_offset);
  }
  next_lsn = std::max(next_lsn, summary.next_lsn);

  // 3. Append from here on, in a segment of its own.
  JournalOptions journal_options;
  journal_options.dir = log_dir_;
  journal_options.segment_bytes = options_.segment_bytes;
  journal_options.on_sync = options_.on_log_sync;
  absl::StatusOr<std::unique_ptr<Journal>> journal = Journal::Open(journal_options, next_lsn);
  if (!journal.ok()) return journal.status();
  journal_ = std::move(*journal);
  report->sessions = static_cast<int64_t>(registry_->List().size());
  // What earlier lives left (stale snapshots, segments no session needs) goes now: a
  // server restarted more often than it snapshots must not accumulate log.
  absl::MutexLock lock(&round_mu_);
  return DropUnneeded();
}

DurableStore::~DurableStore() {
  {
    absl::MutexLock lock(&stop_mu_);
    stopping_ = true;
  }
  if (snapshot_thread_.joinable()) snapshot_thread_.join();
  registry_->set_log(nullptr);
  journal_.reset();  // writes and syncs what is queued
}

LogBatchFn DurableStore::BatchLogger(const v1::ScoreBatch& batch, const Session& session) {
  auto payload = std::make_shared<std::string>(EncodeBatchApplied(batch, session.incarnation()));
  return [this, payload]() -> absl::StatusOr<uint64_t> {
    return journal_->Append(dv1::LOG_RECORD_TYPE_BATCH_APPLIED, std::move(*payload),
                            AppendKind::kData);
  };
}

LogStepFn DurableStore::StepLogger(const std::string& session_id, const Session& session) {
  const uint64_t incarnation = session.incarnation();
  return [this, session_id, incarnation](const StepEffect& effect) -> absl::StatusOr<uint64_t> {
    dv1::StepApplied step;
    step.set_session_id(session_id);
    step.set_incarnation(incarnation);
    step.set_taken(effect.taken);
    step.set_decay(effect.decay);
    for (const FactorRefresh& refresh : effect.refreshes) {
      dv1::FactorRefreshed* logged = step.add_refreshes();
      logged->set_block(refresh.block);
      logged->set_factor(FactorToProto(refresh.factor));
    }
    return journal_->Append(dv1::LOG_RECORD_TYPE_STEP_APPLIED, step.SerializeAsString(),
                            AppendKind::kControl);
  };
}

void DurableStore::WhenDurable(uint64_t lsn, std::function<void()> done) {
  journal_->WhenDurable(lsn, std::move(done));
}

void DurableStore::WaitDurable(uint64_t lsn) { journal_->WaitDurable(lsn); }

void DurableStore::WaitAllDurable() { journal_->WaitDurable(journal_->last_lsn()); }

absl::StatusOr<uint64_t> DurableStore::LogCreated(const std::string& session_id,
                                                  const v1::SessionConfig& config) {
  dv1::SessionCreated created;
  created.set_session_id(session_id);
  *created.mutable_config() = config;
  // Appended and entered under sessions_mu_ together: DropUnneeded, which computes what
  // the log must keep under the same lock, can then never see the record without the
  // session that needs it. Creations are data records: on a full disk they fail rather
  // than take the reserve that steps and deletions need.
  absl::MutexLock lock(&sessions_mu_);
  absl::StatusOr<uint64_t> lsn = journal_->Append(dv1::LOG_RECORD_TYPE_SESSION_CREATED,
                                                  created.SerializeAsString(), AppendKind::kData);
  if (!lsn.ok()) return lsn.status();
  SessionInfo& info = sessions_[session_id];
  info = SessionInfo();
  info.config = config;
  info.incarnation = *lsn;
  return lsn;
}

absl::StatusOr<uint64_t> DurableStore::LogDeleted(const std::string& session_id,
                                                  uint64_t incarnation) {
  dv1::SessionDeleted deleted;
  deleted.set_session_id(session_id);
  deleted.set_incarnation(incarnation);
  absl::MutexLock lock(&sessions_mu_);
  absl::StatusOr<uint64_t> lsn = journal_->Append(
      dv1::LOG_RECORD_TYPE_SESSION_DELETED, deleted.SerializeAsString(), AppendKind::kControl);
  if (!lsn.ok()) return lsn.status();
  // Its snapshot files go at the next round (DropUnneeded), before the log holding this
  // record can: until then recovery finds the files and then this record.
  sessions_.erase(session_id);
  return lsn;
}

absl::Status DurableStore::SnapshotAll() {
  absl::MutexLock round(&round_mu_);
  // A new segment from here, so that the segments before it can go once every session's
  // fallback snapshot is past them (DropUnneeded).
  journal_->Rotate();
  absl::Status first_error;
  for (const SessionRegistry::Entry& entry : registry_->List()) {
    absl::StatusOr<std::string> parsed = ParseSessionName(entry.name, "name");
    if (!parsed.ok()) continue;  // the registry only holds valid names
    const std::string& id = *parsed;
    SessionInfo info;
    {
      absl::MutexLock lock(&sessions_mu_);
      auto it = sessions_.find(id);
      if (it == sessions_.end()) continue;  // being deleted
      info = it->second;
    }
    if (info.incarnation != entry.session->incarnation()) continue;
    uint64_t written = 0;
    uint64_t covered = 0;
    bool unchanged = false;
    absl::Status status;
    entry.session->SaveState([&](const SessionCounters& counters, ScoreStatistics& statistics) {
      // Read under the session's lock: any later record of this session gets a larger
      // LSN, so the log up to here holds nothing of it beyond counters.lsn.
      covered = journal_->last_lsn();
      if (info.snapshot_lsn != 0 && counters.lsn == info.snapshot_lsn) {
        unchanged = true;  // its newest snapshot is its state
        return;
      }
      // The snapshot must not hold what a crash could take back from the log (a batch
      // whose record is not yet durable would come back without its record).
      journal_->WaitDurable(counters.lsn);
      const std::string path = absl::StrCat(snapshot_dir_, "/", SnapshotFileName(id, counters.lsn));
      status = WriteSnapshot(path, id, info.incarnation, info.config, counters, statistics);
      if (status.ok()) written = counters.lsn;
    });
    // An unchanged session must not pin the log at its last change forever: once its
    // newest snapshot file verifies, the fallback before it is no longer needed, and
    // nothing of the session lies between that snapshot and `covered`.
    if (unchanged && info.older_snapshot_lsn != 0) {
      status = VerifySnapshotFile(
          absl::StrCat(snapshot_dir_, "/", SnapshotFileName(id, info.snapshot_lsn)));
    }
    if (!status.ok()) {
      if (first_error.ok()) first_error = status;
      continue;
    }
    absl::MutexLock lock(&sessions_mu_);
    auto it = sessions_.find(id);
    if (it == sessions_.end() || it->second.incarnation != info.incarnation) continue;
    if (written != 0) {
      it->second.older_snapshot_lsn = it->second.snapshot_lsn;
      it->second.older_covered_lsn = it->second.covered_lsn;
      it->second.snapshot_lsn = written;
      it->second.covered_lsn = covered;
    } else if (unchanged) {
      it->second.older_snapshot_lsn = 0;
      it->second.older_covered_lsn = 0;
      it->second.covered_lsn = covered;
    }
  }
  if (!first_error.ok()) return first_error;  // keep the log: some session needs it
  return DropUnneeded();
}

absl::Status DurableStore::DropUnneeded() {
  // Under sessions_mu_, one consistent view: the files each live session keeps and the
  // log it needs. A session deleted after this point keeps its deletion record (its LSN
  // is above every LSN computed here) until the next round has removed its files.
  uint64_t needed_from = 0;  // every record <= needed_from - 1 may go
  std::vector<std::string> stale;
  {
    absl::MutexLock lock(&sessions_mu_);
    needed_from = journal_->last_lsn() + 1;
    for (const auto& [id, info] : sessions_) {
      // The oldest state recovery might start this session from: its fallback snapshot,
      // else its snapshot, else its creation record; the first record it could need is
      // after what that snapshot covers (the log holds nothing of the session between
      // the snapshot's LSN and its covered LSN).
      const uint64_t start = info.older_snapshot_lsn != 0 ? info.older_covered_lsn + 1
                             : info.snapshot_lsn != 0     ? info.covered_lsn + 1
                                                          : info.incarnation;
      needed_from = std::min(needed_from, start);
    }
    stale = StaleSnapshotsLocked();
  }
  // Files first, and durably: a snapshot of a deleted session must be gone before its
  // deletion record can be dropped, or a crash in between would bring the session back.
  // A file that cannot be removed keeps the whole log.
  for (const std::string& file : stale) {
    const std::string path = absl::StrCat(snapshot_dir_, "/", file);
    if (unlink(path.c_str()) != 0 && errno != ENOENT) {
      return IoErrorStatus("removing the stale snapshot", path, errno);
    }
  }
  if (!stale.empty()) SyncDirectory(snapshot_dir_);
  if (needed_from <= 1) return absl::OkStatus();
  journal_->WaitDurable(needed_from - 1);
  return journal_->DropThrough(needed_from - 1);
}

std::vector<std::string> DurableStore::StaleSnapshotsLocked() {
  std::vector<std::string> stale;
  absl::StatusOr<std::vector<std::string>> files = ListDirectory(snapshot_dir_);
  if (!files.ok()) return stale;
  for (const std::string& file : *files) {
    std::string id;
    uint64_t lsn = 0;
    bool keep = false;
    if (ParseSnapshotFileName(file, &id, &lsn)) {
      auto it = sessions_.find(id);
      keep = it != sessions_.end() && lsn >= it->second.incarnation &&
             (lsn == it->second.snapshot_lsn || lsn == it->second.older_snapshot_lsn);
    }
    // Anything else here is a leftover: a temporary file of an interrupted snapshot, a
    // snapshot superseded twice over, or one of a deleted session.
    if (!keep) stale.push_back(file);
  }
  return stale;
}

void DurableStore::SnapshotLoop() {
  auto last_round = std::chrono::steady_clock::now();
  uint64_t bytes_at_last_round = journal_->stats().bytes_written;
  for (;;) {
    {
      absl::MutexLock lock(&stop_mu_);
      auto stopping = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(stop_mu_) { return stopping_; };
      stop_mu_.AwaitWithTimeout(absl::Condition(&stopping), absl::Milliseconds(100));
      if (stopping_) return;
    }
    const uint64_t bytes = journal_->stats().bytes_written;
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - last_round).count();
    const bool by_time = options_.snapshot_interval > absl::ZeroDuration() &&
                         absl::Seconds(elapsed) >= options_.snapshot_interval &&
                         bytes != bytes_at_last_round;
    const bool by_size = bytes - bytes_at_last_round >= options_.snapshot_log_bytes;
    if (!by_time && !by_size) continue;
    if (absl::Status status = SnapshotAll(); !status.ok()) {
      std::fprintf(stderr, "fisherd: snapshot round failed (the log is kept): %s\n",
                   std::string(status.message()).c_str());
    }
    last_round = std::chrono::steady_clock::now();
    bytes_at_last_round = bytes;
  }
}

absl::Status DurableStore::Drain() {
  absl::Status status = SnapshotAll();
  absl::MutexLock lock(&stop_mu_);
  stopping_ = true;
  return status;
}

}  // namespace fisherd::server
