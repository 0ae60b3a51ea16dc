// The dense estimator against the closed-form oracles of docs/design.md section 1.
#include <cmath>
#include <iostream>
#include <random>

#include "Eigen/Cholesky"
#include "Eigen/Eigenvalues"
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

SessionOptions Dense(int64_t dim, bool centered = false, double decay = 1.0, double damping = 0.0) {
  SessionOptions options;
  options.dim = dim;
  options.centered = centered;
  options.decay = decay;
  options.damping = damping;
  return options;
}

void Stream(Session& session, const RowMatrixF& rows, const std::vector<float>& weights = {}) {
  session.AddScores("", 0, Prepare(rows, session.options().representation, weights));
}

// Known SPD matrix streamed as its Cholesky factor's rows: F = A to round-off, and the
// step equals a dense float64 solve. The tolerance 1e-10 is a few hundred ulps times
// cond(A + lambda I) (about 1e2 here) for two different but backward-stable solves.
TEST(DenseStatisticsTest, KnownSpdMatrixStepMatchesDenseSolve) {
  std::mt19937_64 rng(7);
  const int dim = 40;
  const Eigen::MatrixXd factor = testing::RandomFloatCholeskyFactor(dim, rng);
  const Eigen::MatrixXd a = factor * factor.transpose() / dim;
  Session session(Dense(dim));
  Stream(session, testing::FactorRows(factor));
  EXPECT_LT(RelativeError(DenseEstimate(session), a), 1e-14);

  const Eigen::VectorXd g = Eigen::VectorXd::Random(dim);
  for (double damping : {0.0, 0.1}) {
    StepOptions options;
    options.damping = damping;
    options.skip_decay = true;
    absl::StatusOr<StepResult> step = session.Step(g, options);
    ASSERT_TRUE(step.ok()) << step.status();
    const Eigen::MatrixXd damped = a + damping * Eigen::MatrixXd::Identity(dim, dim);
    const Eigen::VectorXd expected = damped.ldlt().solve(g);
    EXPECT_LT((step->natural_gradient - expected).norm() / expected.norm(), 1e-10);
    EXPECT_NEAR(step->natural_norm_sq, g.dot(expected), 1e-10 * g.dot(expected));
    EXPECT_LT(step->solver.residual, 1e-12);
    EXPECT_EQ(step->solver.method, "cholesky");
    EXPECT_DOUBLE_EQ(step->eta, 1.0);
    EXPECT_EQ(step->update, -step->natural_gradient);
    // Predicted KL uses the undamped F.
    EXPECT_NEAR(step->predicted_kl, 0.5 * step->update.dot(a * step->update),
                1e-10 * step->predicted_kl);
  }
}

TEST(DenseStatisticsTest, KlBudgetIsMetExactlyInTheDampedMetric) {
  std::mt19937_64 rng(11);
  const int dim = 12;
  const Eigen::MatrixXd factor = testing::RandomFloatCholeskyFactor(dim, rng);
  const Eigen::MatrixXd a = factor * factor.transpose() / dim;
  Session session(Dense(dim, false, 1.0, 0.05));
  Stream(session, testing::FactorRows(factor));
  const Eigen::VectorXd g = Eigen::VectorXd::Random(dim);

  StepOptions options;
  options.kl_budget = 1e-3;
  absl::StatusOr<StepResult> step = session.Step(g, options);
  ASSERT_TRUE(step.ok()) << step.status();
  const Eigen::MatrixXd damped = a + 0.05 * Eigen::MatrixXd::Identity(dim, dim);
  EXPECT_NEAR(0.5 * step->update.dot(damped * step->update), 1e-3, 1e-14);
  EXPECT_NEAR(step->predicted_kl, 0.5 * step->update.dot(a * step->update), 1e-14);
  EXPECT_LT(step->predicted_kl, 1e-3);  // damping only shrinks the undamped KL
  EXPECT_NEAR(step->solver.damping, 0.05, 0);

  options.learning_rate = step->eta / 4;  // a cap that binds
  absl::StatusOr<StepResult> capped = session.Step(g, options);
  ASSERT_TRUE(capped.ok());
  EXPECT_DOUBLE_EQ(capped->eta, step->eta / 4);
}

