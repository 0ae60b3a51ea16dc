// A layered session (core/layered_statistics.h) mixing all four block kinds, checked as
// one block-diagonal F formed explicitly in the test: each block's F_b from the same
// float rows in float64 (dense and diagonal from M / W, low-rank from the last max_rows
// rows only, Kronecker as kron(G, A) permuted into the parameter order), then a dense
// solve of F + lambda I. The sizes are small so that every matrix can be formed.
#include <cmath>
#include <random>
#include <vector>

#include "Eigen/Cholesky"
#include "Eigen/Eigenvalues"
#include "core/session.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/core/test_util.h"

namespace fisherd {
namespace {

using ::fisherd::testing::Block;
using ::fisherd::testing::Kronecker;
using ::fisherd::testing::RandomRows;
using ::fisherd::testing::RandomWeights;
using ::testing::HasSubstr;
using testing::ReferenceFisher;
using testing::RowMatrixF;

// Round-off of a dense solve of a matrix of condition ~1e3 at these sizes is ~1e-13;
// 1e-10 leaves room for that and catches any wrong entry, order or scale.
constexpr double kTolerance = 1e-10;

SessionOptions MixedLayout(double damping, double decay = 1.0) {
  SessionOptions options;
  options.blocks.push_back(Block("dense", BlockKind::kDense, 6));
  options.blocks.push_back(Kronecker("fc", 4, 3, /*bias=*/true));
  options.blocks.push_back(Block("norm", BlockKind::kDiagonal, 5));
  BlockOptions low_rank = Block("embedding", BlockKind::kLowRank, 7);
  low_rank.max_rows = 3;
  options.blocks.push_back(low_rank);
  options.dim = *LayeredDim(options.blocks);
  options.damping = damping;
  options.decay = decay;
  return options;
}

PreparedBatch ForBlock(const Session& session, int64_t index, Factor factor, const RowMatrixF& rows,
                       const std::vector<float>& weights) {
  ScoreBatchView view;
  view.rows = rows.rows();
  view.dim = rows.cols();
  view.scores = rows.data();
  view.weights = weights.empty() ? nullptr : weights.data();
  return PrepareBlockBatch(view, session.layout().block(index), index, factor,
                           DenseKernel::kFloat64);
}

// Rows with a trailing 1, as the activation factor of a block with bias sees them.
RowMatrixF WithOnes(const RowMatrixF& rows) {
  RowMatrixF out(rows.rows(), rows.cols() + 1);
  out << rows, RowMatrixF::Ones(rows.rows(), 1);
  return out;
}

// kron(G, A) in the block's parameter order: weights row-major (out x in), then biases.
// V's entry (i, j) is parameter i * in + j for j < in, and out * in + i for the bias.
Eigen::MatrixXd KroneckerInParameterOrder(const Eigen::MatrixXd& g, const Eigen::MatrixXd& a,
                                          int64_t in, int64_t out, bool bias) {
  const int64_t na = in + (bias ? 1 : 0), n = out * na;
  std::vector<int64_t> parameter(n);
  for (int64_t i = 0; i < out; ++i) {
    for (int64_t j = 0; j < na; ++j) parameter[i * na + j] = j < in ? i * in + j : out * in + i;
  }
  Eigen::MatrixXd f(n, n);
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t c = 0; c < n; ++c) {
      f(parameter[r], parameter[c]) = g(r / na, c / na) * a(r % na, c % na);
    }
  }
  return f;
}

