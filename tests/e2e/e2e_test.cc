// End to end: the real fisherd binary on a loopback port, driven through the C++
// client library, ScoreStreamer and fisherctl, including broken connections and many
// simultaneous workers.
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "Eigen/Dense"
#include "client/fisher_client.h"
#include "client/score_streamer.h"
#include "gmock/gmock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "gtest/gtest.h"
#include "tests/e2e/process.h"
#include "tests/e2e/tcp_proxy.h"

namespace fisherd::testing {
namespace {

using client::ClientOptions;
using client::FisherClient;
using client::HealthCheckResponse;
using client::ScoreStreamer;
using client::ScoreStreamerOptions;
using ::testing::HasSubstr;
using RowMatrixF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

std::unique_ptr<FisherClient> Connect(const std::string& target, int max_message_bytes = 64 << 20) {
  ClientOptions options;
  options.target = target;
  options.wait_for_ready = true;
  options.max_message_bytes = max_message_bytes;
  absl::StatusOr<std::unique_ptr<FisherClient>> client = FisherClient::Create(options);
  EXPECT_TRUE(client.ok()) << client.status();
  return std::move(*client);
}

v1::SessionConfig Dense(uint64_t dim) {
  v1::SessionConfig config;
  config.set_dim(dim);
  config.set_representation(v1::REPRESENTATION_DENSE);
  return config;
}

RowMatrixF RandomRows(int rows, int dim, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  RowMatrixF m(rows, dim);
  for (float& x : m.reshaped()) x = normal(rng);
  return m;
}

// F = R^T R / rows in float64 from the same float32 values the server received.
Eigen::MatrixXd Reference(const RowMatrixF& rows) {
  const Eigen::MatrixXd wide = rows.cast<double>();
  return wide.transpose() * wide / static_cast<double>(rows.rows());
}

Eigen::MatrixXd Fetch(FisherClient& client, const std::string& session, int dim) {
  absl::StatusOr<client::FisherEstimate> estimate = client.GetFisher(session, true, false);
  EXPECT_TRUE(estimate.ok()) << estimate.status();
  if (!estimate.ok()) return Eigen::MatrixXd();
  return Eigen::Map<Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(
      estimate->values.data(), dim, dim);
}

absl::Status StreamRows(FisherClient* client, const std::string& session, const std::string& worker,
                        const RowMatrixF& rows, int rows_per_batch, int rows_per_append) {
  ScoreStreamerOptions options;
  options.session = session;
  options.worker_id = worker;
  options.dim = rows.cols();
  options.rows_per_batch = rows_per_batch;
  absl::StatusOr<std::unique_ptr<ScoreStreamer>> streamer = ScoreStreamer::Create(client, options);
  if (!streamer.ok()) return streamer.status();
  for (int begin = 0; begin < rows.rows(); begin += rows_per_append) {
    const int count = std::min<int>(rows_per_append, rows.rows() - begin);
    absl::Status status = (*streamer)->Append(
        absl::MakeConstSpan(rows.data() + begin * rows.cols(), count * rows.cols()));
    if (!status.ok()) return status;
  }
  return (*streamer)->Close();
}

class EndToEndTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { server_ = new ServerProcess(); }
  static void TearDownTestSuite() {
    // SIGTERM drains and exits 0 (docs/design.md: health NOT_SERVING, drain, exit 0).
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

ServerProcess* EndToEndTest::server_ = nullptr;

// Known SPD matrix (rows of a float32 lower-triangular factor) through the streamer in
// uneven appends; the step must match a float64 dense solve to solver round-off
// (1e-10 relative: cond(A) is about 1e2 and both solves are backward stable).
TEST_F(EndToEndTest, StreamedFactorGivesTheDenseSolve) {
  const int dim = 64;
  RowMatrixF factor = RowMatrixF::Zero(dim, dim);
  const RowMatrixF noise = RandomRows(dim, dim, 1);
  for (int j = 0; j < dim; ++j) {
    factor(j, j) = 1.0f + 0.5f * std::abs(noise(j, j));
    for (int i = j + 1; i < dim; ++i) factor(i, j) = 0.3f * noise(i, j);
  }
  const RowMatrixF rows = factor.transpose();
  ASSERT_TRUE(client_->CreateSession("factor", Dense(dim)).ok());
  ASSERT_TRUE(StreamRows(client_.get(), "sessions/factor", "w", rows, 10, 7).ok());

  const Eigen::MatrixXd a = Reference(rows);
  const Eigen::VectorXd g = Eigen::VectorXd::LinSpaced(dim, -1.0, 2.0);
  absl::StatusOr<v1::NaturalGradientStepResponse> step =
      client_->Step("sessions/factor", std::vector<double>(g.data(), g.data() + dim));
  ASSERT_TRUE(step.ok()) << step.status();
  const Eigen::VectorXd expected = a.llt().solve(g);
  const Eigen::Map<const Eigen::VectorXd> n(step->natural_gradient().data(), dim);
  EXPECT_LT((n - expected).norm(), 1e-10 * expected.norm());
  EXPECT_LT(step->solver().residual(), 1e-12);

  absl::StatusOr<v1::Session> session = client_->GetSession("factor");
  ASSERT_TRUE(session.ok());
  EXPECT_EQ(session->stats().sample_count(), static_cast<uint64_t>(dim));
  EXPECT_EQ(session->stats().step_count(), 1u);
  EXPECT_EQ(session->stats().worker_sequences().at("w"), 7u);  // ceil(64 / 10) batches
}

// Connections cut while a worker streams: the streamer reconnects and resends what was
// not acknowledged, the server counts every batch once, and F equals the serial result.
TEST_F(EndToEndTest, BrokenConnectionsAreResentAndCountedOnce) {
  const int dim = 32, total = 6000;
  const int port = std::stoi(server_->address().substr(server_->address().rfind(':') + 1));
  TcpProxy proxy(port);
  std::unique_ptr<FisherClient> through_proxy = Connect(proxy.address());
  ASSERT_TRUE(client_->CreateSession("cut", Dense(dim)).ok());

  const RowMatrixF rows = RandomRows(total, dim, 2);
  ScoreStreamerOptions options;
  options.session = "cut";
  options.worker_id = "flaky";
  options.dim = dim;
  options.rows_per_batch = 50;
  options.max_in_flight = 4;
  absl::StatusOr<std::unique_ptr<ScoreStreamer>> streamer =
      ScoreStreamer::Create(through_proxy.get(), options);
  ASSERT_TRUE(streamer.ok()) << streamer.status();
  int cuts = 0;
  for (int begin = 0; begin < total; begin += 200) {
    ASSERT_TRUE(
        (*streamer)->Append(absl::MakeConstSpan(rows.data() + begin * dim, 200 * dim)).ok());
    if (begin % 1000 == 0) {
      proxy.Cut();
      ++cuts;
    }
  }
  ASSERT_TRUE((*streamer)->Flush().ok()) << (*streamer)->failure();
  // What the cuts must have caused. Each cut breaks the stream in use (Append returns
  // with it open), and before the next cut (or the end of Flush) the streamer needs acks
  // for batches sent after it, which the broken stream can no longer carry: so every
  // cut costs a stream, and the streamer opened at least one more than there were cuts.
  const client::ScoreStreamerStats& stats = (*streamer)->stats();
  EXPECT_GE(stats.streams_opened, static_cast<uint64_t>(cuts) + 1) << "cuts: " << cuts;
  EXPECT_EQ(stats.batches_sent, static_cast<uint64_t>(total / 50));
  // A batch acknowledged as already applied can only be a resent one.
  EXPECT_LE(stats.duplicate_acks, stats.batches_resent);
  ASSERT_TRUE(stats.has_last_ack);
  EXPECT_EQ(stats.last_ack.sequence(), static_cast<uint64_t>(total / 50));
  EXPECT_EQ(stats.last_ack.sample_count(), static_cast<uint64_t>(total));

  absl::StatusOr<v1::Session> session = client_->GetSession("cut");
  ASSERT_TRUE(session.ok());
  EXPECT_EQ(session->stats().sample_count(), static_cast<uint64_t>(total));
  EXPECT_EQ(session->stats().worker_sequences().at("flaky"), static_cast<uint64_t>(total / 50));
  // A lost or doubled batch of 50 rows would move F by ~1%; 1e-12 is round-off.
  const Eigen::MatrixXd expected = Reference(rows);
  EXPECT_LT((Fetch(*client_, "cut", dim) - expected).norm(), 1e-12 * expected.norm());
}

// 16 workers stream into one session at once over one shared client; the result equals
// the statistics of all rows in one serial pass (summation order differs: 1e-12).
TEST_F(EndToEndTest, SixteenSimultaneousStreamsEqualTheSerialResult) {
  const int dim = 48, workers = 16, per_worker = 640;
  ASSERT_TRUE(client_->CreateSession("many", Dense(dim)).ok());
  const RowMatrixF rows = RandomRows(workers * per_worker, dim, 3);
  std::vector<absl::Status> results(workers);
  std::vector<std::thread> threads;
  for (int w = 0; w < workers; ++w) {
    threads.emplace_back([&, w] {
      const RowMatrixF mine = rows.middleRows(w * per_worker, per_worker);
      results[w] = StreamRows(client_.get(), "many", "worker-" + std::to_string(w), mine, 64, 100);
    });
  }
  for (std::thread& t : threads) t.join();
  for (const absl::Status& status : results) EXPECT_TRUE(status.ok()) << status;

  absl::StatusOr<v1::Session> session = client_->GetSession("many");
  ASSERT_TRUE(session.ok());
  EXPECT_EQ(session->stats().sample_count(), static_cast<uint64_t>(workers * per_worker));
  EXPECT_EQ(session->stats().worker_sequences().size(), static_cast<size_t>(workers));
  const Eigen::MatrixXd expected = Reference(rows);
  EXPECT_LT((Fetch(*client_, "many", dim) - expected).norm(), 1e-12 * expected.norm());
}

// A dense dim-4096 estimate (128 MiB) travels to a client whose message limit is gRPC's
// default 4 MiB: GetFisher streams it in blocks.
TEST_F(EndToEndTest, DenseDim4096FisherFitsDefaultMessageLimits) {
  const int dim = 4096;
  std::unique_ptr<FisherClient> small = Connect(server_->address(), 4 << 20);
  ASSERT_TRUE(small->CreateSession("big", Dense(dim)).ok());
  const RowMatrixF rows = RandomRows(16, dim, 4);
  v1::ScoreBatch batch;
  batch.set_session("sessions/big");
  batch.set_worker_id("w");
  batch.set_sequence(1);
  batch.set_rows(16);
  batch.set_scores_f32(rows.data(), rows.size() * sizeof(float));
  ASSERT_TRUE(small->AddScores(batch).ok());

  absl::StatusOr<client::FisherEstimate> estimate = small->GetFisher("big", true, false);
  ASSERT_TRUE(estimate.ok()) << estimate.status();
  ASSERT_EQ(estimate->values.size(), static_cast<size_t>(dim) * dim);
  const Eigen::MatrixXd expected = Reference(rows);
  const Eigen::Map<Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> got(
      estimate->values.data(), dim, dim);
  EXPECT_LT((got - expected).norm(), 1e-13 * expected.norm());
  EXPECT_NEAR(estimate->summary.trace(), expected.trace(), 1e-12 * expected.trace());
  ASSERT_TRUE(small->DeleteSession("big").ok());
}

TEST_F(EndToEndTest, FisherctlManagesSessions) {
  const std::string target = "--target=" + server_->address();
  CommandResult health = RunCommand({FisherctlPath(), target, "health"});
  EXPECT_EQ(health.exit_code, 0) << health.output;
  EXPECT_EQ(health.output, "SERVING\n");

  CommandResult created =
      RunCommand({FisherctlPath(), target, "create", "ctl", "--dim=5", "--representation=diagonal",
                  "--decay=0.9", "--damping=0.01"});
  EXPECT_EQ(created.exit_code, 0) << created.output;
  EXPECT_THAT(created.output, HasSubstr("sessions/ctl"));
  absl::StatusOr<v1::Session> session = client_->GetSession("ctl");
  ASSERT_TRUE(session.ok());
  EXPECT_EQ(session->config().representation(), v1::REPRESENTATION_DIAGONAL);
  EXPECT_DOUBLE_EQ(session->config().decay(), 0.9);
  EXPECT_DOUBLE_EQ(session->config().damping(), 0.01);

  CommandResult listed = RunCommand({FisherctlPath(), target, "list"});
  EXPECT_EQ(listed.exit_code, 0);
  EXPECT_THAT(listed.output, HasSubstr("sessions/ctl"));
  EXPECT_EQ(RunCommand({FisherctlPath(), target, "get", "sessions/ctl"}).exit_code, 0);

  CommandResult duplicate = RunCommand({FisherctlPath(), target, "create", "ctl", "--dim=5"});
  EXPECT_EQ(duplicate.exit_code, 1);
  EXPECT_THAT(duplicate.output, HasSubstr("ALREADY_EXISTS"));

  EXPECT_EQ(RunCommand({FisherctlPath(), target, "delete", "ctl"}).exit_code, 0);
  CommandResult missing = RunCommand({FisherctlPath(), target, "get", "ctl"});
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_THAT(missing.output, HasSubstr("NOT_FOUND"));
  EXPECT_THAT(missing.output, HasSubstr("sessions/ctl"));

  EXPECT_EQ(RunCommand({FisherctlPath(), target, "create", "x"}).exit_code, 2);  // no --dim
  EXPECT_EQ(RunCommand({FisherctlPath(), target, "frobnicate"}).exit_code, 2);
}

TEST(FisherdBinaryTest, FlagsAndLimits) {
  CommandResult help = RunCommand({FisherdPath(), "--help"});
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_THAT(help.output, HasSubstr("--listen"));
  EXPECT_THAT(help.output, HasSubstr("--max-sessions"));
  CommandResult bogus = RunCommand({FisherdPath(), "--bogus=1"});
  EXPECT_EQ(bogus.exit_code, 2);
  EXPECT_THAT(bogus.output, HasSubstr("bogus"));

  ServerProcess server({"--max-sessions=1", "--max-dense-dim=100"});
  ASSERT_FALSE(server.address().empty());
  std::unique_ptr<FisherClient> client = Connect(server.address());
  absl::StatusOr<v1::Session> too_big = client->CreateSession("big", Dense(101));
  EXPECT_EQ(too_big.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(too_big.status().message(), HasSubstr("DIAGONAL"));
  ASSERT_TRUE(client->CreateSession("one", Dense(100)).ok());
  absl::StatusOr<v1::Session> two = client->CreateSession("two", Dense(2));
  EXPECT_EQ(two.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(two.status().message(), HasSubstr("max-sessions"));

  // Health stays reachable while serving; SIGTERM exits 0 well inside the drain limit.
  absl::StatusOr<client::ServingStatus> health = client->CheckHealth(absl::Seconds(5));
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(*health, client::HealthCheckResponse::SERVING);
  EXPECT_EQ(server.Terminate(), 0);
}

// The threads of `pid` other than its main one that do not block `signal_number`,
// read from /proc/PID/task/TID/status (SigBlk: the blocked set as hex bits).
std::vector<pid_t> ThreadsTakingSignal(pid_t pid, int signal_number) {
  std::vector<pid_t> threads;
  for (const auto& entry :
       std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/task")) {
    const pid_t tid = static_cast<pid_t>(std::stol(entry.path().filename().string()));
    if (tid == pid) continue;
    std::ifstream status(entry.path() / "status");
    std::string line;
    while (std::getline(status, line)) {
      if (line.rfind("SigBlk:", 0) != 0) continue;
      const unsigned long long blocked = std::strtoull(line.c_str() + 7, nullptr, 16);
      if ((blocked & (1ULL << (signal_number - 1))) == 0) threads.push_back(tid);
    }
  }
  return threads;
}

// SIGTERM is process-directed: the kernel hands it to any thread that does not block
// it. OpenBLAS starts its worker threads before main, with SIGTERM unblocked, so when
// fisherd's main thread was not yet waiting (a SIGTERM right after the listening line)
// such a thread took it and the default action killed fisherd (exit 143, no drain).
// Sending it to that thread directly makes the race certain: fisherd must drain, exit 0.
TEST(FisherdBinaryTest, SigtermTakenByALibraryThreadStillDrains) {
  ServerProcess server;
  ASSERT_FALSE(server.address().empty());
  const std::vector<pid_t> threads = ThreadsTakingSignal(server.pid(), SIGTERM);
  if (threads.empty()) {
    GTEST_SKIP() << "no thread of fisherd but the main one leaves SIGTERM unblocked here "
                    "(OpenBLAS started no threads of its own)";
  }
  ASSERT_EQ(syscall(SYS_tgkill, server.pid(), threads.front(), SIGTERM), 0);
  EXPECT_EQ(server.WaitForExit(), 0);
}

// A grpc.health.v1 server whose Check answers `status` (any number, also one the
// protocol does not define) for the service "svc" and the whole server, NOT_FOUND for
// any other service.
class FixedHealthService final : public grpc::health::v1::Health::Service {
 public:
  std::atomic<int> status{HealthCheckResponse::SERVING};

  grpc::Status Check(grpc::ServerContext*, const grpc::health::v1::HealthCheckRequest* request,
                     HealthCheckResponse* response) override {
    if (!request->service().empty() && request->service() != "svc") {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "unknown service");
    }
    response->set_status(static_cast<HealthCheckResponse::ServingStatus>(status.load()));
    return grpc::Status::OK;
  }
};

// The client and fisherctl health report every serving status as it is, and only
// SERVING passes: NOT_SERVING (a draining server), SERVICE_UNKNOWN, UNKNOWN and a value
// the protocol does not define (reported as UNKNOWN) all fail the probe, as does a
// service the server does not know (NOT_FOUND).
TEST(HealthCheckTest, OnlyServingPasses) {
  FixedHealthService health;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&health);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_NE(server, nullptr);
  ASSERT_NE(port, 0);
  const std::string address = "127.0.0.1:" + std::to_string(port);
  std::unique_ptr<FisherClient> client = Connect(address);

  struct Case {
    int sent;
    client::ServingStatus reported;
    std::string printed;
  };
  for (const Case& c :
       std::vector<Case>{{1, HealthCheckResponse::SERVING, "SERVING"},
                         {2, HealthCheckResponse::NOT_SERVING, "NOT_SERVING"},
                         {3, HealthCheckResponse::SERVICE_UNKNOWN, "SERVICE_UNKNOWN"},
                         {0, HealthCheckResponse::UNKNOWN, "UNKNOWN"},
                         {7, HealthCheckResponse::UNKNOWN, "UNKNOWN"}}) {
    SCOPED_TRACE(c.sent);
    health.status = c.sent;
    for (const std::string service : {"", "svc"}) {
      absl::StatusOr<client::ServingStatus> got = client->CheckHealth(absl::Seconds(30), service);
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_EQ(*got, c.reported);
    }
    CommandResult cli =
        RunCommand({FisherctlPath(), "--target=" + address, "health", "--service=svc"});
    EXPECT_EQ(cli.exit_code, c.printed == "SERVING" ? 0 : 1) << cli.output;
    EXPECT_EQ(cli.output, c.printed + "\n");
  }

  absl::StatusOr<client::ServingStatus> unknown = client->CheckHealth(absl::Seconds(30), "other");
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kNotFound) << unknown.status();
  CommandResult cli =
      RunCommand({FisherctlPath(), "--target=" + address, "health", "--service=other"});
  EXPECT_EQ(cli.exit_code, 1) << cli.output;
  EXPECT_THAT(cli.output, HasSubstr("NOT_FOUND"));
  server->Shutdown();
}

}  // namespace
}  // namespace fisherd::testing
