// Journal: a write-ahead log of opaque records with group commit (docs/design.md
// sections 5 and 8: one writer thread commits the records of many streams together, one
// write and one fdatasync per group; handler threads never do that I/O).
//
// Records are numbered by LSN (log sequence number), contiguous from 1. A caller holds
// its own lock around Append and the change it logs, so that log order is apply order;
// Append only queues (no I/O, except creating a segment), and the acknowledgement waits
// for durability through WhenDurable or WaitDurable.
//
// On disk, <dir>/<first LSN as 20 digits>.wal segment files (storage/segment_files.h),
// each a sequence of records in storage/record_format.h's frame with the LSN as the
// sequence. Each segment is preallocated (posix_fallocate) to
// JournalOptions::segment_bytes, so that:
//   - an append inside a segment cannot hit ENOSPC: a full disk is only ever noticed
//     when a segment is created, in Append, before anything is queued;
//   - fdatasync does not have to persist a growing file size on every commit;
//   - the unused end reads as zeros, the clean end of data.
// A record larger than a segment gets a segment of its own size.
//
// Recovery: Read(dir, from_lsn) replays records >= from_lsn and returns the next LSN;
// Open(options, that LSN) then starts a NEW segment there. A recovered segment is never
// appended to, so a torn record at its end (a crash mid-write) stays behind, harmless:
// its LSN is reused by the new segment, which is exactly how Read tells it from damage
// (a torn tail is accepted in the last segment, or in an earlier one only when the next
// segment starts at the torn record's LSN).
//
// Snapshots bound the log: Rotate() makes the next append open a new segment and returns
// the last LSN before it; once a snapshot covering that LSN is durable, DropThrough
// deletes the segments holding nothing newer.
//
// Failure policy (storage/file_util.h): a failed write or fdatasync of the log aborts the
// process; an fsync is never retried.
#ifndef FISHERD_STORAGE_JOURNAL_H_
#define FISHERD_STORAGE_JOURNAL_H_

