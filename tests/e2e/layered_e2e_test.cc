// End to end for layered sessions: the real fisherd binary on a loopback port, fed by
// ScoreStreamers that serve many blocks (and both factors of Kronecker blocks) at once,
// stepped through the chunked StreamNaturalGradientStep under default 4 MiB message
// limits, and checked against oracles computed here in float64 along independent paths
// (Eigen's SelfAdjointEigenSolver, closed forms); plus fisherctl's layouts, and a fake
// server that breaks the step stream's rules to show the client notices.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "Eigen/Dense"
#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "client/fisher_client.h"
#include "client/score_streamer.h"
#include "gmock/gmock.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "gtest/gtest.h"
#include "tests/e2e/process.h"

namespace fisherd::testing {
namespace {

using client::ClientOptions;
using client::FisherClient;
using client::ScoreStreamer;
using client::ScoreStreamerOptions;
using client::ScoreTarget;
using client::StepParams;
using ::testing::HasSubstr;
using RowMatrixF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

constexpr int kDefaultMessageLimit = 4 << 20;  // gRPC's default, both directions

std::unique_ptr<FisherClient> Connect(const std::string& target,
                                      int max_message_bytes = kDefaultMessageLimit) {
  ClientOptions options;
  options.target = target;
  options.wait_for_ready = true;
  options.max_message_bytes = max_message_bytes;
  options.call_timeout = absl::Seconds(240);
  absl::StatusOr<std::unique_ptr<FisherClient>> client = FisherClient::Create(options);
  EXPECT_TRUE(client.ok()) << client.status();
  return std::move(*client);
}

v1::BlockConfig Kronecker(const std::string& name, int in, int out, bool bias) {
  v1::BlockConfig block;
  block.set_name(name);
  block.set_kind(v1::BLOCK_KIND_KRONECKER);
  block.set_in_features(in);
  block.set_out_features(out);
  block.set_bias(bias);
  return block;
}

v1::BlockConfig Diagonal(const std::string& name, int dim) {
  v1::BlockConfig block;
  block.set_name(name);
  block.set_kind(v1::BLOCK_KIND_DIAGONAL);
  block.set_dim(dim);
  return block;
}

int64_t Parameters(const v1::BlockConfig& block) {
  if (block.kind() == v1::BLOCK_KIND_KRONECKER) {
    return block.out_features() * (block.in_features() + (block.bias() ? 1 : 0));
  }
  return block.dim();
}

v1::SessionConfig Layered(const std::vector<v1::BlockConfig>& blocks, double damping) {
  v1::SessionConfig config;
  config.set_representation(v1::REPRESENTATION_LAYERED);
  config.set_damping(damping);
  for (const v1::BlockConfig& block : blocks) *config.add_blocks() = block;
  return config;
}

// sum w x x^T and sum w over rows x (with a 1 appended when `append_one`), in float64
// from the float32 values sent: the test's own A or G, or a diagonal block's squares.
struct Gram {
  Eigen::MatrixXd sum;
  double weight = 0;
  uint64_t rows = 0;

  explicit Gram(int dim = 0) : sum(Eigen::MatrixXd::Zero(dim, dim)) {}

  void Add(const RowMatrixF& x, const std::vector<float>& weights, bool append_one) {
    Eigen::MatrixXd wide(x.rows(), x.cols() + (append_one ? 1 : 0));
    wide.leftCols(x.cols()) = x.cast<double>();
    if (append_one) wide.col(x.cols()).setOnes();
    Eigen::VectorXd w = Eigen::VectorXd::Ones(x.rows());
    for (size_t i = 0; i < weights.size(); ++i) w(i) = weights[i];
    sum.noalias() += wide.transpose() * (w.asDiagonal() * wide);
    weight += w.sum();
    rows += x.rows();
  }
  Eigen::MatrixXd Mean() const { return sum / weight; }
};

// The out x (in + bias) matrix V = [grad W | grad b] of a Kronecker block's parameters
// (weights row-major, then biases), and back.
Eigen::MatrixXd ToV(const double* p, int in, int out, bool bias) {
  Eigen::MatrixXd v(out, in + (bias ? 1 : 0));
  for (int i = 0; i < out; ++i) {
    for (int j = 0; j < in; ++j) v(i, j) = p[static_cast<int64_t>(i) * in + j];
    if (bias) v(i, in) = p[static_cast<int64_t>(out) * in + i];
  }
  return v;
}

Eigen::VectorXd FromV(const Eigen::MatrixXd& v, int in, int out, bool bias) {
  Eigen::VectorXd p(static_cast<int64_t>(out) * (in + (bias ? 1 : 0)));
  for (int i = 0; i < out; ++i) {
    for (int j = 0; j < in; ++j) p(static_cast<int64_t>(i) * in + j) = v(i, j);
    if (bias) p(static_cast<int64_t>(out) * in + i) = v(i, in);
  }
  return p;
}

// (G (x) A + lambda I)^-1 vec(V) through both factors' eigendecompositions, computed
// here with Eigen (the server uses LAPACK's dsyevd: an independent path).
Eigen::MatrixXd ExactKroneckerSolve(const Eigen::MatrixXd& a, const Eigen::MatrixXd& g,
                                    const Eigen::MatrixXd& v, double lambda) {
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> ea(a), eg(g);
  Eigen::MatrixXd t = eg.eigenvectors().transpose() * v * ea.eigenvectors();
  for (int i = 0; i < t.rows(); ++i) {
    for (int j = 0; j < t.cols(); ++j)
      t(i, j) /= eg.eigenvalues()(i) * ea.eigenvalues()(j) + lambda;
  }
  return eg.eigenvectors() * t * ea.eigenvectors().transpose();
}

// Factored Tikhonov damping: (G + sqrt(lambda)/pi I)^-1 V (A + pi sqrt(lambda) I)^-1,
// pi = sqrt((tr A / (in + bias)) / (tr G / out)), through Cholesky solves.
Eigen::MatrixXd FactoredKroneckerSolve(const Eigen::MatrixXd& a, const Eigen::MatrixXd& g,
                                       const Eigen::MatrixXd& v, double lambda) {
  const double pi = std::sqrt((a.trace() / a.rows()) / (g.trace() / g.rows()));
  const double root = std::sqrt(lambda);
  const Eigen::MatrixXd ga = g + (root / pi) * Eigen::MatrixXd::Identity(g.rows(), g.rows());
  const Eigen::MatrixXd aa = a + (pi * root) * Eigen::MatrixXd::Identity(a.rows(), a.rows());
  const Eigen::MatrixXd left = ga.llt().solve(v);       // G_d^-1 V
  return aa.llt().solve(left.transpose()).transpose();  // ... A_d^-1
}

double RelativeError(const Eigen::VectorXd& got, const Eigen::VectorXd& want) {
  return (got - want).norm() / want.norm();
}

Eigen::Map<const Eigen::VectorXd> Natural(const v1::NaturalGradientStepResponse& r) {
  return Eigen::Map<const Eigen::VectorXd>(r.natural_gradient().data(), r.natural_gradient_size());
}

// One Append of a worker: its target, rows and weights (empty: all 1).
struct Rows {
  Rows(std::string block, v1::Factor factor, RowMatrixF rows, std::vector<float> w = {})
      : target{std::move(block), factor}, x(std::move(rows)), weights(std::move(w)) {}
  ScoreTarget target;
  RowMatrixF x;
  std::vector<float> weights;
};

absl::Status Stream(FisherClient* client, const std::string& session, const std::string& worker,
                    const std::vector<Rows>& appends, int rows_per_batch,
                    client::ScoreStreamerStats* stats = nullptr) {
  ScoreStreamerOptions options;
  options.session = session;
  options.worker_id = worker;
  options.rows_per_batch = rows_per_batch;  // dim 0, no default block: widths from the layout
  absl::StatusOr<std::unique_ptr<ScoreStreamer>> streamer = ScoreStreamer::Create(client, options);
  if (!streamer.ok()) return streamer.status();
  for (const Rows& rows : appends) {
    absl::Status status = (*streamer)->Append(
        rows.target, absl::MakeConstSpan(rows.x.data(), rows.x.size()), rows.weights);
    if (!status.ok()) return status;
  }
  absl::Status closed = (*streamer)->Close();
  if (stats != nullptr) *stats = (*streamer)->stats();
  return closed;
}

class LayeredEndToEndTest : public ::testing::Test {
 protected:
  // gRPC's default 4 MiB message limit on the server too, so that nothing passes only
  // because a limit was raised.
  static void SetUpTestSuite() { server_ = new ServerProcess({"--max-message-mb=4"}); }
  static void TearDownTestSuite() {
    EXPECT_EQ(server_->Terminate(), 0);
    delete server_;
  }
  void SetUp() override {
    ASSERT_FALSE(server_->address().empty()) << "fisherd did not start";
    client_ = Connect(server_->address());
  }

