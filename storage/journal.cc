#include "storage/journal.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <utility>

#include "absl/strings/str_cat.h"
#include "storage/fault_injection.h"
#include "storage/file_util.h"
#include "storage/record_format.h"
#include "storage/segment_files.h"

namespace fisherd {

// One segment file. first_lsn, path and fd are fixed once it is published under mu_;
// after that only the writer thread uses fd (and closes it when the segment is
// retired), except that Append may grow a segment nothing was assigned to yet.
struct Journal::Segment {
  uint64_t first_lsn = 0;
  std::string path;
  int fd = -1;                // -1 for segments found at Open, and once retired
  uint64_t size = 0;          // preallocated bytes (guarded by mu_)
  uint64_t assigned_end = 0;  // bytes given to records by Append (guarded by mu_)
  uint64_t written_end = 0;   // bytes written by the writer (writer thread only)
  bool dir_synced = false;    // its directory entry is durable (writer thread only)

  ~Segment() {
    if (fd >= 0) close(fd);
  }
};

// A record queued for the writer: its place is fixed by Append.
struct Journal::Pending {
  uint64_t lsn = 0;
  uint8_t type = 0;
  std::string payload;
  std::shared_ptr<Segment> segment;
  uint64_t offset = 0;
};

namespace {

constexpr uint64_t kPageBytes = 4096;

uint64_t RoundUpToPage(uint64_t bytes) {
  return (bytes + kPageBytes - 1) / kPageBytes * kPageBytes;
}

bool IsDiskFull(int error_number) { return error_number == ENOSPC || error_number == EDQUOT; }

// A new, preallocated segment file, or the failed operation and its errno.
struct Created {
  int fd = -1;
  const char* failed = nullptr;  // "create" or "preallocate" on failure
  int error_number = 0;
};

Created CreateSegmentFile(const std::string& path, uint64_t bytes) {
  Created result;
  int fd = open(path.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644);
  if (fd < 0) {
    result.failed = "create journal segment";
    result.error_number = errno;
    return result;
  }
  // posix_fallocate returns the error instead of setting errno.
  int error = posix_fallocate(fd, 0, static_cast<off_t>(bytes));
  if (error != 0) {
    close(fd);
    unlink(path.c_str());
    result.failed = "preallocate journal segment";
    result.error_number = error;
    return result;
  }
  result.fd = fd;
  return result;
}

absl::Status DiskFullStatus(const std::string& dir, const std::string& path, uint64_t bytes,
                            int error_number) {
  return absl::ResourceExhaustedError(
      absl::StrCat("data directory full: ", dir, " has no room for a journal segment of ", bytes,
                   " bytes (", path, "): ", ErrnoText(error_number)));
}

}  // namespace

absl::Status JournalOptions::Validate() const {
  if (dir.empty()) return absl::InvalidArgumentError("JournalOptions.dir is empty");
  if (segment_bytes < control_reserve + kPageBytes) {
    return absl::InvalidArgumentError(absl::StrCat("JournalOptions.segment_bytes (", segment_bytes,
                                                   ") must be at least control_reserve (",
                                                   control_reserve, ") + ", kPageBytes));
  }
  return absl::OkStatus();
}

// Opening.

absl::StatusOr<std::unique_ptr<Journal>> Journal::Open(const JournalOptions& options,
                                                       uint64_t next_lsn) {
  absl::Status valid = options.Validate();
  if (!valid.ok()) return valid;
  if (next_lsn == 0) return absl::InvalidArgumentError("next_lsn must be >= 1");
  struct stat info;
  if (stat(options.dir.c_str(), &info) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("journal directory ", options.dir, ": ", ErrnoText(errno)));
  }
  if (!S_ISDIR(info.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat("journal directory ", options.dir, ": not a directory"));
  }
  absl::StatusOr<std::vector<SegmentFile>> listed = ListSegments(options.dir);
  if (!listed.ok()) return listed.status();

