#include "storage/record_format.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <optional>
#include <utility>

#define XXH_STATIC_LINKING_ONLY  // XXH3_state_t on the stack
#include <xxhash.h>

#include "absl/strings/str_cat.h"
#include "storage/file_util.h"

namespace fisherd {
namespace {

constexpr size_t kChecksumBytes = 8;
constexpr size_t kLengthOffset = 8;
constexpr size_t kTypeOffset = 12;
constexpr size_t kSequenceOffset = 13;
// Payloads up to this size are hashed from one contiguous copy of the header tail and
// payload, which is faster than the streaming API for small records.
constexpr size_t kSmallPayload = 256;
constexpr uint64_t kReadChunk = uint64_t{1} << 20;

void PutFixed32(char* out, uint32_t value) {
  for (int i = 0; i < 4; ++i) out[i] = static_cast<char>(value >> (8 * i));
}

void PutFixed64(char* out, uint64_t value) {
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(value >> (8 * i));
}

uint32_t GetFixed32(const char* in) {
  uint32_t value = 0;
  for (int i = 3; i >= 0; --i) value = (value << 8) | static_cast<unsigned char>(in[i]);
  return value;
}

uint64_t GetFixed64(const char* in) {
  uint64_t value = 0;
  for (int i = 7; i >= 0; --i) value = (value << 8) | static_cast<unsigned char>(in[i]);
  return value;
}

// Offset of the first non-zero byte in data[0, n), or n.
size_t FirstNonZeroIn(const char* data, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t word;
    std::memcpy(&word, data + i, 8);
    if (word != 0) break;
  }
  for (; i < n; ++i) {
    if (data[i] != 0) return i;
  }
  return n;
}

}  // namespace

uint64_t RecordChecksum(const char* header, absl::string_view payload) {
  constexpr size_t kCovered = kRecordHeaderSize - kChecksumBytes;
  if (payload.size() <= kSmallPayload) {
    char contiguous[kCovered + kSmallPayload];
    std::memcpy(contiguous, header + kChecksumBytes, kCovered);
    if (!payload.empty()) std::memcpy(contiguous + kCovered, payload.data(), payload.size());
    return XXH3_64bits(contiguous, kCovered + payload.size());
  }
  XXH3_state_t state;
  XXH3_INITSTATE(&state);
  XXH3_64bits_reset(&state);
  XXH3_64bits_update(&state, header + kChecksumBytes, kCovered);
  XXH3_64bits_update(&state, payload.data(), payload.size());
  return XXH3_64bits_digest(&state);
}

void EncodeRecordHeader(uint8_t type, uint64_t sequence, absl::string_view payload, char* header) {
  PutFixed32(header + kLengthOffset, static_cast<uint32_t>(payload.size()));
  header[kTypeOffset] = static_cast<char>(type);
  PutFixed64(header + kSequenceOffset, sequence);
  PutFixed64(header, RecordChecksum(header, payload));
}

void AppendRecord(uint8_t type, uint64_t sequence, absl::string_view payload, std::string* out) {
  char header[kRecordHeaderSize];
  EncodeRecordHeader(type, sequence, payload, header);
  out->append(header, kRecordHeaderSize);
  out->append(payload.data(), payload.size());
}

absl::Status ValidateRecord(uint8_t type, uint64_t payload_size) {
  if (type == 0) {
    return absl::InvalidArgumentError("record type 0 is reserved (end of data)");
  }
  if (payload_size > kMaxRecordPayload) {
    return absl::InvalidArgumentError(absl::StrCat(
        "record payload of ", payload_size, " bytes is over the limit of ", kMaxRecordPayload));
  }
  return absl::OkStatus();
}

// RecordFileReader.

absl::StatusOr<std::unique_ptr<RecordFileReader>> RecordFileReader::Open(const std::string& path,
                                                                         TailPolicy policy) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int error = errno;
    if (error == ENOENT) {
      return absl::NotFoundError(absl::StrCat("open ", path, ": ", ErrnoText(error)));
    }
    return IoErrorStatus("open", path, error);
  }
  struct stat info;
  if (fstat(fd, &info) != 0) {
    int error = errno;
    close(fd);
    return IoErrorStatus("stat", path, error);
  }
  posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  return std::unique_ptr<RecordFileReader>(
      new RecordFileReader(path, fd, static_cast<uint64_t>(info.st_size), policy));
}

RecordFileReader::RecordFileReader(std::string path, int fd, uint64_t file_size, TailPolicy policy)
    : path_(std::move(path)), fd_(fd), file_size_(file_size), policy_(policy) {}