#include <atomic>
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
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace fisherd {

struct JournalOptions {
  // Directory of the segment files. It must exist; files in it that are not named like
  // segments are ignored.
  std::string dir;
  // Preallocated size of a segment. REQUIRES: >= control_reserve + 4096.
  uint64_t segment_bytes = uint64_t{64} << 20;
  // The last bytes of each segment that only AppendKind::kControl records may use, so
  // that small records that free space (deletes) or that must not fail (steps) still
  // fit when the disk is too full for a new segment.
  uint64_t control_reserve = uint64_t{1} << 20;
  // Called with the wall time of every fdatasync of a segment, on the writer thread,
  // for metrics (fisherd_log_sync_duration_seconds). Must be quick and must not block.
  std::function<void(double seconds)> on_sync;

  absl::Status Validate() const;
};

enum class AppendKind {
  kData,     // batches: may not use the control reserve
  kControl,  // small records that must not fail (steps, deletes): may use the whole segment
};

// What Read found.
struct ReadSummary {
  // The LSN the next record gets: the last valid LSN + 1; with no records, the first
  // segment's first LSN or from_lsn (whichever is larger). Pass it to Open.
  uint64_t next_lsn = 0;
  // Where the kept log starts: the first segment's first LSN (from_lsn, or 1, when there
  // is no segment). A snapshot at LSN S can be recovered from if first_lsn <= S + 1.
  uint64_t first_lsn = 0;
  uint64_t records = 0;   // records visited (LSN >= from_lsn)
  uint64_t bytes = 0;     // their encoded bytes (headers and payloads)
  uint64_t segments = 0;  // segment files in the directory
  // A torn record at the end of the last segment (a crash mid-write), dropped: valid
  // data of torn_tail_file ends at torn_tail_offset.
  bool torn_tail = false;
  std::string torn_tail_file;
  uint64_t torn_tail_offset = 0;
  std::string torn_tail_reason;
  // Torn records at the end of earlier segments that a restart already superseded (the
  // next segment reuses their LSN); reported when they were the last.
  uint64_t superseded_torn_tails = 0;
  // Segments after the end of the log holding no record: created by Append just before
  // a crash that came before the records ahead of theirs were written. Open removes
  // them.
  uint64_t empty_segments_after_end = 0;
};

// Counters for a metrics line; records / commits is the group-commit factor.
struct JournalStats {
  uint64_t records = 0;        // written and synced
  uint64_t bytes_written = 0;  // record bytes written
  uint64_t commits = 0;        // groups: one round of writes and syncs
  uint64_t syncs = 0;          // fdatasync calls (one per segment a group touched)
  uint64_t segments_created = 0;
  uint64_t segments_deleted = 0;
};

class Journal {
 public:
  using Visitor =
      std::function<absl::Status(uint64_t lsn, uint8_t type, absl::string_view payload)>;

  // Calls visit for every record with LSN >= from_lsn, in LSN order (payload valid
  // during the call; a non-OK status from visit stops the read and is returned).
  // from_lsn 0 means every record kept, from the first segment's first LSN; a larger
  // from_lsn below that first LSN is DATA_LOSS (the records asked for were dropped).
  // Checks that LSNs are contiguous within and across segments. A torn last record of
  // the log is dropped and reported in *summary; any other damage is DATA_LOSS naming
  // the file and the byte offset. Segments after the end of the log that hold no
  // record are left for Open to remove (summary->empty_segments_after_end). Segments
  // that end before from_lsn are not read. FAILED_PRECONDITION when dir cannot be
  // listed.
  static absl::Status Read(const std::string& dir, uint64_t from_lsn, const Visitor& visit,
                           ReadSummary* summary);

  // Opens for appending after recovery: the first record appended gets next_lsn, in a
  // new segment. REQUIRES: next_lsn is ReadSummary::next_lsn of a Read of this dir.
  // Checked in the direction that would repeat LSNs: FAILED_PRECONDITION when the last
  // segment before next_lsn, or any segment at or after it, holds a record at or after
  // it. (A next_lsn beyond the log's end is accepted: Read returns one when from_lsn is
  // past the end.) Empty segments at or after next_lsn (created just before a crash)
  // are removed.
  // FAILED_PRECONDITION when dir is missing, not a directory or read-only (naming the
  // path and the errno text); RESOURCE_EXHAUSTED when the first segment does not fit.
  static absl::StatusOr<std::unique_ptr<Journal>> Open(const JournalOptions& options,
                                                       uint64_t next_lsn);

  // Close().
  ~Journal();

  Journal(const Journal&) = delete;
  Journal& operator=(const Journal&) = delete;

  // Assigns the next LSN and queues the record for the writer thread; returns the LSN
  // at once, before the record is durable. When a new segment is needed and the disk
  // is full: RESOURCE_EXHAUSTED "data directory full: ..." naming the directory and the
  // bytes needed, and nothing was queued or numbered (the caller changes nothing).
  // Other failures to create a segment are fatal. INVALID_ARGUMENT for type 0 or a
  // payload over kMaxRecordPayload; FAILED_PRECONDITION after Close.
  absl::StatusOr<uint64_t> Append(uint8_t type, std::string payload, AppendKind kind);

  // Runs done once record `lsn` is durable: on the writer thread, outside the journal's
  // lock, after the callbacks registered earlier for smaller LSNs; or at once on this
  // thread when the writer has already finished that LSN's callbacks (and for lsn 0,
  // "nothing to wait for"). A callback must not call Close or WaitDurable, nor block on
  // a lock held by a thread that does. REQUIRES: lsn <= last_lsn() (a callback for an
  // LSN never appended is dropped at Close without running).
  void WhenDurable(uint64_t lsn, std::function<void()> done);

  // Blocks until record `lsn` is durable. REQUIRES: lsn <= last_lsn().
  void WaitDurable(uint64_t lsn);

  // Every record <= durable_lsn() is on disk (written and fdatasync'd).
  uint64_t durable_lsn() const { return durable_lsn_.load(std::memory_order_acquire); }
  // The last LSN assigned (next_lsn - 1 right after Open).
  uint64_t last_lsn() const;

  // The next Append goes to a new segment. Returns the last LSN assigned before: every
  // record <= it is in the current or older segments. (Under a full disk, a kControl
  // record may still land in the current segment; DropThrough then keeps it.)
  uint64_t Rotate();

  // Deletes the segments all of whose records are <= lsn, never the segment being
  // appended to, then syncs the directory. Fault point "journal-before-truncate" first.
  // REQUIRES: lsn <= durable_lsn() (FAILED_PRECONDITION otherwise) and the state up to
  // lsn is durable elsewhere (a snapshot). Calls are serialized.
  absl::Status DropThrough(uint64_t lsn);

  // Stops accepting appends, writes and syncs what is queued, runs the durable
  // callbacks, joins the writer thread. Idempotent. Not from a durable callback.
  void Close();

  JournalStats stats() const;
  const std::string& dir() const { return options_.dir; }

 private:
  struct Segment;
  struct Pending;

  Journal(const JournalOptions& options, uint64_t next_lsn,
          std::vector<std::shared_ptr<Segment>> segments);

  // The preallocated size of a new segment for a record of `record_bytes`.
  uint64_t SegmentSizeFor(uint64_t record_bytes) const;
  bool Fits(const Segment& segment, uint64_t record_bytes, AppendKind kind) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Makes the active segment able to take the record (a new segment, or the empty
  // active one grown). RESOURCE_EXHAUSTED on a full disk; other errors are fatal.
  absl::Status MakeRoom(uint64_t record_bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  void WriterLoop();
  // Writes the group and syncs every segment it touched (no lock held).
  void WriteAndSync(std::vector<Pending>& group);
  // Publishes durability through `lsn` and runs the callbacks that became due.
  void Publish(uint64_t lsn, const std::vector<Pending>& group);

  const JournalOptions options_;

  mutable absl::Mutex mu_;
  std::vector<std::shared_ptr<Segment>> segments_ ABSL_GUARDED_BY(mu_);  // LSN order
  std::shared_ptr<Segment> active_ ABSL_GUARDED_BY(mu_);
  bool rotate_pending_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t next_lsn_ ABSL_GUARDED_BY(mu_);
  std::vector<Pending> queue_ ABSL_GUARDED_BY(mu_);
  std::multimap<uint64_t, std::function<void()>> callbacks_ ABSL_GUARDED_BY(mu_);
  // Written under mu_; read without it by durable_lsn().
  std::atomic<uint64_t> durable_lsn_;
  // The writer has run every callback registered for LSNs <= this.
  uint64_t callbacks_done_lsn_ ABSL_GUARDED_BY(mu_);
  bool closing_ ABSL_GUARDED_BY(mu_) = false;
  JournalStats stats_ ABSL_GUARDED_BY(mu_);

  absl::Mutex close_mu_;  // serializes Close
  absl::Mutex drop_mu_;   // serializes DropThrough
  std::thread writer_;
};

}  // namespace fisherd

#endif  // FISHERD_STORAGE_JOURNAL_H_
