// NaturalGradientStep and FisherVectorProduct against a dense oracle, their request
// errors, and numerical trouble reported as FAILED_PRECONDITION.
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "Eigen/Cholesky"
#include "Eigen/Eigenvalues"
#include "gmock/gmock.h"
#include "tests/service/test_server.h"

namespace fisherd::testing {
namespace {

using ::testing::HasSubstr;

constexpr int kDim = 64;  // also the number of rows, so sqrt(n) = 8 is exact

// The docs/design.md oracle "a known SPD matrix streamed as the rows of its Cholesky
// factor times sqrt(n)". R is upper triangular with diagonal 4 and off-diagonal
// entries in {-0.25, 0, 0.25}; A = R^T R. The streamed rows are 8 R (n = 64 rows), so
// F = sum (8 r_i)(8 r_i)^T / 64 = R^T R = A. Every value is a small multiple of 1/4:
// exactly representable in float32, and every product and partial sum is exact in
// float64, so the server's F equals A bit for bit whatever its summation order.
struct KnownFisher {
  Eigen::MatrixXd a;
  RowMatrixF rows;
};

KnownFisher MakeKnownFisher() {
  std::mt19937_64 rng(7);
  std::uniform_int_distribution<int> pick(-1, 1);
  Eigen::MatrixXd r = Eigen::MatrixXd::Zero(kDim, kDim);
  for (int i = 0; i < kDim; ++i) {
    r(i, i) = 4.0;
    for (int j = i + 1; j < kDim; ++j) r(i, j) = 0.25 * pick(rng);
  }
  KnownFisher known;
  known.a = r.transpose() * r;
  known.rows = (8.0 * r).cast<float>();
  return known;
}

class StepTest : public ServiceTest {
 protected:
  // A session holding F = A (streamed in 4 batches of 16 rows).
  std::string CreateKnownSession(const std::string& id, double decay = 0.0) {
    v1::SessionConfig config = DenseConfig(kDim);
    config.set_decay(decay);
    const std::string name = MustCreate(id, config);
    std::vector<v1::ScoreBatch> batches;
    for (int b = 0; b < 4; ++b) {
      batches.push_back(MakeBatch(name, "w", b + 1, known_.rows.middleRows(16 * b, 16)));
    }
    std::vector<v1::ScoreAck> acks;
    EXPECT_TRUE(StreamBatches(batches, &acks).ok());
    return name;
  }

  grpc::Status Step(const v1::NaturalGradientStepRequest& request,
                    v1::NaturalGradientStepResponse* response) {
    grpc::ClientContext context;
    return stub_->NaturalGradientStep(&context, request, response);
  }

  static v1::NaturalGradientStepRequest StepRequest(const std::string& name,
                                                    const Eigen::VectorXd& g) {
    v1::NaturalGradientStepRequest request;
    request.set_session(name);
    request.mutable_gradient()->Assign(g.data(), g.data() + g.size());
    return request;
  }

  static Eigen::VectorXd ToVector(const google::protobuf::RepeatedField<double>& values) {
    return Eigen::Map<const Eigen::VectorXd>(values.data(), values.size());
  }

  static Eigen::VectorXd RandomGradient() {
    std::mt19937_64 rng(11);
    std::normal_distribution<double> normal;
    Eigen::VectorXd g(kDim);
    for (int i = 0; i < kDim; ++i) g(i) = normal(rng);
    return g;
  }

  static double RelativeError(const Eigen::VectorXd& x, const Eigen::VectorXd& reference) {
    return (x - reference).norm() / reference.norm();
  }