  static ServerProcess* server_;
  std::unique_ptr<FisherClient> client_;
};

ServerProcess* LayeredEndToEndTest::server_ = nullptr;

// --- A network-shaped layout, checked against an eigendecomposition oracle ----------

struct MlpData {
  std::vector<std::vector<Rows>> workers;  // what each worker appends, in order
  std::map<std::string, Gram> activations, gradients, diagonal;
};

RowMatrixF Random(int rows, int cols, std::mt19937_64& rng, float scale, bool relu = false,
                  bool uniform = false) {
  std::normal_distribution<float> normal;
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  RowMatrixF m(rows, cols);
  for (float& x : m.reshaped()) {
    x = uniform ? unit(rng) : scale * normal(rng);
    if (relu) x = std::max(x, 0.0f);
  }
  return m;
}

// The linear layers of a 784-1000-1000-10 MLP, a 3x3 convolution from 3 to 16 channels
// (9 output positions per sample here) and a 64-wide batch norm. Worker 1 weights its
// rows; the others send unit weights. Per mini-batch of 16 samples each worker sends
// every factor of every block in turn, so each streamer switches targets 9 times.
MlpData MakeMlpData(int workers, int batches_per_worker) {
  MlpData data;
  constexpr int kBatch = 16, kPositions = 9;
  for (const char* name : {"fc1", "fc2", "fc3", "conv1"}) {
    data.activations.emplace(name, Gram());
    data.gradients.emplace(name, Gram());
  }
  data.activations["fc1"] = Gram(785);
  data.gradients["fc1"] = Gram(1000);
  data.activations["fc2"] = Gram(1001);
  data.gradients["fc2"] = Gram(1000);
  data.activations["fc3"] = Gram(1001);
  data.gradients["fc3"] = Gram(10);
  data.activations["conv1"] = Gram(28);
  data.gradients["conv1"] = Gram(16);
  data.diagonal.emplace("bn1", Gram(64));
  for (int w = 0; w < workers; ++w) {
    std::mt19937_64 rng(100 + w);
    std::uniform_real_distribution<float> weight(0.5f, 2.0f);
    std::vector<Rows> appends;
    auto add = [&](const std::string& block, v1::Factor factor, RowMatrixF x) {
      std::vector<float> weights;
      if (w == 1) {
        for (int i = 0; i < x.rows(); ++i) weights.push_back(weight(rng));
      }
      if (factor == v1::FACTOR_ACTIVATIONS) {
        data.activations[block].Add(x, weights, /*append_one=*/true);
      } else if (factor == v1::FACTOR_OUTPUT_GRADIENTS) {
        data.gradients[block].Add(x, weights, false);
      } else {
        // Only the diagonal of a diagonal block is kept; the full Gram is cheap here.
        data.diagonal[block].Add(x, weights, false);
      }
      appends.emplace_back(block, factor, std::move(x), std::move(weights));
    };
    for (int b = 0; b < batches_per_worker; ++b) {
      add("fc1", v1::FACTOR_ACTIVATIONS, Random(kBatch, 784, rng, 1, false, /*uniform=*/true));
      add("fc1", v1::FACTOR_OUTPUT_GRADIENTS, Random(kBatch, 1000, rng, 0.1f));
      add("fc2", v1::FACTOR_ACTIVATIONS, Random(kBatch, 1000, rng, 1, /*relu=*/true));
      add("fc2", v1::FACTOR_OUTPUT_GRADIENTS, Random(kBatch, 1000, rng, 0.05f));
      add("fc3", v1::FACTOR_ACTIVATIONS, Random(kBatch, 1000, rng, 1, /*relu=*/true));
      add("fc3", v1::FACTOR_OUTPUT_GRADIENTS, Random(kBatch, 10, rng, 1));
      add("conv1", v1::FACTOR_ACTIVATIONS, Random(kBatch * kPositions, 27, rng, 1));
      add("conv1", v1::FACTOR_OUTPUT_GRADIENTS, Random(kBatch * kPositions, 16, rng, 0.1f));
      add("bn1", v1::FACTOR_UNSPECIFIED, Random(kBatch, 64, rng, 1));
    }
    data.workers.push_back(std::move(appends));
  }
  return data;
}

// Three workers stream every block of the network at once, each through ONE streamer
// (one sequence space per worker); a fourth streamer has bn1 as its default block. The
// step (1.8M parameters, so the client streams it) must match, per block, the solve
// formed here from the rows sent: for Kronecker blocks (G (x) A + lambda I)^-1 g via
// Eigen's eigendecompositions, for the diagonal g_i / (F_ii + lambda).
//
// Tolerance 1e-8 relative per block: the server and this test form the same float64
// sums of the same float32 rows (in different orders, ~1e-16 relative) and solve with
// different backward-stable eigensolvers (O(eps |F|)); both errors are amplified by at
// most cond(F_b + lambda I) <= (max s_G s_A + lambda) / lambda, about 2e3 here, so the
// expected difference is ~1e-12 and 1e-8 leaves four orders of margin while still
// catching any wrong factor, missing row, lost weight or misplaced bias (>= 1e-4).
TEST_F(LayeredEndToEndTest, NetworkLayoutStepMatchesEigendecompositionOracle) {
  const double lambda = 1e-2;
  const std::vector<v1::BlockConfig> blocks = {
      Kronecker("fc1", 784, 1000, true), Kronecker("fc2", 1000, 1000, true),
      Kronecker("fc3", 1000, 10, true), Kronecker("conv1", 27, 16, true), Diagonal("bn1", 64)};
  absl::StatusOr<v1::Session> created = client_->CreateSession("mlp", Layered(blocks, lambda));
  ASSERT_TRUE(created.ok()) << created.status();
  int64_t dim = 0;
  for (const v1::BlockConfig& block : blocks) dim += Parameters(block);
  EXPECT_EQ(created->config().dim(), static_cast<uint64_t>(dim));  // filled in by the server
  EXPECT_EQ(created->config().representation(), v1::REPRESENTATION_LAYERED);

  const int workers = 3, batches = 4;
  MlpData data = MakeMlpData(workers, batches);
  // The fourth streamer: bn1 as its default target, width from the layout (dim 0).
  std::mt19937_64 rng(7);
  const RowMatrixF extra = Random(10, 64, rng, 2);
  data.diagonal["bn1"].Add(extra, {}, false);

  const absl::Time start = absl::Now();
  std::vector<absl::Status> results(workers);
  std::vector<client::ScoreStreamerStats> stats(workers);
  std::vector<std::thread> threads;
  threads.reserve(workers);
  for (int w = 0; w < workers; ++w) {
    threads.emplace_back([&, w] {
      results[w] = Stream(client_.get(), "mlp", absl::StrCat("worker-", w), data.workers[w],
                          /*rows_per_batch=*/32, &stats[w]);
    });
  }
  {
    ScoreStreamerOptions options;
    options.session = "mlp";
    options.worker_id = "bn-only";
    options.block = "bn1";
    absl::StatusOr<std::unique_ptr<ScoreStreamer>> streamer =
        ScoreStreamer::Create(client_.get(), options);
    ASSERT_TRUE(streamer.ok()) << streamer.status();
    ASSERT_TRUE((*streamer)->Append(absl::MakeConstSpan(extra.data(), extra.size())).ok());
    ASSERT_TRUE((*streamer)->Close().ok());
  }
  for (std::thread& t : threads) t.join();
  for (const absl::Status& status : results) ASSERT_TRUE(status.ok()) << status;
  const double stream_seconds = absl::ToDoubleSeconds(absl::Now() - start);

  // Statistics: every row counted once, per block and factor, one sequence per worker.
  absl::StatusOr<v1::Session> session = client_->GetSession("mlp");
  ASSERT_TRUE(session.ok()) << session.status();
  ASSERT_EQ(session->stats().blocks_size(), 5);
  uint64_t total_rows = 0;
  for (int b = 0; b < 5; ++b) {
    const v1::BlockStats& s = session->stats().blocks(b);
    const std::string& name = blocks[b].name();
    EXPECT_EQ(s.name(), name);
    if (name == "bn1") {
      EXPECT_EQ(s.sample_count(), data.diagonal[name].rows);
      EXPECT_NEAR(s.weight_sum(), data.diagonal[name].weight, 1e-9);
      total_rows += s.sample_count();
      continue;
    }
    EXPECT_EQ(s.sample_count(), data.activations[name].rows) << name;
    EXPECT_NEAR(s.weight_sum(), data.activations[name].weight, 1e-9) << name;
    EXPECT_EQ(s.output_gradient_sample_count(), data.gradients[name].rows) << name;
    EXPECT_NEAR(s.output_gradient_weight_sum(), data.gradients[name].weight, 1e-9) << name;
    total_rows += s.sample_count() + s.output_gradient_sample_count();
  }
  EXPECT_EQ(session->stats().sample_count(), total_rows);
  for (int w = 0; w < workers; ++w) {
    EXPECT_EQ(session->stats().worker_sequences().at(absl::StrCat("worker-", w)),
              stats[w].next_sequence - 1);
    // Each mini-batch's 9 targets end in a partial batch of 16 or 144 rows: a cut.
    EXPECT_GE(stats[w].target_switches, static_cast<uint64_t>(9 * batches - 1));
  }
  EXPECT_EQ(session->stats().worker_sequences().at("bn-only"), 1u);

  // One factor through GetFisher: conv1's A (28 x 28, with the bias row) and bn1's diagonal.
  client::FisherQuery query;
  query.include_matrix = true;
  query.block = "conv1";
  query.factor = v1::FACTOR_ACTIVATIONS;
  absl::StatusOr<client::FisherEstimate> a = client_->GetFisher("mlp", query);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->summary.block(), "conv1");
  EXPECT_EQ(a->summary.factor(), v1::FACTOR_ACTIVATIONS);
  EXPECT_EQ(a->summary.block_kind(), v1::BLOCK_KIND_KRONECKER);
  ASSERT_EQ(a->summary.dim(), 28u);
  ASSERT_FALSE(a->diagonal);
  const Eigen::MatrixXd a_conv = data.activations["conv1"].Mean();
  const Eigen::Map<const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>
      a_got(a->values.data(), 28, 28);
  // Same float64 sums in another order: round-off only.
  EXPECT_LT((a_got - a_conv).norm(), 1e-12 * a_conv.norm());
  query.block = "bn1";
  query.factor = v1::FACTOR_UNSPECIFIED;
  absl::StatusOr<client::FisherEstimate> bn = client_->GetFisher("mlp", query);
  ASSERT_TRUE(bn.ok()) << bn.status();
  ASSERT_TRUE(bn->diagonal);
  ASSERT_EQ(bn->values.size(), 64u);
  const Eigen::VectorXd bn_diagonal = data.diagonal["bn1"].Mean().diagonal();
  EXPECT_LT(RelativeError(Eigen::Map<const Eigen::VectorXd>(bn->values.data(), 64), bn_diagonal),
            1e-12);
  // The whole Kronecker block's trace is tr G tr A.
  query.include_matrix = false;
  query.block = "conv1";
  absl::StatusOr<client::FisherEstimate> conv = client_->GetFisher("mlp", query);
  ASSERT_TRUE(conv.ok()) << conv.status();
  const double trace = a_conv.trace() * data.gradients["conv1"].Mean().trace();
  EXPECT_NEAR(conv->summary.trace(), trace, 1e-12 * trace);