TEST(DenseStatisticsTest, SecondStepReusesTheFactorUntilNewSamples) {
  std::mt19937_64 rng(3);
  const int dim = 16;
  const Eigen::MatrixXd factor = testing::RandomFloatCholeskyFactor(dim, rng);
  Session session(Dense(dim, false, /*decay=*/0.9));
  Stream(session, testing::FactorRows(factor));
  const Eigen::VectorXd g = Eigen::VectorXd::Random(dim);
  absl::StatusOr<StepResult> first = session.Step(g, {});
  absl::StatusOr<StepResult> second = session.Step(g, {});  // decayed, F unchanged
  ASSERT_TRUE(first.ok() && second.ok());
  EXPECT_FALSE(first->solver.factorization_cached);
  EXPECT_TRUE(second->solver.factorization_cached);
  EXPECT_LT((first->natural_gradient - second->natural_gradient).norm(),
            1e-12 * first->natural_gradient.norm());

  StepOptions other_damping;
  other_damping.damping = 0.5;
  absl::StatusOr<StepResult> third = session.Step(g, other_damping);
  ASSERT_TRUE(third.ok());
  EXPECT_FALSE(third->solver.factorization_cached);

  Stream(session, testing::FactorRows(factor));
  absl::StatusOr<StepResult> fourth = session.Step(g, other_damping);
  ASSERT_TRUE(fourth.ok());
  EXPECT_FALSE(fourth->solver.factorization_cached);
}

TEST(DenseStatisticsTest, DecayWeighsOldBatchesByRho) {
  std::mt19937_64 rng(5);
  std::normal_distribution<float> normal;
  const int dim = 6;
  RowMatrixF old_rows(50, dim), new_rows(30, dim);
  for (float& x : old_rows.reshaped()) x = normal(rng);
  for (float& x : new_rows.reshaped()) x = 2.0f * normal(rng) + 1.0f;

  for (bool centered : {false, true}) {
    Session session(Dense(dim, centered, /*decay=*/0.25, /*damping=*/1.0));
    Stream(session, old_rows);
    ASSERT_TRUE(session.Step(Eigen::VectorXd::Ones(dim), {}).ok());
    Stream(session, new_rows);

    // Oracle: the old rows weighted by rho, the new ones by 1.
    RowMatrixF all(80, dim);
    all << old_rows, new_rows;
    std::vector<float> weights(80, 1.0f);
    for (int i = 0; i < 50; ++i) weights[i] = 0.25f;
    EXPECT_LT(RelativeError(DenseEstimate(session), ReferenceFisher(all, weights, centered)),
              1e-13);
    EXPECT_NEAR(session.Stats().weight_sum, 50 * 0.25 + 30, 1e-12);
    EXPECT_EQ(session.Stats().sample_count, 80u);
  }
}

TEST(DenseStatisticsTest, ManyDecaysDoNotOverflowTheScale) {
  const int dim = 3;
  RowMatrixF rows(2, dim);
  rows << 1, 2, 3, -1, 0, 2;
  Session session(Dense(dim, false, /*decay=*/0.5, /*damping=*/1e-3));
  Stream(session, rows);
  // 0.5^600 is below the 1e-150 at which the stored scale is folded into the sums,
  // and 1 / 0.5^600 would be near overflow as a rank-k alpha had it not been.
  for (int i = 0; i < 600; ++i) ASSERT_TRUE(session.Step(Eigen::VectorXd::Ones(dim), {}).ok());
  Stream(session, rows);
  // The first batch now weighs 0.5^600: F is the second batch's to round-off.
  EXPECT_LT(RelativeError(DenseEstimate(session), ReferenceFisher(rows, {}, false)), 1e-14);
}

TEST(DenseStatisticsTest, WeightsActAsRepeatedRows) {
  RowMatrixF rows(2, 2);
  rows << 1, 2, -3, 1;
  RowMatrixF repeated(3, 2);
  repeated << 1, 2, -3, 1, -3, 1;
  for (bool centered : {false, true}) {
    Session weighted(Dense(2, centered)), plain(Dense(2, centered));
    Stream(weighted, rows, {1.0f, 2.0f});
    Stream(plain, repeated);
    EXPECT_LT(RelativeError(DenseEstimate(weighted), DenseEstimate(plain)), 1e-15);
  }
}