class LayeredSessionTest : public ::testing::Test {
 protected:
  // Streams random rows into every block of `session` and records them so that the
  // block-diagonal F can be formed. Low-rank rows beyond max_rows push older ones out.
  void Stream(Session& session, std::mt19937_64& rng, const std::string& worker = "w",
              uint64_t first_sequence = 1) {
    uint64_t sequence = first_sequence;
    auto add = [&](int64_t block, Factor factor, const RowMatrixF& rows,
                   const std::vector<float>& weights) {
      const AddResult result =
          session.AddScores(worker, sequence++, ForBlock(session, block, factor, rows, weights));
      ASSERT_FALSE(result.duplicate);
    };
    dense_rows_ = RandomRows(20, 6, rng);
    dense_weights_ = RandomWeights(20, rng);
    add(0, Factor::kNone, dense_rows_, dense_weights_);
    activations_ = RandomRows(12, 4, rng);
    activation_weights_ = RandomWeights(12, rng);
    add(1, Factor::kActivations, activations_, activation_weights_);
    gradients_ = RandomRows(9, 3, rng);
    gradient_weights_ = RandomWeights(9, rng);
    add(1, Factor::kOutputGradients, gradients_, gradient_weights_);
    diagonal_rows_ = RandomRows(8, 5, rng);
    diagonal_weights_ = RandomWeights(8, rng);
    add(2, Factor::kNone, diagonal_rows_, diagonal_weights_);
    // Five rows in two batches; the window keeps the last three.
    const RowMatrixF low_rank = RandomRows(5, 7, rng);
    const std::vector<float> low_rank_weights = RandomWeights(5, rng);
    add(3, Factor::kNone, low_rank.topRows(2),
        std::vector<float>(low_rank_weights.begin(), low_rank_weights.begin() + 2));
    add(3, Factor::kNone, low_rank.bottomRows(3),
        std::vector<float>(low_rank_weights.begin() + 2, low_rank_weights.end()));
    low_rank_rows_ = low_rank.bottomRows(3);
    low_rank_weights_.assign(low_rank_weights.begin() + 2, low_rank_weights.end());
  }

  Eigen::MatrixXd BlockDiagonalFisher() const {
    Eigen::MatrixXd f = Eigen::MatrixXd::Zero(6 + 15 + 5 + 7, 6 + 15 + 5 + 7);
    f.block(0, 0, 6, 6) = ReferenceFisher(dense_rows_, dense_weights_, false);
    const Eigen::MatrixXd a = ReferenceFisher(WithOnes(activations_), activation_weights_, false);
    const Eigen::MatrixXd g = ReferenceFisher(gradients_, gradient_weights_, false);
    f.block(6, 6, 15, 15) = KroneckerInParameterOrder(g, a, 4, 3, true);
    f.block(21, 21, 5, 5) =
        ReferenceFisher(diagonal_rows_, diagonal_weights_, false).diagonal().asDiagonal();
    f.block(26, 26, 7, 7) = ReferenceFisher(low_rank_rows_, low_rank_weights_, false);
    return f;
  }

  RowMatrixF dense_rows_, activations_, gradients_, diagonal_rows_, low_rank_rows_;
  std::vector<float> dense_weights_, activation_weights_, gradient_weights_, diagonal_weights_,
      low_rank_weights_;
};

TEST_F(LayeredSessionTest, StepEqualsTheBlockDiagonalDenseSolve) {
  std::mt19937_64 rng(11);
  Session session(MixedLayout(/*damping=*/0.1));
  ASSERT_EQ(session.options().dim, 33);
  Stream(session, rng);
  const Eigen::MatrixXd f = BlockDiagonalFisher();
  const Eigen::VectorXd g = Eigen::VectorXd::Random(33);
  const double lambda = 0.1;
  const Eigen::VectorXd expected = (f + lambda * Eigen::MatrixXd::Identity(33, 33)).llt().solve(g);

  StepOptions options;
  options.learning_rate = 0.5;
  absl::StatusOr<StepResult> step = session.Step(g, options);
  ASSERT_TRUE(step.ok()) << step.status();
  EXPECT_LT((step->natural_gradient - expected).norm() / expected.norm(), kTolerance);
  EXPECT_NEAR(step->natural_norm_sq, g.dot(expected), kTolerance * g.dot(expected));
  EXPECT_DOUBLE_EQ(step->eta, 0.5);
  const Eigen::VectorXd update = -0.5 * expected;
  EXPECT_NEAR(step->predicted_kl, 0.5 * update.dot(f * update),
              kTolerance * update.dot(f * update));
  EXPECT_EQ(step->solver.method, "layered");
  ASSERT_EQ(step->solver.blocks.size(), 4u);
  EXPECT_EQ(step->solver.blocks[0].block, "dense");
  EXPECT_EQ(step->solver.blocks[1].method, "kronecker");
  EXPECT_EQ(step->solver.blocks[2].method, "diagonal");
  EXPECT_EQ(step->solver.blocks[3].method, "woodbury");
  EXPECT_EQ(step->solver.kronecker_damping, "exact");
  EXPECT_LT(step->solver.residual, 1e-12);
}

