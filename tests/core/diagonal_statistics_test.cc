// The diagonal estimator against closed forms: Bernoulli, Poisson, Gaussian.
#include <cmath>
#include <random>

#include "core/session.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/core/test_util.h"

namespace fisherd {
namespace {

using ::testing::HasSubstr;
using testing::Prepare;
using testing::RowMatrixF;

SessionOptions Diagonal(int64_t dim, bool centered = false) {
  SessionOptions options;
  options.dim = dim;
  options.representation = Representation::kDiagonal;
  options.centered = centered;
  return options;
}

Eigen::VectorXd Entries(Session& session) {
  Eigen::VectorXd diagonal(session.options().dim);
  EXPECT_TRUE(session.CopyEntries(0, diagonal.size(), diagonal.data()).ok());
  return diagonal;
}

// Column 0: Bernoulli with logit t, s = y - p, F = p(1-p), Var(s^2) = p(1-p)(1-2p)^2...
// bounded by 1/16. Column 1: Poisson with log-rate, s = y - lambda, F = lambda,
// Var(s^2) = lambda + 2 lambda^2 (fourth central moment minus lambda^2).
// Column 2: Gaussian in (mu) with sigma = 2: F = 1/4, Var(s^2) = 2/16.
// Each checked within 5 standard errors.
TEST(DiagonalStatisticsTest, ScoresConvergeToClosedForms) {
  const double p = 0.3, rate = 2.5, sigma = 2.0;
  const int n = 200000;
  std::mt19937_64 rng(53);
  std::bernoulli_distribution bernoulli(p);
  std::poisson_distribution<int> poisson(rate);
  std::normal_distribution<double> normal;
  RowMatrixF rows(n, 3);
  for (int i = 0; i < n; ++i) {
    rows(i, 0) = static_cast<float>(bernoulli(rng) - p);
    rows(i, 1) = static_cast<float>(poisson(rng) - rate);
    rows(i, 2) = static_cast<float>(normal(rng) / sigma);
  }
  Session session(Diagonal(3));
  session.AddScores("w", 1, Prepare(rows.topRows(n / 2), Representation::kDiagonal));
  session.AddScores("w", 2, Prepare(rows.bottomRows(n / 2), Representation::kDiagonal));
  const Eigen::VectorXd f = Entries(session);
  const double root_n = std::sqrt(static_cast<double>(n));
  EXPECT_NEAR(f[0], p * (1 - p), 5 * 0.25 / root_n);
  EXPECT_NEAR(f[1], rate, 5 * std::sqrt(rate + 2 * rate * rate) / root_n);
  EXPECT_NEAR(f[2], 1 / (sigma * sigma), 5 * std::sqrt(2.0) / (sigma * sigma) / root_n);
}

TEST(DiagonalStatisticsTest, StepDividesByTheDampedDiagonal) {
  RowMatrixF rows(2, 3);
  rows << 1, 2, -3, 3, 0, 1;
  for (bool centered : {false, true}) {
    Session session(Diagonal(3, centered));
    session.AddScores("", 0, Prepare(rows, Representation::kDiagonal, {1.0f, 3.0f}));
    Eigen::Vector3d expected_f;
    const Eigen::MatrixXd reference = testing::ReferenceFisher(rows, {1.0f, 3.0f}, centered);
    expected_f = reference.diagonal();
    EXPECT_LT((Entries(session) - expected_f).norm(), 1e-14);

    StepOptions options;
    options.damping = 0.5;
    options.kl_budget = 0.01;
    options.skip_decay = true;
    const Eigen::Vector3d g(1, -2, 0.5);
    absl::StatusOr<StepResult> step = session.Step(g, options);
    ASSERT_TRUE(step.ok()) << step.status();
    const Eigen::Vector3d n = g.cwiseQuotient((expected_f.array() + 0.5).matrix());
    EXPECT_LT((step->natural_gradient - n).norm(), 1e-14);
    EXPECT_EQ(step->solver.method, "diagonal");
    const Eigen::Vector3d damped = expected_f.array() + 0.5;
    EXPECT_NEAR(0.5 * step->update.dot(damped.cwiseProduct(step->update)), 0.01, 1e-15);
    EXPECT_NEAR(step->predicted_kl, 0.5 * step->update.dot(expected_f.cwiseProduct(step->update)),
                1e-15);

    absl::StatusOr<FisherVectorProductResult> fvp = session.FisherVectorProduct(g);
    ASSERT_TRUE(fvp.ok());
    EXPECT_LT((fvp->product - expected_f.cwiseProduct(g)).norm(), 1e-14);
  }
}

TEST(DiagonalStatisticsTest, AZeroEntryIsSingularWithoutDamping) {
  RowMatrixF rows(2, 3);
  rows << 1, 0, -3, 3, 0, 1;  // parameter 1 never moves its score
  Session session(Diagonal(3));
  session.AddScores("", 0, Prepare(rows, Representation::kDiagonal));
  absl::StatusOr<StepResult> step = session.Step(Eigen::Vector3d(1, 1, 1), {});
  ASSERT_EQ(step.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(step.status().message(), HasSubstr("entry 1"));
  StepOptions options;
  options.damping = 1e-2;
  EXPECT_TRUE(session.Step(Eigen::Vector3d(1, 1, 1), options).ok());
}

TEST(DiagonalStatisticsTest, SummaryIsExactForADiagonal) {
  RowMatrixF rows(1, 3);
  rows << 1, 2, 4;
  Session session(Diagonal(3));
  session.AddScores("", 0, Prepare(rows, Representation::kDiagonal));
  absl::StatusOr<FisherSummary> summary = session.Summarize(true);
  ASSERT_TRUE(summary.ok());
  EXPECT_DOUBLE_EQ(summary->trace, 21);
  EXPECT_DOUBLE_EQ(summary->frobenius_norm, std::sqrt(1 + 16 + 256));
  EXPECT_DOUBLE_EQ(summary->min_eigenvalue, 1);
  EXPECT_DOUBLE_EQ(summary->max_eigenvalue, 16);
  EXPECT_DOUBLE_EQ(summary->condition_number, 16);
  EXPECT_EQ(session.EntriesPerRow(), 1);
}

}  // namespace
}  // namespace fisherd
