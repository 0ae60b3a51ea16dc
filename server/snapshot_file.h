// Snapshot files of durable sessions (docs/design.md section 8): one session's complete
// state at one LSN, written atomically (temporary file, fsync, rename, directory fsync)
// as framed records with a checksum each (storage/record_format.h):
//   SnapshotHeader (session id, incarnation, LSN, config, step count, worker sequences),
//   StateChunk ... (the statistics' VisitState, arrays split into chunks of 1 MiB),
//   SnapshotEnd (the chunk count, so a truncated file is never taken for a whole one).
#ifndef FISHERD_SERVER_SNAPSHOT_FILE_H_
#define FISHERD_SERVER_SNAPSHOT_FILE_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/session.h"
#include "fisherd/durable/v1/records.pb.h"
#include "fisherd/v1/fisher.pb.h"

namespace fisherd::server {

// "<session_id>.<lsn, 20 digits>.snap": names sort by LSN within a session.
std::string SnapshotFileName(const std::string& session_id, uint64_t lsn);
// Parses a SnapshotFileName; false for any other name (temporary files included).
bool ParseSnapshotFileName(const std::string& file_name, std::string* session_id, uint64_t* lsn);

// Writes `statistics` and `counters` (taken together under the session's lock, see
// Session::SaveState) to `path` atomically. Errors: RESOURCE_EXHAUSTED or
// FAILED_PRECONDITION when the file cannot be written (a full or read-only disk; the
// previous snapshot is untouched); a failed fsync stops the process.
absl::Status WriteSnapshot(const std::string& path, const std::string& session_id,
                           uint64_t incarnation, const v1::SessionConfig& config,
                           const SessionCounters& counters, ScoreStatistics& statistics);

// Reads every record of the snapshot at `path` and checks the frame's checksums, the
// header and the end record's chunk count, without restoring anything: OK when a
// restart could load it. DATA_LOSS naming the file and offset otherwise.
absl::Status VerifySnapshotFile(const std::string& path);

// Reads a snapshot: Open checks and returns the header; Restore then fills a fresh
// session of the header's config. Every error is DATA_LOSS naming the file, the byte
// offset and what was wrong (checksum, a value of the wrong name or size, a missing end).
class SnapshotReader {
 public:
  static absl::StatusOr<std::unique_ptr<SnapshotReader>> Open(const std::string& path);
  ~SnapshotReader();

  const durable::v1::SnapshotHeader& header() const { return header_; }
  SessionCounters counters() const;
  // REQUIRES: a fresh session created from header().config().
  absl::Status Restore(Session& session);

 private:
  struct Impl;
  explicit SnapshotReader(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
  durable::v1::SnapshotHeader header_;
};

}  // namespace fisherd::server

#endif  // FISHERD_SERVER_SNAPSHOT_FILE_H_
