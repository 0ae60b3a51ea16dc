// Durable sessions end to end, from the client's side: the real fisherd with
// --data-dir on a fixed loopback port is SIGKILLed while a ScoreStreamer is mid-stream
// and restarted on the same port and directory. The streamer must resume by itself
// (reconnect, resend what was not acknowledged; the server deduplicates against the
// recovered per-worker sequence), and a streamer created afresh for the same worker_id
// after a restart (a restarted worker process) must continue after the recovered
// sequence. Every row must count exactly once: sample count, weight sum, the worker's
// sequence and F are compared with a float64 reference computed here.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "Eigen/Dense"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "client/fisher_client.h"
#include "client/score_streamer.h"
#include "gmock/gmock.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "gtest/gtest.h"

namespace fisherd::testing {
namespace {

using client::ClientOptions;
using client::FisherClient;
using client::ScoreStreamer;
using client::ScoreStreamerOptions;
using ::testing::HasSubstr;
using RowMatrixF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using RowMatrixD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// A free loopback port: bind port 0, read what the kernel chose, close. fisherd then
// binds it (gRPC sets SO_REUSEADDR, so a restart can take it again after a SIGKILL).
int PickFreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof addr;
  int port = -1;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  close(fd);
  return port;
}

// fisherd --listen=127.0.0.1:PORT --data-dir=DIR, started and SIGKILLed any number of
// times on the same port and directory. Everything it prints (all incarnations) is kept
// for the test's messages.
class DurableFisherd {
 public:
  DurableFisherd(int port, std::string data_dir) : port_(port), data_dir_(std::move(data_dir)) {}
  ~DurableFisherd() { Kill(); }

  std::string address() const { return absl::StrCat("127.0.0.1:", port_); }
  bool running() const { return pid_ > 0; }