  const KnownFisher known_ = MakeKnownFisher();
};

// Tolerance 1e-9: F equals A exactly (see KnownFisher), so the only error is the
// float64 Cholesky solve's, bounded by about cond(A) * eps. The test asserts
// cond(A) < 1e3, making that < 1e-13; 1e-9 leaves room for any backward-stable solver
// while still failing for a wrong matrix, a float32 solve, or a missing/extra batch.
TEST_F(StepTest, MatchesDenseSolve) {
  const Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eigen(known_.a);
  ASSERT_LT(eigen.eigenvalues().maxCoeff() / eigen.eigenvalues().minCoeff(), 1e3);

  const std::string name = CreateKnownSession("known");
  const Eigen::VectorXd g = RandomGradient();
  const Eigen::VectorXd n = known_.a.llt().solve(g);

  v1::NaturalGradientStepRequest request = StepRequest(name, g);
  request.set_learning_rate(0.5);
  v1::NaturalGradientStepResponse response;
  grpc::Status status = Step(request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_LT(RelativeError(ToVector(response.natural_gradient()), n), 1e-9);
  EXPECT_LT(RelativeError(ToVector(response.update()), -0.5 * n), 1e-9);
  EXPECT_EQ(response.eta(), 0.5);
  EXPECT_NEAR(response.natural_norm_sq(), g.dot(n), 1e-9 * g.dot(n));
  const Eigen::VectorXd u = -0.5 * n;
  EXPECT_NEAR(response.predicted_kl(), 0.5 * u.dot(known_.a * u), 1e-9 * u.dot(known_.a * u));
  EXPECT_EQ(response.solver().method(), "cholesky");
  EXPECT_EQ(response.solver().damping(), 0.0);
  EXPECT_LT(response.solver().residual(), 1e-10);
  EXPECT_GE(response.solver().seconds(), 0.0);
  EXPECT_FALSE(response.solver().factorization_cached());
  // Every method is direct: SolverSummary carries no iteration count (field 2 reserved).
  EXPECT_EQ(v1::SolverSummary::descriptor()->FindFieldByName("iterations"), nullptr);
  EXPECT_TRUE(v1::SolverSummary::descriptor()->IsReservedNumber(2));

  // No new samples: the same factor serves the second step.
  status = Step(request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_TRUE(response.solver().factorization_cached());
  EXPECT_LT(RelativeError(ToVector(response.natural_gradient()), n), 1e-9);
  EXPECT_EQ(MustGetStats(name).step_count(), 2u);
}

TEST_F(StepTest, DampingOverrideAndKlBudget) {
  const std::string name = CreateKnownSession("known");
  const Eigen::VectorXd g = RandomGradient();

  v1::NaturalGradientStepRequest request = StepRequest(name, g);
  request.set_damping(0.5);
  v1::NaturalGradientStepResponse response;
  ASSERT_TRUE(Step(request, &response).ok());
  const Eigen::MatrixXd damped = known_.a + 0.5 * Eigen::MatrixXd::Identity(kDim, kDim);
  EXPECT_LT(RelativeError(ToVector(response.natural_gradient()), damped.llt().solve(g)), 1e-9);
  EXPECT_EQ(response.solver().damping(), 0.5);
  EXPECT_EQ(response.eta(), 1.0);  // neither learning rate nor budget: eta = 1

  // KL budget c with lambda = 0: eta = sqrt(2c / g^T n) and the predicted KL is c.
  request = StepRequest(name, g);
  request.set_kl_budget(0.01);
  ASSERT_TRUE(Step(request, &response).ok());
  const Eigen::VectorXd n = known_.a.llt().solve(g);
  EXPECT_NEAR(response.eta(), std::sqrt(2 * 0.01 / g.dot(n)), 1e-9 * response.eta());
  EXPECT_NEAR(response.predicted_kl(), 0.01, 1e-9);

  // A learning rate beside the budget caps eta.
  request.set_learning_rate(1e-6);
  ASSERT_TRUE(Step(request, &response).ok());
  EXPECT_EQ(response.eta(), 1e-6);
}

TEST_F(StepTest, DecayUnlessSkipped) {
  const std::string name = CreateKnownSession("decaying", /*decay=*/0.5);
  v1::NaturalGradientStepRequest request = StepRequest(name, RandomGradient());
  request.set_skip_decay(true);
  v1::NaturalGradientStepResponse response;
  ASSERT_TRUE(Step(request, &response).ok());
  EXPECT_EQ(MustGetStats(name).weight_sum(), 64.0);
  request.set_skip_decay(false);
  ASSERT_TRUE(Step(request, &response).ok());
  const v1::SessionStats stats = MustGetStats(name);
  EXPECT_EQ(stats.weight_sum(), 32.0);
  EXPECT_EQ(stats.sample_count(), 64u);  // counts rows, never decayed
  EXPECT_EQ(stats.step_count(), 2u);
}

TEST_F(StepTest, BeforeAnySampleIsFailedPrecondition) {
  const std::string name = MustCreate("empty", DenseConfig(kDim));
  v1::NaturalGradientStepResponse response;
  const grpc::Status status = Step(StepRequest(name, RandomGradient()), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_FALSE(status.error_message().empty());

  v1::FisherVectorProductRequest fvp;
  fvp.set_session(name);
  for (int i = 0; i < kDim; ++i) fvp.add_vector(1.0);
  v1::FisherVectorProductResponse product;
  grpc::ClientContext context;
  EXPECT_EQ(stub_->FisherVectorProduct(&context, fvp, &product).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
}

TEST_F(StepTest, SingularFisherNeedsDamping) {
  v1::SessionConfig config = DenseConfig(4);
  const std::string name = MustCreate("rank1", config);
  RowMatrixF row(1, 4);
  row << 1.0f, 2.0f, 0.0f, -1.0f;  // F = s s^T has rank 1
  ASSERT_TRUE(AddScores(MakeBatch(name, "w", 1, row)).ok());

  v1::NaturalGradientStepRequest request = StepRequest(name, Eigen::VectorXd::Ones(4));
  v1::NaturalGradientStepResponse response;
  const grpc::Status status = Step(request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_FALSE(status.error_message().empty());
  EXPECT_EQ(MustGetStats(name).step_count(), 0u);  // a failed step changes nothing

  request.set_damping(1.0);
  ASSERT_TRUE(Step(request, &response).ok());
  Eigen::MatrixXd f = row.cast<double>().transpose() * row.cast<double>();
  f += Eigen::MatrixXd::Identity(4, 4);
  EXPECT_LT(
      RelativeError(ToVector(response.natural_gradient()), f.llt().solve(Eigen::VectorXd::Ones(4))),
      1e-12);
}

TEST_F(StepTest, RejectsBadStepRequests) {
  const std::string name = MustCreate("s", DenseConfig(4));
  RowMatrixF rows = RowMatrixF::Identity(4, 4);
  ASSERT_TRUE(AddScores(MakeBatch(name, "w", 1, rows)).ok());
  const Eigen::VectorXd g = Eigen::VectorXd::Ones(4);

  struct Case {
    const char* what;
    v1::NaturalGradientStepRequest request;
    grpc::StatusCode code;
    std::vector<std::string> mentions;
  };
  std::vector<Case> cases;
  cases.push_back({"short gradient",
                   StepRequest(name, Eigen::VectorXd::Ones(3)),
                   grpc::StatusCode::INVALID_ARGUMENT,
                   {"gradient has 3 values", "dim 4"}});
  {
    Eigen::VectorXd bad = g;
    bad(1) = std::numeric_limits<double>::quiet_NaN();
    cases.push_back({"NaN gradient",
                     StepRequest(name, bad),
                     grpc::StatusCode::INVALID_ARGUMENT,
                     {"gradient[1]"}});
  }
  {
    auto r = StepRequest(name, g);
    r.set_damping(-1);
    cases.push_back({"negative damping", r, grpc::StatusCode::INVALID_ARGUMENT, {"damping"}});
  }
  {
    auto r = StepRequest(name, g);
    r.set_learning_rate(-0.1);
    cases.push_back(
        {"negative learning rate", r, grpc::StatusCode::INVALID_ARGUMENT, {"learning_rate"}});
  }
  {
    auto r = StepRequest(name, g);
    r.set_kl_budget(std::numeric_limits<double>::infinity());
    cases.push_back({"infinite KL budget", r, grpc::StatusCode::INVALID_ARGUMENT, {"kl_budget"}});
  }
  cases.push_back({"unknown session",
                   StepRequest("sessions/missing", g),
                   grpc::StatusCode::NOT_FOUND,
                   {"sessions/missing"}});
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    v1::NaturalGradientStepResponse response;
    const grpc::Status status = Step(c.request, &response);
    EXPECT_EQ(status.error_code(), c.code) << status.error_message();
    for (const std::string& mention : c.mentions) {
      EXPECT_THAT(status.error_message(), HasSubstr(mention));
    }
  }
  EXPECT_EQ(MustGetStats(name).step_count(), 0u);
}

TEST_F(StepTest, DiagonalSession) {
  v1::SessionConfig config;
  config.set_dim(3);
  config.set_representation(v1::REPRESENTATION_DIAGONAL);
  const std::string name = MustCreate("diag", config);
  RowMatrixF rows(2, 3);
  rows << 1, 2, 3, 1, -2, 1;  // diag(F) = (1, 4, 5)
  ASSERT_TRUE(AddScores(MakeBatch(name, "w", 1, rows)).ok());
  v1::NaturalGradientStepResponse response;
  ASSERT_TRUE(Step(StepRequest(name, Eigen::Vector3d(2, 8, 10)), &response).ok());
  EXPECT_EQ(response.solver().method(), "diagonal");
  EXPECT_LT(RelativeError(ToVector(response.natural_gradient()), Eigen::Vector3d(2, 2, 2)), 1e-15);
}

// F v for F = A exactly; the product sums dim exact-ish terms, so 1e-12 relative.
TEST_F(StepTest, FisherVectorProductEqualsAv) {
  const std::string name = CreateKnownSession("known");
  const Eigen::VectorXd v = RandomGradient();
  v1::FisherVectorProductRequest request;
  request.set_session(name);
  request.mutable_vector()->Assign(v.data(), v.data() + v.size());
  v1::FisherVectorProductResponse response;
  {
    grpc::ClientContext context;
    const grpc::Status status = stub_->FisherVectorProduct(&context, request, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
  }
  const Eigen::VectorXd av = known_.a * v;
  EXPECT_LT(RelativeError(ToVector(response.product()), av), 1e-12);
  EXPECT_NEAR(response.quadratic_kl(), 0.5 * v.dot(av), 1e-12 * v.dot(av));

  request.mutable_vector()->RemoveLast();
  grpc::ClientContext context;
  const grpc::Status status = stub_->FisherVectorProduct(&context, request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("vector has 63 values"));
  EXPECT_THAT(status.error_message(), HasSubstr("dim 64"));
}

}  // namespace
}  // namespace fisherd::testing
