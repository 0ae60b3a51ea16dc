// Record frame decoding (storage/record_format.h): the input, after a flags byte, is a
// file that RecordFileReader reads under either tail policy. With flag bit 1 the frames'
// checksums are fixed first (fuzz_util.h), so that lengths, types, sequences and the
// torn-tail and corruption classification are reached rather than the checksum check.
// Every record read must re-encode to exactly the bytes it was read from.
//
// Input: [flags u8][file bytes...]   flags bit 0: kAllowTornTail; bit 1: fix checksums.
#include <cstdint>
#include <string>

#include "fuzz/fuzz_util.h"
#include "storage/record_format.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fisherd::fuzz::ByteReader in(data, size);
  const uint8_t flags = in.U8();
  std::string file = in.Rest();
  if (flags & 2) fisherd::fuzz::FixRecordChecksums(&file);
  const std::string path = fisherd::fuzz::ScratchDir() + "/records";
  fisherd::fuzz::WriteFileOrDie(path, file);

  const auto policy =
      (flags & 1) ? fisherd::TailPolicy::kAllowTornTail : fisherd::TailPolicy::kCleanEndOnly;
  auto reader = fisherd::RecordFileReader::Open(path, policy);
  FUZZ_CHECK(reader.ok());
  FUZZ_CHECK((*reader)->file_size() == file.size());
  fisherd::Record record;
  uint64_t end = 0;
  for (;;) {
    absl::StatusOr<bool> next = (*reader)->Next(&record);
    if (!next.ok()) {
      FUZZ_CHECK(next.status().code() == absl::StatusCode::kDataLoss);
      // Sticky: the same error again.
      absl::StatusOr<bool> again = (*reader)->Next(&record);
      FUZZ_CHECK(!again.ok() && again.status() == next.status());
      break;
    }
    if (!*next) {
      FUZZ_CHECK((*reader)->valid_end() == end);
      FUZZ_CHECK((*reader)->valid_end() <= file.size());
      if ((*reader)->torn_tail()) {
        FUZZ_CHECK(policy == fisherd::TailPolicy::kAllowTornTail);
        FUZZ_CHECK(!(*reader)->torn_reason().empty());
      }
      absl::StatusOr<bool> again = (*reader)->Next(&record);
      FUZZ_CHECK(again.ok() && !*again);
      break;
    }
    FUZZ_CHECK(record.offset == end);
    FUZZ_CHECK(record.type != 0);
    FUZZ_CHECK(fisherd::ValidateRecord(record.type, record.payload.size()).ok());
    std::string encoded;
    fisherd::AppendRecord(record.type, record.sequence, record.payload, &encoded);
    FUZZ_CHECK(record.offset + encoded.size() <= file.size());
    FUZZ_CHECK(file.compare(record.offset, encoded.size(), encoded) == 0);
    end = record.offset + encoded.size();
  }
  return 0;
}