  // Starts it and waits for "fisherd listening on" (printed once recovery is done).
  // A few attempts: right after a SIGKILL the port may briefly still be held.
  bool Start() {
    for (int attempt = 0; attempt < 5; ++attempt) {
      if (StartOnce()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    return false;
  }

  // SIGKILL: no drain, no final snapshot; only what was fdatasync'd survives.
  void Kill() {
    if (pid_ <= 0) return;
    kill(pid_, SIGKILL);
    Reap();
  }

  // SIGTERM (drain) and the exit code, -1 if killed by a signal.
  int Terminate() {
    if (pid_ <= 0) return -1;
    kill(pid_, SIGTERM);
    const int status = Reap();
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

  std::string output() {
    std::lock_guard<std::mutex> lock(mu_);
    return output_;
  }

  // Whether `text` appears in the output within 20 s: fisherd prints its recovery line
  // after the listening line that Start waits for, so it may still be in the pipe.
  bool WaitForOutput(absl::string_view text) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (std::chrono::steady_clock::now() < deadline) {
      if (absl::StrContains(output(), text)) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }

 private:
  bool StartOnce() {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) return false;
    const std::string binary = FISHERD_BIN;
    const std::string listen = absl::StrCat("--listen=127.0.0.1:", port_);
    const std::string data_dir = absl::StrCat("--data-dir=", data_dir_);
    const pid_t pid = fork();
    if (pid == 0) {
      dup2(fds[1], STDOUT_FILENO);
      dup2(fds[1], STDERR_FILENO);
      char* argv[] = {const_cast<char*>(binary.c_str()), const_cast<char*>(listen.c_str()),
                      const_cast<char*>(data_dir.c_str()), nullptr};
      execv(argv[0], argv);
      _exit(127);
    }
    close(fds[1]);
    if (pid < 0) {
      close(fds[0]);
      return false;
    }
    pid_ = pid;
    const int fd = fds[0];
    std::string seen;
    bool listening = false;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (!listening && std::chrono::steady_clock::now() < deadline) {
      pollfd p{fd, POLLIN, 0};
      if (poll(&p, 1, 100) <= 0) continue;
      char buffer[1024];
      const ssize_t n = read(fd, buffer, sizeof buffer);
      if (n <= 0) break;  // exited (e.g. the port was still taken)
      seen.append(buffer, n);
      const size_t at = seen.find("fisherd listening on ");
      listening = at != std::string::npos && seen.find('\n', at) != std::string::npos;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      absl::StrAppend(&output_, "--- start ", ++starts_, " ---\n", seen);
    }
    // Keep draining its output (so that it never blocks on a full pipe) until it exits.
    drain_ = std::thread([this, fd] {
      char buffer[4096];
      ssize_t n;
      while ((n = read(fd, buffer, sizeof buffer)) > 0) {
        std::lock_guard<std::mutex> lock(mu_);
        output_.append(buffer, n);
      }
      close(fd);
    });
    if (!listening) Kill();
    return listening;
  }

  int Reap() {
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
    if (drain_.joinable()) drain_.join();  // EOF once the process is gone
    return status;
  }

  const int port_;
  const std::string data_dir_;
  pid_t pid_ = -1;
  int starts_ = 0;
  std::thread drain_;
  std::mutex mu_;
  std::string output_;
};

// A client with a connection of its own, as in a separate process. gRPC shares
// subchannels (connections) between channels of one process with the same target and
// arguments, so a client created right after a restart could otherwise inherit a
// connection to the killed server that gRPC has not yet noticed is dead, and its first
// unary call would fail with UNAVAILABLE ("Socket closed", "Broken pipe"): wait_for_ready
// waits for a connection but does not retry a call already sent. The channel arguments
// are FisherClient::Create's (client/fisher_client.cc) plus a local subchannel pool.
std::unique_ptr<FisherClient> Connect(const std::string& target) {
  ClientOptions options;
  options.target = target;
  options.wait_for_ready = true;  // unary calls wait for the (re)started server
  options.call_timeout = absl::Seconds(20);
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(options.max_message_bytes);
  args.SetMaxSendMessageSize(options.max_message_bytes);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return std::make_unique<FisherClient>(
      grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args), options);
}

// The rows every test streams: float32 normal scores and weights in {0.25, 0.5, ...,
// 2}. A weight has at most 3 significant bits and a float32 score 24, so each term
// w s_i s_j is exact in float64, and every weight sum is exact whatever the order.
struct Workload {
  RowMatrixF scores;
  std::vector<float> weights;
};

Workload MakeWorkload(int rows, int dim, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  std::uniform_int_distribution<int> quarter(1, 8);
  Workload w;
  w.scores.resize(rows, dim);
  for (float& x : w.scores.reshaped()) x = normal(rng);
  w.weights.resize(rows);
  for (float& x : w.weights) x = 0.25f * quarter(rng);
  return w;
}

// sum_k w_k s_k s_k^T (float64) and W = sum_k w_k over rows [0, rows) of `parts`, in
// the order given.
struct Reference {
  Eigen::MatrixXd m;
  double w = 0;
  uint64_t rows = 0;
  void Add(const Workload& part) {
    const Eigen::MatrixXd s = part.scores.cast<double>();
    const Eigen::VectorXd weights =
        Eigen::Map<const Eigen::VectorXf>(part.weights.data(), part.weights.size()).cast<double>();
    const Eigen::MatrixXd update = s.transpose() * weights.asDiagonal() * s;
    if (m.size() == 0) m = Eigen::MatrixXd::Zero(s.cols(), s.cols());
    m += update;
    w += weights.sum();
    rows += s.rows();
  }
  Eigen::MatrixXd Fisher() const { return m / w; }
};

Eigen::MatrixXd FetchFisher(FisherClient& client, const std::string& session, int dim) {
  absl::StatusOr<client::FisherEstimate> estimate = client.GetFisher(session, true, false);
  EXPECT_TRUE(estimate.ok()) << estimate.status();
  if (!estimate.ok() || estimate->values.size() != static_cast<size_t>(dim) * dim) {
    return Eigen::MatrixXd::Zero(dim, dim);
  }
  return Eigen::Map<const RowMatrixD>(estimate->values.data(), dim, dim);
}

// Rows [begin, end) of `w` through `streamer`, `rows_per_append` per Append.
absl::Status AppendRows(ScoreStreamer& streamer, const Workload& w, int begin, int end,
                        int rows_per_append) {
  const int dim = static_cast<int>(w.scores.cols());
  for (int row = begin; row < end; row += rows_per_append) {
    const int count = std::min(rows_per_append, end - row);
    absl::Status status =
        streamer.Append(absl::MakeConstSpan(w.scores.data() + static_cast<size_t>(row) * dim,
                                            static_cast<size_t>(count) * dim),
                        absl::MakeConstSpan(w.weights.data() + row, count));
    if (!status.ok()) return status;
  }
  return absl::OkStatus();
}

uint64_t WorkerSequence(const v1::Session& session, const std::string& worker) {
  const auto& sequences = session.stats().worker_sequences();
  auto it = sequences.find(worker);
  return it == sequences.end() ? 0 : it->second;
}

class DurableResumeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (std::filesystem::temp_directory_path() / "fisherd-resume-XXXXXX");
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    data_dir_ = pattern;
    const int port = PickFreePort();
    ASSERT_GT(port, 0);
    server_ = std::make_unique<DurableFisherd>(port, data_dir_);
    ASSERT_TRUE(server_->Start()) << server_->output();
  }

