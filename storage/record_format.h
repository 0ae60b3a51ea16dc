// The frame of every record in write-ahead log segments and snapshot files, in the
// LevelDB/etcd style: a fixed header with a checksum, then opaque payload bytes. This
// layer knows nothing of sessions; the payload's meaning belongs to the caller.
//
// Layout (all integers little-endian), kRecordHeaderSize = 21 bytes of header:
//
//   offset  size  field
//        0     8  checksum  XXH3_64bits over bytes [8, 21 + length): length, type,
//                           sequence and payload. The checksum covers the length so a
//                           flipped length bit is caught rather than trusted.
//        8     4  length    payload bytes, at most kMaxRecordPayload
//       12     1  type      caller-defined, 1..255; 0 is never a valid type (below)
//       13     8  sequence  the log's LSN, or a chunk index in a snapshot
//       21     n  payload
//
// Why type 0 is invalid: log segments are preallocated, and preallocated space reads as
// zeros. A header of 21 zero bytes therefore marks the end of data, and a valid record
// can never look like it.
//
// Reading a file stops at the first record that does not verify. What follows it decides
// what that record was (RecordFileReader::Next):
//   - a clean end: from that offset to the end of the file every byte is zero (this
//     includes a file ending exactly at a record boundary);
//   - a torn tail: the record is the last thing written and was cut short by a crash:
//     its declared extent runs past the end of the file, or only zeros follow its
//     declared end; and no intact record starts anywhere after it (without this check a
//     single flipped length bit in an early record would silently hide every record
//     after it). Only where the caller says a torn tail is possible (the last segment
//     of a log) is this accepted. The search for an intact record relies on the
//     sequences of a file's records increasing (LSNs and chunk indices do): it only
//     computes the checksum of candidates whose sequence follows the last good record,
//     so that it stays a linear scan;
//   - corruption: anything else, reported as absl::DataLossError naming the file, the
//     byte offset and what was wrong.
// The rule is deliberately strict: a write that persisted later pages of a group but
// not an earlier one (power loss, not a process crash) is reported as corruption rather
// than guessed around.
#ifndef FISHERD_STORAGE_RECORD_FORMAT_H_
#define FISHERD_STORAGE_RECORD_FORMAT_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace fisherd {

inline constexpr size_t kRecordHeaderSize = 21;
// A bound on the payload so that a corrupt length cannot make a reader allocate wildly.
inline constexpr uint32_t kMaxRecordPayload = uint32_t{1} << 30;  // 1 GiB

// Header bytes plus payload bytes of a record with `payload_size` bytes of payload.
inline constexpr uint64_t EncodedRecordSize(uint64_t payload_size) {
  return kRecordHeaderSize + payload_size;
}

// The checksum of a record: XXH3_64bits over header bytes [8, 21) then the payload.
uint64_t RecordChecksum(const char* header, absl::string_view payload);

// Writes the 21-byte header of a record into `header` (the payload is written by the
// caller right after it, so a large payload need not be copied: see the journal's
// writev). REQUIRES: type != 0, payload.size() <= kMaxRecordPayload.
void EncodeRecordHeader(uint8_t type, uint64_t sequence, absl::string_view payload, char* header);

// Appends header and payload to `out`. REQUIRES: as EncodeRecordHeader.
void AppendRecord(uint8_t type, uint64_t sequence, absl::string_view payload, std::string* out);

// InvalidArgument when a record of this type and payload size cannot be encoded.
absl::Status ValidateRecord(uint8_t type, uint64_t payload_size);

// One record as read from a file.
struct Record {
  uint8_t type = 0;
  uint64_t sequence = 0;
  // Points into the reader's buffer: valid until the next call to Next.
  absl::string_view payload;
  // File offset of the record's header.
  uint64_t offset = 0;
};

// Whether a torn last record is an expected outcome of a crash in this file.
enum class TailPolicy {
  kCleanEndOnly,   // snapshot files (renamed into place after fsync), old segments
  kAllowTornTail,  // the last segment of a log
};

// Streams the records of one file with pread into a reusable buffer (1 MiB, grown to
// the largest record), so that snapshot files of hundreds of MiB are not read whole.
// The file must not change while it is read. Not thread-safe.
class RecordFileReader {
 public:
  // NOT_FOUND when the file does not exist; other failures to open name the errno.
  static absl::StatusOr<std::unique_ptr<RecordFileReader>> Open(const std::string& path,
                                                                TailPolicy policy);
  ~RecordFileReader();

  RecordFileReader(const RecordFileReader&) = delete;
  RecordFileReader& operator=(const RecordFileReader&) = delete;

  // true: *record holds the next record. false: the end of data, clean or (when the
  // policy allows) a torn tail, see torn_tail(). DataLossError on corruption, naming
  // the path, the offset and what was wrong; a torn tail under kCleanEndOnly is
  // corruption too. After false or an error every later call returns the same.
  absl::StatusOr<bool> Next(Record* record);

  // After Next returned false: whether a torn record was dropped, and why it did not
  // verify (e.g. "checksum mismatch").
  bool torn_tail() const { return torn_tail_; }
  const std::string& torn_reason() const { return torn_reason_; }
  // Where valid data ends: the offset after the last good record, which is also the
  // offset of the dropped torn record. Meaningful once Next returned false.
  uint64_t valid_end() const { return valid_end_; }

  const std::string& path() const { return path_; }
  uint64_t file_size() const { return file_size_; }

 private:
  RecordFileReader(std::string path, int fd, uint64_t file_size, TailPolicy policy);

  // Makes bytes [offset, offset + n) of the file available at buffer_ + (offset -
  // buffer_offset_). REQUIRES: offset + n <= file_size_.
  absl::Status Fill(uint64_t offset, uint64_t n);
  // Decides what the bad record at `offset` was (see the file comment). Returns OK for
  // a clean end or an allowed torn tail (setting the members), else DataLoss.
  absl::Status ClassifyBadRecord(uint64_t offset, uint64_t declared_end, const std::string& reason);
  absl::Status Corruption(uint64_t offset, absl::string_view what) const;

  const std::string path_;
  const int fd_;
  const uint64_t file_size_;
  const TailPolicy policy_;

  std::unique_ptr<char[]> buffer_;
  uint64_t buffer_capacity_ = 0;
  uint64_t buffer_offset_ = 0;  // file offset of buffer_[0]
  uint64_t buffer_length_ = 0;  // valid bytes in buffer_

  uint64_t position_ = 0;  // offset of the next record
  bool have_previous_ = false;
  uint64_t previous_sequence_ = 0;  // of the last good record
  bool done_ = false;
  absl::Status error_;  // sticky
  bool torn_tail_ = false;
  std::string torn_reason_;
  uint64_t valid_end_ = 0;
};

}  // namespace fisherd

#endif  // FISHERD_STORAGE_RECORD_FORMAT_H_
