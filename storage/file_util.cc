#include "storage/file_util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "storage/fault_injection.h"
#include "storage/record_format.h"

namespace fisherd {

void FatalIoError(absl::string_view what, absl::string_view path, int error_number) {
  std::string message =
      absl::StrCat("fisherd: fatal: ", what, " ", path, ": ", ErrnoText(error_number),
                   "\nfisherd: stopping: a failed write or sync is never retried (the kernel may "
                   "have dropped the unwritten pages); a restart recovers from the log\n");
  // One write(2): stderr may be shared with other threads that are still running.
  ssize_t ignored = write(STDERR_FILENO, message.data(), message.size());
  (void)ignored;
  std::abort();
}

std::string ErrnoText(int error_number) {
  char buffer[256];
  // The GNU strerror_r returns a pointer that may or may not be `buffer`.
  return strerror_r(error_number, buffer, sizeof(buffer));
}

absl::Status IoErrorStatus(absl::string_view what, absl::string_view path, int error_number) {
  std::string message = absl::StrCat(what, " ", path, ": ", ErrnoText(error_number));
  switch (error_number) {
    case ENOSPC:
    case EDQUOT:
      return absl::ResourceExhaustedError(message);
    case EROFS:
    case EACCES:
    case EPERM:
    case ENOENT:
    case ENOTDIR:
      return absl::FailedPreconditionError(message);
    default:
      return absl::InternalError(message);
  }
}

std::string DirectoryOf(const std::string& path) {
  size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

absl::StatusOr<std::vector<std::string>> ListDirectory(const std::string& dir) {
  std::unique_ptr<DIR, int (*)(DIR*)> listing(opendir(dir.c_str()), &closedir);
  if (listing == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat("cannot list ", dir, ": ", ErrnoText(errno)));
  }
  std::vector<std::string> names;
  for (;;) {
    errno = 0;
    const dirent* entry = readdir(listing.get());
    if (entry == nullptr) {
      if (errno != 0) {
        return absl::FailedPreconditionError(
            absl::StrCat("cannot list ", dir, ": ", ErrnoText(errno)));
      }
      break;
    }
    const std::string name = entry->d_name;
    if (name != "." && name != "..") names.push_back(name);
  }
  std::sort(names.begin(), names.end());
  return names;
}

void SyncDirectory(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) FatalIoError("open directory", path, errno);
  if (fsync(fd) != 0) FatalIoError("fsync directory", path, errno);
  close(fd);
}

absl::Status PreadFully(int fd, const std::string& path, uint64_t offset, size_t n, char* out) {
  while (n > 0) {
    ssize_t got = pread(fd, out, n, static_cast<off_t>(offset));
    if (got < 0) {
      if (errno == EINTR) continue;
      return absl::InternalError(
          absl::StrCat("read ", path, " at offset ", offset, ": ", ErrnoText(errno)));
    }
    if (got == 0) {
      return absl::DataLossError(
          absl::StrCat(path, ": the file ended at offset ", offset, " while reading"));
    }
    out += got;
    offset += static_cast<uint64_t>(got);
    n -= static_cast<size_t>(got);
  }
  return absl::OkStatus();
}

