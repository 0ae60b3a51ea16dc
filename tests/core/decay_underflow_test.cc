// Decay without rows never underflows: dense (in its low-rank start and materialized),
// diagonal and low-rank window statistics keep raw sums and the common decay factor in
// the log domain, so a block that receives no rows (a frozen layer of a layered
// session) stays ready and answers the same F through thousands of decays. Before the
// fix, W reached 0 after 1078 halvings (about 14.5k steps at rho 0.95, 74k at 0.99) and
// every step of the session failed ("no weighted samples yet ... total weight 0").
//
// Each statistics is checked three ways: (1) after 5000 decays at 0.5 (and 200000 at
// 0.99) with no new rows, it is still ready and every answer (n, F v, F, the summary) is
// bit-identical to the one before the decays; (2) new rows then make it equal to a fresh
// statistics given only the new rows, since the old ones weigh 0.5^5000; (3) after
// moderate decay (100 halvings, 1000 decays at 0.99) the reported W is the true one.
#include <cmath>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/dense_statistics.h"
#include "core/diagonal_statistics.h"
#include "core/kronecker_statistics.h"
#include "core/low_rank_statistics.h"
#include "core/session.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/core/test_util.h"

namespace fisherd {
namespace {

using ::testing::HasSubstr;
using testing::RowMatrixF;

// Tolerances.
// - Decays alone: none. Decay touches only the log of the common factor, which no
//   computation of F reads, and the solve reuses the cached factor; so every answer is
//   compared bit for bit (EXPECT_EQ).
// - New rows after 5000 halvings: the fold multiplies the old sums by
//   exp(5000 log 0.5) = 0 exactly, so F is the new rows' F computed by the same kernels
//   (for a low-rank window, with the old rows held as exact zeros, which change only the
//   order of a few additions). Measured differences are 0 to a few ulps; at damping
//   kDamping every F_lambda here has condition below 1e4, so a solve is within
//   ~10 eps cond = 2e-11 even in the worst case and in practice ~1e-15. 1e-12 still
//   catches any surviving weight of the old rows (theirs would be 1e-2 or more had the
//   fold not happened, and NaN/inf had it overflowed).
constexpr double kNewRowsTolerance = 1e-12;
// - Reported W after moderate decay: exp(log_scale) W_raw against W0 rho^k. log_scale
//   is a sum of k rounded logs, off by at most k ulps of |log_scale| / 2 (100 halvings:
//   |log_scale| = 69, <= 3.5e-13; 1000 decays at 0.99: |log_scale| = 10, <= 4.5e-13),
//   which exp turns into the same relative error. 1e-12 covers that worst case; a wrong
//   scale or weight is off by orders of magnitude more.
constexpr double kWeightTolerance = 1e-12;
// Damping of every solve: F here has eigenvalues of order 1 to 1e2, so F + 0.1 I has
// condition below 1e4.
constexpr double kDamping = 0.1;

RowMatrixF RandomRows(int64_t rows, int64_t dim, std::mt19937_64& rng) {
  std::normal_distribution<float> normal;
  RowMatrixF out(rows, dim);
  for (float& x : out.reshaped()) x = normal(rng) + 0.3f;  // a nonzero mean for centering
  return out;
}

std::vector<float> RandomWeights(int64_t rows, std::mt19937_64& rng) {
  std::uniform_real_distribution<float> uniform(0.25f, 2.0f);
  std::vector<float> weights(rows);
  for (float& w : weights) w = uniform(rng);
  return weights;
}

// One kind of statistics under test, and how its batches are prepared.
struct Kind {
  std::string name;
  std::function<std::unique_ptr<ScoreStatistics>()> make;
  Representation representation;
  int64_t dim;
  int64_t window;                      // rows held at most (a low-rank window), 0 for all
  std::vector<int64_t> first_batches;  // rows of the batches streamed first
  std::vector<int64_t> new_batches;    // rows of the batches after the decays
};

std::vector<Kind> Kinds() {
  std::vector<Kind> kinds;
  for (bool centered : {false, true}) {
    const std::string suffix = centered ? " centered" : " uncentered";
    auto dense = [centered](int64_t dim) {
      return [centered, dim]() -> std::unique_ptr<ScoreStatistics> {
        SessionOptions options;
        options.dim = dim;
        options.centered = centered;
        return std::make_unique<DenseStatistics>(options);
      };
    };
    // dim 64 holds up to 4 rows in its low-rank start: 2 rows, then 2 more, stay there.
    kinds.push_back(
        {"dense low-rank start" + suffix, dense(64), Representation::kDense, 64, 0, {2}, {2}});
    // The same start, decayed, then materialized by the batch that overflows it: the
    // held rows go into M at the decayed scale, the fold follows.
    kinds.push_back({"dense start materialized after the decays" + suffix,
                     dense(64),
                     Representation::kDense,
                     64,
                     0,
                     {3},
                     {5, 4}});
    // dim 32 holds 2 rows: 1, then 20 materialize M before the decays.
    kinds.push_back(
        {"dense materialized" + suffix, dense(32), Representation::kDense, 32, 0, {1, 20}, {40}});
    // dim 12 holds none: materialized from the start.
    kinds.push_back({"dense small" + suffix, dense(12), Representation::kDense, 12, 0, {30}, {20}});
    kinds.push_back({"diagonal" + suffix,
                     [centered]() -> std::unique_ptr<ScoreStatistics> {
                       SessionOptions options;
                       options.dim = 10;
                       options.centered = centered;
                       options.representation = Representation::kDiagonal;
                       return std::make_unique<DiagonalStatistics>(options);
                     },
                     Representation::kDiagonal,
                     10,
                     0,
                     {30},
                     {20}});
    // A window of 8 over dim 20: 6 rows, then 5 new ones after the decays (it wraps),
    // which leave 3 old rows in the window (zeros after the fold).
    kinds.push_back({"low-rank window" + suffix,
                     [centered]() -> std::unique_ptr<ScoreStatistics> {
                       BlockOptions block;
                       block.name = "window";
                       block.kind = BlockKind::kLowRank;
                       block.dim = 20;
                       block.max_rows = 8;
                       SessionOptions session;
                       session.centered = centered;
                       return std::make_unique<LowRankStatistics>(block, session);
                     },
                     Representation::kDense,
                     20,
                     8,
                     {3, 3},
                     {5}});
  }
  return kinds;
}

// Streams batches of the given sizes; returns the weights of the rows held.
std::vector<double> Stream(ScoreStatistics& statistics, const Kind& kind,
                           const std::vector<int64_t>& batches, std::mt19937_64& rng) {
  std::vector<double> held;
  for (int64_t rows : batches) {
    const std::vector<float> weights = RandomWeights(rows, rng);
    statistics.Add(testing::Prepare(RandomRows(rows, kind.dim, rng), kind.representation, weights));
    held.insert(held.end(), weights.begin(), weights.end());
  }
  if (kind.window > 0 && static_cast<int64_t>(held.size()) > kind.window) {
    held.erase(held.begin(), held.end() - kind.window);
  }
  return held;
}

// Every answer a step, GetFisher or stats needs.
struct Answers {
  Eigen::VectorXd natural_gradient;
  bool cached = false;
  Eigen::VectorXd product;
  Eigen::VectorXd entries;
  FisherSummary summary;
};

Answers Ask(ScoreStatistics& statistics) {
  Answers answers;
  const absl::Status ready = statistics.CheckReady("a test");
  EXPECT_TRUE(ready.ok()) << ready;
  if (!ready.ok()) return answers;
  const int64_t dim = statistics.dim();
  const Eigen::VectorXd g = Eigen::VectorXd::LinSpaced(dim, 1.0, -0.5);
  const absl::StatusOr<SolveResult> solved = statistics.Solve(g, kDamping);
  EXPECT_TRUE(solved.ok()) << solved.status();
  if (solved.ok()) {
    answers.natural_gradient = solved->natural_gradient;
    answers.cached = solved->summary.factorization_cached;
    EXPECT_TRUE(answers.natural_gradient.allFinite());
  }
  answers.product = statistics.Multiply(Eigen::VectorXd::LinSpaced(dim, -1.0, 2.0));
  answers.entries.resize(dim * statistics.EntriesPerRow());
  statistics.CopyEntries(0, dim, answers.entries.data());
  EXPECT_TRUE(answers.entries.allFinite());
  const absl::StatusOr<FisherSummary> summary = statistics.Summarize(true);
  EXPECT_TRUE(summary.ok()) << summary.status();
  if (summary.ok()) answers.summary = *summary;
  return answers;
}

// Sizes first: a statistics that was not ready answered nothing.
void AssertSameSizes(const Answers& actual, const Answers& expected) {
  ASSERT_EQ(actual.natural_gradient.size(), expected.natural_gradient.size());
  ASSERT_EQ(actual.product.size(), expected.product.size());
  ASSERT_EQ(actual.entries.size(), expected.entries.size());
}

void ExpectIdentical(const Answers& actual, const Answers& expected) {
  AssertSameSizes(actual, expected);
  if (::testing::Test::HasFatalFailure()) return;
  EXPECT_EQ(actual.natural_gradient, expected.natural_gradient);
  EXPECT_EQ(actual.product, expected.product);
  EXPECT_EQ(actual.entries, expected.entries);
  EXPECT_EQ(actual.summary.trace, expected.summary.trace);
  EXPECT_EQ(actual.summary.frobenius_norm, expected.summary.frobenius_norm);
  EXPECT_EQ(actual.summary.min_eigenvalue, expected.summary.min_eigenvalue);
  EXPECT_EQ(actual.summary.max_eigenvalue, expected.summary.max_eigenvalue);
}

double Relative(const Eigen::VectorXd& actual, const Eigen::VectorXd& expected) {
  return (actual - expected).norm() / expected.norm();
}

void ExpectClose(const Answers& actual, const Answers& expected, double tolerance) {
  AssertSameSizes(actual, expected);
  if (::testing::Test::HasFatalFailure()) return;
  EXPECT_LT(Relative(actual.natural_gradient, expected.natural_gradient), tolerance);
  EXPECT_LT(Relative(actual.product, expected.product), tolerance);
  EXPECT_LT(Relative(actual.entries, expected.entries), tolerance);
  const double scale = expected.summary.max_eigenvalue;
  EXPECT_NEAR(actual.summary.trace, expected.summary.trace,
              tolerance * std::abs(expected.summary.trace));
  EXPECT_NEAR(actual.summary.frobenius_norm, expected.summary.frobenius_norm,
              tolerance * expected.summary.frobenius_norm);
  // The smallest eigenvalue may be 0 or round-off (fewer rows than dim): compared
  // against the largest.
  EXPECT_NEAR(actual.summary.min_eigenvalue, expected.summary.min_eigenvalue, tolerance * scale);
  EXPECT_NEAR(actual.summary.max_eigenvalue, expected.summary.max_eigenvalue, tolerance * scale);
}

// (1) and (2) for one kind and one decay schedule.
void DecayThenNewRows(const Kind& kind, double rho, int decays) {
  SCOPED_TRACE(::testing::Message() << kind.name << ", " << decays << " decays at " << rho);
  std::mt19937_64 rng(1009);
  std::unique_ptr<ScoreStatistics> statistics = kind.make();
  Stream(*statistics, kind, kind.first_batches, rng);
  const Answers before = Ask(*statistics);
  const uint64_t rows = statistics->sample_count();

  for (int k = 0; k < decays; ++k) statistics->Decay(rho);
  // The reported W has underflowed (the true value rounded to 0); readiness does not
  // depend on it.
  EXPECT_EQ(statistics->weight_sum(), 0.0);
  const Answers after = Ask(*statistics);
  // The factor of the step before the decays is reused (diagonal keeps none).
  if (kind.representation == Representation::kDense) {
    EXPECT_TRUE(after.cached);
  }
  ExpectIdentical(after, before);
  EXPECT_EQ(statistics->sample_count(), rows);

  // New rows (the same ones into a fresh statistics): the old ones weigh rho^decays,
  // far below round-off.
  std::mt19937_64 fresh_rng = rng;
  Stream(*statistics, kind, kind.new_batches, rng);
  std::unique_ptr<ScoreStatistics> fresh = kind.make();
  Stream(*fresh, kind, kind.new_batches, fresh_rng);
  ExpectClose(Ask(*statistics), Ask(*fresh), kNewRowsTolerance);
  EXPECT_NEAR(statistics->weight_sum(), fresh->weight_sum(),
              kNewRowsTolerance * fresh->weight_sum());
}

// A batch of weight 0 after 5000 halvings changes nothing: it must not fold the only
// weighted sums away (to 0 or denormals, so that F would be 0 / 0 or inf). For the dense
// start of 3 rows (of 4) below, its 2 rows force the held rows into M at the decayed
// scale.
void ZeroWeightBatchAfterDecays(const Kind& kind) {
  SCOPED_TRACE(kind.name);
  std::mt19937_64 rng(1013);
  std::unique_ptr<ScoreStatistics> statistics = kind.make();
  Stream(*statistics, kind, kind.first_batches, rng);
  const Answers before = Ask(*statistics);
  for (int k = 0; k < 5000; ++k) statistics->Decay(0.5);
  const int64_t zero_rows = 2;
  statistics->Add(testing::Prepare(RandomRows(zero_rows, kind.dim, rng), kind.representation,
                                   std::vector<float>(zero_rows, 0.0f)));
  ExpectClose(Ask(*statistics), before, kNewRowsTolerance);
}

TEST(DecayUnderflowTest, FiveThousandHalvingsWithoutRowsChangeNothing) {
  for (const Kind& kind : Kinds()) DecayThenNewRows(kind, 0.5, 5000);
}

TEST(DecayUnderflowTest, TwoHundredThousandDecaysAtPointNineNineChangeNothing) {
  for (const Kind& kind : Kinds()) DecayThenNewRows(kind, 0.99, 200000);
}

TEST(DecayUnderflowTest, ZeroWeightBatchAfterManyDecaysChangesNothing) {
  for (const Kind& kind : Kinds()) ZeroWeightBatchAfterDecays(kind);
}

// (3): the reported W is exp(log_scale) W_raw, the true decayed weight.
TEST(DecayUnderflowTest, ReportedWeightIsTheDecayedWeight) {
  struct Schedule {
    double rho;
    int decays;
  };
  for (const Schedule schedule : {Schedule{0.5, 100}, Schedule{0.99, 1000}}) {
    for (const Kind& kind : Kinds()) {
      SCOPED_TRACE(::testing::Message()
                   << kind.name << ", " << schedule.decays << " decays at " << schedule.rho);
      std::mt19937_64 rng(1013);
      std::unique_ptr<ScoreStatistics> statistics = kind.make();
      const std::vector<double> held = Stream(*statistics, kind, kind.first_batches, rng);
      double w0 = 0.0;
      for (double w : held) w0 += w;
      EXPECT_NEAR(statistics->weight_sum(), w0, 1e-15 * w0);
      for (int k = 0; k < schedule.decays; ++k) statistics->Decay(schedule.rho);
      // 0.5^100 is exact; pow(0.99, 1000) is within an ulp of the product of 1000 rho.
      const double expected = w0 * std::pow(schedule.rho, schedule.decays);
      EXPECT_NEAR(statistics->weight_sum(), expected, kWeightTolerance * expected);
    }
  }
}

// The message of a statistics with rows but no weight (each class overrides CheckReady
// to test its raw weight), in the style of ScoreStatistics::CheckReady.
TEST(DecayUnderflowTest, NoWeightIsNotReady) {
  for (const Kind& kind : Kinds()) {
    SCOPED_TRACE(kind.name);
    std::mt19937_64 rng(1019);
    std::unique_ptr<ScoreStatistics> statistics = kind.make();
    EXPECT_EQ(statistics->CheckReady("a step").code(), absl::StatusCode::kFailedPrecondition);
    statistics->Add(testing::Prepare(RandomRows(3, kind.dim, rng), kind.representation,
                                     std::vector<float>(3, 0.0f)));
    for (int k = 0; k < 5000; ++k) statistics->Decay(0.5);
    const absl::Status ready = statistics->CheckReady("a step");
    EXPECT_EQ(ready.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ(ready.message(),
              "the session has no weighted samples yet (3 rows, total weight 0): stream "
              "scores before asking for a step");
  }
}

// --- a Kronecker block, whose factors are DenseStatistics --------------------------

BlockOptions KroneckerBlock() {
  BlockOptions block;
  block.name = "fc";
  block.kind = BlockKind::kKronecker;
  block.in_features = 5;
  block.out_features = 4;
  block.bias = true;
  return block;
}

SessionOptions KroneckerSession(const BlockOptions& block) {
  SessionOptions options;
  options.blocks = {block};
  options.dim = block.ParameterCount();
  return options;
}

void AddFactorRows(KroneckerStatistics& statistics, const BlockOptions& block, Factor factor,
                   int64_t rows, std::mt19937_64& rng) {
  const RowMatrixF scores = RandomRows(rows, block.RowWidth(factor), rng);
  const std::vector<float> weights = RandomWeights(rows, rng);
  ScoreBatchView view;
  view.rows = rows;
  view.dim = scores.cols();
  view.scores = scores.data();
  view.weights = weights.data();
  statistics.Add(PrepareBlockBatch(view, block, 0, factor, DenseKernel::kFloat64));
}

TEST(DecayUnderflowTest, KroneckerBlockStepUnchangedByFiveThousandHalvings) {
  const BlockOptions block = KroneckerBlock();
  std::mt19937_64 rng(1021);
  KroneckerStatistics statistics(block, KroneckerSession(block));
  AddFactorRows(statistics, block, Factor::kActivations, 20, rng);
  AddFactorRows(statistics, block, Factor::kOutputGradients, 17, rng);
  const Eigen::VectorXd g = Eigen::VectorXd::LinSpaced(block.ParameterCount(), 1.0, -0.5);
  const absl::StatusOr<SolveResult> before = statistics.Solve(g, kDamping);
  ASSERT_TRUE(before.ok()) << before.status();
  statistics.StepTaken();
  const Eigen::VectorXd product_before = statistics.Multiply(g);

  for (int k = 0; k < 5000; ++k) statistics.Decay(0.5);
  // Each factor is still ready (its raw weight), though its reported W is 0.
  for (Factor factor : {Factor::kActivations, Factor::kOutputGradients}) {
    const ScoreStatistics* dense = statistics.FactorStatistics(factor);
    EXPECT_TRUE(dense->CheckReady("a step").ok());
    EXPECT_EQ(dense->weight_sum(), 0.0);
  }
  const absl::StatusOr<SolveResult> after = statistics.Solve(g, kDamping);
  ASSERT_TRUE(after.ok()) << after.status();
  statistics.StepTaken();
  EXPECT_TRUE(after->summary.factorization_cached);
  EXPECT_EQ(after->natural_gradient, before->natural_gradient);  // bit for bit
  EXPECT_EQ(statistics.Multiply(g), product_before);

  // New rows in both factors: the block equals one given only them.
  std::mt19937_64 fresh_rng = rng;
  AddFactorRows(statistics, block, Factor::kActivations, 12, rng);
  AddFactorRows(statistics, block, Factor::kOutputGradients, 9, rng);
  KroneckerStatistics fresh(block, KroneckerSession(block));
  AddFactorRows(fresh, block, Factor::kActivations, 12, fresh_rng);
  AddFactorRows(fresh, block, Factor::kOutputGradients, 9, fresh_rng);
  const absl::StatusOr<SolveResult> mixed = statistics.Solve(g, kDamping);
  const absl::StatusOr<SolveResult> expected = fresh.Solve(g, kDamping);
  ASSERT_TRUE(mixed.ok()) << mixed.status();
  ASSERT_TRUE(expected.ok()) << expected.status();
  EXPECT_LT(Relative(mixed->natural_gradient, expected->natural_gradient), kNewRowsTolerance);
}

// The block's own CheckReady still reads each factor's reported weight_sum() (core/
// kronecker_statistics.cc), which underflows to 0 after ~1078 halvings; it should ask
// the factors' CheckReady instead. Enable once it does.
TEST(DecayUnderflowTest, KroneckerBlockStaysReadyThroughFiveThousandHalvings) {
  const BlockOptions block = KroneckerBlock();
  std::mt19937_64 rng(1031);
  KroneckerStatistics statistics(block, KroneckerSession(block));
  AddFactorRows(statistics, block, Factor::kActivations, 20, rng);
  AddFactorRows(statistics, block, Factor::kOutputGradients, 17, rng);
  for (int k = 0; k < 5000; ++k) statistics.Decay(0.5);
  EXPECT_TRUE(statistics.CheckReady("a step").ok());
}

// --- the defect as a session saw it --------------------------------------------------

// A layered session whose blocks receive no rows after the first batch (frozen
// layers) but one: 1200 decayed steps at rho 0.5 (past step 1078, where W used to reach
// 0 and every step failed) all succeed, and the frozen blocks' part of n never moves.
TEST(DecayUnderflowTest, FrozenBlocksOfALayeredSessionStepForever) {
  for (bool centered : {false, true}) {
    SCOPED_TRACE(centered ? "centered" : "uncentered");
    auto block = [](const std::string& name, BlockKind kind, int64_t dim) {
      BlockOptions b;
      b.name = name;
      b.kind = kind;
      b.dim = dim;
      return b;
    };
    SessionOptions options;
    options.blocks.push_back(block("active", BlockKind::kDiagonal, 4));
    options.blocks.push_back(block("dense", BlockKind::kDense, 6));
    options.blocks.push_back(block("start", BlockKind::kDense, 64));  // holds 4 rows
    options.blocks.push_back(block("norm", BlockKind::kDiagonal, 5));
    BlockOptions window = block("embedding", BlockKind::kLowRank, 7);
    window.max_rows = 3;
    options.blocks.push_back(window);
    options.dim = *LayeredDim(options.blocks);
    options.centered = centered;
    options.decay = 0.5;
    options.damping = 0.2;
    ASSERT_TRUE(options.Validate().ok());
    Session session(options);

    std::mt19937_64 rng(1033);
    auto stream = [&](int64_t index, int64_t rows) {
      const BlockOptions& b = session.layout().block(index);
      const RowMatrixF scores = RandomRows(rows, b.dim, rng);
      const std::vector<float> weights = RandomWeights(rows, rng);
      ScoreBatchView view;
      view.rows = rows;
      view.dim = b.dim;
      view.scores = scores.data();
      view.weights = weights.data();
      session.AddScores("", 0,
                        PrepareBlockBatch(view, b, index, Factor::kNone, DenseKernel::kFloat64));
    };
    const int64_t rows_per_block[] = {3, 20, 3, 8, 5};
    for (int64_t i = 0; i < 5; ++i) stream(i, rows_per_block[i]);

    const Eigen::VectorXd g = Eigen::VectorXd::LinSpaced(options.dim, 1.0, -0.5);
    const int64_t frozen = options.dim - 4;  // every block after "active"
    Eigen::VectorXd first;
    for (int step = 0; step < 1200; ++step) {
      absl::StatusOr<StepResult> result = session.Step(g, StepOptions());
      ASSERT_TRUE(result.ok()) << "step " << step << ": " << result.status();
      if (step == 0) {
        first = result->natural_gradient.tail(frozen);
      } else {
        ASSERT_EQ(result->natural_gradient.tail(frozen), first) << "step " << step;
      }
      if (step % 10 == 0) stream(0, 2);  // the one layer still training
    }
    // The frozen blocks' reported weights have underflowed; the session did not care.
    EXPECT_EQ(session.Stats().blocks[1].weight_sum, 0.0);
  }
}

}  // namespace
}  // namespace fisherd
