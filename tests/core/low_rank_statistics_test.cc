// LowRankStatistics (core/low_rank_statistics.h): a LOW_RANK block's sliding window and
// the dense session's low-rank start, against a reference kept in the test: the same
// float rows with their weights in float64, decayed and evicted by hand, F formed
// densely and solved by Cholesky.
#include <cmath>
#include <deque>
#include <limits>
#include <random>
#include <vector>

#include "Eigen/Cholesky"
#include "Eigen/Eigenvalues"
#include "core/dense_statistics.h"
#include "core/low_rank_statistics.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/core/test_util.h"

namespace fisherd {
namespace {

using ::testing::HasSubstr;
using testing::Prepare;
using testing::RowMatrixF;

// Every comparison below is relative, at 1e-10. Entries, products, traces and norms are
// sums of a few dozen float64 products formed in another order than the reference's:
// measured at most 1e-15, so 1e-10 leaves five orders of margin yet catches any wrong weight,
// row or scale (those are off by 1e-2 or more). A solve is off the exact answer by a small
// multiple of eps * cond(F + lambda I) for both the Woodbury and the reference Cholesky;
// each test's damping keeps cond below 1e4 (checked), so 10 eps cond < 2.3e-11 < 1e-10.
constexpr double kTolerance = 1e-10;
constexpr double kMaxCondition = 1e4;

// The rows a statistics should hold, by hand: a deque of (score, weight), the oldest
// first, at most max_rows of them (unbounded for the dense start).
class ReferenceWindow {
 public:
  ReferenceWindow(int64_t dim, size_t max_rows, bool centered)
      : dim_(dim), max_rows_(max_rows), centered_(centered) {}

  void Add(const RowMatrixF& rows, const std::vector<float>& weights) {
    for (Eigen::Index i = 0; i < rows.rows(); ++i) {
      rows_.push_back({rows.row(i).transpose().cast<double>(),
                       weights.empty() ? 1.0 : static_cast<double>(weights[i])});
      if (rows_.size() > max_rows_) rows_.pop_front();
    }
  }
  void Decay(double rho) {
    for (Row& row : rows_) row.weight *= rho;
  }
  double WeightSum() const {
    double w = 0.0;
    for (const Row& row : rows_) w += row.weight;
    return w;
  }
  size_t size() const { return rows_.size(); }
  // M / W, less the mean's outer product when centered.
  Eigen::MatrixXd Fisher() const {
    Eigen::MatrixXd m = Eigen::MatrixXd::Zero(dim_, dim_);
    Eigen::VectorXd mean = Eigen::VectorXd::Zero(dim_);
    for (const Row& row : rows_) {
      m += row.weight * row.score * row.score.transpose();
      mean += row.weight * row.score;
    }
    const double w = WeightSum();
    m /= w;
    mean /= w;
    if (centered_) m -= mean * mean.transpose();
    return m;
  }

