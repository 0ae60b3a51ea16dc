#include "server/snapshot_file.h"

#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "storage/file_util.h"
#include "storage/record_format.h"

namespace fisherd::server {
namespace {

namespace dv1 = durable::v1;

constexpr uint32_t kFormat = 1;
// Values per chunk: 1 MiB of doubles, so a corrupt chunk costs little to detect and a
// large matrix streams through a small buffer.
constexpr uint64_t kChunkValues = 131072;

// Which StateVisitor call wrote a chunk; a reader expecting another kind stops.
enum ChunkKind : uint32_t {
  kScalar = 1,
  kCount = 2,
  kInteger = 3,
  kFlag = 4,
  kVector = 5,
  kMatrix = 6,
  kUpperTriangle = 7,
};

const char* KindName(uint32_t kind) {
  switch (kind) {
    case kScalar:
      return "scalar";
    case kCount:
      return "count";
    case kInteger:
      return "integer";
    case kFlag:
      return "flag";
    case kVector:
      return "vector";
    case kMatrix:
      return "matrix";
    case kUpperTriangle:
      return "upper triangle";
  }
  return "unknown";
}

// The scope stack both visitors share: "blocks/3/activations/sums".
class Scopes {
 public:
  void Enter(absl::string_view scope) { scopes_.emplace_back(scope); }
  void Leave() {
    if (!scopes_.empty()) scopes_.pop_back();
  }
  std::string Name(absl::string_view name) const {
    if (scopes_.empty()) return std::string(name);
    return absl::StrCat(absl::StrJoin(scopes_, "/"), "/", name);
  }

 private:
  std::vector<std::string> scopes_;
};

class ChunkWriter final : public StateVisitor {
 public:
  explicit ChunkWriter(RecordFileWriter* file) : file_(file) {}

  bool loading() const override { return false; }
  void Scalar(absl::string_view name, double* value) override { Bytes(name, kScalar, value, 8); }
  void Count(absl::string_view name, uint64_t* value) override { Bytes(name, kCount, value, 8); }
  void Integer(absl::string_view name, int64_t* value) override { Bytes(name, kInteger, value, 8); }
  void Flag(absl::string_view name, bool* value) override {
    const uint64_t flag = *value ? 1 : 0;
    Bytes(name, kFlag, &flag, 8);
  }
  void Vector(absl::string_view name, Eigen::VectorXd* values) override {
    Array(name, kVector, values->size(), 1, values->data());
  }
  void Matrix(absl::string_view name, Eigen::MatrixXd* values) override {
    Array(name, kMatrix, values->rows(), values->cols(), values->data());
  }
  void UpperTriangle(absl::string_view name, Eigen::MatrixXd* values) override {
    // Column j's first j + 1 entries, gathered into chunks.
    const int64_t n = values->rows();
    const uint64_t total = static_cast<uint64_t>(n) * static_cast<uint64_t>(n + 1) / 2;
    std::vector<double> buffer;
    buffer.reserve(std::min<uint64_t>(total, kChunkValues));
    uint64_t offset = 0;
    for (int64_t j = 0; j < n && status_.ok(); ++j) {
      const double* column = values->data() + j * n;
      int64_t i = 0;
      while (i <= j) {
        const int64_t take =
            std::min<int64_t>(j + 1 - i, static_cast<int64_t>(kChunkValues - buffer.size()));
        buffer.insert(buffer.end(), column + i, column + i + take);
        i += take;
        if (buffer.size() == kChunkValues) {
          Emit(name, kUpperTriangle, n, n, offset, total, buffer.data(), buffer.size());
          offset += buffer.size();
          buffer.clear();
        }
      }
    }
    if (!buffer.empty() || total == 0) {
      Emit(name, kUpperTriangle, n, n, offset, total, buffer.data(), buffer.size());
    }
  }
  void Enter(absl::string_view scope) override { scopes_.Enter(scope); }
  void Leave() override { scopes_.Leave(); }
  void Fail(absl::Status status) override {
    if (status_.ok()) status_ = std::move(status);
  }
  absl::Status status() const override { return status_; }