  // Segments before next_lsn stay (for DropThrough); the last of them must end before
  // next_lsn. Segments at or after it may only be empty ones from just before a crash.
  std::vector<std::shared_ptr<Segment>> segments;
  std::vector<std::string> empty_leftovers;
  const SegmentFile* last_before = nullptr;
  for (const SegmentFile& file : *listed) {
    if (file.first_lsn < next_lsn) {
      auto segment = std::make_shared<Segment>();
      segment->first_lsn = file.first_lsn;
      segment->path = file.path;
      segments.push_back(std::move(segment));
      last_before = &file;
      continue;
    }
    empty_leftovers.push_back(file.path);
  }
  std::vector<std::string> to_check = empty_leftovers;
  if (last_before != nullptr) to_check.insert(to_check.begin(), last_before->path);
  for (const std::string& path : to_check) {
    absl::StatusOr<std::unique_ptr<RecordFileReader>> reader =
        RecordFileReader::Open(path, TailPolicy::kAllowTornTail);
    if (!reader.ok()) return reader.status();
    Record record;
    for (;;) {
      absl::StatusOr<bool> more = (*reader)->Next(&record);
      if (!more.ok()) return more.status();
      if (!*more) break;
      if (record.sequence >= next_lsn) {
        return absl::FailedPreconditionError(
            absl::StrCat(path, " holds LSN ", record.sequence, ", at or after next_lsn ", next_lsn,
                         ": Journal::Open must be given the next_lsn that Journal::Read returned"));
      }
    }
  }
  for (const std::string& path : empty_leftovers) {
    if (unlink(path.c_str()) != 0) {
      return IoErrorStatus("remove empty journal segment", path, errno);
    }
  }
  if (!empty_leftovers.empty()) SyncDirectory(options.dir);

  auto active = std::make_shared<Segment>();
  active->first_lsn = next_lsn;
  active->path = absl::StrCat(options.dir, "/", SegmentFileName(next_lsn));
  active->size = options.segment_bytes;
  Created created = CreateSegmentFile(active->path, active->size);
  if (created.fd < 0) {
    if (IsDiskFull(created.error_number)) {
      return DiskFullStatus(options.dir, active->path, active->size, created.error_number);
    }
    return IoErrorStatus(created.failed, active->path, created.error_number);
  }
  active->fd = created.fd;
  segments.push_back(active);
  return std::unique_ptr<Journal>(new Journal(options, next_lsn, std::move(segments)));
}

Journal::Journal(const JournalOptions& options, uint64_t next_lsn,
                 std::vector<std::shared_ptr<Segment>> segments)
    : options_(options),
      segments_(std::move(segments)),
      active_(segments_.back()),
      next_lsn_(next_lsn),
      durable_lsn_(next_lsn - 1),
      callbacks_done_lsn_(next_lsn - 1) {
  stats_.segments_created = 1;
  writer_ = std::thread([this] { WriterLoop(); });
}

Journal::~Journal() { Close(); }

void Journal::Close() {
  absl::MutexLock close_lock(&close_mu_);
  {
    absl::MutexLock lock(&mu_);
    closing_ = true;
  }
  if (writer_.joinable()) writer_.join();
}

// Appending.

uint64_t Journal::SegmentSizeFor(uint64_t record_bytes) const {
  return std::max(options_.segment_bytes, RoundUpToPage(record_bytes + options_.control_reserve));
}

bool Journal::Fits(const Segment& segment, uint64_t record_bytes, AppendKind kind) const {
  uint64_t limit = segment.size;
  if (kind == AppendKind::kData) {
    limit -= std::min(limit, options_.control_reserve);
  }
  return segment.assigned_end + record_bytes <= limit;
}