  void TearDown() override {
    if (HasFailure()) ADD_FAILURE() << "fisherd's output:\n" << server_->output();
    server_.reset();
    std::error_code ignored;
    std::filesystem::remove_all(data_dir_, ignored);
  }

  // SIGKILL, then start again on the same port and directory.
  void KillAndRestart() {
    server_->Kill();
    ASSERT_TRUE(server_->Start()) << server_->output();
  }

  std::string data_dir_;
  std::unique_ptr<DurableFisherd> server_;
};

constexpr int kDim = 24;
constexpr int kRowsPerBatch = 16;
constexpr int kBatches = 300;  // about 0.3-1 s of durable acks on this kind of machine
constexpr int kRows = kBatches * kRowsPerBatch;
const char kSession[] = "sessions/resume";
const char kWorker[] = "w1";

v1::SessionConfig DenseConfig() {
  v1::SessionConfig config;
  config.set_dim(kDim);
  config.set_representation(v1::REPRESENTATION_DENSE);
  return config;
}

ScoreStreamerOptions StreamerOptions() {
  ScoreStreamerOptions options;
  options.session = kSession;
  options.worker_id = kWorker;
  options.dim = kDim;
  options.rows_per_batch = kRowsPerBatch;
  options.max_in_flight = 8;
  return options;
}

// F of the server against the reference. Relative 1e-12 (Frobenius): the server
// accumulates the very same float32 scores and weights in float64, and every product
// w s_i s_j is exact in float64 (3 + 24 + 24 significant bits), so the two differ only
// by the rounding of their sums, whose order differs (the server's rank-16 batch
// updates, and a snapshot/replay split, against this test's one product over all rows):
// about n * 2^-53 ~ 1e-12 at worst for n ~ 5000 terms, far less in practice, while a
// lost or doubled batch of 16 rows out of ~5000 would move F by ~3e-3.
void ExpectFisherEquals(FisherClient& client, const Reference& reference) {
  const Eigen::MatrixXd expected = reference.Fisher();
  const Eigen::MatrixXd got = FetchFisher(client, kSession, kDim);
  EXPECT_LT((got - expected).norm(), 1e-12 * expected.norm())
      << "relative error " << (got - expected).norm() / expected.norm();
}

