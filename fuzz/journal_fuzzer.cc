// Journal recovery (storage/journal.h, storage/segment_files.h): up to three fuzzed
// segment files in a fresh log directory are scanned by Journal::Read from a fuzzed
// LSN. When the scan succeeds, the log is opened for appending at the LSN it returned,
// one record is appended and made durable, and a second scan must find the same
// records followed by that one: recovery, reopening and recovery again never lose,
// repeat or invent a record.
//
// Input: [from_lsn u8][segments u8] then per segment
//        [first LSN u8][flags u8: bit 0 fix checksums][file section], then optionally a
//        stray file name section (a file that must be ignored).
#include <sys/stat.h>

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "fuzz/fuzz_util.h"
#include "storage/journal.h"
#include "storage/record_format.h"
#include "storage/segment_files.h"

namespace {

struct Seen {
  uint64_t lsn;
  uint8_t type;
  std::string payload;
};

absl::Status ReadAll(const std::string& dir, uint64_t from_lsn, std::vector<Seen>* seen,
                     fisherd::ReadSummary* summary) {
  return fisherd::Journal::Read(
      dir, from_lsn,
      [seen](uint64_t lsn, uint8_t type, absl::string_view payload) {
        seen->push_back(Seen{lsn, type, std::string(payload)});
        return absl::OkStatus();
      },
      summary);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fisherd::fuzz::ByteReader in(data, size);
  const std::string dir = fisherd::fuzz::ScratchDir() + "/log";
  fisherd::fuzz::RemoveContents(fisherd::fuzz::ScratchDir());
  FUZZ_CHECK(mkdir(dir.c_str(), 0700) == 0);

  const uint64_t from_lsn = in.U8() % 8;
  const int segments = 1 + in.U8() % 3;
  for (int i = 0; i < segments; ++i) {
    const uint64_t first_lsn = 1 + in.U8() % 16;
    const uint8_t flags = in.U8();
    std::string file = in.Section();
    if (flags & 1) fisherd::fuzz::FixRecordChecksums(&file);
    fisherd::fuzz::WriteFileOrDie(dir + "/" + fisherd::SegmentFileName(first_lsn), file);
  }
  if (!in.empty()) {
    const std::string stray = in.Section();
    if (!stray.empty() && stray.find('/') == std::string::npos && stray != "." && stray != ".." &&
        stray.find('\0') == std::string::npos) {
      fisherd::fuzz::WriteFileOrDie(dir + "/" + stray, "stray");
    }
  }

  std::vector<Seen> first;
  fisherd::ReadSummary summary;
  const absl::Status read = ReadAll(dir, from_lsn, &first, &summary);
  if (fisherd::fuzz::Verbose()) {
    std::fprintf(stderr, "read: %s, %zu records\n", read.ToString().c_str(), first.size());
  }
  if (!read.ok()) {
    FUZZ_CHECK(read.code() == absl::StatusCode::kDataLoss ||
               read.code() == absl::StatusCode::kFailedPrecondition ||
               read.code() == absl::StatusCode::kInvalidArgument);
    FUZZ_CHECK(!read.message().empty());
    return 0;
  }
  for (size_t i = 0; i < first.size(); ++i) {
    FUZZ_CHECK(first[i].lsn >= from_lsn);
    if (i > 0) FUZZ_CHECK(first[i].lsn == first[i - 1].lsn + 1);
  }
  if (!first.empty()) FUZZ_CHECK(summary.next_lsn == first.back().lsn + 1);

  fisherd::JournalOptions options;
  options.dir = dir;
  options.segment_bytes = 64 << 10;
  options.control_reserve = 4096;
  absl::StatusOr<std::unique_ptr<fisherd::Journal>> journal =
      fisherd::Journal::Open(options, summary.next_lsn);
  if (!journal.ok()) {
    FUZZ_CHECK(!journal.status().message().empty());
    return 0;
  }
  absl::StatusOr<uint64_t> lsn =
      (*journal)->Append(7, "appended after recovery", fisherd::AppendKind::kData);
  FUZZ_CHECK(lsn.ok());
  FUZZ_CHECK(*lsn == summary.next_lsn);
  (*journal)->WaitDurable(*lsn);
  (*journal)->Close();
  journal->reset();

  std::vector<Seen> second;
  fisherd::ReadSummary summary2;
  const absl::Status reread = ReadAll(dir, from_lsn, &second, &summary2);
  if (!reread.ok()) {
    std::fprintf(stderr, "re-read after append failed: %s\n", reread.ToString().c_str());
  }
  FUZZ_CHECK(reread.ok());
  FUZZ_CHECK(second.size() == first.size() + 1);
  for (size_t i = 0; i < first.size(); ++i) {
    FUZZ_CHECK(second[i].lsn == first[i].lsn && second[i].type == first[i].type &&
               second[i].payload == first[i].payload);
  }
  FUZZ_CHECK(second.back().lsn == *lsn && second.back().type == 7);
  return 0;
}