absl::Status Journal::MakeRoom(uint64_t record_bytes) {
  const uint64_t bytes = SegmentSizeFor(record_bytes);
  if (active_->assigned_end == 0) {
    // Nothing was given to the active segment: grow it rather than leave an empty
    // segment behind (whose successor would need the same first LSN, the same name).
    int error = posix_fallocate(active_->fd, 0, static_cast<off_t>(bytes));
    if (error != 0) {
      if (IsDiskFull(error)) return DiskFullStatus(options_.dir, active_->path, bytes, error);
      FatalIoError("preallocate journal segment", active_->path, error);
    }
    active_->size = bytes;
    return absl::OkStatus();
  }
  auto segment = std::make_shared<Segment>();
  segment->first_lsn = next_lsn_;
  segment->path = absl::StrCat(options_.dir, "/", SegmentFileName(next_lsn_));
  segment->size = bytes;
  Created created = CreateSegmentFile(segment->path, bytes);
  if (created.fd < 0) {
    if (IsDiskFull(created.error_number)) {
      return DiskFullStatus(options_.dir, segment->path, bytes, created.error_number);
    }
    FatalIoError(created.failed, segment->path, created.error_number);
  }
  segment->fd = created.fd;
  segments_.push_back(segment);
  active_ = std::move(segment);
  ++stats_.segments_created;
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> Journal::Append(uint8_t type, std::string payload, AppendKind kind) {
  absl::Status valid = ValidateRecord(type, payload.size());
  if (!valid.ok()) return valid;
  const uint64_t record_bytes = EncodedRecordSize(payload.size());

  absl::MutexLock lock(&mu_);
  if (closing_) {
    return absl::FailedPreconditionError(absl::StrCat("journal ", options_.dir, " is closed"));
  }
  // An active segment with nothing in it is already the fresh segment Rotate asks for.
  if (rotate_pending_ && active_->assigned_end == 0) rotate_pending_ = false;
  if (rotate_pending_ || !Fits(*active_, record_bytes, kind)) {
    absl::Status room = MakeRoom(record_bytes);
    if (room.ok()) {
      rotate_pending_ = false;
    } else if (!(kind == AppendKind::kControl && Fits(*active_, record_bytes, kind))) {
      return room;
    }
    // else: a full disk kept a rotation from happening, and a control record still
    // fits in the current segment's reserve.
  }
  Pending pending;
  pending.lsn = next_lsn_++;
  pending.type = type;
  pending.payload = std::move(payload);
  pending.segment = active_;
  pending.offset = active_->assigned_end;
  active_->assigned_end += record_bytes;
  queue_.push_back(std::move(pending));
  return queue_.back().lsn;
}

uint64_t Journal::last_lsn() const {
  absl::MutexLock lock(&mu_);
  return next_lsn_ - 1;
}

uint64_t Journal::Rotate() {
  absl::MutexLock lock(&mu_);
  rotate_pending_ = true;
  return next_lsn_ - 1;
}

// Durability.

void Journal::WhenDurable(uint64_t lsn, std::function<void()> done) {
  {
    absl::MutexLock lock(&mu_);
    if (lsn > callbacks_done_lsn_) {
      callbacks_.emplace(lsn, std::move(done));
      return;
    }
  }
  done();
}

void Journal::WaitDurable(uint64_t lsn) {
  absl::MutexLock lock(&mu_);
  auto durable = [this, lsn]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return durable_lsn_.load(std::memory_order_relaxed) >= lsn;
  };
  mu_.Await(absl::Condition(&durable));
}

// The writer thread.

void Journal::WriterLoop() {
  std::vector<Pending> group;
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      auto has_work = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return !queue_.empty() || closing_;
      };
      mu_.Await(absl::Condition(&has_work));
      if (queue_.empty()) return;  // closing, and everything is written
      // Everything queued while the previous group was being synced goes out together.
      group.swap(queue_);
    }
    WriteAndSync(group);
    Publish(group.back().lsn, group);
    group.clear();
  }
}

void Journal::WriteAndSync(std::vector<Pending>& group) {
  // Headers (and so checksums) are computed here, off the appending threads.
  std::vector<char> headers(group.size() * kRecordHeaderSize);
  std::vector<struct iovec> iov;
  iov.reserve(group.size() * 2);
  size_t begin = 0;
  while (begin < group.size()) {
    // Records of one segment in a group are adjacent in the file: one pwritev.
    Segment* segment = group[begin].segment.get();
    size_t end = begin;
    iov.clear();
    uint64_t bytes = 0;
    for (; end < group.size() && group[end].segment.get() == segment; ++end) {
      char* header = &headers[end * kRecordHeaderSize];
      EncodeRecordHeader(group[end].type, group[end].lsn, group[end].payload, header);
      iov.push_back({header, kRecordHeaderSize});
      if (!group[end].payload.empty()) {
        iov.push_back({group[end].payload.data(), group[end].payload.size()});
      }
      bytes += EncodedRecordSize(group[end].payload.size());
    }
    MaybeCrashAt(kFaultJournalBeforeWrite);
    int error = PwritevFully(segment->fd, iov.data(), iov.size(), group[begin].offset);
    if (error != 0) FatalIoError("write", segment->path, error);
    MaybeCrashAt(kFaultJournalAfterWrite);
    segment->written_end = group[begin].offset + bytes;
    // Synced before the next segment's region is even written: whatever a crash or a
    // power loss keeps of a later segment, every earlier segment is complete, so the
    // LSNs on disk never have a hole between segments.
    const auto sync_start = std::chrono::steady_clock::now();
    if (fdatasync(segment->fd) != 0) FatalIoError("fdatasync", segment->path, errno);
    if (options_.on_sync) {
      options_.on_sync(
          std::chrono::duration<double>(std::chrono::steady_clock::now() - sync_start).count());
    }
    if (!segment->dir_synced) {
      // A new segment's directory entry must be durable before its records count.
      SyncDirectory(options_.dir);
      segment->dir_synced = true;
    }
    begin = end;
  }
  MaybeCrashAt(kFaultJournalAfterSync);
}