  uint64_t chunks() const { return chunks_; }

 private:
  void Bytes(absl::string_view name, ChunkKind kind, const void* data, size_t size) {
    double value;
    std::memcpy(&value, data, sizeof value);
    Emit(name, kind, 1, 1, 0, 1, &value, 1);
  }
  void Array(absl::string_view name, ChunkKind kind, int64_t rows, int64_t cols,
             const double* data) {
    const uint64_t total = static_cast<uint64_t>(rows) * static_cast<uint64_t>(cols);
    uint64_t offset = 0;
    do {
      const uint64_t take = std::min(kChunkValues, total - offset);
      Emit(name, kind, rows, cols, offset, total, data + offset, take);
      offset += take;
    } while (offset < total && status_.ok());
  }
  void Emit(absl::string_view name, ChunkKind kind, int64_t rows, int64_t cols, uint64_t offset,
            uint64_t total, const double* data, uint64_t count) {
    if (!status_.ok()) return;
    dv1::StateChunk chunk;
    chunk.set_name(scopes_.Name(name));
    chunk.set_kind(kind);
    chunk.set_rows(rows);
    chunk.set_cols(cols);
    chunk.set_offset(offset);
    chunk.set_total(total);
    chunk.set_values(reinterpret_cast<const char*>(data), count * sizeof(double));
    status_ = file_->Append(dv1::SNAPSHOT_RECORD_TYPE_CHUNK, chunks_++, chunk.SerializeAsString());
  }

  RecordFileWriter* const file_;
  Scopes scopes_;
  uint64_t chunks_ = 0;
  absl::Status status_;
};

class ChunkReader final : public StateVisitor {
 public:
  ChunkReader(RecordFileReader* file, std::string path) : file_(file), path_(std::move(path)) {}

  bool loading() const override { return true; }
  void Scalar(absl::string_view name, double* value) override { Bytes(name, kScalar, value); }
  void Count(absl::string_view name, uint64_t* value) override { Bytes(name, kCount, value); }
  void Integer(absl::string_view name, int64_t* value) override { Bytes(name, kInteger, value); }
  void Flag(absl::string_view name, bool* value) override {
    uint64_t flag = 0;
    Bytes(name, kFlag, &flag);
    if (status_.ok() && flag > 1) Corrupt(absl::StrCat(scopes_.Name(name), " is ", flag));
    *value = flag == 1;
  }
  void Vector(absl::string_view name, Eigen::VectorXd* values) override {
    Array(name, kVector, [values](int64_t rows, int64_t cols) {
      values->resize(rows);
      return values->data();
    });
  }
  void Matrix(absl::string_view name, Eigen::MatrixXd* values) override {
    Array(name, kMatrix, [values](int64_t rows, int64_t cols) {
      values->resize(rows, cols);
      return values->data();
    });
  }
  void UpperTriangle(absl::string_view name, Eigen::MatrixXd* values) override {
    const int64_t n = values->rows();
    const uint64_t total = static_cast<uint64_t>(n) * static_cast<uint64_t>(n + 1) / 2;
    int64_t j = 0, i = 0;  // the next entry to fill
    uint64_t filled = 0;
    do {
      dv1::StateChunk chunk;
      if (!NextChunk(name, kUpperTriangle, &chunk)) return;
      if (chunk.rows() != static_cast<uint64_t>(n) || chunk.total() != total ||
          chunk.offset() != filled) {
        return Corrupt(absl::StrCat(chunk.name(), " is a ", chunk.rows(), " x ", chunk.cols(),
                                    " triangle chunk at value ", chunk.offset(), ", expected ", n,
                                    " x ", n, " at value ", filled));
      }
      const uint64_t count = chunk.values().size() / sizeof(double);
      if (count > total - filled || (count == 0 && total != 0)) {
        return Corrupt(absl::StrCat(chunk.name(), " has ", count, " values past the ", total,
                                    " of its triangle"));
      }
      const char* source = chunk.values().data();
      for (uint64_t k = 0; k < count; ++k) {
        std::memcpy(values->data() + j * n + i, source + k * sizeof(double), sizeof(double));
        if (++i > j) {
          ++j;
          i = 0;
        }
      }
      filled += count;
    } while (filled < total && status_.ok());
  }
  void Enter(absl::string_view scope) override { scopes_.Enter(scope); }
  void Leave() override { scopes_.Leave(); }
  void Fail(absl::Status status) override {
    if (!status_.ok()) return;
    // A restore that disagrees with the file is the file's fault as far as the operator
    // is concerned: name it and where.
    status_ = absl::DataLossError(
        absl::StrCat("snapshot ", path_, " at offset ", offset_, ": ", status.message()));
  }
  absl::Status status() const override { return status_; }