int PwritevFully(int fd, struct iovec* iov, size_t count, uint64_t offset) {
  while (count > 0) {
    int batch = static_cast<int>(std::min<size_t>(count, IOV_MAX));
    ssize_t wrote = pwritev(fd, iov, batch, static_cast<off_t>(offset));
    if (wrote < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    offset += static_cast<uint64_t>(wrote);
    size_t left = static_cast<size_t>(wrote);
    while (count > 0 && left >= iov->iov_len) {
      left -= iov->iov_len;
      ++iov;
      --count;
    }
    if (left > 0) {  // a short write inside *iov
      iov->iov_base = static_cast<char*>(iov->iov_base) + left;
      iov->iov_len -= left;
    }
    // Zero-length iovecs at the end are skipped by the loop above.
  }
  return 0;
}

// RecordFileWriter.

absl::StatusOr<std::unique_ptr<RecordFileWriter>> RecordFileWriter::Create(
    const std::string& final_path) {
  std::string temp_path = final_path + ".tmp";
  int fd = open(temp_path.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
  if (fd < 0) return IoErrorStatus("create", temp_path, errno);
  return std::unique_ptr<RecordFileWriter>(
      new RecordFileWriter(final_path, std::move(temp_path), fd));
}

RecordFileWriter::RecordFileWriter(std::string final_path, std::string temp_path, int fd)
    : final_path_(std::move(final_path)), temp_path_(std::move(temp_path)), fd_(fd) {}

RecordFileWriter::~RecordFileWriter() {
  if (fd_ >= 0) close(fd_);
  if (!committed_ && error_.ok()) unlink(temp_path_.c_str());  // Fail() removed it
}

absl::Status RecordFileWriter::Fail(absl::Status status) {
  error_ = std::move(status);
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
  unlink(temp_path_.c_str());
  buffer_.clear();
  buffer_.shrink_to_fit();
  return error_;
}

absl::Status RecordFileWriter::Write(const char* data, size_t n) {
  while (n > 0) {
    ssize_t wrote = write(fd_, data, n);
    if (wrote < 0) {
      if (errno == EINTR) continue;
      return Fail(IoErrorStatus("write snapshot file", temp_path_, errno));
    }
    data += wrote;
    n -= static_cast<size_t>(wrote);
  }
  return absl::OkStatus();
}

absl::Status RecordFileWriter::Flush() {
  if (buffer_.empty()) return absl::OkStatus();
  absl::Status status = Write(buffer_.data(), buffer_.size());
  buffer_.clear();
  return status;
}

absl::Status RecordFileWriter::Append(uint8_t type, uint64_t sequence, absl::string_view payload) {
  if (!error_.ok()) return error_;
  if (committed_) {
    return absl::FailedPreconditionError(absl::StrCat(final_path_, ": Append after Commit"));
  }
  absl::Status valid = ValidateRecord(type, payload.size());
  if (!valid.ok()) return valid;
  if (buffer_.size() + EncodedRecordSize(payload.size()) <= kFlushBytes) {
    AppendRecord(type, sequence, payload, &buffer_);
  } else if (payload.size() < kFlushBytes) {
    absl::Status status = Flush();
    if (!status.ok()) return status;
    AppendRecord(type, sequence, payload, &buffer_);
  } else {
    // Large payload: no copy into the buffer.
    char header[kRecordHeaderSize];
    EncodeRecordHeader(type, sequence, payload, header);
    buffer_.append(header, kRecordHeaderSize);
    absl::Status status = Flush();
    if (!status.ok()) return status;
    status = Write(payload.data(), payload.size());
    if (!status.ok()) return status;
  }
  bytes_ += EncodedRecordSize(payload.size());
  if (buffer_.size() >= kFlushBytes) return Flush();
  return absl::OkStatus();
}

absl::Status RecordFileWriter::Commit() {
  if (!error_.ok()) return error_;
  if (committed_) {
    return absl::FailedPreconditionError(absl::StrCat(final_path_, ": committed twice"));
  }
  absl::Status status = Flush();
  if (!status.ok()) return status;
  // fsync rather than fdatasync: the file is new, its size and entry must persist.
  if (fsync(fd_) != 0) FatalIoError("fsync", temp_path_, errno);
  if (close(fd_) != 0) FatalIoError("close", temp_path_, errno);
  fd_ = -1;
  MaybeCrashAt(kFaultSnapshotBeforeRename);
  if (rename(temp_path_.c_str(), final_path_.c_str()) != 0) {
    return Fail(IoErrorStatus("rename", absl::StrCat(temp_path_, " to ", final_path_), errno));
  }
  committed_ = true;
  MaybeCrashAt(kFaultSnapshotBeforeDirSync);
  SyncDirectory(DirectoryOf(final_path_));
  return absl::OkStatus();
}

}  // namespace fisherd