void Journal::Publish(uint64_t lsn, const std::vector<Pending>& group) {
  std::vector<std::shared_ptr<Segment>> retired;
  std::vector<std::function<void()>> due;
  {
    absl::MutexLock lock(&mu_);
    durable_lsn_.store(lsn, std::memory_order_release);
    ++stats_.commits;
    stats_.records += group.size();
    for (const Pending& pending : group) {
      stats_.bytes_written += EncodedRecordSize(pending.payload.size());
    }
    const Segment* previous = nullptr;
    for (const Pending& pending : group) {
      if (pending.segment.get() != previous) ++stats_.syncs;
      previous = pending.segment.get();
    }
    // Segments no longer appended to whose records are all written: close their files.
    for (const std::shared_ptr<Segment>& segment : segments_) {
      if (segment->fd >= 0 && segment != active_ && segment->written_end == segment->assigned_end) {
        retired.push_back(segment);
      }
    }
  }
  for (const std::shared_ptr<Segment>& segment : retired) {
    int fd = segment->fd;
    segment->fd = -1;
    if (close(fd) != 0) FatalIoError("close", segment->path, errno);
  }
  // Callbacks in LSN order, outside the lock; those registered meanwhile for LSNs that
  // are now durable are picked up by the next round.
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      auto end = callbacks_.upper_bound(lsn);
      if (end == callbacks_.begin()) {
        callbacks_done_lsn_ = lsn;
        return;
      }
      due.clear();
      for (auto it = callbacks_.begin(); it != end; ++it) due.push_back(std::move(it->second));
      callbacks_.erase(callbacks_.begin(), end);
    }
    for (std::function<void()>& done : due) done();
  }
}

// Truncation.

absl::Status Journal::DropThrough(uint64_t lsn) {
  MaybeCrashAt(kFaultJournalBeforeTruncate);
  absl::MutexLock drop_lock(&drop_mu_);
  std::vector<std::shared_ptr<Segment>> doomed;
  {
    absl::MutexLock lock(&mu_);
    const uint64_t durable = durable_lsn_.load(std::memory_order_relaxed);
    if (lsn > durable) {
      return absl::FailedPreconditionError(
          absl::StrCat("journal ", options_.dir, ": cannot drop through LSN ", lsn,
                       ", only LSNs <= ", durable, " are durable"));
    }
    // Segment i holds LSNs below segment i + 1's first LSN.
    for (size_t i = 0; i + 1 < segments_.size(); ++i) {
      if (segments_[i] == active_ || segments_[i + 1]->first_lsn > lsn + 1) break;
      doomed.push_back(segments_[i]);
    }
  }
  size_t deleted = 0;
  absl::Status status;
  for (const std::shared_ptr<Segment>& segment : doomed) {
    if (unlink(segment->path.c_str()) != 0 && errno != ENOENT) {
      status = IoErrorStatus("delete journal segment", segment->path, errno);
      break;
    }
    ++deleted;
  }
  if (deleted > 0) {
    SyncDirectory(options_.dir);
    absl::MutexLock lock(&mu_);
    segments_.erase(segments_.begin(), segments_.begin() + deleted);
    stats_.segments_deleted += deleted;
  }
  return status;
}

JournalStats Journal::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

}  // namespace fisherd
