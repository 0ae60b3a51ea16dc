#include "core/options.h"

#include <cmath>
#include <limits>

#include "core/session.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fisherd {
namespace {

using ::testing::HasSubstr;

SessionOptions Valid() {
  SessionOptions options;
  options.dim = 3;
  return options;
}

TEST(SessionOptionsTest, DefaultsWithADimAreValid) { EXPECT_TRUE(Valid().Validate().ok()); }

TEST(SessionOptionsTest, RejectsEachBadFieldByName) {
  SessionOptions options = Valid();
  options.dim = 0;
  EXPECT_THAT(options.Validate().message(), HasSubstr("dim"));

  options = Valid();
  options.decay = 0.0;
  EXPECT_THAT(options.Validate().message(), HasSubstr("decay"));
  options.decay = 1.5;
  EXPECT_THAT(options.Validate().message(), HasSubstr("decay"));
  options.decay = std::nan("");
  EXPECT_THAT(options.Validate().message(), HasSubstr("decay"));

  options = Valid();
  options.damping = -1e-3;
  EXPECT_THAT(options.Validate().message(), HasSubstr("damping"));
  options.damping = std::numeric_limits<double>::infinity();
  EXPECT_EQ(options.Validate().code(), absl::StatusCode::kInvalidArgument);
}

TEST(StepOptionsTest, RejectsNegativeOrNonFiniteValues) {
  StepOptions options;
  EXPECT_TRUE(options.Validate().ok());
  options.damping = -1.0;
  EXPECT_THAT(options.Validate().message(), HasSubstr("damping"));
  options = StepOptions();
  options.learning_rate = -0.1;
  EXPECT_THAT(options.Validate().message(), HasSubstr("learning_rate"));
  options = StepOptions();
  options.kl_budget = std::nan("");
  EXPECT_THAT(options.Validate().message(), HasSubstr("kl_budget"));
}

TEST(EstimateSessionBytesTest, DenseIsQuadraticDiagonalLinear) {
  SessionOptions options = Valid();
  options.dim = 4096;
  EXPECT_GE(EstimateSessionBytes(options), 4096ull * 4096 * 8);
  EXPECT_LE(EstimateSessionBytes(options), 4096ull * 4096 * 8 * 11 / 10);
  options.representation = Representation::kDiagonal;
  EXPECT_LE(EstimateSessionBytes(options), 4096ull * 8 * 16);
  options.representation = Representation::kDense;
  options.dim = int64_t{1} << 40;
  EXPECT_EQ(EstimateSessionBytes(options), UINT64_MAX);
}

TEST(StepSizeTest, FollowsTheRuleOfTheDesign) {
  StepOptions options;
  EXPECT_DOUBLE_EQ(StepSize(options, 4.0), 1.0);  // nothing set: the plain natural gradient
  options.learning_rate = 0.1;
  EXPECT_DOUBLE_EQ(StepSize(options, 4.0), 0.1);
  options = StepOptions();
  options.kl_budget = 0.02;
  EXPECT_DOUBLE_EQ(StepSize(options, 4.0), std::sqrt(2 * 0.02 / 4.0));
  options.learning_rate = 0.05;  // caps sqrt(0.01) = 0.1
  EXPECT_DOUBLE_EQ(StepSize(options, 4.0), 0.05);
  options.learning_rate = 0.5;  // does not bind
  EXPECT_DOUBLE_EQ(StepSize(options, 4.0), 0.1);
  EXPECT_DOUBLE_EQ(StepSize(options, 0.0), 0.5);  // zero gradient: the update is zero anyway
}

}  // namespace
}  // namespace fisherd