// One worker streams 300 batches; fisherd is SIGKILLed twice part way:
//  1. restarted at once: its recovered state is checked against what the streamer
//     knows (everything acknowledged survived, nothing beyond what was sent exists),
//     then the streamer carries on and finds its stream broken;
//  2. restarted 400 ms later, while the streamer is already reconnecting with backoff.
// The streamer's Flush must succeed; then every row counts exactly once.
TEST_F(DurableResumeTest, StreamerResumesAcrossSigkillAndRestart) {
  std::unique_ptr<FisherClient> control = Connect(server_->address());
  ASSERT_NE(control, nullptr);
  ASSERT_TRUE(control->CreateSession("resume", DenseConfig()).ok());

  const Workload workload = MakeWorkload(kRows, kDim, 20250611);
  std::unique_ptr<FisherClient> client = Connect(server_->address());
  ASSERT_NE(client, nullptr);
  absl::StatusOr<std::unique_ptr<ScoreStreamer>> created =
      ScoreStreamer::Create(client.get(), StreamerOptions());
  ASSERT_TRUE(created.ok()) << created.status();
  ScoreStreamer& streamer = **created;
  EXPECT_EQ(streamer.stats().next_sequence, 1u);

  // Appends of 3 batches: each Append returns right after writing its last batch,
  // before that batch's ack can arrive, so at every kill point some batch is in flight.
  const int per_append = 3 * kRowsPerBatch;
  const int kill1 = 100 * kRowsPerBatch, kill2 = 200 * kRowsPerBatch;

  ASSERT_TRUE(AppendRows(streamer, workload, 0, kill1, per_append).ok());
  const uint64_t sent1 = streamer.stats().next_sequence - 1;
  const uint64_t acked1 = streamer.stats().has_last_ack ? streamer.stats().last_ack.sequence() : 0;
  ASSERT_EQ(sent1, 100u);
  ASSERT_LT(acked1, sent1) << "no batch was in flight at the kill";
  KillAndRestart();
  // A fresh control connection (see Connect): a unary call on the old one could still go
  // out on the dead connection and fail with UNAVAILABLE.
  control = Connect(server_->address());
  ASSERT_NE(control, nullptr);
  uint64_t recovered1 = 0;
  {
    // The restart recovered the session from the log: at least every acknowledged
    // batch (acks follow fdatasync), at most what was ever sent, and whole batches only.
    absl::StatusOr<v1::Session> recovered = control->GetSession(kSession);
    ASSERT_TRUE(recovered.ok()) << recovered.status();
    const uint64_t sequence = WorkerSequence(*recovered, kWorker);
    EXPECT_GE(sequence, acked1);
    EXPECT_LE(sequence, sent1);
    EXPECT_EQ(recovered->stats().sample_count(), sequence * kRowsPerBatch);
    EXPECT_TRUE(server_->WaitForOutput("recovered 1 session(s)")) << server_->output();
    std::cout << "kill 1: sent " << sent1 << ", acknowledged " << acked1 << ", recovered "
              << sequence << "\n";
    recovered1 = sequence;
  }

  ASSERT_TRUE(AppendRows(streamer, workload, kill1, kill2, per_append).ok()) << streamer.failure();
  const uint64_t reconnects_before_second_kill = streamer.stats().reconnects;
  EXPECT_GE(reconnects_before_second_kill, 1u);
  // Every batch the server lacked after the kill must have gone out again. (Not
  // sent1 - acked1: acks still arrive between reading acked1 and the kill, and a batch
  // acknowledged then is not resent.)
  EXPECT_GE(streamer.stats().batches_resent, sent1 - recovered1);

  // Second kill; the restart comes while the streamer is already retrying.
  const uint64_t sent2 = streamer.stats().next_sequence - 1;
  const uint64_t acked2 = streamer.stats().last_ack.sequence();
  ASSERT_EQ(sent2, 200u);
  ASSERT_LT(acked2, sent2) << "no batch was in flight at the kill";
  server_->Kill();
  bool restarted = false;
  std::thread restarter([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(400));
    restarted = server_->Start();
  });
  const absl::Status appended = AppendRows(streamer, workload, kill2, kRows, per_append);
  const absl::Status flushed = appended.ok() ? streamer.Flush() : appended;
  restarter.join();
  ASSERT_TRUE(restarted) << server_->output();
  ASSERT_TRUE(flushed.ok()) << flushed;
  EXPECT_GT(streamer.stats().reconnects, reconnects_before_second_kill);
  EXPECT_EQ(streamer.stats().batches_sent, static_cast<uint64_t>(kBatches));
  EXPECT_EQ(streamer.stats().last_ack.sequence(), static_cast<uint64_t>(kBatches));
  EXPECT_EQ(streamer.stats().last_ack.sample_count(), static_cast<uint64_t>(kRows));
  ASSERT_TRUE(streamer.Close().ok());
  const client::ScoreStreamerStats& stats = streamer.stats();
  std::cout << "kill 2: sent " << sent2 << ", acknowledged " << acked2
            << "; streamer: " << stats.batches_sent << " batches sent, " << stats.batches_resent
            << " resent, " << stats.duplicate_acks << " duplicate acks, " << stats.reconnects
            << " reconnect attempts, " << stats.streams_opened << " streams\n";

  Reference reference;
  reference.Add(workload);
  control = Connect(server_->address());
  ASSERT_NE(control, nullptr);
  absl::StatusOr<v1::Session> session = control->GetSession(kSession);
  ASSERT_TRUE(session.ok()) << session.status();
  EXPECT_EQ(session->stats().sample_count(), static_cast<uint64_t>(kRows));
  EXPECT_EQ(WorkerSequence(*session, kWorker), static_cast<uint64_t>(kBatches));
  EXPECT_EQ(session->stats().worker_sequences().size(), 1u);
  EXPECT_EQ(session->stats().weight_sum(), reference.w);  // exact: sums of multiples of 1/4
  ExpectFisherEquals(*control, reference);
}

