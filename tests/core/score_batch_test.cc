#include "core/score_batch.h"

#include <cmath>
#include <limits>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/core/test_util.h"

namespace fisherd {
namespace {

using ::testing::HasSubstr;
using testing::RowMatrixF;

TEST(ValidateScoresTest, NamesTheBadEntry) {
  RowMatrixF rows = RowMatrixF::Ones(3, 4);
  ScoreBatchView view{3, 4, rows.data(), nullptr};
  EXPECT_TRUE(ValidateScores(view).ok());

  rows(2, 1) = std::numeric_limits<float>::quiet_NaN();
  absl::Status status = ValidateScores(view);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("row 2, column 1"));
  EXPECT_THAT(status.message(), HasSubstr("NaN"));

  rows(2, 1) = -std::numeric_limits<float>::infinity();
  EXPECT_THAT(ValidateScores(view).message(), HasSubstr("infinite"));
  rows(2, 1) = 0.0f;

  const float weights[3] = {1.0f, -0.5f, 2.0f};
  view.weights = weights;
  EXPECT_THAT(ValidateScores(view).message(), HasSubstr("weights[1]"));

  view.weights = nullptr;
  view.rows = 0;
  EXPECT_THAT(ValidateScores(view).message(), HasSubstr("rows"));
}

TEST(PrepareBatchTest, DenseRowsCarryTheSquareRootOfTheirWeight) {
  RowMatrixF rows(2, 2);
  rows << 1, 2, 3, 4;
  const PreparedBatch batch = testing::Prepare(rows, Representation::kDense, {4.0f, 0.25f});
  EXPECT_EQ(batch.rows, 2);
  EXPECT_DOUBLE_EQ(batch.weight_sum, 4.25);
  EXPECT_DOUBLE_EQ(batch.root_weighted(0, 1), 4.0);  // sqrt(4) * 2
  EXPECT_DOUBLE_EQ(batch.root_weighted(1, 0), 1.5);  // sqrt(0.25) * 3
  EXPECT_DOUBLE_EQ(batch.weighted_sum[0], 4.0 * 1 + 0.25 * 3);
  EXPECT_DOUBLE_EQ(batch.weighted_sum[1], 4.0 * 2 + 0.25 * 4);
}

TEST(PrepareBatchTest, DiagonalKeepsWeightedSquares) {
  RowMatrixF rows(2, 2);
  rows << 1, 2, 3, 4;
  const PreparedBatch batch = testing::Prepare(rows, Representation::kDiagonal, {2.0f, 1.0f});
  EXPECT_DOUBLE_EQ(batch.weighted_squares[0], 2.0 * 1 + 9);
  EXPECT_DOUBLE_EQ(batch.weighted_squares[1], 2.0 * 4 + 16);
  EXPECT_DOUBLE_EQ(batch.weighted_sum[1], 2.0 * 2 + 4);
  EXPECT_EQ(batch.root_weighted.size(), 0);
}

}  // namespace
}  // namespace fisherd
