// The low-rank start of a dense session (core/dense_statistics.h): while a session holds
// at most dim / kLowRankRowsPerDim rows it keeps them instead of M and steps by the
// Woodbury identity. Every answer is checked against F built explicitly from the same
// float rows and solved densely, and against a session that went dense at once.
#include <cmath>
#include <limits>
#include <random>

#include "Eigen/Cholesky"
#include "Eigen/Eigenvalues"
#include "core/dense_statistics.h"
#include "core/session.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/core/test_util.h"

namespace fisherd {
namespace {

using testing::DenseEstimate;
using ::testing::HasSubstr;
using testing::Prepare;
using testing::ReferenceFisher;
using testing::RelativeError;
using testing::RowMatrixF;

constexpr int kDim = 256;  // holds up to kDim / kLowRankRowsPerDim = 16 rows

SessionOptions Dense(bool centered, double damping, double decay = 1.0) {
  SessionOptions options;
  options.dim = kDim;
  options.centered = centered;
  options.damping = damping;
  options.decay = decay;
  return options;
}

RowMatrixF RandomRows(int rows, std::mt19937_64& rng) {
  std::normal_distribution<float> normal;
  RowMatrixF out(rows, kDim);
  for (float& x : out.reshaped()) x = normal(rng) + 0.3f;  // a nonzero mean for centering
  return out;
}

std::vector<float> RandomWeights(int rows, std::mt19937_64& rng) {
  std::uniform_real_distribution<float> uniform(0.25f, 2.0f);
  std::vector<float> weights(rows);
  for (float& w : weights) w = uniform(rng);
  return weights;
}

void Stream(Session& session, const RowMatrixF& rows, const std::vector<float>& weights = {}) {
  session.AddScores("", 0, Prepare(rows, Representation::kDense, weights));
}

RowMatrixF Stack(const RowMatrixF& a, const RowMatrixF& b) {
  RowMatrixF all(a.rows() + b.rows(), kDim);
  all << a, b;
  return all;
}

std::vector<float> Concat(std::vector<float> a, const std::vector<float>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

double ConditionNumber(const Eigen::MatrixXd& spd) {
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eigen(spd);
  return eigen.eigenvalues().maxCoeff() / eigen.eigenvalues().minCoeff();
}

// A stable solve is off the exact answer by a small multiple of eps * cond, and so is its
// relative residual; both are checked at 10 eps * cond (2.2e-15 * cond), with cond
// computed here. Measured: 1.5e-12 from the dense solve at cond 5e4, 2.7e-15 at 1e2.
TEST(LowRankStartTest, StepMatchesADenseSolveOfTheSameRows) {
  std::mt19937_64 rng(101);
  const RowMatrixF first = RandomRows(5, rng), second = RandomRows(7, rng);
  const std::vector<float> w1 = RandomWeights(5, rng), w2 = RandomWeights(7, rng);
  const Eigen::VectorXd g = Eigen::VectorXd::Random(kDim);
  for (bool centered : {false, true}) {
    for (double damping : {0.5, 1e-3}) {
      SCOPED_TRACE(::testing::Message() << "centered " << centered << " damping " << damping);
      Session session(Dense(centered, damping));
      Stream(session, first, w1);
      Stream(session, second, w2);
      const Eigen::MatrixXd damped =
          ReferenceFisher(Stack(first, second), Concat(w1, w2), centered) +
          damping * Eigen::MatrixXd::Identity(kDim, kDim);
      const Eigen::VectorXd expected = damped.llt().solve(g);
      const double cond = ConditionNumber(damped);

      StepOptions options;
      options.skip_decay = true;
      absl::StatusOr<StepResult> step = session.Step(g, options);
      ASSERT_TRUE(step.ok()) << step.status();
      EXPECT_EQ(step->solver.method, "woodbury");
      EXPECT_FALSE(step->solver.factorization_cached);
      const double tolerance = 10 * std::numeric_limits<double>::epsilon() * cond;
      EXPECT_LT((step->natural_gradient - expected).norm() / expected.norm(), tolerance);
      EXPECT_LT(step->solver.residual, tolerance);
      EXPECT_NEAR(step->natural_norm_sq, g.dot(expected), tolerance * g.dot(expected));

      absl::StatusOr<StepResult> again = session.Step(g, options);
      ASSERT_TRUE(again.ok());
      EXPECT_TRUE(again->solver.factorization_cached);
      EXPECT_EQ(again->natural_gradient, step->natural_gradient);
    }
  }
}

TEST(LowRankStartTest, NewRowsOrAnotherDampingRefactor) {
  std::mt19937_64 rng(103);
  Session session(Dense(false, 0.1));
  Stream(session, RandomRows(4, rng));
  const Eigen::VectorXd g = Eigen::VectorXd::Random(kDim);
  StepOptions options;
  options.skip_decay = true;
  ASSERT_TRUE(session.Step(g, options).ok());
  EXPECT_TRUE(session.Step(g, options)->solver.factorization_cached);
  options.damping = 0.2;
  EXPECT_FALSE(session.Step(g, options)->solver.factorization_cached);
  Stream(session, RandomRows(4, rng));
  absl::StatusOr<StepResult> after_rows = session.Step(g, options);
  ASSERT_TRUE(after_rows.ok());
  EXPECT_FALSE(after_rows->solver.factorization_cached);
  EXPECT_EQ(after_rows->solver.method, "woodbury");
}

// Fewer rows than dim: F has rank <= rows, so lambda = 0 is refused as in the dense path.
TEST(LowRankStartTest, NoDampingIsSingular) {
  std::mt19937_64 rng(107);
  for (bool centered : {false, true}) {
    Session session(Dense(centered, 0.0));
    Stream(session, RandomRows(6, rng));
    absl::StatusOr<StepResult> step = session.Step(Eigen::VectorXd::Ones(kDim), {});
    EXPECT_EQ(step.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(step.status().message(), HasSubstr("positive damping"));
  }
}

// One sample has zero covariance: centered, F = 0 and the step is g / lambda exactly
// (the reflected rows are empty, so the small system has size 0).
TEST(LowRankStartTest, OneCenteredSampleStepsByTheDampingAlone) {
  std::mt19937_64 rng(131);
  Session session(Dense(/*centered=*/true, 0.5));
  Stream(session, RandomRows(1, rng));
  const Eigen::VectorXd g = Eigen::VectorXd::Random(kDim);
  StepOptions options;
  options.skip_decay = true;
  absl::StatusOr<StepResult> step = session.Step(g, options);
  ASSERT_TRUE(step.ok()) << step.status();
  EXPECT_EQ(step->solver.method, "woodbury");
  EXPECT_LT((step->natural_gradient - g / 0.5).norm(), 1e-15 * (g / 0.5).norm());
  EXPECT_LT(DenseEstimate(session).cwiseAbs().maxCoeff(), 1e-15);
}

// The batch that passes dim / 16 rows folds the held rows into M: the session is then
// exactly one that received everything at once.
TEST(LowRankStartTest, PassingTheBoundFoldsTheRowsIntoM) {
  std::mt19937_64 rng(109);
  const int held = kDim / kLowRankRowsPerDim;
  const RowMatrixF first = RandomRows(held, rng), second = RandomRows(3, rng);
  const std::vector<float> w1 = RandomWeights(held, rng), w2 = RandomWeights(3, rng);
  const Eigen::VectorXd g = Eigen::VectorXd::Random(kDim);
  StepOptions options;
  options.skip_decay = true;
  for (bool centered : {false, true}) {
    Session grown(Dense(centered, 0.05)), direct(Dense(centered, 0.05));
    Stream(grown, first, w1);
    EXPECT_EQ(grown.Step(g, options)->solver.method, "woodbury");  // exactly at the bound
    Stream(grown, second, w2);
    Stream(direct, Stack(first, second), Concat(w1, w2));

    const Eigen::MatrixXd reference =
        ReferenceFisher(Stack(first, second), Concat(w1, w2), centered);
    EXPECT_LT(RelativeError(DenseEstimate(grown), reference), 1e-14);
    absl::StatusOr<StepResult> a = grown.Step(g, options), b = direct.Step(g, options);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ(a->solver.method, "cholesky");
    EXPECT_LT((a->natural_gradient - b->natural_gradient).norm(),
              1e-12 * b->natural_gradient.norm());
  }
}

TEST(LowRankStartTest, EntriesProductsAndSummaryComeFromTheHeldRows) {
  std::mt19937_64 rng(113);
  const RowMatrixF rows = RandomRows(9, rng);
  const std::vector<float> weights = RandomWeights(9, rng);
  for (bool centered : {false, true}) {
    SCOPED_TRACE(centered ? "centered" : "uncentered");
    Session session(Dense(centered, 0.1));
    Stream(session, rows, weights);
    const Eigen::MatrixXd f = ReferenceFisher(rows, weights, centered);
    EXPECT_LT(RelativeError(DenseEstimate(session), f), 1e-14);

    std::vector<double> middle(3 * kDim);
    ASSERT_TRUE(session.CopyEntries(100, 3, middle.data()).ok());
    for (int r = 0; r < 3; ++r) {
      for (int c = 0; c < kDim; ++c) {
        EXPECT_NEAR(middle[r * kDim + c], f(100 + r, c), 1e-14 * f.norm());
      }
    }

    const Eigen::VectorXd v = Eigen::VectorXd::Random(kDim);
    absl::StatusOr<FisherVectorProductResult> fvp = session.FisherVectorProduct(v);
    ASSERT_TRUE(fvp.ok());
    EXPECT_LT((fvp->product - f * v).norm(), 1e-13 * (f * v).norm());

    absl::StatusOr<FisherSummary> summary = session.Summarize(true);
    ASSERT_TRUE(summary.ok());
    Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eigen(f);
    EXPECT_NEAR(summary->trace, f.trace(), 1e-12 * f.trace());
    EXPECT_NEAR(summary->frobenius_norm, f.norm(), 1e-12 * f.norm());
    EXPECT_NEAR(summary->max_eigenvalue, eigen.eigenvalues().maxCoeff(),
                1e-12 * eigen.eigenvalues().maxCoeff());
    EXPECT_NEAR(summary->min_eigenvalue, 0.0, 1e-12 * eigen.eigenvalues().maxCoeff());
  }
}

// Decay while holding rows: old rows weigh rho, and after enough decays to fold the
// stored scale (below 1e-150) the estimate is the newest rows' alone, with no overflow.
TEST(LowRankStartTest, DecayWeighsHeldRowsByRho) {
  std::mt19937_64 rng(127);
  const RowMatrixF old_rows = RandomRows(4, rng), new_rows = RandomRows(5, rng);
  for (bool centered : {false, true}) {
    Session session(Dense(centered, 1.0, /*decay=*/0.25));
    Stream(session, old_rows);
    ASSERT_TRUE(session.Step(Eigen::VectorXd::Ones(kDim), {}).ok());  // decays by 0.25
    Stream(session, new_rows);
    std::vector<float> weights(9, 1.0f);
    for (int i = 0; i < 4; ++i) weights[i] = 0.25f;
    EXPECT_LT(RelativeError(DenseEstimate(session),
                            ReferenceFisher(Stack(old_rows, new_rows), weights, centered)),
              1e-13);
  }

  Session session(Dense(false, 1e-3, /*decay=*/0.5));
  Stream(session, old_rows);
  for (int i = 0; i < 600; ++i) ASSERT_TRUE(session.Step(Eigen::VectorXd::Ones(kDim), {}).ok());
  Stream(session, new_rows);
  EXPECT_LT(RelativeError(DenseEstimate(session), ReferenceFisher(new_rows, {}, false)), 1e-14);
  absl::StatusOr<StepResult> step = session.Step(Eigen::VectorXd::Ones(kDim), {});
  ASSERT_TRUE(step.ok());
  EXPECT_TRUE(step->natural_gradient.allFinite());
}

// A batch prepared for the float32 kernel is held as float64 rows all the same: with unit
// weights its rows are the float64 batch's exactly, and so is every answer.
TEST(LowRankStartTest, Float32BatchesAreHeldExactly) {
  std::mt19937_64 rng(137);
  const RowMatrixF rows = RandomRows(6, rng);
  ScoreBatchView view;
  view.rows = rows.rows();
  view.dim = rows.cols();
  view.scores = rows.data();
  const Eigen::VectorXd g = Eigen::VectorXd::Random(kDim);
  StepOptions options;
  options.skip_decay = true;
  for (bool centered : {false, true}) {
    Session f32(Dense(centered, 0.1)), f64(Dense(centered, 0.1));
    f32.AddScores("", 0, PrepareBatch(view, Representation::kDense, DenseKernel::kFloat32));
    f64.AddScores("", 0, PrepareBatch(view, Representation::kDense, DenseKernel::kFloat64));
    EXPECT_EQ(DenseEstimate(f32), DenseEstimate(f64));
    absl::StatusOr<StepResult> a = f32.Step(g, options), b = f64.Step(g, options);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ(a->solver.method, "woodbury");
    EXPECT_EQ(a->natural_gradient, b->natural_gradient);
  }
}

}  // namespace
}  // namespace fisherd
