// DecodeScoreBatch alone: the decoding itself (little-endian bytes, unaligned storage)
// and the checks that need sizes no test should allocate.
#include <cstring>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/batch_decoder.h"

namespace fisherd::server {
namespace {

using ::testing::HasSubstr;

TEST(BatchDecoderTest, DecodesLittleEndianBytes) {
  SessionOptions options;
  options.dim = 2;
  v1::ScoreBatch batch;
  batch.set_rows(1);
  // 1.5f = 0x3FC00000 and -2.0f = 0xC0000000, least significant byte first.
  batch.set_scores_f32(std::string("\x00\x00\xc0\x3f\x00\x00\x00\xc0", 8));
  absl::StatusOr<PreparedBatch> prepared = DecodeScoreBatch(batch, options);
  ASSERT_TRUE(prepared.ok()) << prepared.status();
  EXPECT_EQ(prepared->rows, 1);
  EXPECT_EQ(prepared->weight_sum, 1.0);
  ASSERT_EQ(prepared->weighted_sum.size(), 2);
  EXPECT_EQ(prepared->weighted_sum(0), 1.5);
  EXPECT_EQ(prepared->weighted_sum(1), -2.0);
}

TEST(BatchDecoderTest, ReadsBytesAtAnyAlignment) {
  SessionOptions options;
  options.dim = 3;
  options.representation = Representation::kDiagonal;
  const float values[3] = {1.0f, -3.0f, 0.5f};
  // Place the floats at an odd offset inside a larger buffer, then copy that window
  // into the message: the decoder must not depend on where the bytes sit.
  std::string buffer(1 + sizeof(values), '\0');
  std::memcpy(&buffer[1], values, sizeof(values));
  v1::ScoreBatch batch;
  batch.set_rows(1);
  batch.set_scores_f32(buffer.substr(1));
  absl::StatusOr<PreparedBatch> prepared = DecodeScoreBatch(batch, options);
  ASSERT_TRUE(prepared.ok()) << prepared.status();
  EXPECT_EQ(prepared->weighted_squares(1), 9.0);
}

TEST(BatchDecoderTest, OverflowingSizeIsRefused) {
  SessionOptions options;
  options.dim = int64_t{1} << 40;  // diagonal sessions can be this wide in principle
  options.representation = Representation::kDiagonal;
  v1::ScoreBatch batch;
  batch.set_worker_id("w");
  batch.set_sequence(3);
  batch.set_rows(0xffffffffu);
  batch.set_scores_f32("abcd");
  const absl::Status status = DecodeScoreBatch(batch, options).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("overflows"));
  EXPECT_THAT(std::string(status.message()), HasSubstr("worker \"w\", sequence 3"));
}

TEST(BatchDecoderTest, DescribesAnonymousAndOddWorkers) {
  v1::ScoreBatch batch;
  batch.set_sequence(9);
  EXPECT_EQ(DescribeBatch(batch), "batch (no worker_id, sequence 9)");
  batch.set_worker_id(std::string(200, 'w'));
  const std::string described = DescribeBatch(batch);
  EXPECT_LT(described.size(), 120u);
  EXPECT_THAT(described, HasSubstr("...\""));
}

}  // namespace
}  // namespace fisherd::server