// A worker process that restarts after fisherd restarted: a new client and a new
// ScoreStreamer for the same worker_id (starting_sequence 0: ask the server) start at
// the recovered sequence + 1, their first batch is applied (not a duplicate), and the
// session ends with every row of both incarnations once.
TEST_F(DurableResumeTest, NewStreamerAfterRestartContinuesTheRecoveredSequence) {
  std::unique_ptr<FisherClient> control = Connect(server_->address());
  ASSERT_NE(control, nullptr);
  ASSERT_TRUE(control->CreateSession("resume", DenseConfig()).ok());

  const int first_batches = 120, second_batches = 60;
  const Workload first = MakeWorkload(first_batches * kRowsPerBatch, kDim, 7);
  const Workload second = MakeWorkload(second_batches * kRowsPerBatch, kDim, 8);
  {
    // The first incarnation of the worker: everything acknowledged, then it exits.
    std::unique_ptr<FisherClient> client = Connect(server_->address());
    ASSERT_NE(client, nullptr);
    absl::StatusOr<std::unique_ptr<ScoreStreamer>> streamer =
        ScoreStreamer::Create(client.get(), StreamerOptions());
    ASSERT_TRUE(streamer.ok()) << streamer.status();
    ASSERT_TRUE(AppendRows(**streamer, first, 0, first.scores.rows(), 5 * kRowsPerBatch).ok());
    ASSERT_TRUE((*streamer)->Close().ok()) << (*streamer)->failure();
  }
  KillAndRestart();                       // the sequence the new worker sees is the recovered one
  control = Connect(server_->address());  // see Connect
  ASSERT_NE(control, nullptr);

  absl::StatusOr<v1::Session> recovered = control->GetSession(kSession);
  ASSERT_TRUE(recovered.ok()) << recovered.status();
  ASSERT_EQ(WorkerSequence(*recovered, kWorker), static_cast<uint64_t>(first_batches));
  ASSERT_EQ(recovered->stats().sample_count(), static_cast<uint64_t>(first.scores.rows()));

  // The restarted worker: fresh client, fresh streamer, no memory of the old one.
  std::unique_ptr<FisherClient> client = Connect(server_->address());
  ASSERT_NE(client, nullptr);
  absl::StatusOr<std::unique_ptr<ScoreStreamer>> created =
      ScoreStreamer::Create(client.get(), StreamerOptions());
  ASSERT_TRUE(created.ok()) << created.status();
  ScoreStreamer& streamer = **created;
  EXPECT_EQ(streamer.stats().next_sequence, static_cast<uint64_t>(first_batches + 1));

  // Its first batch alone, to see its ack.
  ASSERT_TRUE(AppendRows(streamer, second, 0, kRowsPerBatch, kRowsPerBatch).ok());
  ASSERT_TRUE(streamer.Flush().ok()) << streamer.failure();
  ASSERT_TRUE(streamer.stats().has_last_ack);
  EXPECT_EQ(streamer.stats().acks_received, 1u);
  EXPECT_EQ(streamer.stats().last_ack.sequence(), static_cast<uint64_t>(first_batches + 1));
  EXPECT_FALSE(streamer.stats().last_ack.duplicate());
  EXPECT_EQ(streamer.stats().last_ack.sample_count(),
            static_cast<uint64_t>(first.scores.rows() + kRowsPerBatch));

  ASSERT_TRUE(
      AppendRows(streamer, second, kRowsPerBatch, second.scores.rows(), 4 * kRowsPerBatch).ok());
  ASSERT_TRUE(streamer.Close().ok()) << streamer.failure();
  EXPECT_EQ(streamer.stats().duplicate_acks, 0u);
  EXPECT_EQ(streamer.stats().last_ack.sequence(),
            static_cast<uint64_t>(first_batches + second_batches));

  Reference reference;
  reference.Add(first);
  reference.Add(second);
  absl::StatusOr<v1::Session> session = control->GetSession(kSession);
  ASSERT_TRUE(session.ok()) << session.status();
  EXPECT_EQ(session->stats().sample_count(), reference.rows);
  EXPECT_EQ(WorkerSequence(*session, kWorker),
            static_cast<uint64_t>(first_batches + second_batches));
  EXPECT_EQ(session->stats().weight_sum(), reference.w);
  ExpectFisherEquals(*control, reference);

  // And once more across a restart: the second incarnation's rows are durable too.
  KillAndRestart();
  control = Connect(server_->address());
  ASSERT_NE(control, nullptr);
  session = control->GetSession(kSession);
  ASSERT_TRUE(session.ok()) << session.status();
  EXPECT_EQ(session->stats().sample_count(), reference.rows);
  EXPECT_EQ(WorkerSequence(*session, kWorker),
            static_cast<uint64_t>(first_batches + second_batches));
  ExpectFisherEquals(*control, reference);
}

}  // namespace
}  // namespace fisherd::testing