TEST_F(LayeredSessionTest, KlBudgetAndPredictedKlCoverEveryBlock) {
  std::mt19937_64 rng(12);
  Session session(MixedLayout(/*damping=*/0.05));
  Stream(session, rng);
  const Eigen::MatrixXd f = BlockDiagonalFisher();
  const Eigen::VectorXd g = Eigen::VectorXd::Random(33);
  const Eigen::MatrixXd damped = f + 0.05 * Eigen::MatrixXd::Identity(33, 33);
  const Eigen::VectorXd n = damped.llt().solve(g);
  StepOptions options;
  options.kl_budget = 1e-3;
  options.skip_decay = true;
  absl::StatusOr<StepResult> step = session.Step(g, options);
  ASSERT_TRUE(step.ok()) << step.status();
  const double eta = std::sqrt(2.0 * 1e-3 / g.dot(n));
  EXPECT_NEAR(step->eta, eta, kTolerance * eta);
  // The damped quadratic KL of the update is the budget; the reported one is undamped.
  const Eigen::VectorXd update = -eta * n;
  EXPECT_NEAR(0.5 * update.dot(damped * update), 1e-3, 1e-3 * kTolerance);
  EXPECT_NEAR(step->predicted_kl, 0.5 * update.dot(f * update), 1e-3 * kTolerance);
  EXPECT_LT(step->predicted_kl, 1e-3);
}

TEST_F(LayeredSessionTest, ProductSummaryAndEntriesAreThoseOfTheBlockDiagonalF) {
  std::mt19937_64 rng(13);
  Session session(MixedLayout(0.0));
  Stream(session, rng);
  const Eigen::MatrixXd f = BlockDiagonalFisher();
  const Eigen::VectorXd v = Eigen::VectorXd::Random(33);
  absl::StatusOr<FisherVectorProductResult> product = session.FisherVectorProduct(v);
  ASSERT_TRUE(product.ok()) << product.status();
  EXPECT_LT((product->product - f * v).norm() / (f * v).norm(), kTolerance);
  EXPECT_NEAR(product->quadratic_kl, 0.5 * v.dot(f * v), kTolerance * v.dot(f * v));

  absl::StatusOr<FisherSummary> summary = session.Summarize(/*with_eigenvalues=*/true);
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_NEAR(summary->trace, f.trace(), kTolerance * f.trace());
  EXPECT_NEAR(summary->frobenius_norm, f.norm(), kTolerance * f.norm());
  const Eigen::VectorXd eigenvalues =
      Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd>(f).eigenvalues();
  // The low-rank block (3 rows, dim 7) makes F singular: its smallest eigenvalue is 0 up
  // to round-off of the largest.
  EXPECT_NEAR(summary->min_eigenvalue, eigenvalues.minCoeff(), 1e-12 * eigenvalues.maxCoeff());
  EXPECT_NEAR(summary->max_eigenvalue, eigenvalues.maxCoeff(), kTolerance * eigenvalues.maxCoeff());

  Eigen::MatrixXd entries(33, 33);
  ASSERT_TRUE(session.CopyEntries(0, 33, entries.data()).ok());  // symmetric: either order
  EXPECT_LT((entries - f).norm() / f.norm(), kTolerance);

  // One factor, by part: A with its appended 1.
  Eigen::MatrixXd a(5, 5);
  ASSERT_TRUE(session.CopyPartEntries({1, Factor::kActivations}, 0, 5, a.data()).ok());
  const Eigen::MatrixXd expected_a =
      ReferenceFisher(WithOnes(activations_), activation_weights_, false);
  EXPECT_LT((a - expected_a).norm() / expected_a.norm(), kTolerance);
  EXPECT_EQ(session.PartRows({1, Factor::kActivations}), 5);
  EXPECT_EQ(session.PartRows({1, Factor::kOutputGradients}), 3);
  EXPECT_EQ(session.PartEntriesPerRow({2, Factor::kNone}), 1);
}