RecordFileReader::~RecordFileReader() { close(fd_); }

absl::Status RecordFileReader::Fill(uint64_t offset, uint64_t n) {
  if (offset >= buffer_offset_ && offset + n <= buffer_offset_ + buffer_length_) {
    return absl::OkStatus();
  }
  const uint64_t want = std::min(std::max(n, kReadChunk), file_size_ - offset);
  // The part of the wanted range already in the buffer moves to its front.
  uint64_t keep = 0;
  const char* keep_from = nullptr;
  if (offset >= buffer_offset_ && offset < buffer_offset_ + buffer_length_) {
    keep = std::min(buffer_offset_ + buffer_length_ - offset, want);
    keep_from = buffer_.get() + (offset - buffer_offset_);
  }
  if (buffer_capacity_ < want) {
    std::unique_ptr<char[]> grown(new char[want]);
    if (keep > 0) std::memcpy(grown.get(), keep_from, keep);
    buffer_ = std::move(grown);
    buffer_capacity_ = want;
  } else if (keep > 0) {
    std::memmove(buffer_.get(), keep_from, keep);
  }
  buffer_offset_ = offset;
  buffer_length_ = keep;
  absl::Status status = PreadFully(fd_, path_, offset + keep, want - keep, buffer_.get() + keep);
  if (!status.ok()) return status;
  buffer_length_ = want;
  return absl::OkStatus();
}

absl::Status RecordFileReader::Corruption(uint64_t offset, absl::string_view what) const {
  return absl::DataLossError(absl::StrCat(path_, ": offset ", offset, ": ", what));
}

namespace {

// Offset of the first non-zero byte of the file in [from, end), or end.
absl::StatusOr<uint64_t> FirstNonZero(int fd, const std::string& path, uint64_t from,
                                      uint64_t end) {
  std::string chunk;
  for (uint64_t at = from; at < end;) {
    size_t n = static_cast<size_t>(std::min(kReadChunk, end - at));
    chunk.resize(n);
    absl::Status status = PreadFully(fd, path, at, n, chunk.data());
    if (!status.ok()) return status;
    size_t nonzero = FirstNonZeroIn(chunk.data(), n);
    if (nonzero < n) return at + nonzero;
    at += n;
  }
  return end;
}

// The offset of an intact record starting in [from, file_size) whose sequence lies in
// (after_sequence, after_sequence + max_step], if any. Records are at least
// kRecordHeaderSize bytes and their sequences increase, so a record that follows the
// bad one has a sequence in that window; random bytes almost never do, which keeps the
// checksum (over up to 1 GiB) from being computed at every offset.
absl::StatusOr<std::optional<uint64_t>> FindIntactRecord(int fd, const std::string& path,
                                                         uint64_t file_size, uint64_t from,
                                                         uint64_t after_sequence,
                                                         uint64_t max_step) {
  std::string window;
  std::string payload;
  for (uint64_t base = from; base + kRecordHeaderSize <= file_size;) {
    size_t n = static_cast<size_t>(std::min(kReadChunk, file_size - base));
    window.resize(n);
    absl::Status status = PreadFully(fd, path, base, n, window.data());
    if (!status.ok()) return status;
    const size_t headers = n - kRecordHeaderSize + 1;  // header starts in this window
    for (size_t i = 0; i < headers; ++i) {
      const char* header = window.data() + i;
      if (header[kTypeOffset] == 0) continue;
      const uint64_t sequence = GetFixed64(header + kSequenceOffset);
      if (sequence <= after_sequence || sequence - after_sequence > max_step) continue;
      const uint64_t length = GetFixed32(header + kLengthOffset);
      const uint64_t at = base + i;
      if (length > kMaxRecordPayload || at + kRecordHeaderSize + length > file_size) {
        continue;
      }
      absl::string_view body;
      if (i + kRecordHeaderSize + length <= n) {
        body = absl::string_view(header + kRecordHeaderSize, length);
      } else {
        payload.resize(length);
        status = PreadFully(fd, path, at + kRecordHeaderSize, length, payload.data());
        if (!status.ok()) return status;
        body = payload;
      }
      if (RecordChecksum(header, body) == GetFixed64(header)) return at;
    }
    base += headers;
  }
  return std::nullopt;
}

}  // namespace