  // The step: 1.8M values, so Step streams it under the 4 MiB limits.
  ASSERT_GT(static_cast<size_t>(dim), client::kMaxUnaryStepValues);
  std::mt19937_64 grng(11);
  std::normal_distribution<double> normal;
  std::vector<double> g(dim);
  for (double& x : g) x = normal(grng);
  const absl::Time step_start = absl::Now();
  absl::StatusOr<v1::NaturalGradientStepResponse> step = client_->Step("mlp", g);
  const double step_seconds = absl::ToDoubleSeconds(absl::Now() - step_start);
  ASSERT_TRUE(step.ok()) << step.status();
  ASSERT_EQ(step->natural_gradient_size(), dim);
  ASSERT_EQ(step->update_size(), dim);
  EXPECT_EQ(step->solver().method(), "layered");
  EXPECT_EQ(step->solver().kronecker_damping(), "exact");
  EXPECT_DOUBLE_EQ(step->solver().damping(), lambda);
  ASSERT_EQ(step->solver().blocks_size(), 5);

  const absl::Time oracle_start = absl::Now();
  int64_t offset = 0;
  double g_dot_n = 0, n_f_n = 0, worst = 0;
  for (int b = 0; b < 5; ++b) {
    const v1::BlockConfig& block = blocks[b];
    const int64_t size = Parameters(block);
    EXPECT_EQ(step->solver().blocks(b).block(), block.name());
    const Eigen::Map<const Eigen::VectorXd> gb(g.data() + offset, size);
    Eigen::VectorXd expected;
    if (block.kind() == v1::BLOCK_KIND_KRONECKER) {
      EXPECT_EQ(step->solver().blocks(b).method(), "kronecker") << block.name();
      const Eigen::MatrixXd am = data.activations[block.name()].Mean();
      const Eigen::MatrixXd gm = data.gradients[block.name()].Mean();
      const int in = block.in_features(), out = block.out_features();
      const Eigen::MatrixXd n_v =
          ExactKroneckerSolve(am, gm, ToV(g.data() + offset, in, out, true), lambda);
      expected = FromV(n_v, in, out, true);
      n_f_n += (n_v.array() * (gm * n_v * am).array()).sum();  // vec(N)^T vec(G N A)
    } else {
      EXPECT_EQ(step->solver().blocks(b).method(), "diagonal");
      const Eigen::VectorXd f = data.diagonal[block.name()].Mean().diagonal();
      expected = gb.array() / (f.array() + lambda);
      n_f_n += (expected.array().square() * f.array()).sum();
    }
    const Eigen::VectorXd got = Natural(*step).segment(offset, size);
    const double error = RelativeError(got, expected);
    EXPECT_LT(error, 1e-8) << block.name();
    worst = std::max(worst, error);
    g_dot_n += gb.dot(expected);
    offset += size;
  }
  // eta = 1 (no learning rate, no KL budget): update = -n, and the undamped quadratic KL.
  EXPECT_DOUBLE_EQ(step->eta(), 1.0);
  EXPECT_LT((Eigen::Map<const Eigen::VectorXd>(step->update().data(), dim) + Natural(*step)).norm(),
            1e-15 * Natural(*step).norm());
  EXPECT_NEAR(step->natural_norm_sq(), g_dot_n, 1e-8 * std::abs(g_dot_n));
  EXPECT_NEAR(step->predicted_kl(), 0.5 * n_f_n, 1e-8 * 0.5 * n_f_n);
  std::printf(
      "[ timing ] %d-parameter layered session: streamed in %.2f s, step %.2f s "
      "(server %.2f s), oracle %.2f s; worst block relative error %.2g\n",
      static_cast<int>(dim), stream_seconds, step_seconds, step->solver().seconds(),
      absl::ToDoubleSeconds(absl::Now() - oracle_start), worst);
}

// Factored Tikhonov damping against its closed form, and the unary and streamed forms of
// one step (float64 and float32 chunks, tiny chunks) giving the same answer.
TEST_F(LayeredEndToEndTest, FactoredDampingAndEveryStepFormAgree) {
  const double lambda = 0.05;
  v1::SessionConfig config =
      Layered({Kronecker("conv", 27, 16, true), Diagonal("scale", 16)}, lambda);
  config.set_kronecker_damping(v1::KRONECKER_DAMPING_FACTORED);
  ASSERT_TRUE(client_->CreateSession("factored", config).ok());
  std::mt19937_64 rng(21);
  std::vector<Rows> appends;
  appends.emplace_back("conv", v1::FACTOR_ACTIVATIONS, Random(300, 27, rng, 1));
  appends.emplace_back("conv", v1::FACTOR_OUTPUT_GRADIENTS, Random(300, 16, rng, 0.3f));
  appends.emplace_back("scale", v1::FACTOR_UNSPECIFIED, Random(40, 16, rng, 1));
  ASSERT_TRUE(Stream(client_.get(), "factored", "w", appends, 64).ok());
  Gram a(28), g_factor(16), d(16);
  a.Add(appends[0].x, {}, true);
  g_factor.Add(appends[1].x, {}, false);
  d.Add(appends[2].x, {}, false);

  const int dim = 16 * 28 + 16;
  // Values that float32 holds exactly, so the float32 upload sends the same gradient.
  std::vector<double> g(dim);
  std::normal_distribution<float> normal;
  for (double& x : g) x = normal(rng);
  StepParams params;
  params.skip_decay = true;  // every form sees the same statistics
  absl::StatusOr<v1::NaturalGradientStepResponse> unary = client_->Step("factored", g, params);
  ASSERT_TRUE(unary.ok()) << unary.status();
  EXPECT_EQ(unary->solver().kronecker_damping(), "factored");

  // Closed form: 1e-10 relative, two Cholesky solves of SPD matrices whose condition
  // numbers are below 1e3 against the server's eigenbasis solve.
  const Eigen::MatrixXd n_v =
      FactoredKroneckerSolve(a.Mean(), g_factor.Mean(), ToV(g.data(), 27, 16, true), lambda);
  EXPECT_LT(RelativeError(Natural(*unary).head(448), FromV(n_v, 27, 16, true)), 1e-10);
  const Eigen::VectorXd f = d.Mean().diagonal();
  const Eigen::VectorXd diag =
      Eigen::Map<const Eigen::VectorXd>(g.data() + 448, 16).array() / (f.array() + lambda);
  EXPECT_LT(RelativeError(Natural(*unary).tail(16), diag), 1e-12);

  for (const bool f32 : {false, true}) {
    for (const uint32_t chunk : {0u, 7u, 100u}) {
      StepParams streamed = params;
      streamed.float32_gradient = f32;
      streamed.chunk_values = chunk;
      absl::StatusOr<v1::NaturalGradientStepResponse> step =
          client_->StreamStep("factored", g, streamed);
      ASSERT_TRUE(step.ok()) << step.status() << " f32=" << f32 << " chunk=" << chunk;
      // The same float64 gradient and statistics: the same deterministic solve.
      EXPECT_LT(RelativeError(Natural(*step), Natural(*unary)), 1e-14);
      EXPECT_DOUBLE_EQ(step->natural_norm_sq(), unary->natural_norm_sq());
      EXPECT_EQ(step->solver().blocks_size(), 2);
    }
  }

  // Answer forms, unary and streamed (chunks of 7 cross the block boundary): the update
  // alone equals the full answer's to the bit, UPDATE_F32 is each value rounded to
  // float32, and natural_gradient stays empty; the scalars are the same step's.
  auto rounded = [](const google::protobuf::RepeatedField<double>& values) {
    std::vector<double> out;
    for (double v : values) out.push_back(static_cast<float>(v));
    return out;
  };
  const std::vector<double> full_update(unary->update().begin(), unary->update().end());
  for (const bool streamed : {false, true}) {
    for (const v1::StepAnswer answer : {v1::STEP_ANSWER_UPDATE, v1::STEP_ANSWER_UPDATE_F32}) {
      StepParams form = params;
      form.answer = answer;
      form.chunk_values = 7;
      absl::StatusOr<v1::NaturalGradientStepResponse> step =
          streamed ? client_->StreamStep("factored", g, form) : client_->Step("factored", g, form);
      ASSERT_TRUE(step.ok()) << step.status();
      const std::string what =
          absl::StrCat(v1::StepAnswer_Name(answer), streamed ? " streamed" : "");
      EXPECT_EQ(step->natural_gradient_size(), 0) << what;
      EXPECT_TRUE(step->update_f32().empty()) << what;
      const std::vector<double> update(step->update().begin(), step->update().end());
      EXPECT_EQ(update, answer == v1::STEP_ANSWER_UPDATE ? full_update : rounded(unary->update()))
          << what;
      EXPECT_DOUBLE_EQ(step->eta(), unary->eta()) << what;
      EXPECT_DOUBLE_EQ(step->predicted_kl(), unary->predicted_kl()) << what;
    }
  }
}

// A single streamer serving several targets cuts a batch at every change of target, so
// the batches the server applies hold one target each and one sequence space is used.
TEST_F(LayeredEndToEndTest, OneStreamerCutsABatchWhenTheTargetChanges) {
  ASSERT_TRUE(
      client_
          ->CreateSession("cuts", Layered({Kronecker("fc", 6, 4, false), Diagonal("bn", 3)}, 0.1))
          .ok());
  ScoreStreamerOptions options;
  options.session = "cuts";
  options.worker_id = "w";
  options.rows_per_batch = 4;
  absl::StatusOr<std::unique_ptr<ScoreStreamer>> streamer =
      ScoreStreamer::Create(client_.get(), options);
  ASSERT_TRUE(streamer.ok()) << streamer.status();
  const ScoreTarget fc_a{"fc", v1::FACTOR_ACTIVATIONS}, fc_g{"fc", v1::FACTOR_OUTPUT_GRADIENTS},
      bn{"bn", v1::FACTOR_UNSPECIFIED};
  const std::vector<float> ones(100, 1.0f);
  auto rows = [&](int n, int width) { return absl::MakeConstSpan(ones.data(), n * width); };
  ScoreStreamer& s = **streamer;
  ASSERT_TRUE(s.Append(fc_a, rows(3, 6)).ok());  // pending: 3 A rows
  ASSERT_TRUE(s.Append(fc_g, rows(2, 4)).ok());  // cut [A x3]; pending: 2 G rows
  ASSERT_TRUE(s.Append(fc_a, rows(5, 6)).ok());  // cut [G x2]; [A x4] sent; pending 1 A
  ASSERT_TRUE(s.Append(bn, rows(1, 3)).ok());    // cut [A x1]; pending 1 bn
  ASSERT_TRUE(s.Close().ok());                   // [bn x1]
  EXPECT_EQ(s.stats().batches_sent, 5u);
  EXPECT_EQ(s.stats().target_switches, 3u);
  absl::StatusOr<v1::Session> session = client_->GetSession("cuts");
  ASSERT_TRUE(session.ok());
  EXPECT_EQ(session->stats().worker_sequences().at("w"), 5u);
  EXPECT_EQ(session->stats().blocks(0).sample_count(), 8u);
  EXPECT_EQ(session->stats().blocks(0).output_gradient_sample_count(), 2u);
  EXPECT_EQ(session->stats().blocks(1).sample_count(), 1u);
  EXPECT_EQ(session->stats().sample_count(), 11u);

  // A new streamer for the same worker resumes after sequence 5, whatever the block.
  options.block = "bn";
  absl::StatusOr<std::unique_ptr<ScoreStreamer>> resumed =
      ScoreStreamer::Create(client_.get(), options);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ((*resumed)->stats().next_sequence, 6u);
}

// Unknown blocks and factors: the client names them before sending; the server, sent
// them anyway, answers INVALID_ARGUMENT naming them too.
TEST_F(LayeredEndToEndTest, UnknownBlocksAndFactorsAreInvalidArguments) {
  ASSERT_TRUE(
      client_->CreateSession("bad", Layered({Kronecker("fc", 6, 4, true), Diagonal("bn", 3)}, 0.1))
          .ok());
  ScoreStreamerOptions options;
  options.session = "bad";
  options.worker_id = "w";
  options.block = "nope";
  absl::StatusOr<std::unique_ptr<ScoreStreamer>> unknown =
      ScoreStreamer::Create(client_.get(), options);
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(unknown.status().message(), HasSubstr("\"nope\""));
  EXPECT_THAT(unknown.status().message(), HasSubstr("fc, bn"));  // what it could have been
  options.block = "bn";
  options.dim = 4;
  absl::StatusOr<std::unique_ptr<ScoreStreamer>> wrong_dim =
      ScoreStreamer::Create(client_.get(), options);
  EXPECT_EQ(wrong_dim.status().code(), absl::StatusCode::kInvalidArgument);
  options.dim = 0;
  options.block = "fc";  // Kronecker without a factor
  absl::StatusOr<std::unique_ptr<ScoreStreamer>> no_factor =
      ScoreStreamer::Create(client_.get(), options);
  EXPECT_EQ(no_factor.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(no_factor.status().message(), HasSubstr("FACTOR_ACTIVATIONS"));

  options.block = "bn";
  absl::StatusOr<std::unique_ptr<ScoreStreamer>> streamer =
      ScoreStreamer::Create(client_.get(), options);
  ASSERT_TRUE(streamer.ok()) << streamer.status();
  const std::vector<float> row = {1, 2, 3, 4, 5, 6};
  absl::Status status = (*streamer)->Append({"nope", v1::FACTOR_UNSPECIFIED}, row);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("\"nope\""));
  status = (*streamer)->Append({"bn", v1::FACTOR_ACTIVATIONS}, absl::MakeConstSpan(row).first(3));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("DIAGONAL"));
  status = (*streamer)->Append({"fc", v1::FACTOR_ACTIVATIONS}, absl::MakeConstSpan(row).first(5));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);  // 5 values, rows of 6
  // Refused targets leave the streamer usable.
  EXPECT_TRUE((*streamer)->failure().ok());
  ASSERT_TRUE((*streamer)->Append(absl::MakeConstSpan(row).first(3)).ok());
  ASSERT_TRUE((*streamer)->Append({"fc", v1::FACTOR_ACTIVATIONS}, row).ok());
  ASSERT_TRUE((*streamer)->Close().ok());

  // The server's own checks, reached with hand-made batches.
  v1::ScoreBatch batch;
  batch.set_session("sessions/bad");
  batch.set_rows(1);
  batch.mutable_scores()->Add(row.begin(), row.begin() + 3);
  batch.set_block("nope");
  absl::StatusOr<v1::ScoreAck> ack = client_->AddScores(batch);
  EXPECT_EQ(ack.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(ack.status().message(), HasSubstr("nope"));
  batch.set_block("");  // a layered session needs the block
  EXPECT_EQ(client_->AddScores(batch).status().code(), absl::StatusCode::kInvalidArgument);
  batch.set_block("fc");  // a Kronecker block needs the factor
  batch.mutable_scores()->Clear();
  batch.mutable_scores()->Add(row.begin(), row.end());
  EXPECT_EQ(client_->AddScores(batch).status().code(), absl::StatusCode::kInvalidArgument);

  client::FisherQuery query;
  query.block = "nope";
  absl::StatusOr<client::FisherEstimate> fisher = client_->GetFisher("bad", query);
  EXPECT_EQ(fisher.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(fisher.status().message(), HasSubstr("nope"));

  // A streamed gradient of the wrong length.
  StepParams params;
  params.chunk_values = 10;
  absl::StatusOr<v1::NaturalGradientStepResponse> step =
      client_->StreamStep("bad", std::vector<double>(30, 1.0), params);
  EXPECT_EQ(step.status().code(), absl::StatusCode::kInvalidArgument) << step.status();
}

// --- 3e7 parameters under default message limits ---------------------------------

// 31.5M parameters: four 1024 x 1024 Kronecker layers (two with bias) and 52 diagonal
// blocks of 512k, fed by four workers in rows of at most 512k values and stepped through
// StreamNaturalGradientStep with 4 MiB limits on both ends (the answer alone is 500 MB).
// The rows make every factor diagonal (pairs +c e_k, -c e_k: the mean is 0, so a bias
// column adds only A's last entry, 1), so the exact step has a closed form per entry:
// n_ij = g_ij / (G_ii A_jj + lambda); a diagonal block's is g_i / (F_ii + lambda).
// Tolerance 1e-10 relative per block: the same float64 sums on both sides, and the
// server's eigensolver on diagonal factors rounds at O(eps) amplified by at most
// cond = (max G_ii A_jj + lambda) / lambda ~ 1e4.
TEST_F(LayeredEndToEndTest, ThirtyMillionParametersStepThroughTheStream) {
  constexpr int kWidth = 1024, kKronecker = 4, kDiagonalBlocks = 52, kDiagonalDim = 1 << 19;
  const double lambda = 1e-3;
  std::vector<v1::BlockConfig> blocks;
  blocks.reserve(kKronecker + kDiagonalBlocks);
  for (int k = 0; k < kKronecker; ++k) {
    blocks.push_back(Kronecker(absl::StrCat("layer", k), kWidth, kWidth, /*bias=*/k < 2));
  }
  for (int d = 0; d < kDiagonalBlocks; ++d) {
    blocks.push_back(Diagonal(absl::StrCat("norm", d), kDiagonalDim));
  }
  int64_t dim = 0;
  for (const v1::BlockConfig& block : blocks) dim += Parameters(block);
  ASSERT_GE(dim, 30'000'000);
  ASSERT_TRUE(client_->CreateSession("huge", Layered(blocks, lambda)).ok());

  // Factor entries: A_jj = c_j^2 / 1024 from rows +-c_j e_j (2048 rows, unit weights).
  auto scale = [](int k, int j) {
    return static_cast<float>(32.0 * (0.5 + (j + 97 * k) % kWidth / double(kWidth)));
  };
  auto gscale = [](int k, int i) {
    return static_cast<float>(32.0 * (1.5 - (i + 31 * k) % kWidth / double(kWidth)));
  };
  auto factor_rows = [](const std::function<float(int)>& c) {
    RowMatrixF x = RowMatrixF::Zero(2 * kWidth, kWidth);
    for (int j = 0; j < kWidth; ++j) {
      x(2 * j, j) = c(j);
      x(2 * j + 1, j) = -c(j);
    }
    return x;
  };
  // Diagonal rows: two per block, weights 1 and 3.
  std::vector<RowMatrixF> diagonal_rows(kDiagonalBlocks);
  {
    std::mt19937_64 rng(31);
    std::normal_distribution<float> normal;
    for (RowMatrixF& x : diagonal_rows) {
      x.resize(2, kDiagonalDim);
      for (float& v : x.reshaped()) v = normal(rng);
    }
  }
  const std::vector<float> diagonal_weights = {1.0f, 3.0f};

  const int workers = 4;
  const absl::Time start = absl::Now();
  std::vector<absl::Status> results(workers);
  std::vector<std::thread> threads;
  threads.reserve(workers);
  for (int w = 0; w < workers; ++w) {
    threads.emplace_back([&, w] {
      ScoreStreamerOptions options;
      options.session = "huge";
      options.worker_id = absl::StrCat("worker-", w);
      absl::StatusOr<std::unique_ptr<ScoreStreamer>> streamer =
          ScoreStreamer::Create(client_.get(), options);
      if (!streamer.ok()) {
        results[w] = streamer.status();
        return;
      }
      auto append = [&](const ScoreTarget& target, const RowMatrixF& x,
                        absl::Span<const float> weights) {
        if (!results[w].ok()) return;
        results[w] = (*streamer)->Append(target, absl::MakeConstSpan(x.data(), x.size()), weights);
      };
      const std::string layer = absl::StrCat("layer", w);
      append({layer, v1::FACTOR_ACTIVATIONS}, factor_rows([&](int j) { return scale(w, j); }), {});
      append({layer, v1::FACTOR_OUTPUT_GRADIENTS}, factor_rows([&](int i) { return gscale(w, i); }),
             {});
      for (int d = w; d < kDiagonalBlocks; d += workers) {
        append({absl::StrCat("norm", d), v1::FACTOR_UNSPECIFIED}, diagonal_rows[d],
               diagonal_weights);
      }
      if (results[w].ok()) results[w] = (*streamer)->Close();
    });
  }
  for (std::thread& t : threads) t.join();
  for (const absl::Status& status : results) ASSERT_TRUE(status.ok()) << status;
  const double stream_seconds = absl::ToDoubleSeconds(absl::Now() - start);

  absl::StatusOr<v1::Session> session = client_->GetSession("huge");
  ASSERT_TRUE(session.ok()) << session.status();
  ASSERT_EQ(session->stats().blocks_size(), kKronecker + kDiagonalBlocks);
  EXPECT_EQ(session->stats().blocks(0).sample_count(), 2u * kWidth);
  EXPECT_EQ(session->stats().blocks(0).output_gradient_sample_count(), 2u * kWidth);
  EXPECT_EQ(session->stats().blocks(kKronecker).sample_count(), 2u);
  EXPECT_DOUBLE_EQ(session->stats().blocks(kKronecker).weight_sum(), 4.0);

  // A gradient float32 holds exactly, so that the float32 upload is the same gradient.
  std::vector<double> g(dim);
  {
    std::mt19937_64 rng(41);
    std::normal_distribution<float> normal;
    for (double& x : g) x = normal(rng);
  }
  double worst = 0;
  auto check = [&](const v1::NaturalGradientStepResponse& step) {
    ASSERT_EQ(step.natural_gradient_size(), dim);
    ASSERT_EQ(step.update_size(), dim);
    ASSERT_EQ(step.solver().blocks_size(), kKronecker + kDiagonalBlocks);
    const Eigen::Map<const Eigen::VectorXd> n = Natural(step);
    int64_t offset = 0;
    double g_dot_n = 0;
    for (size_t b = 0; b < blocks.size(); ++b) {
      const int64_t size = Parameters(blocks[b]);
      Eigen::VectorXd expected(size);
      if (b < kKronecker) {
        const bool bias = blocks[b].bias();
        const int cols = kWidth + (bias ? 1 : 0);
        for (int i = 0; i < kWidth; ++i) {
          const double gi = std::pow(static_cast<double>(gscale(b, i)), 2) / kWidth;
          for (int j = 0; j < cols; ++j) {
            const double aj =
                j < kWidth ? std::pow(static_cast<double>(scale(b, j)), 2) / kWidth : 1.0;
            const int64_t at = j < kWidth ? static_cast<int64_t>(i) * kWidth + j
                                          : static_cast<int64_t>(kWidth) * kWidth + i;
            expected(at) = g[offset + at] / (gi * aj + lambda);
          }
        }
      } else {
        const RowMatrixF& x = diagonal_rows[b - kKronecker];
        for (int64_t i = 0; i < size; ++i) {
          const double r0 = x(0, i), r1 = x(1, i);
          const double f = (r0 * r0 + 3.0 * r1 * r1) / 4.0;
          expected(i) = g[offset + i] / (f + lambda);
        }
      }
      const double error = RelativeError(n.segment(offset, size), expected);
      EXPECT_LT(error, 1e-10) << blocks[b].name();
      worst = std::max(worst, error);
      g_dot_n += Eigen::Map<const Eigen::VectorXd>(g.data() + offset, size).dot(expected);
      offset += size;
    }
    EXPECT_NEAR(step.natural_norm_sq(), g_dot_n, 1e-10 * g_dot_n);
  };

  StepParams params;
  params.skip_decay = true;
  const absl::Time step_start = absl::Now();
  absl::StatusOr<v1::NaturalGradientStepResponse> step = client_->Step("huge", g, params);
  const double step_seconds = absl::ToDoubleSeconds(absl::Now() - step_start);
  ASSERT_TRUE(step.ok()) << step.status();
  check(*step);
  const double server_seconds = step->solver().seconds();
  step = absl::UnknownError("released");  // 500 MB

  params.float32_gradient = true;
  const absl::Time f32_start = absl::Now();
  absl::StatusOr<v1::NaturalGradientStepResponse> f32 = client_->Step("huge", g, params);
  const double f32_seconds = absl::ToDoubleSeconds(absl::Now() - f32_start);
  ASSERT_TRUE(f32.ok()) << f32.status();
  check(*f32);
  std::printf(
      "[ timing ] %lld parameters: %.2f s to stream the rows, step %.2f s (server "
      "solve %.2f s), float32 upload %.2f s; worst block relative error %.2g\n",
      static_cast<long long>(dim), stream_seconds, step_seconds, server_seconds, f32_seconds,
      worst);
  ASSERT_TRUE(client_->DeleteSession("huge").ok());
}

// --- fisherctl ----------------------------------------------------------------------

TEST_F(LayeredEndToEndTest, FisherctlCreatesAndDescribesLayeredSessions) {
  const std::string target = "--target=" + server_->address();
  CommandResult created = RunCommand(
      {FisherctlPath(), target, "create", "ctl-layers", "--block=fc1:kronecker:784x1000+bias",
       "--block=conv1:kronecker:27x16+bias", "--block=bn1:diagonal:64",
       "--block=emb:low_rank:5000/16", "--block=head:dense:100", "--damping=0.01",
       "--kronecker-damping=factored", "--factor-refresh-period=3", "--float32-products"});
  ASSERT_EQ(created.exit_code, 0) << created.output;
  EXPECT_THAT(created.output, HasSubstr("LAYERED"));
  EXPECT_THAT(created.output, HasSubstr("784x1000+bias"));
  absl::StatusOr<v1::Session> session = client_->GetSession("ctl-layers");
  ASSERT_TRUE(session.ok()) << session.status();
  ASSERT_EQ(session->config().blocks_size(), 5);
  EXPECT_EQ(session->config().blocks(0).in_features(), 784u);
  EXPECT_EQ(session->config().blocks(0).out_features(), 1000u);
  EXPECT_TRUE(session->config().blocks(0).bias());
  EXPECT_EQ(session->config().blocks(3).kind(), v1::BLOCK_KIND_LOW_RANK);
  EXPECT_EQ(session->config().blocks(3).max_rows(), 16u);
  EXPECT_EQ(session->config().blocks(4).kind(), v1::BLOCK_KIND_DENSE);
  EXPECT_EQ(session->config().dim(), 785000u + 448u + 64u + 5000u + 100u);
  EXPECT_EQ(session->config().kronecker_damping(), v1::KRONECKER_DAMPING_FACTORED);
  EXPECT_EQ(session->config().factor_refresh_period(), 3u);
  EXPECT_TRUE(session->config().float32_products());

  // Five rows into conv1's A, three into its G; describe shows them per block.
  std::vector<Rows> appends;
  std::mt19937_64 rng(51);
  appends.emplace_back("conv1", v1::FACTOR_ACTIVATIONS, Random(5, 27, rng, 1));
  appends.emplace_back("conv1", v1::FACTOR_OUTPUT_GRADIENTS, Random(3, 16, rng, 1));
  ASSERT_TRUE(Stream(client_.get(), "ctl-layers", "w", appends, 16).ok());
  CommandResult described = RunCommand({FisherctlPath(), target, "describe", "ctl-layers"});
  ASSERT_EQ(described.exit_code, 0) << described.output;
  EXPECT_THAT(described.output, HasSubstr("A: 5 rows W=5  G: 3 rows W=3"));
  EXPECT_THAT(described.output, HasSubstr("emb"));
  EXPECT_THAT(described.output, HasSubstr("5000/16"));
  EXPECT_THAT(described.output, HasSubstr("products:       float32"));

  CommandResult factor = RunCommand({FisherctlPath(), target, "fisher", "ctl-layers",
                                     "--block=conv1", "--factor=activations", "--matrix"});
  ASSERT_EQ(factor.exit_code, 0) << factor.output;
  EXPECT_THAT(factor.output, HasSubstr("factor:         ACTIVATIONS"));
  EXPECT_THAT(factor.output, HasSubstr("dim:            28"));
  EXPECT_THAT(factor.output, HasSubstr("matrix:"));
  CommandResult unknown =
      RunCommand({FisherctlPath(), target, "fisher", "ctl-layers", "--block=nope"});
  EXPECT_EQ(unknown.exit_code, 1) << unknown.output;
  EXPECT_THAT(unknown.output, HasSubstr("INVALID_ARGUMENT"));
  EXPECT_THAT(unknown.output, HasSubstr("nope"));

  // The same layout from a file; a bad spec is a usage error naming its line.
  const std::string layout = ::testing::TempDir() + "/layout.txt";
  std::ofstream(layout) << "# a small network\nfc1:kronecker:784x1000+bias\n\n"
                           "bn1:diagonal:64   # after fc1\n";
  CommandResult from_file =
      RunCommand({FisherctlPath(), target, "create", "ctl-file", "--layout=" + layout});
  ASSERT_EQ(from_file.exit_code, 0) << from_file.output;
  absl::StatusOr<v1::Session> from_layout = client_->GetSession("ctl-file");
  ASSERT_TRUE(from_layout.ok()) << from_layout.status();
  EXPECT_EQ(from_layout->config().dim(), 785064u);
  EXPECT_FALSE(from_layout->config().float32_products());
  std::ofstream(layout) << "fc1:kronecker:784x1000+bias\nfc2:kronecker:1000\n";
  CommandResult bad_file =
      RunCommand({FisherctlPath(), target, "create", "ctl-bad", "--layout=" + layout});
  EXPECT_EQ(bad_file.exit_code, 2);
  EXPECT_THAT(bad_file.output, HasSubstr("line 2"));
  CommandResult bad_kind =
      RunCommand({FisherctlPath(), target, "create", "ctl-bad", "--block=x:sparse:10"});
  EXPECT_EQ(bad_kind.exit_code, 2);
  EXPECT_THAT(bad_kind.output, HasSubstr("sparse"));
  // Server-side checks come back verbatim: a duplicate block name.
  CommandResult duplicate = RunCommand(
      {FisherctlPath(), target, "create", "ctl-dup", "--block=a:diagonal:3", "--block=a:dense:2"});
  EXPECT_EQ(duplicate.exit_code, 1) << duplicate.output;
  EXPECT_THAT(duplicate.output, HasSubstr("INVALID_ARGUMENT"));
}

// --- The client's checks of the answer stream, against a server that breaks them ------

// Answers StreamNaturalGradientStep with n = g, update = -g in chunks of 3 values,
// breaking the stream's rules as told, and records the request messages it received.
class FakeStepService final : public v1::FisherService::Service {
 public:
  enum class Fault { kNone, kNoHeader, kGap, kOverlap, kShort, kUnequal, kTooLong };
  std::atomic<Fault> fault{Fault::kNone};
  // What the last call's request carried.
  struct Received {
    std::vector<uint64_t> offsets;  // of the request chunks
    std::vector<int> header_messages;
    std::vector<double> values;
  };

  // The handler runs on a gRPC thread and the test reads after the call returned. That order
  // travels through a socket, which ThreadSanitizer cannot see, so the record is handed over
  // under a mutex.
  Received last() const {
    absl::MutexLock lock(&mu_);
    return last_;
  }

  grpc::Status StreamNaturalGradientStep(
      grpc::ServerContext*,
      grpc::ServerReaderWriter<v1::StreamNaturalGradientStepResponse,
                               v1::StreamNaturalGradientStepRequest>* stream) override {
    std::vector<uint64_t> offsets;
    std::vector<int> header_messages;
    std::vector<double> received;
    v1::StreamNaturalGradientStepRequest request;
    for (int i = 0; stream->Read(&request); ++i) {
      if (request.has_header()) header_messages.push_back(i);
      offsets.push_back(request.offset());
      received.insert(received.end(), request.gradient().begin(), request.gradient().end());
      const std::string& bytes = request.gradient_f32();
      for (size_t at = 0; at + 4 <= bytes.size(); at += 4) {
        float v;
        std::memcpy(&v, bytes.data() + at, 4);
        received.push_back(v);
      }
    }
    {
      absl::MutexLock lock(&mu_);
      last_ = Received{offsets, header_messages, received};
    }
    const Fault f = fault.load();
    v1::StreamNaturalGradientStepResponse header;
    header.mutable_header()->set_eta(1.0);
    if (f != Fault::kNoHeader) stream->Write(header);
    const uint64_t dim = received.size();
    for (uint64_t at = 0; at < dim; at += 3) {
      uint64_t end = std::min(dim, at + 3);
      if (f == Fault::kShort && end == dim) break;
      v1::StreamNaturalGradientStepResponse chunk;
      chunk.set_block("only");
      chunk.set_offset(f == Fault::kGap && at > 0       ? at + 1
                       : f == Fault::kOverlap && at > 0 ? at - 1
                                                        : at);
      if (f == Fault::kTooLong && end == dim) ++end;
      for (uint64_t i = at; i < end; ++i) {
        const double v = i < dim ? received[i] : 0.0;
        chunk.add_natural_gradient(v);
        if (!(f == Fault::kUnequal && i == at)) chunk.add_update(-v);
      }
      stream->Write(chunk);
    }
    return grpc::Status::OK;
  }

 private:
  mutable absl::Mutex mu_;
  Received last_ ABSL_GUARDED_BY(mu_);
};

TEST(StreamStepProtocolTest, ChunksGoUpInOrderAndBadAnswersAreDataLoss) {
  FakeStepService service;
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_NE(server, nullptr);
  std::unique_ptr<FisherClient> client = Connect(absl::StrCat("127.0.0.1:", port));

  std::vector<double> g(10);
  for (int i = 0; i < 10; ++i) g[i] = 0.5 * i - 1;
  StepParams params;
  params.chunk_values = 4;
  absl::StatusOr<v1::NaturalGradientStepResponse> ok = client->StreamStep("s", g, params);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_THAT(service.last().offsets, ::testing::ElementsAre(0u, 4u, 8u));
  EXPECT_THAT(service.last().header_messages, ::testing::ElementsAre(0));
  EXPECT_EQ(service.last().values, g);
  EXPECT_EQ(std::vector<double>(ok->natural_gradient().begin(), ok->natural_gradient().end()), g);
  EXPECT_DOUBLE_EQ(ok->update(9), -g[9]);
  EXPECT_DOUBLE_EQ(ok->eta(), 1.0);

  params.float32_gradient = true;
  params.chunk_values = 0;
  ok = client->StreamStep("s", g, params);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_THAT(service.last().offsets, ::testing::ElementsAre(0u));  // 10 floats: one chunk
  EXPECT_EQ(service.last().values, g);                              // exact: every value is a float

  // An empty gradient still sends the header (the server judges the length).
  ok = client->StreamStep("s", {}, {});
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_THAT(service.last().header_messages, ::testing::ElementsAre(0));

  using Fault = FakeStepService::Fault;
  for (Fault fault : {Fault::kNoHeader, Fault::kGap, Fault::kOverlap, Fault::kShort,
                      Fault::kUnequal, Fault::kTooLong}) {
    service.fault = fault;
    absl::StatusOr<v1::NaturalGradientStepResponse> bad = client->StreamStep("s", g, {});
    EXPECT_EQ(bad.status().code(), absl::StatusCode::kDataLoss)
        << static_cast<int>(fault) << " " << bad.status();
  }
  // A well-formed full answer to a request for the float32 update alone is the wrong form.
  service.fault = Fault::kNone;
  StepParams f32_answer;
  f32_answer.answer = v1::STEP_ANSWER_UPDATE_F32;
  absl::StatusOr<v1::NaturalGradientStepResponse> mismatched =
      client->StreamStep("s", g, f32_answer);
  EXPECT_EQ(mismatched.status().code(), absl::StatusCode::kDataLoss) << mismatched.status();
  EXPECT_THAT(mismatched.status().message(), ::testing::HasSubstr("STEP_ANSWER_UPDATE_F32"));
  server->Shutdown();
}

}  // namespace
}  // namespace fisherd::testing