 private:
  struct Row {
    Eigen::VectorXd score;
    double weight;
  };
  const int64_t dim_;
  const size_t max_rows_;
  const bool centered_;
  std::deque<Row> rows_;
};

RowMatrixF RandomRows(int rows, int dim, std::mt19937_64& rng) {
  std::normal_distribution<float> normal;
  RowMatrixF out(rows, dim);
  for (float& x : out.reshaped()) x = normal(rng) + 0.3f;  // a nonzero mean for centering
  return out;
}

std::vector<float> RandomWeights(int rows, std::mt19937_64& rng) {
  std::uniform_real_distribution<float> uniform(0.25f, 2.0f);
  std::vector<float> weights(rows);
  for (float& w : weights) w = uniform(rng);
  return weights;
}

void AddBoth(ScoreStatistics& statistics, ReferenceWindow& reference, const RowMatrixF& rows,
             const std::vector<float>& weights) {
  statistics.Add(Prepare(rows, Representation::kDense, weights));
  reference.Add(rows, weights);
}

Eigen::MatrixXd CopyAll(const ScoreStatistics& statistics) {
  const int64_t dim = statistics.dim();
  Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> f(dim, dim);
  statistics.CopyEntries(0, dim, f.data());
  return f;
}

double RelativeError(const Eigen::VectorXd& actual, const Eigen::VectorXd& expected) {
  return (actual - expected).norm() / expected.norm();
}

// (F + damping I)^-1 g by Cholesky, after checking the damping keeps the solve within
// kTolerance (see above).
Eigen::VectorXd ReferenceSolve(const Eigen::MatrixXd& f, const Eigen::VectorXd& g, double damping) {
  const Eigen::MatrixXd damped = f + damping * Eigen::MatrixXd::Identity(f.rows(), f.cols());
  const Eigen::VectorXd eigenvalues =
      Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd>(damped, Eigen::EigenvaluesOnly).eigenvalues();
  EXPECT_LT(eigenvalues.maxCoeff() / eigenvalues.minCoeff(), kMaxCondition);
  return damped.llt().solve(g);
}

// Every answer of `statistics` against `reference`: F (all of it, and three middle rows),
// W, F v, trace, Frobenius norm, extreme eigenvalues and the step.
void ExpectMatches(ScoreStatistics& statistics, const ReferenceWindow& reference, double damping) {
  const int64_t dim = statistics.dim();
  const Eigen::MatrixXd f = reference.Fisher();
  ASSERT_TRUE(statistics.CheckReady("a test").ok());
  EXPECT_NEAR(statistics.weight_sum(), reference.WeightSum(), kTolerance * reference.WeightSum());
  EXPECT_LT((CopyAll(statistics) - f).norm(), kTolerance * f.norm());

  const int64_t begin = dim / 3;
  std::vector<double> rows(3 * dim);
  statistics.CopyEntries(begin, 3, rows.data());
  const Eigen::Map<const Eigen::Matrix<double, 3, Eigen::Dynamic, Eigen::RowMajor>> middle(
      rows.data(), 3, dim);
  EXPECT_LT((middle - f.middleRows(begin, 3)).norm(), kTolerance * f.norm());

  const Eigen::VectorXd v = Eigen::VectorXd::LinSpaced(dim, -1.0, 2.0);
  EXPECT_LT(RelativeError(statistics.Multiply(v), f * v), kTolerance);

  absl::StatusOr<FisherSummary> summary = statistics.Summarize(/*with_eigenvalues=*/true);
  ASSERT_TRUE(summary.ok()) << summary.status();
  const Eigen::VectorXd eigenvalues =
      Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd>(f, Eigen::EigenvaluesOnly).eigenvalues();
  const double largest = eigenvalues.maxCoeff();
  EXPECT_EQ(summary->dim, dim);
  EXPECT_NEAR(summary->trace, f.trace(), kTolerance * f.trace());
  EXPECT_NEAR(summary->frobenius_norm, f.norm(), kTolerance * f.norm());
  EXPECT_NEAR(summary->max_eigenvalue, largest, kTolerance * largest);
  EXPECT_NEAR(summary->min_eigenvalue, eigenvalues.minCoeff(), kTolerance * largest);

  const Eigen::VectorXd g = Eigen::VectorXd::LinSpaced(dim, 1.0, -0.5);
  absl::StatusOr<SolveResult> solved = statistics.Solve(g, damping);
  ASSERT_TRUE(solved.ok()) << solved.status();
  EXPECT_EQ(solved->summary.method, "woodbury");
  EXPECT_LT(RelativeError(solved->natural_gradient, ReferenceSolve(f, g, damping)), kTolerance);
  EXPECT_LT(solved->summary.residual, kTolerance);
}

BlockOptions LowRankBlock(int64_t dim, int64_t max_rows) {
  BlockOptions block;
  block.name = "window";
  block.kind = BlockKind::kLowRank;
  block.dim = dim;
  block.max_rows = max_rows;
  return block;
}

SessionOptions Centered(bool centered) {
  SessionOptions session;
  session.centered = centered;
  return session;
}

// --- the cached factor across decays ----------------------------------------------

// The bug this suite was written for: a dense session holding few rows, decay 0.5, each
// step decays. After about 500 steps the stored scale fell below 1e-150 and was folded
// into the held rows, but the cached Woodbury factor (whose diagonal holds lambda / c,
// c = scale / W) was kept, and steps came out off by several percent (measured here on
// the old code: 0.30 uncentered, 0.14 centered, from step 499 on; now 5e-14 at cond
// 1.9e3, within 10 eps cond). Decay must never change n: between Adds every
// step's n is compared with a dense solve of the same rows and with the first step's,
// bit for bit. Rows also arrive after the scale has fallen far (step 700), so the fold's
// own arithmetic is checked too.
void StepThroughAThousandDecays(ScoreStatistics& statistics, ReferenceWindow& reference,
                                bool centered) {
  constexpr double kDamping = 0.05, kDecay = 0.5;
  std::mt19937_64 rng(centered ? 211 : 223);
  const int64_t dim = statistics.dim();
  AddBoth(statistics, reference, RandomRows(6, dim, rng), RandomWeights(6, rng));
  const Eigen::VectorXd g = Eigen::VectorXd::LinSpaced(dim, 1.0, -0.5);
  Eigen::VectorXd expected, first;
  for (int step = 0; step < 1000; ++step) {
    SCOPED_TRACE(::testing::Message() << "step " << step);
    if (step == 700) {
      AddBoth(statistics, reference, RandomRows(4, dim, rng), RandomWeights(4, rng));
      expected = Eigen::VectorXd();
    }
    if (expected.size() == 0) {
      expected = ReferenceSolve(reference.Fisher(), g, kDamping);
      first = Eigen::VectorXd();
    }
    ASSERT_TRUE(statistics.CheckReady("a step").ok());
    absl::StatusOr<SolveResult> solved = statistics.Solve(g, kDamping);
    ASSERT_TRUE(solved.ok()) << solved.status();
    ASSERT_LT(RelativeError(solved->natural_gradient, expected), kTolerance);
    if (first.size() == 0) {
      first = solved->natural_gradient;
    } else {
      ASSERT_TRUE(solved->summary.factorization_cached);
      ASSERT_EQ(solved->natural_gradient, first);
    }
    statistics.Decay(kDecay);
    reference.Decay(kDecay);
  }
  EXPECT_NEAR(statistics.weight_sum(), reference.WeightSum(), kTolerance * reference.WeightSum());
}

TEST(LowRankStatisticsTest, DenseStartStepsMatchADenseSolveThroughAThousandDecays) {
  for (bool centered : {false, true}) {
    SCOPED_TRACE(centered ? "centered" : "uncentered");
    SessionOptions options;
    options.dim = 256;  // holds up to 16 rows
    options.centered = centered;
    DenseStatistics statistics(options);
    ReferenceWindow reference(options.dim, SIZE_MAX, centered);
    StepThroughAThousandDecays(statistics, reference, centered);
  }
}

TEST(LowRankStatisticsTest, WindowStepsMatchADenseSolveThroughAThousandDecays) {
  for (bool centered : {false, true}) {
    SCOPED_TRACE(centered ? "centered" : "uncentered");
    // 6 rows, then 4 more: the window of 8 drops the 2 oldest at step 700.
    LowRankStatistics statistics(LowRankBlock(256, 8), Centered(centered));
    ReferenceWindow reference(256, 8, centered);
    StepThroughAThousandDecays(statistics, reference, centered);
    EXPECT_EQ(statistics.row_count(), 8);
    EXPECT_EQ(statistics.sample_count(), 10u);
  }
}

// --- the sliding window -------------------------------------------------------------

// 20 rows in batches of 3, 1, 5, 2, 6 and 3 into a window of 8, decayed between batches,
// a few rows of weight 0: after every batch the statistics describe exactly the latest
// 8 rows with their decayed weights. dim 12 holds fewer rows than dim; dim 5 more.
TEST(LowRankStatisticsTest, WindowHoldsTheLatestRowsWithTheirDecayedWeights) {
  const std::vector<int> batches = {3, 1, 5, 2, 6, 3};
  const std::vector<double> decays = {0.9, 1.0, 0.5, 0.8, 0.7, 1.0};
  for (int dim : {12, 5}) {
    for (bool centered : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "dim " << dim << (centered ? " centered" : ""));
      std::mt19937_64 rng(307 + dim);
      LowRankStatistics statistics(LowRankBlock(dim, 8), Centered(centered));
      ReferenceWindow reference(dim, 8, centered);
      uint64_t streamed = 0;
      for (size_t b = 0; b < batches.size(); ++b) {
        SCOPED_TRACE(::testing::Message() << "after batch " << b);
        std::vector<float> weights = RandomWeights(batches[b], rng);
        if (b == 2) weights[1] = 0.0f;
        if (b == 4) weights[5] = 0.0f;
        AddBoth(statistics, reference, RandomRows(batches[b], dim, rng), weights);
        streamed += batches[b];
        EXPECT_EQ(statistics.sample_count(), streamed);
        EXPECT_EQ(statistics.row_count(), static_cast<int64_t>(reference.size()));
        ExpectMatches(statistics, reference, /*damping=*/0.2);
        statistics.Decay(decays[b]);
        reference.Decay(decays[b]);
      }
      EXPECT_EQ(statistics.row_count(), 8);
    }
  }
}

// A batch of 19 rows into a window of 8 keeps its last 8; the next batch then overwrites
// the oldest of those.
TEST(LowRankStatisticsTest, ABatchLongerThanTheWindowKeepsItsLastRows) {
  for (bool centered : {false, true}) {
    SCOPED_TRACE(centered ? "centered" : "uncentered");
    std::mt19937_64 rng(401);
    LowRankStatistics statistics(LowRankBlock(10, 8), Centered(centered));
    ReferenceWindow reference(10, 8, centered);
    AddBoth(statistics, reference, RandomRows(5, 10, rng), RandomWeights(5, rng));
    AddBoth(statistics, reference, RandomRows(19, 10, rng), RandomWeights(19, rng));
    EXPECT_EQ(statistics.sample_count(), 24u);
    EXPECT_EQ(statistics.row_count(), 8);
    ExpectMatches(statistics, reference, 0.2);
    statistics.Decay(0.5);
    reference.Decay(0.5);
    AddBoth(statistics, reference, RandomRows(3, 10, rng), RandomWeights(3, rng));
    EXPECT_EQ(statistics.sample_count(), 27u);
    ExpectMatches(statistics, reference, 0.2);
  }
}

// Rows of weight 0 take their place in the window like any other: once the window holds
// only such rows, W = 0 and nothing can be answered, though every row is counted.
TEST(LowRankStatisticsTest, WeightZeroRowsTakeTheirPlaceInTheWindow) {
  std::mt19937_64 rng(409);
  LowRankStatistics statistics(LowRankBlock(10, 4), Centered(false));
  ReferenceWindow reference(10, 4, false);
  AddBoth(statistics, reference, RandomRows(4, 10, rng), RandomWeights(4, rng));
  AddBoth(statistics, reference, RandomRows(3, 10, rng), std::vector<float>(3, 0.0f));
  ExpectMatches(statistics, reference, 0.2);  // one weighted row left
  AddBoth(statistics, reference, RandomRows(1, 10, rng), {0.0f});
  EXPECT_EQ(statistics.weight_sum(), 0.0);
  EXPECT_EQ(statistics.sample_count(), 8u);
  const absl::Status ready = statistics.CheckReady("a step");
  EXPECT_EQ(ready.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(ready.message(), HasSubstr("8 rows"));
  AddBoth(statistics, reference, RandomRows(2, 10, rng), RandomWeights(2, rng));
  ExpectMatches(statistics, reference, 0.2);
}

// lambda = 0 is refused with fewer rows than dim (F singular) and with more (documented:
// the Woodbury identity divides by lambda).
TEST(LowRankStatisticsTest, NoDampingIsRefused) {
  std::mt19937_64 rng(419);
  for (int rows : {3, 8}) {
    LowRankStatistics statistics(LowRankBlock(5, 8), Centered(false));
    statistics.Add(Prepare(RandomRows(rows, 5, rng), Representation::kDense));
    absl::StatusOr<SolveResult> solved = statistics.Solve(Eigen::VectorXd::Ones(5), 0.0);
    EXPECT_EQ(solved.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(solved.status().message(), HasSubstr("positive damping"));
  }
}

// The rows a dense start hands over are the ones it was given, with M = scale R^T R.
TEST(LowRankStatisticsTest, RowsAndScaleGiveM) {
  std::mt19937_64 rng(421);
  LowRankStatistics statistics(12, 4, /*centered=*/false);
  ReferenceWindow reference(12, 4, false);
  AddBoth(statistics, reference, RandomRows(3, 12, rng), RandomWeights(3, rng));
  statistics.Decay(0.25);
  reference.Decay(0.25);
  const auto rows = statistics.rows();
  ASSERT_EQ(rows.rows(), 3);
  const Eigen::MatrixXd m = statistics.scale() * rows.transpose() * rows;
  const Eigen::MatrixXd expected = reference.Fisher() * reference.WeightSum();
  EXPECT_LT((m - expected).norm(), kTolerance * expected.norm());
}

}  // namespace
}  // namespace fisherd