absl::Status RecordFileReader::ClassifyBadRecord(uint64_t offset, uint64_t declared_end,
                                                 const std::string& reason) {
  // A clean end: nothing but zeros from here on.
  absl::StatusOr<uint64_t> nonzero = FirstNonZero(fd_, path_, offset, file_size_);
  if (!nonzero.ok()) return nonzero.status();
  if (*nonzero == file_size_) return absl::OkStatus();

  // A torn tail has nothing but its own partial bytes, then zeros or the end of file.
  if (declared_end <= file_size_) {
    nonzero = FirstNonZero(fd_, path_, declared_end, file_size_);
    if (!nonzero.ok()) return nonzero.status();
    if (*nonzero != file_size_) {
      return Corruption(offset,
                        absl::StrCat(reason, ", and the bytes after its end (", declared_end,
                                     ") are not all zero (offset ", *nonzero, ")"));
    }
  }
  if (policy_ == TailPolicy::kCleanEndOnly) {
    return Corruption(offset, absl::StrCat(reason,
                                           " (a torn last record, which this file "
                                           "cannot have)"));
  }
  // A flipped length bit can make a record in the middle look like the torn last one;
  // the records after it would then be dropped silently. They are still there to find.
  uint64_t after_sequence = 0;
  if (have_previous_) {
    after_sequence = previous_sequence_;
  } else if (offset + kRecordHeaderSize <= file_size_) {
    char header[kRecordHeaderSize];
    absl::Status status = PreadFully(fd_, path_, offset, kRecordHeaderSize, header);
    if (!status.ok()) return status;
    after_sequence = GetFixed64(header + kSequenceOffset);
  }
  const uint64_t max_step = (file_size_ - offset) / kRecordHeaderSize + 1;
  absl::StatusOr<std::optional<uint64_t>> intact =
      FindIntactRecord(fd_, path_, file_size_, offset + 1, after_sequence, max_step);
  if (!intact.ok()) return intact.status();
  if (intact->has_value()) {
    return Corruption(offset,
                      absl::StrCat(reason, ", and an intact record follows at offset ", **intact));
  }
  torn_tail_ = true;
  torn_reason_ = reason;
  return absl::OkStatus();
}

absl::StatusOr<bool> RecordFileReader::Next(Record* record) {
  if (!error_.ok()) return error_;
  if (done_) return false;
  const uint64_t offset = position_;
  valid_end_ = offset;

  // Stops reading: a clean end or allowed torn tail, or the error.
  auto stop = [this](absl::Status status) -> absl::StatusOr<bool> {
    if (!status.ok()) {
      error_ = status;
      return status;
    }
    done_ = true;
    return false;
  };

  const uint64_t left = file_size_ - offset;
  if (left == 0) return stop(absl::OkStatus());
  if (left < kRecordHeaderSize) {
    return stop(ClassifyBadRecord(
        offset, file_size_ + 1,
        absl::StrCat("short header: ", left, " bytes before the end of the file")));
  }
  absl::Status status = Fill(offset, kRecordHeaderSize);
  if (!status.ok()) return stop(status);
  const char* header = buffer_.get() + (offset - buffer_offset_);
  const uint64_t length = GetFixed32(header + kLengthOffset);
  const uint8_t type = static_cast<uint8_t>(header[kTypeOffset]);
  const uint64_t sequence = GetFixed64(header + kSequenceOffset);
  const uint64_t declared_end = offset + kRecordHeaderSize + length;

  if (FirstNonZeroIn(header, kRecordHeaderSize) == kRecordHeaderSize) {
    return stop(ClassifyBadRecord(offset, declared_end, "zero header (end of data)"));
  }
  if (length > kMaxRecordPayload) {
    return stop(Corruption(
        offset, absl::StrCat("length ", length, " is over the limit of ", kMaxRecordPayload)));
  }
  if (type == 0) {
    return stop(ClassifyBadRecord(offset, declared_end, "type 0 in a non-zero header"));
  }
  if (declared_end > file_size_) {
    return stop(
        ClassifyBadRecord(offset, declared_end,
                          absl::StrCat("length ", length, " past end of file (",
                                       left - kRecordHeaderSize, " bytes after the header)")));
  }
  status = Fill(offset, kRecordHeaderSize + length);
  if (!status.ok()) return stop(status);
  header = buffer_.get() + (offset - buffer_offset_);
  absl::string_view payload(header + kRecordHeaderSize, length);
  if (RecordChecksum(header, payload) != GetFixed64(header)) {
    return stop(ClassifyBadRecord(offset, declared_end, "checksum mismatch"));
  }
  record->type = type;
  record->sequence = sequence;
  record->payload = payload;
  record->offset = offset;
  position_ = declared_end;
  have_previous_ = true;
  previous_sequence_ = sequence;
  return true;
}

}  // namespace fisherd