// Gaussian N(mu, sigma^2) with theta = (mu, sigma): F = diag(1/sigma^2, 2/sigma^2).
// Each entry is checked within 5 standard errors of its Monte Carlo mean; the standard
// errors are closed-form moments of z ~ N(0, 1): Var(z^2) = 2, Var((z^2-1)^2) = 56,
// Var(z (z^2-1)) = 10.
TEST(DenseStatisticsTest, GaussianScoresConvergeToTheClosedForm) {
  const double mu = 0.5, sigma = 1.7;
  const int n = 200000;
  std::mt19937_64 rng(17);
  std::normal_distribution<double> normal;
  RowMatrixF rows(n, 2);
  for (int i = 0; i < n; ++i) {
    const double z = normal(rng);
    rows(i, 0) = static_cast<float>(z / sigma);              // d/dmu log p
    rows(i, 1) = static_cast<float>((z * z - 1.0) / sigma);  // d/dsigma log p
  }
  Session session(Dense(2));
  Stream(session, rows);
  const Eigen::MatrixXd f = DenseEstimate(session);
  const double s2 = sigma * sigma;
  const double root_n = std::sqrt(static_cast<double>(n));
  EXPECT_NEAR(f(0, 0), 1.0 / s2, 5 * std::sqrt(2.0) / s2 / root_n);
  EXPECT_NEAR(f(1, 1), 2.0 / s2, 5 * std::sqrt(56.0) / s2 / root_n);
  EXPECT_NEAR(f(0, 1), 0.0, 5 * std::sqrt(10.0) / s2 / root_n);
  EXPECT_DOUBLE_EQ(f(0, 1), f(1, 0));
  (void)mu;
}

