// KroneckerStatistics against dense oracles: G (x) A formed explicitly in float64 from
// the same rows, and the true Fisher of a linear layer on Cartesian-product data.
#include "core/kronecker_statistics.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "Eigen/Cholesky"
#include "Eigen/Eigenvalues"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/core/test_util.h"

namespace fisherd {
namespace {

using ::fisherd::testing::ReferenceFisher;
using ::fisherd::testing::RelativeError;
using ::fisherd::testing::RowMatrixF;
using ::testing::HasSubstr;

BlockOptions KroneckerBlock(int64_t in, int64_t out, bool bias) {
  BlockOptions block;
  block.name = "fc";
  block.kind = BlockKind::kKronecker;
  block.in_features = in;
  block.out_features = out;
  block.bias = bias;
  return block;
}

SessionOptions BlockSession(const BlockOptions& block,
                            KroneckerDamping damping = KroneckerDamping::kExact,
                            int64_t refresh_period = 1) {
  SessionOptions options;
  options.blocks = {block};
  options.dim = block.ParameterCount();
  options.kronecker_damping = damping;
  options.factor_refresh_period = refresh_period;
  return options;
}

// Rows of one factor and their weights, as a worker streams them.
struct FactorRows {
  RowMatrixF rows;
  std::vector<float> weights;
};

FactorRows RandomRows(int64_t count, int64_t width, std::mt19937_64& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> uniform(0.25f, 2.0f);
  FactorRows result{RowMatrixF(count, width), std::vector<float>(count)};
  for (int64_t i = 0; i < count; ++i) {
    for (int64_t j = 0; j < width; ++j) result.rows(i, j) = normal(rng);
    result.weights[i] = uniform(rng);
  }
  return result;
}

void AddRows(KroneckerStatistics& statistics, const BlockOptions& block, Factor factor,
             const FactorRows& rows) {
  ScoreBatchView view;
  view.rows = rows.rows.rows();
  view.dim = rows.rows.cols();
  view.scores = rows.rows.data();
  view.weights = rows.weights.empty() ? nullptr : rows.weights.data();
  ASSERT_TRUE(ValidateScores(view).ok());
  statistics.Add(PrepareBlockBatch(view, block, 0, factor, DenseKernel::kFloat64));
}

// A or G computed directly in float64, with the 1 appended for A of a block with bias.
Eigen::MatrixXd ReferenceFactor(const FactorRows& rows, bool append_one) {
  RowMatrixF bar = rows.rows;
  if (append_one) {
    bar.conservativeResize(Eigen::NoChange, rows.rows.cols() + 1);
    bar.col(rows.rows.cols()).setOnes();
  }
  return ReferenceFisher(bar, rows.weights, /*centered=*/false);
}

// The parameter of entry (i, j) of V = [grad W | grad b] (out x (in + bias)): weights
// row-major out x in first, as nn.Linear stores them, then the biases.
int64_t Parameter(const BlockOptions& block, int64_t i, int64_t j) {
  return j < block.in_features ? i * block.in_features + j
                               : block.out_features * block.in_features + i;
}

// G (x) A in parameter order: K(p(i, j), p(k, l)) = G(i, k) A(j, l).
Eigen::MatrixXd ReferenceKronecker(const BlockOptions& block, const Eigen::MatrixXd& g,
                                   const Eigen::MatrixXd& a) {
  const int64_t n = block.ParameterCount();
  Eigen::MatrixXd k(n, n);
  for (int64_t i = 0; i < g.rows(); ++i) {
    for (int64_t j = 0; j < a.rows(); ++j) {
      for (int64_t kk = 0; kk < g.rows(); ++kk) {
        for (int64_t l = 0; l < a.rows(); ++l) {
          k(Parameter(block, i, j), Parameter(block, kk, l)) = g(i, kk) * a(j, l);
        }
      }
    }
  }
  return k;
}

// Parameters <-> V, written independently of the implementation.
Eigen::MatrixXd ToV(const BlockOptions& block, const Eigen::VectorXd& p, int64_t na) {
  Eigen::MatrixXd v(block.out_features, na);
  for (int64_t i = 0; i < v.rows(); ++i) {
    for (int64_t j = 0; j < na; ++j) v(i, j) = p[Parameter(block, i, j)];
  }
  return v;
}

Eigen::VectorXd FromV(const BlockOptions& block, const Eigen::MatrixXd& v) {
  Eigen::VectorXd p(block.ParameterCount());
  for (int64_t i = 0; i < v.rows(); ++i) {
    for (int64_t j = 0; j < v.cols(); ++j) p[Parameter(block, i, j)] = v(i, j);
  }
  return p;
}

Eigen::MatrixXd Entries(const ScoreStatistics& statistics) {
  const int64_t n = statistics.dim();
  Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> f(n, n);
  statistics.CopyEntries(0, n, f.data());
  return f;
}

double VectorError(const Eigen::VectorXd& actual, const Eigen::VectorXd& expected) {
  return (actual - expected).norm() / expected.norm();
}

class KroneckerOracleTest : public ::testing::TestWithParam<bool> {};

// Oracle 1: every operation against K = G (x) A formed explicitly in float64.
TEST_P(KroneckerOracleTest, MatchesExplicitKroneckerProduct) {
  const BlockOptions block = KroneckerBlock(5, 4, /*bias=*/GetParam());
  const int64_t n = block.ParameterCount(), na = block.FactorDim(Factor::kActivations);
  std::mt19937_64 rng(GetParam() ? 11 : 12);
  const FactorRows a_rows = RandomRows(20, 5, rng), g_rows = RandomRows(17, 4, rng);
  KroneckerStatistics statistics(block, BlockSession(block));
  AddRows(statistics, block, Factor::kActivations, a_rows);
  AddRows(statistics, block, Factor::kOutputGradients, g_rows);
  ASSERT_TRUE(statistics.CheckReady("a step").ok());
  EXPECT_EQ(statistics.dim(), n);
  EXPECT_EQ(statistics.EntriesPerRow(), n);
  EXPECT_EQ(statistics.sample_count(), 37u);

  const Eigen::MatrixXd a = ReferenceFactor(a_rows, block.bias);
  const Eigen::MatrixXd g = ReferenceFactor(g_rows, false);
  const Eigen::MatrixXd k = ReferenceKronecker(block, g, a);

  // Entries and products: the same float64 sums in another order, so round-off
  // ~ rows * eps ~ 1e-14 relative.
  EXPECT_LT(RelativeError(Entries(statistics), k), 1e-12);
  const Eigen::VectorXd v = Eigen::VectorXd::Random(n);
  EXPECT_LT(VectorError(statistics.Multiply(v), k * v), 1e-12);
  // The V convention itself: F vec(V) = vec(G V A) in V's row-major order.
  EXPECT_LT(VectorError(statistics.Multiply(v), FromV(block, g * ToV(block, v, na) * a)), 1e-12);

  // Solves: the eigendecompositions' backward error (~ n eps) times the condition number
  // of K + lambda I (below ~1e3 here, with 20 and 17 rows for factors of 6 and 4)
  // bounds the relative error by ~1e-12; 1e-10 leaves room and still fails on any
  // index or damping mistake, which errs at O(1).
  const Eigen::VectorXd grad = Eigen::VectorXd::Random(n);
  for (const double lambda : {0.0, 1e-3, 0.5}) {
    const absl::StatusOr<SolveResult> result = statistics.Solve(grad, lambda);
    ASSERT_TRUE(result.ok()) << result.status();
    const Eigen::MatrixXd damped = k + lambda * Eigen::MatrixXd::Identity(n, n);
    const Eigen::VectorXd expected = damped.llt().solve(grad);
    const double error = VectorError(result->natural_gradient, expected);
    RecordProperty(lambda == 0.0 ? "solve_error_lambda0" : "solve_error", absl::StrCat(error));
    EXPECT_LT(error, 1e-10) << "lambda " << lambda;
    EXPECT_EQ(result->summary.method, "kronecker");
    EXPECT_EQ(result->summary.kronecker_damping, "exact");
    EXPECT_EQ(result->summary.damping, lambda);
    EXPECT_EQ(result->summary.factor_age_steps, 0);
    EXPECT_EQ(result->summary.factorization_cached, lambda != 0.0);  // first solve decomposes
    EXPECT_LT(result->summary.residual, 1e-14);
    // Its true residual against the explicit K, the same bound as the solve.
    EXPECT_LT(VectorError(damped * result->natural_gradient, grad), 1e-12);
    ASSERT_TRUE(result->curvature.has_value());
    const double curvature = expected.dot(k * expected);
    EXPECT_NEAR(*result->curvature, curvature, 1e-10 * curvature);
  }

  // Eigenvalues of K by a dense solver: absolute error ~ eps |K|, so compare the
  // extremes relative to the largest.
  const absl::StatusOr<FisherSummary> summary = statistics.Summarize(true);
  ASSERT_TRUE(summary.ok()) << summary.status();
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eigen(k, Eigen::EigenvaluesOnly);
  const double largest = eigen.eigenvalues().maxCoeff();
  EXPECT_EQ(summary->dim, n);
  EXPECT_NEAR(summary->trace, k.trace(), 1e-12 * k.trace());
  EXPECT_NEAR(summary->frobenius_norm, k.norm(), 1e-12 * k.norm());
  ASSERT_TRUE(summary->has_eigenvalues);
  EXPECT_NEAR(summary->max_eigenvalue, largest, 1e-12 * largest);
  EXPECT_NEAR(summary->min_eigenvalue, eigen.eigenvalues().minCoeff(), 1e-12 * largest);

  // The factors are exposed as they are.
  EXPECT_LT(RelativeError(Entries(*statistics.FactorStatistics(Factor::kActivations)), a), 1e-13);
  EXPECT_LT(RelativeError(Entries(*statistics.FactorStatistics(Factor::kOutputGradients)), g),
            1e-13);
  EXPECT_EQ(statistics.FactorStatistics(Factor::kActivations)->dim(), na);
  EXPECT_EQ(statistics.FactorStatistics(Factor::kNone), nullptr);
}

// Oracle 2: factored Tikhonov damping against its formula, computed densely.
TEST_P(KroneckerOracleTest, FactoredDampingMatchesFormula) {
  const BlockOptions block = KroneckerBlock(5, 4, /*bias=*/GetParam());
  const int64_t n = block.ParameterCount(), na = block.FactorDim(Factor::kActivations);
  std::mt19937_64 rng(GetParam() ? 21 : 22);
  const FactorRows a_rows = RandomRows(20, 5, rng), g_rows = RandomRows(17, 4, rng);
  KroneckerStatistics statistics(block, BlockSession(block, KroneckerDamping::kFactored));
  AddRows(statistics, block, Factor::kActivations, a_rows);
  AddRows(statistics, block, Factor::kOutputGradients, g_rows);
  const Eigen::MatrixXd a = ReferenceFactor(a_rows, block.bias);
  const Eigen::MatrixXd g = ReferenceFactor(g_rows, false);
  const Eigen::VectorXd grad = Eigen::VectorXd::Random(n);
  const Eigen::MatrixXd v = ToV(block, grad, na);

  for (const double lambda : {1e-3, 0.5}) {
    const double pi = std::sqrt((a.trace() / na) / (g.trace() / 4.0));
    const Eigen::MatrixXd g_damped = g + std::sqrt(lambda) / pi * Eigen::MatrixXd::Identity(4, 4);
    const Eigen::MatrixXd a_damped = a + pi * std::sqrt(lambda) * Eigen::MatrixXd::Identity(na, na);
    const Eigen::MatrixXd left = g_damped.llt().solve(v);                            // G_d^-1 V
    const Eigen::MatrixXd n_v = a_damped.llt().solve(left.transpose()).transpose();  // .. A_d^-1
    const absl::StatusOr<SolveResult> result = statistics.Solve(grad, lambda);
    ASSERT_TRUE(result.ok()) << result.status();
    // Same bound as the exact solves (the damped factors are better conditioned).
    const double error = VectorError(result->natural_gradient, FromV(block, n_v));
    RecordProperty("factored_error", absl::StrCat(error));
    EXPECT_LT(error, 1e-10) << "lambda " << lambda;
    EXPECT_EQ(result->summary.kronecker_damping, "factored");
    const Eigen::VectorXd nat = FromV(block, n_v);
    const double curvature = nat.dot(ReferenceKronecker(block, g, a) * nat);
    EXPECT_NEAR(*result->curvature, curvature, 1e-10 * curvature);
  }
  // With lambda = 0 both dampings are the undamped inverse.
  const absl::StatusOr<SolveResult> undamped = statistics.Solve(grad, 0.0);
  ASSERT_TRUE(undamped.ok()) << undamped.status();
  const Eigen::VectorXd expected = ReferenceKronecker(block, g, a).llt().solve(grad);
  EXPECT_LT(VectorError(undamped->natural_gradient, expected), 1e-10);
}

// float32_products: the step's four eigenbasis products run in float32. Against the
// explicit float64 K, the error is that rounding: each product with inner dimension k
// errs by at most k u |U| |V| entrywise (u = 2^-24, Higham's gamma_k; for orthogonal U
// the random-signed round-off stays near k u ||V||), four products of inner dimensions
// out, na, out, na plus the casts in and out, and the division by D = s_G s_A^T + lambda
// magnifies a relative error by at most max D / min D. The float64 path errs ~1e-13, so
// an error above 1e-11 shows that the float32 products did run. After new rows the
// float32 eigenvectors must follow the refreshed decomposition (a stale copy errs at
// O(0.1)).
TEST_P(KroneckerOracleTest, Float32ProductsStayWithinTheirRoundingBound) {
  const BlockOptions block = KroneckerBlock(24, 16, /*bias=*/GetParam());
  const int64_t n = block.ParameterCount(), na = block.FactorDim(Factor::kActivations);
  const int64_t out = block.out_features;
  std::mt19937_64 rng(GetParam() ? 31 : 32);
  const FactorRows a_rows = RandomRows(60, 24, rng);
  const FactorRows g_rows = RandomRows(40, 16, rng);
  SessionOptions options = BlockSession(block);
  options.float32_products = true;
  KroneckerStatistics statistics(block, options);
  KroneckerStatistics exact(block, BlockSession(block));
  for (KroneckerStatistics* s : {&statistics, &exact}) {
    AddRows(*s, block, Factor::kActivations, a_rows);
    AddRows(*s, block, Factor::kOutputGradients, g_rows);
  }
  const Eigen::VectorXd grad = Eigen::VectorXd::Random(n);
  constexpr double kUnitRoundoff = 0x1p-24;
  const auto check = [&](const FactorRows& activations, const char* when) {
    const Eigen::MatrixXd a = ReferenceFactor(activations, block.bias);
    const Eigen::MatrixXd g = ReferenceFactor(g_rows, false);
    const Eigen::MatrixXd k = ReferenceKronecker(block, g, a);
    Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eigen_a(a, Eigen::EigenvaluesOnly);
    Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eigen_g(g, Eigen::EigenvaluesOnly);
    for (const double lambda : {1e-3, 0.1}) {
      // Eigenvalues ascend: the largest and smallest D are products of the extremes.
      const double condition =
          (eigen_g.eigenvalues().maxCoeff() * eigen_a.eigenvalues().maxCoeff() + lambda) /
          (std::max(0.0, eigen_g.eigenvalues().minCoeff() * eigen_a.eigenvalues().minCoeff()) +
           lambda);
      const double bound = static_cast<double>(2 * out + 2 * na + 4) * kUnitRoundoff * condition;
      const Eigen::VectorXd expected =
          (k + lambda * Eigen::MatrixXd::Identity(n, n)).llt().solve(grad);
      const absl::StatusOr<SolveResult> fast = statistics.Solve(grad, lambda);
      const absl::StatusOr<SolveResult> slow = exact.Solve(grad, lambda);
      ASSERT_TRUE(fast.ok()) << fast.status();
      ASSERT_TRUE(slow.ok()) << slow.status();
      const double error = VectorError(fast->natural_gradient, expected);
      RecordProperty(absl::StrCat("float32_error_", when, "_", lambda), absl::StrCat(error));
      EXPECT_LT(error, bound) << when << ", lambda " << lambda << ", condition " << condition;
      EXPECT_GT(error, 1e-11) << when << ", lambda " << lambda;
      EXPECT_LT(VectorError(slow->natural_gradient, expected), 1e-10) << when;
      // The curvature is summed in float64 from the rounded N': the same bound.
      const double curvature = expected.dot(k * expected);
      EXPECT_NEAR(*fast->curvature, curvature, bound * curvature) << when;
    }
  };
  check(a_rows, "first");
  const FactorRows more = RandomRows(30, 24, rng);
  AddRows(statistics, block, Factor::kActivations, more);
  AddRows(exact, block, Factor::kActivations, more);
  FactorRows all{RowMatrixF(90, 24), a_rows.weights};
  all.rows << a_rows.rows, more.rows;
  all.weights.insert(all.weights.end(), more.weights.begin(), more.weights.end());
  check(all, "after_new_rows");
}

INSTANTIATE_TEST_SUITE_P(Bias, KroneckerOracleTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "WithBias" : "NoBias";
                         });

// Values k / 8 with |k| <= 8 and weights in {0.5, 1, 1.5, 2}: every product of two of
// them is exact in float32, so per-sample scores and their weights stream exactly.
float SmallDyadic(std::mt19937_64& rng) {
  return static_cast<float>(std::uniform_int_distribution<int>(-8, 8)(rng)) / 8.0f;
}

// Oracle 3: the true Fisher of a linear layer on Cartesian-product data. With a and g
// independent (every pair (a_i, g_j) a sample of weight w_i u_j), the per-sample score of
// the weights is g a^T and of the biases g, i.e. s = vec(g a-bar^T) in parameter order,
// and E[s s^T] = E[g g^T] (x) E[a-bar a-bar^T] = G (x) A exactly.
TEST(KroneckerStatisticsTest, EqualsTrueFisherOfCartesianProductData) {
  for (const bool bias : {false, true}) {
    SCOPED_TRACE(bias ? "bias" : "no bias");
    const BlockOptions block = KroneckerBlock(4, 3, bias);
    const int64_t n = block.ParameterCount();
    std::mt19937_64 rng(bias ? 31 : 32);
    const float weight_values[] = {0.5f, 1.0f, 1.5f, 2.0f};
    std::uniform_int_distribution<int> pick(0, 3);
    const int p = 9, q = 7;
    FactorRows a_rows{RowMatrixF(p, 4), std::vector<float>(p)};
    FactorRows g_rows{RowMatrixF(q, 3), std::vector<float>(q)};
    for (int i = 0; i < p; ++i) {
      for (int j = 0; j < 4; ++j) a_rows.rows(i, j) = SmallDyadic(rng);
      a_rows.weights[i] = weight_values[pick(rng)];
    }
    for (int i = 0; i < q; ++i) {
      for (int j = 0; j < 3; ++j) g_rows.rows(i, j) = SmallDyadic(rng);
      g_rows.weights[i] = weight_values[pick(rng)];
    }
    KroneckerStatistics statistics(block, BlockSession(block));
    AddRows(statistics, block, Factor::kActivations, a_rows);
    AddRows(statistics, block, Factor::kOutputGradients, g_rows);

    // The p * q per-sample scores, written from the layer's gradient directly.
    RowMatrixF scores(p * q, n);
    std::vector<float> weights(p * q);
    for (int i = 0; i < p; ++i) {
      for (int j = 0; j < q; ++j) {
        const int row = i * q + j;
        weights[row] = a_rows.weights[i] * g_rows.weights[j];
        for (int o = 0; o < 3; ++o) {
          for (int c = 0; c < 4; ++c)
            scores(row, o * 4 + c) = g_rows.rows(j, o) * a_rows.rows(i, c);
          if (bias) scores(row, 12 + o) = g_rows.rows(j, o);  // d loss / d b_o = g_o
        }
      }
    }
    SessionOptions dense_options;
    dense_options.dim = n;
    DenseStatistics dense(dense_options);
    dense.Add(testing::Prepare(scores, Representation::kDense, weights));

    // Both are float64 sums of exact products: only summation round-off (~1e-15) differs.
    const double entries_error = RelativeError(Entries(statistics), Entries(dense));
    RecordProperty(bias ? "true_fisher_error_bias" : "true_fisher_error",
                   absl::StrCat(entries_error));
    EXPECT_LT(entries_error, 1e-12);
    // And a solve: the same F, damped to a condition number of ~1e2, so ~1e-13.
    const Eigen::VectorXd grad = Eigen::VectorXd::Random(n);
    const absl::StatusOr<SolveResult> kron = statistics.Solve(grad, 0.01);
    const absl::StatusOr<SolveResult> reference = dense.Solve(grad, 0.01);
    ASSERT_TRUE(kron.ok()) << kron.status();
    ASSERT_TRUE(reference.ok()) << reference.status();
    EXPECT_LT(VectorError(kron->natural_gradient, reference->natural_gradient), 1e-12);
    EXPECT_LT(VectorError(statistics.Multiply(grad), dense.Multiply(grad)), 1e-12);
  }
}

// Oracle 4: decay scales both factors' sums and W, so A, G and n do not move, also
// across DenseStatistics' folding of its scale (0.5^600 ~ 1e-181 is past its bound).
TEST(KroneckerStatisticsTest, DecayLeavesStepUnchanged) {
  const BlockOptions block = KroneckerBlock(5, 4, true);
  std::mt19937_64 rng(41);
  const FactorRows a_rows = RandomRows(20, 5, rng), g_rows = RandomRows(17, 4, rng);
  const FactorRows a_new = RandomRows(12, 5, rng), g_new = RandomRows(9, 4, rng);
  const Eigen::VectorXd grad = Eigen::VectorXd::Random(block.ParameterCount());

  KroneckerStatistics decayed(block, BlockSession(block));
  KroneckerStatistics fresh(block, BlockSession(block));
  for (KroneckerStatistics* s : {&decayed, &fresh}) {
    AddRows(*s, block, Factor::kActivations, a_rows);
    AddRows(*s, block, Factor::kOutputGradients, g_rows);
  }
  ASSERT_TRUE(decayed.Solve(grad, 0.1).ok());
  for (int k = 0; k < 600; ++k) decayed.Decay(0.5);
  EXPECT_LT(decayed.weight_sum(), 1e-150);
  const absl::StatusOr<SolveResult> after = decayed.Solve(grad, 0.1);
  const absl::StatusOr<SolveResult> reference = fresh.Solve(grad, 0.1);
  ASSERT_TRUE(after.ok() && reference.ok());
  EXPECT_TRUE(after->summary.factorization_cached);  // decay does not change the factors
  // Identical sums scaled by a power of two: bit-for-bit up to the folding's rounding.
  EXPECT_LT(VectorError(after->natural_gradient, reference->natural_gradient), 1e-12);
  const absl::StatusOr<SolveResult> recomputed = [&] {
    KroneckerStatistics again(block, BlockSession(block));
    AddRows(again, block, Factor::kActivations, a_rows);
    AddRows(again, block, Factor::kOutputGradients, g_rows);
    for (int k = 0; k < 600; ++k) again.Decay(0.5);
    return again.Solve(grad, 0.1);
  }();
  ASSERT_TRUE(recomputed.ok());
  EXPECT_LT(VectorError(recomputed->natural_gradient, reference->natural_gradient), 1e-12);

  // Rows added after the folding weigh 1 against the old rows' ~1e-181: the block then
  // equals a fresh one fed only the new rows (far below the 1e-12 tolerance).
  AddRows(decayed, block, Factor::kActivations, a_new);
  AddRows(decayed, block, Factor::kOutputGradients, g_new);
  KroneckerStatistics only_new(block, BlockSession(block));
  AddRows(only_new, block, Factor::kActivations, a_new);
  AddRows(only_new, block, Factor::kOutputGradients, g_new);
  const absl::StatusOr<SolveResult> mixed = decayed.Solve(grad, 0.1);
  const absl::StatusOr<SolveResult> expected = only_new.Solve(grad, 0.1);
  ASSERT_TRUE(mixed.ok() && expected.ok());
  EXPECT_LT(VectorError(mixed->natural_gradient, expected->natural_gradient), 1e-12);
}

// Oracle 5: with factor_refresh_period 3 a changed factor keeps its decomposition for
// two more steps, then refreshes.
TEST(KroneckerStatisticsTest, RefreshPeriodReusesStaleFactors) {
  const BlockOptions block = KroneckerBlock(5, 4, false);
  std::mt19937_64 rng(51);
  const FactorRows a1 = RandomRows(20, 5, rng), g1 = RandomRows(17, 4, rng);
  const FactorRows a2 = RandomRows(15, 5, rng), g2 = RandomRows(11, 4, rng);
  const Eigen::VectorXd grad = Eigen::VectorXd::Random(block.ParameterCount());
  const double lambda = 0.05;

  KroneckerStatistics old_factors(block, BlockSession(block));
  KroneckerStatistics new_factors(block, BlockSession(block));
  for (KroneckerStatistics* s : {&old_factors, &new_factors}) {
    AddRows(*s, block, Factor::kActivations, a1);
    AddRows(*s, block, Factor::kOutputGradients, g1);
  }
  AddRows(new_factors, block, Factor::kActivations, a2);
  AddRows(new_factors, block, Factor::kOutputGradients, g2);
  const Eigen::VectorXd n_old = old_factors.Solve(grad, lambda)->natural_gradient;
  const Eigen::VectorXd n_new = new_factors.Solve(grad, lambda)->natural_gradient;
  ASSERT_GT(VectorError(n_old, n_new), 1e-3);  // the oracle can tell them apart

  KroneckerStatistics statistics(block, BlockSession(block, KroneckerDamping::kExact, 3));
  AddRows(statistics, block, Factor::kActivations, a1);
  AddRows(statistics, block, Factor::kOutputGradients, g1);
  // Session calls StepTaken after each successful step; the period counts those.
  const absl::StatusOr<SolveResult> first = statistics.Solve(grad, lambda);  // step 1
  ASSERT_TRUE(first.ok());
  statistics.StepTaken();
  EXPECT_EQ(first->summary.factor_age_steps, 0);
  EXPECT_FALSE(first->summary.factorization_cached);
  AddRows(statistics, block, Factor::kActivations, a2);
  AddRows(statistics, block, Factor::kOutputGradients, g2);
  for (int64_t age : {1, 2}) {  // steps 2 and 3: the step-1 decompositions, stale
    // A Solve whose step then fails elsewhere in the session gets no StepTaken: it does
    // not age the decompositions, so the retried step sees the same age.
    ASSERT_TRUE(statistics.Solve(grad, lambda).ok());
    const absl::StatusOr<SolveResult> stale = statistics.Solve(grad, lambda);
    ASSERT_TRUE(stale.ok());
    statistics.StepTaken();
    EXPECT_EQ(stale->summary.factor_age_steps, age);
    EXPECT_TRUE(stale->summary.factorization_cached);
    // The same arithmetic on the same decompositions: equal to round-off.
    EXPECT_LT(VectorError(stale->natural_gradient, n_old), 1e-12);
  }
  const absl::StatusOr<SolveResult> refreshed = statistics.Solve(grad, lambda);  // step 4
  ASSERT_TRUE(refreshed.ok());
  EXPECT_EQ(refreshed->summary.factor_age_steps, 0);
  EXPECT_FALSE(refreshed->summary.factorization_cached);
  EXPECT_LT(VectorError(refreshed->natural_gradient, n_new), 1e-12);
  const absl::StatusOr<SolveResult> settled = statistics.Solve(grad, lambda);
  EXPECT_TRUE(settled->summary.factorization_cached);
  EXPECT_EQ(settled->summary.factor_age_steps, 0);

  // With the default period 1, a changed factor is recomputed at the next step.
  AddRows(old_factors, block, Factor::kOutputGradients, g2);
  const absl::StatusOr<SolveResult> immediate = old_factors.Solve(grad, lambda);
  ASSERT_TRUE(immediate.ok());
  EXPECT_EQ(immediate->summary.factor_age_steps, 0);
  EXPECT_FALSE(immediate->summary.factorization_cached);
}

// Oracle 6: readiness names the missing factor; singular blocks fail as preconditions.
TEST(KroneckerStatisticsTest, CheckReadyNamesMissingFactor) {
  const BlockOptions block = KroneckerBlock(5, 4, true);
  std::mt19937_64 rng(61);
  KroneckerStatistics statistics(block, BlockSession(block));
  absl::Status status = statistics.CheckReady("a step");
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(status.message(), HasSubstr("activations"));

  AddRows(statistics, block, Factor::kOutputGradients, RandomRows(6, 4, rng));
  FactorRows zero_weight = RandomRows(3, 5, rng);
  zero_weight.weights.assign(3, 0.0f);
  AddRows(statistics, block, Factor::kActivations, zero_weight);
  status = statistics.CheckReady("a step");
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(status.message(), HasSubstr("activations has no weighted rows yet (3 rows"));
  EXPECT_THAT(status.message(), HasSubstr("a step"));

  KroneckerStatistics no_gradients(block, BlockSession(block));
  AddRows(no_gradients, block, Factor::kActivations, RandomRows(6, 5, rng));
  status = no_gradients.CheckReady("a step");
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(status.message(), HasSubstr("output_gradients has no weighted rows yet (0 rows"));
  EXPECT_EQ(no_gradients.weight_sum(),
            no_gradients.FactorStatistics(Factor::kActivations)->weight_sum());
}

TEST(KroneckerStatisticsTest, SingularFactorsFailWithoutDamping) {
  const BlockOptions block = KroneckerBlock(5, 4, true);
  std::mt19937_64 rng(71);
  // Two activation rows: A (6 x 6) has rank 2.
  KroneckerStatistics statistics(block, BlockSession(block));
  AddRows(statistics, block, Factor::kActivations, RandomRows(2, 5, rng));
  AddRows(statistics, block, Factor::kOutputGradients, RandomRows(10, 4, rng));
  ASSERT_TRUE(statistics.CheckReady("a step").ok());
  const Eigen::VectorXd grad = Eigen::VectorXd::Random(block.ParameterCount());
  const absl::StatusOr<SolveResult> singular = statistics.Solve(grad, 0.0);
  EXPECT_EQ(singular.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(singular.status().message(), HasSubstr("singular for this block"));
  EXPECT_THAT(singular.status().message(), HasSubstr("set a positive damping"));
  const absl::StatusOr<SolveResult> damped = statistics.Solve(grad, 0.1);
  ASSERT_TRUE(damped.ok()) << damped.status();
  EXPECT_TRUE(damped->summary.factorization_cached);

  // Factored damping needs pi, hence nonzero traces: G of all-zero rows has none.
  KroneckerStatistics factored(block, BlockSession(block, KroneckerDamping::kFactored));
  AddRows(factored, block, Factor::kActivations, RandomRows(10, 5, rng));
  FactorRows zeros = RandomRows(4, 4, rng);
  zeros.rows.setZero();
  AddRows(factored, block, Factor::kOutputGradients, zeros);
  const absl::StatusOr<SolveResult> no_pi = factored.Solve(grad, 0.1);
  EXPECT_EQ(no_pi.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(no_pi.status().message(), HasSubstr("trace"));
}

}  // namespace
}  // namespace fisherd