  uint64_t chunks() const { return chunks_; }

 private:
  void Corrupt(absl::string_view what) { Fail(absl::DataLossError(what)); }

  // Reads the next record, which must be a chunk named `name` of `kind`.
  bool NextChunk(absl::string_view name, ChunkKind kind, dv1::StateChunk* chunk) {
    if (!status_.ok()) return false;
    Record record;
    absl::StatusOr<bool> more = file_->Next(&record);
    if (!more.ok()) {
      status_ = more.status();
      return false;
    }
    const std::string expected = scopes_.Name(name);
    if (!*more) {
      Corrupt(absl::StrCat("the file ends where ", expected, " was expected"));
      return false;
    }
    offset_ = record.offset;
    if (record.type != dv1::SNAPSHOT_RECORD_TYPE_CHUNK ||
        !chunk->ParseFromArray(record.payload.data(), static_cast<int>(record.payload.size()))) {
      Corrupt(absl::StrCat("record of type ", static_cast<int>(record.type),
                           " is not a state "
                           "chunk (expected ",
                           expected, ")"));
      return false;
    }
    ++chunks_;
    if (chunk->name() != expected || chunk->kind() != kind) {
      Corrupt(absl::StrCat("found ", chunk->name(), " (", KindName(chunk->kind()), ") where ",
                           expected, " (", KindName(kind), ") was expected"));
      return false;
    }
    return true;
  }

  void Bytes(absl::string_view name, ChunkKind kind, void* value) {
    dv1::StateChunk chunk;
    if (!NextChunk(name, kind, &chunk)) return;
    if (chunk.values().size() != 8) {
      return Corrupt(
          absl::StrCat(chunk.name(), " has ", chunk.values().size(), " bytes, expected 8"));
    }
    std::memcpy(value, chunk.values().data(), 8);
  }

  template <typename Resize>
  void Array(absl::string_view name, ChunkKind kind, Resize resize) {
    double* data = nullptr;
    uint64_t total = 0, filled = 0;
    do {
      dv1::StateChunk chunk;
      if (!NextChunk(name, kind, &chunk)) return;
      if (filled == 0) {
        // Bounded so that a corrupt shape cannot allocate wildly: the owner checks the
        // exact size afterwards (StateVisitor::CheckSize).
        constexpr uint64_t kMaxSide = uint64_t{1} << 31;
        total = chunk.total();
        // A shape the file cannot hold is corrupt however well it checksums: refuse it
        // before allocating for it.
        if (chunk.rows() >= kMaxSide || chunk.cols() >= kMaxSide ||
            chunk.rows() * chunk.cols() != total || chunk.offset() != 0 ||
            total > file_->file_size() / sizeof(double)) {
          return Corrupt(absl::StrCat(chunk.name(), " has shape ", chunk.rows(), " x ",
                                      chunk.cols(), " but ", total, " values at offset ",
                                      chunk.offset()));
        }
        data = resize(static_cast<int64_t>(chunk.rows()), static_cast<int64_t>(chunk.cols()));
      } else if (chunk.offset() != filled || chunk.total() != total) {
        return Corrupt(absl::StrCat(chunk.name(), " continues at value ", chunk.offset(), " of ",
                                    chunk.total(), ", expected ", filled, " of ", total));
      }
      const uint64_t count = chunk.values().size() / sizeof(double);
      if (chunk.values().size() % sizeof(double) != 0 || count > total - filled ||
          (count == 0 && total != 0)) {
        return Corrupt(absl::StrCat(chunk.name(), " has ", chunk.values().size(),
                                    " bytes at value ", filled, " of ", total));
      }
      // An empty array (a low-rank block's window before any row) has no storage: data
      // may be null, and memcpy to null is undefined even for 0 bytes (found by
      // fuzz/durable_recovery_fuzzer.cc under UBSan).
      if (count > 0) std::memcpy(data + filled, chunk.values().data(), chunk.values().size());
      filled += count;
    } while (filled < total && status_.ok());
  }

