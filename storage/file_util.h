// File helpers of the storage layer, and the writer of snapshot files.
//
// The failure policy, in one place: a failed write or fsync of data that is already
// promised (the log) stops the process, and an fsync is NEVER retried. After a failed
// fsync Linux may have dropped the dirty pages and cleared the error, so a retry that
// "succeeds" proves nothing (the PostgreSQL "fsyncgate" of 2018); the only safe recovery
// is a restart that replays the log. Running out of space while writing something that
// can be abandoned (a snapshot temp file) is not fatal: the caller gets a status and
// the previous snapshot stays as it was.
#ifndef FISHERD_STORAGE_FILE_UTIL_H_
#define FISHERD_STORAGE_FILE_UTIL_H_

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace fisherd {

// Prints "fisherd: fatal: <what> <path>: <strerror>" and why the process stops to
// stderr, then std::abort(). For failed writes and syncs of promised data.
[[noreturn]] void FatalIoError(absl::string_view what, absl::string_view path, int error_number);

// strerror, thread-safe.
std::string ErrnoText(int error_number);

// A status for a failed operation on a file: "<what> <path>: <strerror>", with
// ENOSPC/EDQUOT -> RESOURCE_EXHAUSTED; EROFS/EACCES/EPERM/ENOENT/ENOTDIR ->
// FAILED_PRECONDITION (the directory is not usable as configured); others -> INTERNAL.
absl::Status IoErrorStatus(absl::string_view what, absl::string_view path, int error_number);

// The directory part of a path ("." when there is none).
std::string DirectoryOf(const std::string& path);

// The names in a directory (without "." and ".."), sorted. FAILED_PRECONDITION naming
// the directory and the errno text when it cannot be listed.
absl::StatusOr<std::vector<std::string>> ListDirectory(const std::string& dir);

// fsyncs a directory so that entries created, renamed or removed in it survive a power
// loss. Fatal (FatalIoError) when the directory cannot be opened or synced: it is only
// called on a directory just written into.
void SyncDirectory(const std::string& path);

// Reads exactly n bytes at offset, retrying short reads and EINTR. INTERNAL naming the
// path on an error, DATA_LOSS when the file ends first.
absl::Status PreadFully(int fd, const std::string& path, uint64_t offset, size_t n, char* out);

// Writes all iovecs at offset with pwritev, retrying short writes and EINTR, in groups
// of at most IOV_MAX. Returns 0 or the errno of the failure. Modifies `iov`.
int PwritevFully(int fd, struct iovec* iov, size_t count, uint64_t offset);

// Writes a snapshot-style file atomically: records go to "<final_path>.tmp", and Commit
// makes them durable and renames the file into place, so a reader sees either the old
// file or the complete new one. Not thread-safe.
//
// Errors while writing the temp file (ENOSPC, EDQUOT, EROFS, EACCES, ...) come back as a
// status naming the path (IoErrorStatus codes), the temp file is removed, and every
// later call returns the same status. An fsync failure is fatal (see above).
class RecordFileWriter {
 public:
  // Creates (truncating) the temp file next to final_path.
  static absl::StatusOr<std::unique_ptr<RecordFileWriter>> Create(const std::string& final_path);
  // Removes the temp file unless Commit succeeded.
  ~RecordFileWriter();

  RecordFileWriter(const RecordFileWriter&) = delete;
  RecordFileWriter& operator=(const RecordFileWriter&) = delete;

  // Buffers one record (written out in chunks of kFlushBytes; a payload larger than
  // that is written straight from the caller's memory). INVALID_ARGUMENT for type 0 or
  // a payload over kMaxRecordPayload.
  absl::Status Append(uint8_t type, uint64_t sequence, absl::string_view payload);

  // Flush, fsync the file, rename it to final_path, fsync the directory. Fault points
  // "snapshot-before-rename" and "snapshot-before-dir-sync" (storage/fault_injection.h).
  // After Commit the writer accepts nothing more.
  absl::Status Commit();

  const std::string& final_path() const { return final_path_; }
  const std::string& temp_path() const { return temp_path_; }
  // Bytes appended so far (headers and payloads).
  uint64_t bytes() const { return bytes_; }

  static constexpr size_t kFlushBytes = size_t{4} << 20;

 private:
  RecordFileWriter(std::string final_path, std::string temp_path, int fd);

  absl::Status Flush();
  // Writes n bytes at the end of the file; on failure records the error and removes
  // the temp file.
  absl::Status Write(const char* data, size_t n);
  absl::Status Fail(absl::Status status);

  const std::string final_path_;
  const std::string temp_path_;
  int fd_;
  std::string buffer_;
  uint64_t bytes_ = 0;
  bool committed_ = false;
  absl::Status error_;  // sticky
};

}  // namespace fisherd

#endif  // FISHERD_STORAGE_FILE_UTIL_H_
