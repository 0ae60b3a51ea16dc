// The record frame and RecordFileReader: round trips, the clean end of preallocated
// files, torn tails from a cut at every byte, and single bit flips that must never be
// accepted silently.
#include "storage/record_format.h"

#include <xxhash.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/storage/test_util.h"

namespace fisherd {
namespace {

using ::fisherd::testing_storage::FileReadResult;
using ::fisherd::testing_storage::ReadAllRecords;
using ::fisherd::testing_storage::ScratchDir;
using ::fisherd::testing_storage::WriteFile;
using ::testing::HasSubstr;

struct TestRecord {
  uint8_t type;
  uint64_t sequence;
  std::string payload;
};

std::string Pattern(size_t size, uint32_t seed) {
  std::string out(size, '\0');
  std::mt19937 random(seed);
  for (char& c : out) c = static_cast<char>(random());
  return out;
}

// Encodes the records; offsets[i] is where record i starts, offsets.back() the end.
std::string Encode(const std::vector<TestRecord>& records, std::vector<uint64_t>* offsets) {
  std::string file;
  offsets->clear();
  for (const TestRecord& record : records) {
    offsets->push_back(file.size());
    AppendRecord(record.type, record.sequence, record.payload, &file);
  }
  offsets->push_back(file.size());
  return file;
}

std::vector<TestRecord> SmallRecords() {
  return {{1, 10, ""}, {7, 11, "abcde"}, {2, 12, Pattern(40, 1)}, {255, 13, Pattern(300, 2)}};
}

// The records read equal the first `count` of `expected`.
void ExpectPrefix(const FileReadResult& result, const std::vector<TestRecord>& expected,
                  size_t count, const std::vector<uint64_t>& offsets) {
  ASSERT_EQ(result.records.size(), count);
  for (size_t i = 0; i < count; ++i) {
    EXPECT_EQ(result.records[i].type, expected[i].type) << i;
    EXPECT_EQ(result.records[i].sequence, expected[i].sequence) << i;
    EXPECT_EQ(result.records[i].payload, expected[i].payload) << i;
    EXPECT_EQ(result.records[i].offset, offsets[i]) << i;
  }
}

TEST(RecordFormatTest, HeaderLayoutIsLittleEndianWithChecksumOverTheRest) {
  std::string encoded;
  AppendRecord(0x5a, 0x0102030405060708ULL, "xyz", &encoded);
  ASSERT_EQ(encoded.size(), kRecordHeaderSize + 3);
  EXPECT_EQ(encoded.substr(8, 4), std::string("\x03\x00\x00\x00", 4));
  EXPECT_EQ(static_cast<uint8_t>(encoded[12]), 0x5a);
  EXPECT_EQ(encoded.substr(13, 8), std::string("\x08\x07\x06\x05\x04\x03\x02\x01", 8));
  EXPECT_EQ(encoded.substr(21), "xyz");
  uint64_t checksum = 0;
  for (int i = 7; i >= 0; --i) {
    checksum = (checksum << 8) | static_cast<unsigned char>(encoded[i]);
  }
  EXPECT_EQ(checksum, XXH3_64bits(encoded.data() + 8, encoded.size() - 8));
}

TEST(RecordFormatTest, ValidateRejectsTypeZeroAndHugePayloads) {
  EXPECT_TRUE(ValidateRecord(1, 0).ok());
  EXPECT_TRUE(ValidateRecord(1, kMaxRecordPayload).ok());
  EXPECT_EQ(ValidateRecord(0, 1).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateRecord(1, uint64_t{kMaxRecordPayload} + 1).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(RecordFileReaderTest, RoundTripIncludingRecordsLargerThanTheBuffer) {
  ScratchDir dir;
  std::vector<TestRecord> records = SmallRecords();
  records.push_back({3, 14, Pattern(3 << 20, 3)});  // 3 MiB: the buffer grows
  records.push_back({4, 15, Pattern(100, 4)});
  records.push_back({5, 16, Pattern((1 << 20) - 30, 5)});  // straddles a refill
  records.push_back({6, 17, "end"});
  std::vector<uint64_t> offsets;
  const std::string path = dir.File("f");
  WriteFile(path, Encode(records, &offsets));
  for (TailPolicy policy : {TailPolicy::kCleanEndOnly, TailPolicy::kAllowTornTail}) {
    FileReadResult result = ReadAllRecords(path, policy);
    ASSERT_TRUE(result.status.ok()) << result.status;
    ExpectPrefix(result, records, records.size(), offsets);
    EXPECT_FALSE(result.torn_tail);
    EXPECT_EQ(result.valid_end, offsets.back());
  }
}

TEST(RecordFileReaderTest, EmptyAndAllZeroFilesAreCleanEnds) {
  ScratchDir dir;
  for (size_t zeros : {0, 1, 20, 21, 22, 4096, (1 << 20) + 7}) {
    const std::string path = dir.File(absl::StrCat("zeros", zeros));
    WriteFile(path, std::string(zeros, '\0'));
    FileReadResult result = ReadAllRecords(path, TailPolicy::kCleanEndOnly);
    ASSERT_TRUE(result.status.ok()) << zeros << ": " << result.status;
    EXPECT_TRUE(result.records.empty());
    EXPECT_FALSE(result.torn_tail);
    EXPECT_EQ(result.valid_end, 0u);
  }
}

TEST(RecordFileReaderTest, ZeroPaddingAfterTheRecordsIsACleanEnd) {
  ScratchDir dir;
  std::vector<TestRecord> records = SmallRecords();
  std::vector<uint64_t> offsets;
  const std::string encoded = Encode(records, &offsets);
  // Shorter than a header, exactly a header, and preallocation-sized zero tails.
  for (size_t zeros : {5, 21, 4096, (2 << 20) + 3}) {
    const std::string path = dir.File(absl::StrCat("padded", zeros));
    WriteFile(path, encoded + std::string(zeros, '\0'));
    FileReadResult result = ReadAllRecords(path, TailPolicy::kCleanEndOnly);
    ASSERT_TRUE(result.status.ok()) << zeros << ": " << result.status;
    ExpectPrefix(result, records, records.size(), offsets);
    EXPECT_FALSE(result.torn_tail);
    EXPECT_EQ(result.valid_end, offsets.back());
  }
}

TEST(RecordFileReaderTest, MissingFileIsNotFound) {
  ScratchDir dir;
  absl::StatusOr<std::unique_ptr<RecordFileReader>> reader =
      RecordFileReader::Open(dir.File("absent"), TailPolicy::kCleanEndOnly);
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(reader.status().message(), HasSubstr(dir.File("absent")));
}

// Cuts the file at `cut` (inside record k), optionally zero-padding it back up as a
// preallocated segment would be, and checks that record k is dropped as a torn tail
// with everything before it intact. (When the surviving bytes of record k are all
// zero, that is indistinguishable from, and reported as, a clean end.)
void CheckCut(const std::string& path, const std::string& encoded,
              const std::vector<TestRecord>& records, const std::vector<uint64_t>& offsets,
              size_t k, uint64_t cut, size_t zero_padding) {
  SCOPED_TRACE(absl::StrCat("record ", k, ", cut at ", cut, ", padding ", zero_padding));
  WriteFile(path, encoded.substr(0, cut) + std::string(zero_padding, '\0'));
  auto is_zero = [](char c) { return c == 0; };
  const std::string partial = encoded.substr(offsets[k], cut - offsets[k]);
  const bool all_zero = std::all_of(partial.begin(), partial.end(), is_zero);
  const std::string removed = encoded.substr(cut, offsets[k + 1] - cut);
  if (zero_padding >= removed.size() && std::all_of(removed.begin(), removed.end(), is_zero)) {
    // Only zero bytes were cut and the padding puts them back: record k is whole.
    FileReadResult whole = ReadAllRecords(path, TailPolicy::kCleanEndOnly);
    ASSERT_TRUE(whole.status.ok()) << whole.status;
    ExpectPrefix(whole, records, k + 1, offsets);
    return;
  }

  FileReadResult torn = ReadAllRecords(path, TailPolicy::kAllowTornTail);
  ASSERT_TRUE(torn.status.ok()) << torn.status;
  ExpectPrefix(torn, records, k, offsets);
  EXPECT_EQ(torn.torn_tail, !all_zero);
  EXPECT_EQ(torn.valid_end, offsets[k]);

  FileReadResult strict = ReadAllRecords(path, TailPolicy::kCleanEndOnly);
  if (all_zero) {
    EXPECT_TRUE(strict.status.ok()) << strict.status;
  } else {
    EXPECT_EQ(strict.status.code(), absl::StatusCode::kDataLoss);
    EXPECT_THAT(strict.status.message(), HasSubstr(path));
    EXPECT_THAT(strict.status.message(), HasSubstr(absl::StrCat("offset ", offsets[k])));
  }
  ExpectPrefix(strict, records, k, offsets);
}

TEST(RecordFileReaderTest, CutAtEveryByteOfTheLastRecordIsATornTail) {
  ScratchDir dir;
  std::vector<TestRecord> records = SmallRecords();
  std::vector<uint64_t> offsets;
  const std::string encoded = Encode(records, &offsets);
  const size_t last = records.size() - 1;
  const std::string path = dir.File("cut");
  for (uint64_t cut = offsets[last] + 1; cut < offsets.back(); ++cut) {
    CheckCut(path, encoded, records, offsets, last, cut, 0);
    CheckCut(path, encoded, records, offsets, last, cut, 4096);
  }
}

TEST(RecordFileReaderTest, CutInsideAnEarlierRecordDropsItAndTheRest) {
  ScratchDir dir;
  std::vector<TestRecord> records = SmallRecords();
  std::vector<uint64_t> offsets;
  const std::string encoded = Encode(records, &offsets);
  const std::string path = dir.File("cut");
  for (size_t k = 0; k + 1 < records.size(); ++k) {
    for (uint64_t into :
         {uint64_t{1}, uint64_t{8}, uint64_t{20}, uint64_t{21}, offsets[k + 1] - offsets[k] - 1}) {
      const uint64_t cut = offsets[k] + into;
      if (cut <= offsets[k] || cut >= offsets[k + 1]) continue;
      CheckCut(path, encoded, records, offsets, k, cut, 0);
      CheckCut(path, encoded, records, offsets, k, cut, 300);
    }
  }
}

// Flips `bit` of the file and reads it. A flip inside record k must never be accepted
// silently: either DATA_LOSS naming record k's offset, or (for the last record only) a
// torn tail that drops exactly record k. A flip in the zero padding after the records
// damages no record: DATA_LOSS at the end of the records, or a torn tail there.
void CheckFlip(const std::string& path, const std::string& file,
               const std::vector<TestRecord>& records, const std::vector<uint64_t>& offsets,
               uint64_t bit) {
  const uint64_t byte = bit / 8;
  std::string flipped = file;
  flipped[byte] = static_cast<char>(flipped[byte] ^ (1 << (bit % 8)));
  WriteFile(path, flipped);
  const size_t k = std::upper_bound(offsets.begin(), offsets.end(), byte) - offsets.begin() - 1;
  const bool in_padding = k == records.size();
  const bool in_last = k + 1 == records.size();
  SCOPED_TRACE(absl::StrCat("bit ", bit, " (byte ", byte, ", record ", k, ")"));

  FileReadResult result = ReadAllRecords(path, TailPolicy::kAllowTornTail);
  if (!result.status.ok()) {
    EXPECT_EQ(result.status.code(), absl::StatusCode::kDataLoss) << result.status;
    EXPECT_THAT(result.status.message(), HasSubstr(path));
    EXPECT_THAT(result.status.message(), HasSubstr(absl::StrCat("offset ", offsets[k], ":")));
    ExpectPrefix(result, records, k, offsets);
  } else {
    ASSERT_TRUE(in_last || in_padding)
        << "a flip inside a record that is not the last was accepted";
    EXPECT_TRUE(result.torn_tail);
    EXPECT_EQ(result.valid_end, offsets[k]);
    ExpectPrefix(result, records, k, offsets);
  }
  if (!in_padding) {
    FileReadResult strict = ReadAllRecords(path, TailPolicy::kCleanEndOnly);
    EXPECT_EQ(strict.status.code(), absl::StatusCode::kDataLoss) << strict.status;
    ExpectPrefix(strict, records, k, offsets);
  }
}

TEST(RecordFileReaderTest, EveryBitFlipOfASmallFileIsCaught) {
  ScratchDir dir;
  std::vector<TestRecord> records = SmallRecords();
  std::vector<uint64_t> offsets;
  const std::string encoded = Encode(records, &offsets);
  const std::string path = dir.File("flip");
  for (size_t padding : {0, 64}) {
    const std::string file = encoded + std::string(padding, '\0');
    for (uint64_t bit = 0; bit < file.size() * 8; ++bit) {
      CheckFlip(path, file, records, offsets, bit);
      if (::testing::Test::HasFailure()) return;  // one report, not thousands
    }
  }
}

TEST(RecordFileReaderTest, SampledBitFlipsOfALargerFileAreCaught) {
  ScratchDir dir;
  std::mt19937 random(42);
  std::vector<TestRecord> records;
  for (uint64_t i = 0; i < 200; ++i) {
    std::uniform_int_distribution<size_t> size(0, 5000);
    records.push_back({static_cast<uint8_t>(1 + i % 255), 1000 + i,
                       Pattern(size(random), static_cast<uint32_t>(i))});
  }
  std::vector<uint64_t> offsets;
  const std::string file = Encode(records, &offsets) + std::string(8192, '\0');
  const std::string path = dir.File("flip");
  std::uniform_int_distribution<uint64_t> any_bit(0, file.size() * 8 - 1);
  std::vector<uint64_t> bits;
  for (int i = 0; i < 800; ++i) bits.push_back(any_bit(random));
  // And every bit of the length field of a few records: the flips that move a record's
  // declared end, which a naive torn-tail rule would accept.
  for (size_t k : {size_t{0}, size_t{100}, records.size() - 2, records.size() - 1}) {
    for (uint64_t b = 0; b < 32; ++b) bits.push_back((offsets[k] + 8) * 8 + b);
  }
  for (uint64_t bit : bits) {
    CheckFlip(path, file, records, offsets, bit);
    if (::testing::Test::HasFailure()) return;
  }
}

TEST(RecordFileReaderTest, CorruptionMessagesNameFileOffsetAndCause) {
  ScratchDir dir;
  std::vector<TestRecord> records = SmallRecords();
  std::vector<uint64_t> offsets;
  const std::string encoded = Encode(records, &offsets);
  const std::string path = dir.File("bad");
  auto read_error = [&](const std::string& contents) {
    WriteFile(path, contents);
    return ReadAllRecords(path, TailPolicy::kAllowTornTail).status;
  };

  std::string payload_flip = encoded;
  payload_flip[offsets[2] + kRecordHeaderSize + 3] ^= 0x10;
  absl::Status status = read_error(payload_flip);
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(status.message(),
              HasSubstr(absl::StrCat(path, ": offset ", offsets[2], ": checksum mismatch")));

  // Record 1's length made to run past the end: records 2 and 3 are still there.
  std::string long_length = encoded;
  long_length[offsets[1] + 10] = 0x7f;  // length += 0x7f0000
  status = read_error(long_length);
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(status.message(), HasSubstr("past end of file"));
  EXPECT_THAT(status.message(),
              HasSubstr(absl::StrCat("an intact record follows at offset ", offsets[2])));

  std::string huge_length = encoded;
  huge_length[offsets[3] + 11] = 0x40;  // length >= 1 GiB + ...
  status = read_error(huge_length);
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(status.message(), HasSubstr("over the limit"));

  std::string type_zero = encoded;
  type_zero[offsets[1] + 12] = 0;
  status = read_error(type_zero);
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(status.message(), HasSubstr(absl::StrCat("offset ", offsets[1], ": type 0")));

  // A zero header with data after it is not an end of data.
  std::string zero_then_data =
      encoded.substr(0, offsets[2]) + std::string(21, '\0') + encoded.substr(offsets[2]);
  status = read_error(zero_then_data);
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(status.message(), HasSubstr(absl::StrCat("offset ", offsets[2], ": zero header")));
  EXPECT_THAT(status.message(),
              HasSubstr(absl::StrCat("not all zero (offset ", offsets[2] + 21, ")")));

  // A lone non-zero byte far into the zero padding.
  std::string stray = encoded + std::string(5000, '\0');
  stray[offsets.back() + 4000] = 1;
  status = read_error(stray);
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(status.message(), HasSubstr(absl::StrCat("offset ", offsets.back())));
  EXPECT_THAT(status.message(), HasSubstr(absl::StrCat(offsets.back() + 4000)));
}

TEST(RecordFileReaderTest, ErrorsAreSticky) {
  ScratchDir dir;
  std::vector<TestRecord> records = SmallRecords();
  std::vector<uint64_t> offsets;
  std::string encoded = Encode(records, &offsets);
  encoded[offsets[1] + kRecordHeaderSize] ^= 1;
  const std::string path = dir.File("sticky");
  WriteFile(path, encoded);
  auto reader = RecordFileReader::Open(path, TailPolicy::kAllowTornTail);
  ASSERT_TRUE(reader.ok());
  Record record;
  ASSERT_TRUE(*(*reader)->Next(&record));
  absl::StatusOr<bool> first = (*reader)->Next(&record);
  absl::StatusOr<bool> second = (*reader)->Next(&record);
  EXPECT_EQ(first.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(second.status(), first.status());
}

}  // namespace
}  // namespace fisherd