  RecordFileReader* const file_;
  const std::string path_;
  Scopes scopes_;
  uint64_t offset_ = 0;
  uint64_t chunks_ = 0;
  absl::Status status_;
};

absl::Status FileError(const std::string& path, uint64_t offset, absl::string_view what) {
  return absl::DataLossError(absl::StrCat("snapshot ", path, " at offset ", offset, ": ", what));
}

}  // namespace

std::string SnapshotFileName(const std::string& session_id, uint64_t lsn) {
  return absl::StrFormat("%s.%020u.snap", session_id, lsn);
}

bool ParseSnapshotFileName(const std::string& file_name, std::string* session_id, uint64_t* lsn) {
  constexpr absl::string_view kSuffix = ".snap";
  constexpr size_t kDigits = 20;
  if (file_name.size() < kDigits + kSuffix.size() + 2) return false;
  if (!absl::EndsWith(file_name, kSuffix)) return false;
  const size_t digits = file_name.size() - kSuffix.size() - kDigits;
  if (file_name[digits - 1] != '.') return false;
  if (!absl::SimpleAtoi(absl::string_view(file_name).substr(digits, kDigits), lsn)) {
    return false;
  }
  *session_id = file_name.substr(0, digits - 1);
  return !session_id->empty();
}

absl::Status WriteSnapshot(const std::string& path, const std::string& session_id,
                           uint64_t incarnation, const v1::SessionConfig& config,
                           const SessionCounters& counters, ScoreStatistics& statistics) {
  absl::StatusOr<std::unique_ptr<RecordFileWriter>> file = RecordFileWriter::Create(path);
  if (!file.ok()) return file.status();
  dv1::SnapshotHeader header;
  header.set_format(kFormat);
  header.set_session_id(session_id);
  header.set_lsn(counters.lsn);
  header.set_incarnation(incarnation);
  *header.mutable_config() = config;
  header.set_step_count(counters.step_count);
  for (const auto& [worker, sequence] : counters.worker_sequences) {
    (*header.mutable_worker_sequences())[worker] = sequence;
  }
  if (absl::Status status =
          (*file)->Append(dv1::SNAPSHOT_RECORD_TYPE_HEADER, 0, header.SerializeAsString());
      !status.ok()) {
    return status;
  }
  ChunkWriter writer(file->get());
  statistics.VisitState(writer);
  if (!writer.status().ok()) return writer.status();
  dv1::SnapshotEnd end;
  end.set_chunks(writer.chunks());
  if (absl::Status status =
          (*file)->Append(dv1::SNAPSHOT_RECORD_TYPE_END, writer.chunks(), end.SerializeAsString());
      !status.ok()) {
    return status;
  }
  return (*file)->Commit();
}

absl::Status VerifySnapshotFile(const std::string& path) {
  absl::StatusOr<std::unique_ptr<RecordFileReader>> file =
      RecordFileReader::Open(path, TailPolicy::kCleanEndOnly);
  if (!file.ok()) return file.status();
  Record record;
  uint64_t records = 0, chunks = 0;
  for (;;) {
    absl::StatusOr<bool> more = (*file)->Next(&record);
    if (!more.ok()) return more.status();
    if (!*more) break;
    const uint8_t expected =
        records == 0 ? static_cast<uint8_t>(dv1::SNAPSHOT_RECORD_TYPE_HEADER) : record.type;
    if (record.type != expected) {
      return FileError(path, record.offset, "the first record is not a snapshot header");
    }
    // The header as SnapshotReader::Open judges it, so that a file verified here is one
    // a restart can open (found by fuzz/snapshot_fuzzer.cc: an unparsable header or
    // another format passed verification).
    if (records == 0) {
      dv1::SnapshotHeader header;
      if (!header.ParseFromArray(record.payload.data(), static_cast<int>(record.payload.size()))) {
        return FileError(path, record.offset, "the first record is not a snapshot header");
      }
      if (header.format() != kFormat) {
        return FileError(path, record.offset,
                         absl::StrCat("snapshot format ", header.format(), " is not the format ",
                                      kFormat, " this fisherd reads"));
      }
    }
    if (record.type == dv1::SNAPSHOT_RECORD_TYPE_END) {
      dv1::SnapshotEnd end;
      if (!end.ParseFromArray(record.payload.data(), static_cast<int>(record.payload.size())) ||
          end.chunks() != chunks) {
        return FileError(path, record.offset,
                         absl::StrCat("the end record does not count the ", chunks, " chunks"));
      }
      if ((*file)->Next(&record).value_or(true)) {
        return FileError(path, record.offset, "data after the end record");
      }
      return absl::OkStatus();
    }
    if (record.type == dv1::SNAPSHOT_RECORD_TYPE_CHUNK) ++chunks;
    ++records;
  }
  return FileError(path, (*file)->file_size(), "no end record");
}

struct SnapshotReader::Impl {
  std::string path;
  std::unique_ptr<RecordFileReader> file;
};

SnapshotReader::SnapshotReader(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
SnapshotReader::~SnapshotReader() = default;

absl::StatusOr<std::unique_ptr<SnapshotReader>> SnapshotReader::Open(const std::string& path) {
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  absl::StatusOr<std::unique_ptr<RecordFileReader>> file =
      RecordFileReader::Open(path, TailPolicy::kCleanEndOnly);
  if (!file.ok()) return file.status();
  impl->file = std::move(*file);
  Record record;
  absl::StatusOr<bool> more = impl->file->Next(&record);
  if (!more.ok()) return more.status();
  if (!*more) return FileError(path, 0, "the file is empty");
  auto reader = std::unique_ptr<SnapshotReader>(new SnapshotReader(std::move(impl)));
  if (record.type != dv1::SNAPSHOT_RECORD_TYPE_HEADER ||
      !reader->header_.ParseFromArray(record.payload.data(),
                                      static_cast<int>(record.payload.size()))) {
    return FileError(path, record.offset, "the first record is not a snapshot header");
  }
  if (reader->header_.format() != kFormat) {
    return FileError(path, record.offset,
                     absl::StrCat("snapshot format ", reader->header_.format(),
                                  " is not the format ", kFormat, " this fisherd reads"));
  }
  return reader;
}

SessionCounters SnapshotReader::counters() const {
  SessionCounters counters;
  counters.lsn = header_.lsn();
  counters.step_count = header_.step_count();
  for (const auto& [worker, sequence] : header_.worker_sequences()) {
    counters.worker_sequences[worker] = sequence;
  }
  return counters;
}

absl::Status SnapshotReader::Restore(Session& session) {
  ChunkReader reader(impl_->file.get(), impl_->path);
  if (absl::Status status = session.RestoreState(counters(), reader); !status.ok()) {
    return status;
  }
  Record record;
  absl::StatusOr<bool> more = impl_->file->Next(&record);
  if (!more.ok()) return more.status();
  dv1::SnapshotEnd end;
  if (!*more || record.type != dv1::SNAPSHOT_RECORD_TYPE_END ||
      !end.ParseFromArray(record.payload.data(), static_cast<int>(record.payload.size())) ||
      end.chunks() != reader.chunks()) {
    return FileError(impl_->path, *more ? record.offset : 0,
                     absl::StrCat("no end record after the ", reader.chunks(), " state chunks"));
  }
  if (impl_->file->Next(&record).value_or(true)) {
    return FileError(impl_->path, record.offset, "data after the end record");
  }
  return absl::OkStatus();
}

}  // namespace fisherd::server