// Categorical softmax over K logits: F = diag(p) - p p^T, which is singular (scores sum
// to zero), so a step without damping must be refused and one with damping must work.
// The probabilities are dyadic so that every score is exact in float32 and every row
// sums to exactly zero: F is then singular in float64 too, not merely within round-off
// of singular (with p = 0.1, 0.2, ... the float32 rows miss zero by ~1e-8 and the
// smallest pivot lands on either side of the threshold depending on summation order).
TEST(DenseStatisticsTest, SoftmaxFisherAndItsSingularity) {
  const Eigen::Vector4d p(0.125, 0.125, 0.25, 0.5);
  const int n = 400000;
  std::mt19937_64 rng(23);
  std::discrete_distribution<int> draw({0.125, 0.125, 0.25, 0.5});
  RowMatrixF rows(n, 4);
  for (int i = 0; i < n; ++i) {
    const int y = draw(rng);
    for (int k = 0; k < 4; ++k) rows(i, k) = static_cast<float>((k == y) - p[k]);
  }
  Session session(Dense(4));
  Stream(session, rows);
  const Eigen::Matrix4d expected = Eigen::Matrix4d(p.asDiagonal()) - p * p.transpose();
  // Every entry has variance below 1/4, so 5 standard errors are at most 2.5/sqrt(n).
  EXPECT_LT((DenseEstimate(session) - expected).cwiseAbs().maxCoeff(), 2.5 / std::sqrt(n));

  // Centering the exact-model scores changes nothing beyond sampling noise.
  absl::StatusOr<StepResult> step = session.Step(Eigen::Vector4d(1, -1, 0, 0), {});
  ASSERT_FALSE(step.ok());
  EXPECT_EQ(step.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(step.status().message(), HasSubstr("damping"));
  EXPECT_EQ(session.Stats().step_count, 0u);  // refused steps change nothing

  StepOptions damped;
  damped.damping = 1e-3;
  EXPECT_TRUE(session.Step(Eigen::Vector4d(1, -1, 0, 0), damped).ok());
}

TEST(DenseStatisticsTest, FewerSamplesThanDimIsSingularWithoutDamping) {
  std::mt19937_64 rng(29);
  std::normal_distribution<float> normal;
  RowMatrixF rows(5, 20);
  for (float& x : rows.reshaped()) x = normal(rng);
  Session session(Dense(20));
  Stream(session, rows);
  absl::StatusOr<StepResult> step = session.Step(Eigen::VectorXd::Ones(20), {});
  EXPECT_EQ(step.status().code(), absl::StatusCode::kFailedPrecondition);

  StepOptions options;
  options.damping = 0.3;
  step = session.Step(Eigen::VectorXd::Ones(20), options);
  ASSERT_TRUE(step.ok());
  const Eigen::MatrixXd damped =
      ReferenceFisher(rows, {}, false) + 0.3 * Eigen::MatrixXd::Identity(20, 20);
  const Eigen::VectorXd expected = damped.ldlt().solve(Eigen::VectorXd::Ones(20));
  EXPECT_LT((step->natural_gradient - expected).norm() / expected.norm(), 1e-10);
}

TEST(DenseStatisticsTest, NothingWorksBeforeTheFirstSample) {
  Session session(Dense(3));
  EXPECT_EQ(session.Step(Eigen::VectorXd::Ones(3), {}).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(session.FisherVectorProduct(Eigen::VectorXd::Ones(3)).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(session.Summarize(false).status().code(), absl::StatusCode::kFailedPrecondition);
  // Zero-weight rows count as samples but carry no information.
  RowMatrixF rows = RowMatrixF::Ones(2, 3);
  Stream(session, rows, {0.0f, 0.0f});
  EXPECT_EQ(session.Step(Eigen::VectorXd::Ones(3), {}).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(DenseStatisticsTest, CenteredEstimateIsTheCovariance) {
  std::mt19937_64 rng(31);
  std::normal_distribution<float> normal;
  RowMatrixF rows(300, 5);
  for (float& x : rows.reshaped()) x = normal(rng) + 3.0f;
  Session session(Dense(5, /*centered=*/true));
  Stream(session, rows.topRows(100));
  Stream(session, rows.bottomRows(200));
  EXPECT_LT(RelativeError(DenseEstimate(session), ReferenceFisher(rows, {}, true)), 1e-12);
}

// Quadratic KL of the Gaussian in (mu, log sigma), F = diag(1/sigma^2, 2) streamed
// exactly, against the exact KL: the error must shrink like |delta|^3.
TEST(DenseStatisticsTest, QuadraticKlApproximatesExactGaussianKl) {
  const double sigma = 0.5;
  RowMatrixF rows(2, 2);
  rows << static_cast<float>(std::sqrt(2.0) / sigma), 0, 0, 2;  // F = R^T R / 2
  Session session(Dense(2));
  Stream(session, rows);
  auto exact_kl = [&](double dmu, double dlog) {
    const double sigma2 = sigma * std::exp(dlog);
    return std::log(sigma2 / sigma) + (sigma * sigma + dmu * dmu) / (2 * sigma2 * sigma2) - 0.5;
  };
  double previous_error = 0.0;
  for (double h : {1e-1, 5e-2, 2.5e-2}) {
    absl::StatusOr<FisherVectorProductResult> fvp =
        session.FisherVectorProduct(Eigen::Vector2d(h, -h));
    ASSERT_TRUE(fvp.ok());
    const double kl = exact_kl(h, -h);
    const double error = std::abs(fvp->quadratic_kl - kl);
    // Relative error is first order in the displacement in natural units
    // (|dmu| / sigma + |d log sigma| = 3h here), with a coefficient below 1.
    EXPECT_LT(error, 3 * h * kl);
    if (previous_error > 0) {
      EXPECT_NEAR(previous_error / error, 8.0, 1.5);  // halving h divides it by 2^3
    }
    previous_error = error;
  }
}

// Logistic regression is a GLM: its Fisher equals the Hessian of the mean negative
// log-likelihood, so the natural-gradient step with learning rate 1 is Newton's step.
// Rows sqrt(p(1-p)) x are streamed (rounded to float32 once); the oracle Hessian is
// built from the same float rows, so the two steps agree to solver round-off.
Eigen::VectorXd Sigmoid(const Eigen::VectorXd& t) {
  return (1.0 + (-t.array()).exp()).inverse().matrix();
}

TEST(DenseStatisticsTest, NaturalGradientIsNewtonsStepOnLogisticRegression) {
  const int n = 500, d = 6;
  std::mt19937_64 rng(37);
  std::normal_distribution<double> normal;
  std::uniform_real_distribution<double> uniform;
  Eigen::MatrixXd x(n, d);
  Eigen::VectorXd y(n), theta_true(d);
  for (double& v : x.reshaped()) v = normal(rng);
  for (double& v : theta_true) v = normal(rng);
  for (int i = 0; i < n; ++i) {
    y[i] = uniform(rng) < 1.0 / (1.0 + std::exp(-x.row(i).dot(theta_true))) ? 1.0 : 0.0;
  }

  Eigen::VectorXd theta = Eigen::VectorXd::Zero(d);
  for (int iteration = 0; iteration < 6; ++iteration) {
    const Eigen::VectorXd p = Sigmoid(x * theta);
    const Eigen::VectorXd g = x.transpose() * (p - y) / n;
    RowMatrixF rows(n, d);
    for (int i = 0; i < n; ++i) {
      rows.row(i) = (std::sqrt(p[i] * (1 - p[i])) * x.row(i)).cast<float>();
    }
    const Eigen::MatrixXd hessian = ReferenceFisher(rows, {}, false);
    const Eigen::VectorXd newton = -hessian.llt().solve(g);

    Session session(Dense(d));
    Stream(session, rows);
    StepOptions options;
    options.learning_rate = 1.0;
    absl::StatusOr<StepResult> step = session.Step(g, options);
    ASSERT_TRUE(step.ok()) << step.status();
    EXPECT_LT((step->update - newton).norm(), 1e-10 * newton.norm()) << iteration;
    theta += step->update;
  }
  // Newton converged: the gradient at the result vanishes (up to float32 Hessian rows).
  const Eigen::VectorXd p = Sigmoid(x * theta);
  EXPECT_LT((x.transpose() * (p - y) / n).norm(), 1e-6);
}

TEST(DenseStatisticsTest, SummaryMatchesADenseEigensolver) {
  std::mt19937_64 rng(41);
  const int dim = 30;
  const Eigen::MatrixXd factor = testing::RandomFloatCholeskyFactor(dim, rng);
  const Eigen::MatrixXd a = factor * factor.transpose() / dim;
  Session session(Dense(dim));
  Stream(session, testing::FactorRows(factor));
  absl::StatusOr<FisherSummary> summary = session.Summarize(true);
  ASSERT_TRUE(summary.ok());
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eigen(a);
  EXPECT_NEAR(summary->trace, a.trace(), 1e-12 * a.trace());
  EXPECT_NEAR(summary->frobenius_norm, a.norm(), 1e-12 * a.norm());
  ASSERT_TRUE(summary->has_eigenvalues);
  EXPECT_NEAR(summary->min_eigenvalue, eigen.eigenvalues().minCoeff(), 1e-12);
  EXPECT_NEAR(summary->max_eigenvalue, eigen.eigenvalues().maxCoeff(), 1e-12);
  EXPECT_NEAR(summary->condition_number,
              eigen.eigenvalues().maxCoeff() / eigen.eigenvalues().minCoeff(),
              1e-9 * summary->condition_number);
  EXPECT_FALSE(session.Summarize(false)->has_eigenvalues);
}

TEST(DenseStatisticsTest, FisherVectorProductAndEntriesMatchTheMatrix) {
  std::mt19937_64 rng(43);
  const int dim = 9;
  const Eigen::MatrixXd factor = testing::RandomFloatCholeskyFactor(dim, rng);
  const Eigen::MatrixXd a = factor * factor.transpose() / dim;
  Session session(Dense(dim));
  Stream(session, testing::FactorRows(factor));
  const Eigen::VectorXd v = Eigen::VectorXd::Random(dim);
  absl::StatusOr<FisherVectorProductResult> fvp = session.FisherVectorProduct(v);
  ASSERT_TRUE(fvp.ok());
  EXPECT_LT((fvp->product - a * v).norm(), 1e-13 * (a * v).norm());
  EXPECT_NEAR(fvp->quadratic_kl, 0.5 * v.dot(a * v), 1e-13);

  std::vector<double> middle(3 * dim);
  ASSERT_TRUE(session.CopyEntries(4, 3, middle.data()).ok());
  for (int r = 0; r < 3; ++r) {
    for (int c = 0; c < dim; ++c) EXPECT_NEAR(middle[r * dim + c], a(4 + r, c), 1e-14);
  }
  EXPECT_EQ(session.CopyEntries(7, 3, middle.data()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(session.FisherVectorProduct(Eigen::VectorXd::Ones(dim + 1)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// docs/design.md section 5: after 1e6 float32 samples the float64 totals stay within 1e-6
// relative (Frobenius) of a float64 reference. The reference sums the same float
// values in long double, row by row, so it is independent of the rank-k kernel.
TEST(DenseStatisticsTest, MillionSamplesStayWithinOnePpmOfAFloat64Reference) {
  const int dim = 8, batch = 1000, batches = 1000;
  std::mt19937_64 rng(47);
  std::normal_distribution<float> normal;
  Session session(Dense(dim));
  Eigen::Matrix<long double, Eigen::Dynamic, Eigen::Dynamic> reference =
      Eigen::Matrix<long double, Eigen::Dynamic, Eigen::Dynamic>::Zero(dim, dim);
  RowMatrixF rows(batch, dim);
  for (int b = 0; b < batches; ++b) {
    for (float& x : rows.reshaped()) x = normal(rng) * 3.0f + 1.0f;
    Stream(session, rows);
    for (int i = 0; i < batch; ++i) {
      const auto s = rows.row(i).transpose().cast<long double>();
      reference += s * s.transpose();
    }
  }
  const Eigen::MatrixXd expected = (reference / (batch * batches)).cast<double>();
  EXPECT_EQ(session.Stats().sample_count, 1000000u);
  EXPECT_LT(RelativeError(DenseEstimate(session), expected), 1e-6);
}

// The float32 batch kernel (DenseKernel::kFloat32): block columns by sgemm and ssyrk,
// added into float64 sums. With small-integer scores every float32 product and sum is
// exact, so both kernels must agree bit for bit, across block and chunk edges (dim 300
// is not a multiple of the 256-column block, 600 rows span three 256-row chunks).
TEST(DenseStatisticsTest, Float32KernelIsExactOnSmallIntegers) {
  const int dim = 300, rows = 600;
  std::mt19937_64 rng(11);
  std::uniform_int_distribution<int> pick(-3, 3);
  RowMatrixF scores(rows, dim);
  for (float& x : scores.reshaped()) x = static_cast<float>(pick(rng));
  std::vector<float> weights(rows);
  for (float& w : weights) w = static_cast<float>(pick(rng) * pick(rng));  // squares: exact roots
  for (float& w : weights) w = w * w;
  for (bool weighted : {false, true}) {
    ScoreBatchView view;
    view.rows = rows;
    view.dim = dim;
    view.scores = scores.data();
    view.weights = weighted ? weights.data() : nullptr;
    Session fast(Dense(dim)), exact(Dense(dim));
    const PreparedBatch f32 = PrepareBatch(view, Representation::kDense, DenseKernel::kFloat32);
    const PreparedBatch f64 = PrepareBatch(view, Representation::kDense, DenseKernel::kFloat64);
    ASSERT_GT(f32.root_weighted_f32.size(), 0);
    ASSERT_GT(f64.root_weighted.size(), 0);
    fast.AddScores("", 0, f32);
    exact.AddScores("", 0, f64);
    EXPECT_EQ((DenseEstimate(fast) - DenseEstimate(exact)).cwiseAbs().maxCoeff(), 0.0)
        << "weighted " << weighted;
  }
}

// kAuto picks the float32 kernel for batches of kFloat32KernelMinRows rows or more at
// dim kFloat32KernelMinDim or more, and float64 otherwise.
TEST(DenseStatisticsTest, AutoKernelSwitchesAtTheThresholds) {
  const int min_dim = static_cast<int>(kFloat32KernelMinDim);
  const int min_rows = static_cast<int>(kFloat32KernelMinRows);
  for (int dim : {min_dim - 1, min_dim}) {
    for (int rows : {min_rows - 1, min_rows}) {
      const RowMatrixF ones = RowMatrixF::Ones(rows, dim);
      const ScoreBatchView view{rows, dim, ones.data(), nullptr};
      const PreparedBatch batch = PrepareBatch(view, Representation::kDense, DenseKernel::kAuto);
      const bool float32 = dim >= min_dim && rows >= min_rows;
      EXPECT_EQ(batch.root_weighted_f32.size() > 0, float32) << dim << " " << rows;
      EXPECT_EQ(batch.root_weighted.size() > 0, !float32) << dim << " " << rows;
    }
  }
}

// docs/design.md 5 at a size where the float32 kernel is the one in use: 1e6 samples at
// dim 256 (mean 1, so the sums only grow) stay within 1e-6 relative (Frobenius) of the
// same stream accumulated with float64 products.
TEST(DenseStatisticsTest, Float32KernelMillionSamplesStayWithinOnePpmOfFloat64) {
  const int dim = 256, batch = 256, batches = 3907;  // 1,000,192 samples
  std::mt19937 rng(53);
  std::uniform_real_distribution<float> uniform(-2.0f, 4.0f);
  Session fast(Dense(dim)), reference(Dense(dim));
  RowMatrixF rows(batch, dim);
  ScoreBatchView view;
  view.rows = batch;
  view.dim = dim;
  view.scores = rows.data();
  for (int b = 0; b < batches; ++b) {
    for (float& x : rows.reshaped()) x = uniform(rng);
    fast.AddScores("", 0, PrepareBatch(view, Representation::kDense, DenseKernel::kFloat32));
    reference.AddScores("", 0, PrepareBatch(view, Representation::kDense, DenseKernel::kFloat64));
  }
  const double error = RelativeError(DenseEstimate(fast), DenseEstimate(reference));
  EXPECT_LT(error, 1e-6);
  std::cout << "float32 kernel, 1e6 samples at dim 256: relative error " << error << "\n";
}

}  // namespace
}  // namespace fisherd