TEST_F(LayeredSessionTest, DecayNeverChangesTheStep) {
  std::mt19937_64 rng(14);
  Session session(MixedLayout(0.2, /*decay=*/0.5));
  Stream(session, rng);
  const Eigen::VectorXd g = Eigen::VectorXd::Random(33);
  absl::StatusOr<StepResult> first = session.Step(g, StepOptions());
  ASSERT_TRUE(first.ok()) << first.status();
  for (int i = 0; i < 600; ++i) ASSERT_TRUE(session.Step(g, StepOptions()).ok());
  absl::StatusOr<StepResult> later = session.Step(g, StepOptions());
  ASSERT_TRUE(later.ok()) << later.status();
  // 600 halvings fold every block's stored scale (below 1e-150) at least once.
  EXPECT_LT(
      (later->natural_gradient - first->natural_gradient).norm() / first->natural_gradient.norm(),
      kTolerance);
  EXPECT_LT(session.Stats().weight_sum, 1e-150);
}

TEST_F(LayeredSessionTest, OneSequenceSpacePerWorkerAcrossBlocks) {
  std::mt19937_64 rng(15);
  Session session(MixedLayout(0.1));
  Stream(session, rng, "w", 1);  // sequences 1..6
  const SessionStatsSnapshot before = session.Stats();
  // Sequence 3 was used by the Kronecker block's gradients: a batch for another block
  // with it is a resend, acknowledged and not applied.
  const RowMatrixF rows = RandomRows(4, 6, rng);
  const AddResult resent = session.AddScores("w", 3, ForBlock(session, 0, Factor::kNone, rows, {}));
  EXPECT_TRUE(resent.duplicate);
  EXPECT_EQ(resent.sequence, 6u);
  const SessionStatsSnapshot after = session.Stats();
  EXPECT_EQ(after.sample_count, before.sample_count);
  ASSERT_EQ(after.blocks.size(), 4u);
  EXPECT_EQ(after.blocks[0].sample_count, 20u);
  EXPECT_EQ(after.blocks[1].sample_count, 12u);
  EXPECT_EQ(after.blocks[1].output_gradient_sample_count, 9u);
  EXPECT_EQ(after.blocks[3].sample_count, 5u);  // every row counted, the window holds 3
  EXPECT_EQ(after.sample_count, 20u + 12u + 9u + 8u + 5u);
}

TEST_F(LayeredSessionTest, StepBeforeEveryFactorHasWeightNamesTheBlock) {
  std::mt19937_64 rng(16);
  Session session(MixedLayout(0.1));
  session.AddScores("", 0, ForBlock(session, 0, Factor::kNone, RandomRows(3, 6, rng), {}));
  session.AddScores("", 0, ForBlock(session, 1, Factor::kActivations, RandomRows(3, 4, rng), {}));
  const absl::Status status = session.Step(Eigen::VectorXd::Ones(33), StepOptions()).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(status.message(), HasSubstr("block \"fc\" (kronecker)"));
  EXPECT_THAT(status.message(), HasSubstr("output_gradients"));
}

TEST(LayeredOptionsTest, RefusesBadLayoutsNamingTheBlock) {
  SessionOptions options = MixedLayout(0.1);
  options.blocks[2].name = "fc";
  EXPECT_THAT(options.Validate().message(), HasSubstr("blocks[2] \"fc\""));
  EXPECT_THAT(options.Validate().message(), HasSubstr("already used"));

  options = MixedLayout(0.1);
  options.centered = true;
  EXPECT_THAT(options.Validate().message(), HasSubstr("blocks[1] \"fc\""));
  EXPECT_THAT(options.Validate().message(), HasSubstr("centered Kronecker"));

  options = MixedLayout(0.1);
  options.blocks[3].max_rows = 0;
  EXPECT_THAT(options.Validate().message(), HasSubstr("max_rows"));

  options = MixedLayout(0.1);
  options.blocks[0].name = "features.0/conv";
  EXPECT_THAT(options.Validate().message(), HasSubstr("outside [a-zA-Z0-9_.-]"));

  options = MixedLayout(0.1);
  options.dim = 32;
  EXPECT_THAT(options.Validate().message(), HasSubstr("blocks hold 33"));

  std::vector<BlockOptions> huge = {Kronecker("a", int64_t{1} << 40, int64_t{1} << 40, false),
                                    Kronecker("b", 4, 4, false)};
  EXPECT_THAT(LayeredDim(huge).status().message(), HasSubstr("overflows"));
}

}  // namespace
}  // namespace fisherd
