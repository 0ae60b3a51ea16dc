// End to end: the real fisherd with --metrics-listen=127.0.0.1:0, a known workload
// through the C++ client, and GET /metrics over HTTP while and after it runs. Every
// counter must equal exactly what the workload did; `promtool check metrics` (Debian's
// prometheus package) must accept the exposition; the listener's errors name the flag,
// and SIGTERM stops it.
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "client/fisher_client.h"
#include "client/score_encoding.h"
#include "client/score_streamer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "tests/e2e/process.h"

namespace fisherd::testing {
namespace {

using client::ClientOptions;
using client::FisherClient;
using client::ScoreStreamer;
using client::ScoreStreamerOptions;
using ::testing::HasSubstr;

constexpr int kDim = 8;

std::unique_ptr<FisherClient> Connect(const std::string& target) {
  ClientOptions options;
  options.target = target;
  options.wait_for_ready = true;
  absl::StatusOr<std::unique_ptr<FisherClient>> client = FisherClient::Create(options);
  EXPECT_TRUE(client.ok()) << client.status();
  return client.ok() ? std::move(*client) : nullptr;
}

std::vector<float> RandomRows(int rows, int dim, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> values(static_cast<size_t>(rows) * dim);
  for (float& x : values) x = normal(rng);
  return values;
}

v1::SessionConfig Config(v1::Representation representation) {
  v1::SessionConfig config;
  config.set_dim(kDim);
  config.set_representation(representation);
  config.set_damping(1e-3);
  return config;
}

struct HttpAnswer {
  int status = 0;  // 0: no answer (nothing listening)
  std::string content_type;
  std::string body;
};

HttpAnswer HttpGet(const std::string& address, const std::string& path) {
  httplib::Client http("http://" + address);
  http.set_connection_timeout(5);
  http.set_read_timeout(10);
  HttpAnswer answer;
  if (httplib::Result result = http.Get(path.c_str())) {
    answer.status = result->status;
    answer.content_type = result->get_header_value("Content-Type");
    answer.body = result->body;
  }
  return answer;
}

// Every sample line of an exposition, by series ("name{labels}" exactly as written).
std::map<std::string, double> ParseSamples(const std::string& text) {
  std::map<std::string, double> samples;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    if (absl::StartsWith(line, "#")) continue;
    const size_t space = line.rfind(' ');
    double value = NAN;
    EXPECT_NE(space, absl::string_view::npos) << line;
    if (space == absl::string_view::npos) continue;
    const absl::string_view number = line.substr(space + 1);
    if (number == "+Inf") {
      value = INFINITY;
    } else {
      EXPECT_TRUE(absl::SimpleAtod(number, &value)) << line;
    }
    EXPECT_TRUE(samples.emplace(std::string(line.substr(0, space)), value).second)
        << "series given twice: " << line;
  }
  return samples;
}

// The series whose name starts with `prefix`, for checking that no other exists.
std::map<std::string, double> WithPrefix(const std::map<std::string, double>& samples,
                                         const std::string& prefix) {
  std::map<std::string, double> found;
  for (const auto& [series, value] : samples) {
    if (absl::StartsWith(series, prefix)) found.emplace(series, value);
  }
  return found;
}

std::optional<double> Get(const std::map<std::string, double>& samples, const std::string& series) {
  auto it = samples.find(series);
  if (it == samples.end()) return std::nullopt;
  return it->second;
}

// Cumulative buckets never decrease from one bound to the next, and the +Inf bucket is
// the count.
void ExpectConsistentHistogram(const std::map<std::string, double>& samples,
                               const std::string& name) {
  std::map<double, double> by_bound;
  for (const auto& [series, value] : WithPrefix(samples, name + "_bucket{")) {
    const size_t at = series.find("le=\"");
    ASSERT_NE(at, std::string::npos) << series;
    const std::string le = series.substr(at + 4, series.find('"', at + 4) - at - 4);
    double bound = INFINITY;
    if (le != "+Inf") {
      ASSERT_TRUE(absl::SimpleAtod(le, &bound)) << series;
    }
    by_bound[bound] = value;
  }
  ASSERT_GT(by_bound.size(), 1u) << name;
  double previous = 0;
  for (const auto& [bound, count] : by_bound) {
    EXPECT_GE(count, previous) << name << " le=" << bound;
    previous = count;
  }
  EXPECT_TRUE(std::isinf(by_bound.rbegin()->first)) << name;
  EXPECT_EQ(by_bound.rbegin()->second, Get(samples, name + "_count")) << name;
  EXPECT_GE(Get(samples, name + "_sum").value_or(-1), 0) << name;
}

std::string MakeTempDir() {
  std::string pattern = (std::filesystem::temp_directory_path() / "fisherd-metrics-XXXXXX");
  EXPECT_NE(mkdtemp(pattern.data()), nullptr);
  return pattern;
}

std::string Calls(const std::string& method, const std::string& code) {
  return "fisherd_grpc_calls_total{method=\"/fisherd.v1.FisherService/" + method + "\",code=\"" +
         code + "\"}";
}

// Streams `rows` into `session` through a ScoreStreamer as `worker`, in batches of
// `rows_per_batch`, starting at sequence 1 (so that it makes no GetSession call the
// counts would have to include); returns the first error.
absl::Status Stream(FisherClient* client, const std::string& session, const std::string& worker,
                    int dim, const std::vector<float>& rows, int rows_per_batch) {
  ScoreStreamerOptions options;
  options.session = session;
  options.worker_id = worker;
  options.dim = dim;
  options.rows_per_batch = rows_per_batch;
  options.starting_sequence = 1;
  absl::StatusOr<std::unique_ptr<ScoreStreamer>> streamer = ScoreStreamer::Create(client, options);
  if (!streamer.ok()) return streamer.status();
  if (absl::Status status = (*streamer)->Append(rows); !status.ok()) return status;
  return (*streamer)->Close();
}

// The workload of the brief: two sessions, batches streamed and sent alone, a duplicate
// resend, a rejected batch, steps of two solvers (unary and streamed), a NOT_FOUND and
// a deletion; a second thread scrapes all the while.
TEST(MetricsEndToEndTest, CountersEqualWhatTheWorkloadDid) {
  ServerProcess server({"--metrics-listen=127.0.0.1:0"});
  ASSERT_FALSE(server.address().empty()) << "fisherd did not start";
  ASSERT_THAT(server.metrics_address(), ::testing::StartsWith("127.0.0.1:"));
  const std::string metrics = server.metrics_address();

  // Before any call: the families are there, at zero.
  HttpAnswer first = HttpGet(metrics, "/metrics");
  ASSERT_EQ(first.status, 200);
  EXPECT_EQ(first.content_type, "text/plain; version=0.0.4; charset=utf-8");
  std::map<std::string, double> samples = ParseSamples(first.body);
  EXPECT_EQ(Get(samples, "fisherd_batches_total{result=\"applied\"}"), 0);
  EXPECT_EQ(Get(samples, "fisherd_sessions"), 0);
  EXPECT_EQ(Get(samples, "fisherd_statistics_bytes"), 0);
  EXPECT_TRUE(WithPrefix(samples, "fisherd_grpc_calls_total").empty());
  // Without --data-dir there is no log to count.
  EXPECT_THAT(first.body, ::testing::Not(HasSubstr("fisherd_log_sync")));

  // Scrapes during the workload: always answered, counters never going back.
  std::atomic<bool> stop{false};
  std::atomic<int> scrapes{0};
  std::thread scraper([&] {
    double applied = 0;
    while (!stop.load()) {
      const HttpAnswer answer = HttpGet(metrics, "/metrics");
      EXPECT_EQ(answer.status, 200);
      const double now =
          Get(ParseSamples(answer.body), "fisherd_batches_total{result=\"applied\"}").value_or(-1);
      EXPECT_GE(now, applied);
      applied = now;
      scrapes.fetch_add(1);
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  });

  std::unique_ptr<FisherClient> client = Connect(server.address());
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->CreateSession("a", Config(v1::REPRESENTATION_DENSE)).ok());
  ASSERT_TRUE(client->CreateSession("b", Config(v1::REPRESENTATION_DIAGONAL)).ok());

  // 40 rows in 10 batches of 4 over one stream.
  const std::vector<float> rows_a = RandomRows(40, kDim, 1);
  ASSERT_TRUE(Stream(client.get(), "a", "w1", kDim, rows_a, 4).ok());

  samples = ParseSamples(HttpGet(metrics, "/metrics").body);
  EXPECT_EQ(Get(samples, "fisherd_batches_total{result=\"applied\"}"), 10);
  EXPECT_EQ(Get(samples, "fisherd_scores_total"), 40);
  EXPECT_EQ(Get(samples, "fisherd_sessions"), 2);
  EXPECT_EQ(Get(samples, Calls("StreamScores", "OK")), 1);
  const double bytes_of_both = Get(samples, "fisherd_statistics_bytes").value_or(0);
  EXPECT_GT(bytes_of_both, 0);

  // A resend of batch 3: acknowledged as a duplicate, not applied.
  const v1::ScoreBatch resend = client::MakeScoreBatch(
      "a", "w1", 3, absl::MakeConstSpan(rows_a).subspan(8 * kDim, 4 * kDim), {}, kDim);
  absl::StatusOr<v1::ScoreAck> ack = client->AddScores(resend);
  ASSERT_TRUE(ack.ok()) << ack.status();
  EXPECT_TRUE(ack->duplicate());
  // Rows of 4 values for a session of dim 8: rejected, and the stream ends with it.
  const absl::Status rejected = Stream(client.get(), "a", "w3", 4, RandomRows(2, 4, 2), 2);
  EXPECT_EQ(rejected.code(), absl::StatusCode::kInvalidArgument) << rejected;
  // 5 rows for the diagonal session, unary.
  ack = client->AddScores(client::MakeScoreBatch("b", "w2", 1, RandomRows(5, kDim, 3), {}, kDim));
  ASSERT_TRUE(ack.ok()) << ack.status();
  EXPECT_FALSE(ack->duplicate());

  // 3 unary and 1 streamed Cholesky steps, 1 diagonal step.
  const std::vector<double> gradient(kDim, 0.5);
  for (int i = 0; i < 3; ++i) {
    absl::StatusOr<v1::NaturalGradientStepResponse> step = client->Step("a", gradient);
    ASSERT_TRUE(step.ok()) << step.status();
    EXPECT_EQ(step->solver().method(), "cholesky");
  }
  absl::StatusOr<v1::NaturalGradientStepResponse> streamed = client->StreamStep("a", gradient);
  ASSERT_TRUE(streamed.ok()) << streamed.status();
  absl::StatusOr<v1::NaturalGradientStepResponse> diagonal = client->Step("b", gradient);
  ASSERT_TRUE(diagonal.ok()) << diagonal.status();
  EXPECT_EQ(diagonal->solver().method(), "diagonal");

  EXPECT_EQ(client->GetSession("missing").status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(client->DeleteSession("b").ok());

  stop.store(true);
  scraper.join();
  EXPECT_GT(scrapes.load(), 0);

  const HttpAnswer last = HttpGet(metrics, "/metrics");
  ASSERT_EQ(last.status, 200);
  samples = ParseSamples(last.body);

  EXPECT_EQ(WithPrefix(samples, "fisherd_batches_total"),
            (std::map<std::string, double>{
                {"fisherd_batches_total{result=\"applied\"}", 11},
                {"fisherd_batches_total{result=\"duplicate\"}", 1},
                {"fisherd_batches_total{result=\"rejected\",reason=\"invalid_argument\"}", 1}}));
  EXPECT_EQ(Get(samples, "fisherd_scores_total"), 45);
  EXPECT_EQ(Get(samples, "fisherd_ingest_duration_seconds_count"), 11);
  EXPECT_EQ(WithPrefix(samples, "fisherd_steps_total"),
            (std::map<std::string, double>{{"fisherd_steps_total{solver=\"cholesky\"}", 4},
                                           {"fisherd_steps_total{solver=\"diagonal\"}", 1},
                                           {"fisherd_steps_total{solver=\"kronecker\"}", 0},
                                           {"fisherd_steps_total{solver=\"layered\"}", 0},
                                           {"fisherd_steps_total{solver=\"woodbury\"}", 0}}));
  EXPECT_EQ(Get(samples, "fisherd_step_duration_seconds_count"), 5);
  ExpectConsistentHistogram(samples, "fisherd_ingest_duration_seconds");
  ExpectConsistentHistogram(samples, "fisherd_step_duration_seconds");
  EXPECT_EQ(Get(samples, "fisherd_sessions"), 1);
  const double bytes_of_a = Get(samples, "fisherd_statistics_bytes").value_or(0);
  EXPECT_GT(bytes_of_a, 0);
  EXPECT_LT(bytes_of_a, bytes_of_both);
  EXPECT_EQ(WithPrefix(samples, "fisherd_grpc_calls_total"),
            (std::map<std::string, double>{
                {Calls("AddScores", "OK"), 2},
                {Calls("CreateSession", "OK"), 2},
                {Calls("DeleteSession", "OK"), 1},
                {Calls("GetSession", "NOT_FOUND"), 1},
                {Calls("NaturalGradientStep", "OK"), 4},
                {Calls("StreamNaturalGradientStep", "OK"), 1},
                {Calls("StreamScores", "INVALID_ARGUMENT"), 1},
                {Calls("StreamScores", "OK"), 1},
            }));

  // Nothing but GET /metrics is served.
  EXPECT_EQ(HttpGet(metrics, "/").status, 404);
  EXPECT_EQ(HttpGet(metrics, "/metrics/x").status, 404);
  EXPECT_EQ(HttpGet(metrics, "/healthz").status, 404);
  {
    httplib::Client http("http://" + metrics);
    httplib::Result posted = http.Post("/metrics", "x", "text/plain");
    ASSERT_TRUE(posted);
    EXPECT_EQ(posted->status, 404);
  }

  // SIGTERM: a clean exit, and the listener is gone with the server.
  client.reset();  // an open connection holds fisherd's exit for seconds
  EXPECT_EQ(server.Terminate(), 0);
  EXPECT_EQ(HttpGet(metrics, "/metrics").status, 0);
}

// With --data-dir every fdatasync of the log is counted and timed.
TEST(MetricsEndToEndTest, LogSyncsAreCountedWithADataDirectory) {
  const std::string data_dir = MakeTempDir();
  {
    ServerProcess server({"--metrics-listen=127.0.0.1:0", "--data-dir=" + data_dir});
    ASSERT_FALSE(server.address().empty()) << "fisherd did not start";
    std::unique_ptr<FisherClient> client = Connect(server.address());
    ASSERT_NE(client, nullptr);
    ASSERT_TRUE(client->CreateSession("d", Config(v1::REPRESENTATION_DENSE)).ok());
    // Each acknowledgement waits for its own sync: one call at a time, at least one sync
    // per call.
    for (uint64_t sequence = 1; sequence <= 3; ++sequence) {
      ASSERT_TRUE(client
                      ->AddScores(client::MakeScoreBatch("d", "w", sequence,
                                                         RandomRows(4, kDim, sequence), {}, kDim))
                      .ok());
    }
    const std::map<std::string, double> samples =
        ParseSamples(HttpGet(server.metrics_address(), "/metrics").body);
    EXPECT_GE(Get(samples, "fisherd_log_syncs_total").value_or(0), 4);
    EXPECT_EQ(Get(samples, "fisherd_log_syncs_total"),
              Get(samples, "fisherd_log_sync_duration_seconds_count"));
    ExpectConsistentHistogram(samples, "fisherd_log_sync_duration_seconds");
    EXPECT_EQ(Get(samples, "fisherd_batches_total{result=\"applied\"}"), 3);
    client.reset();  // an open connection holds fisherd's exit for seconds
    EXPECT_EQ(server.Terminate(), 0);
  }
  std::error_code ignored;
  std::filesystem::remove_all(data_dir, ignored);
}

// Prometheus' own checker accepts the exposition of a server that has done a bit of
// everything (durable, so that every family is present, with labelled series).
TEST(MetricsEndToEndTest, PromtoolAcceptsTheExposition) {
  const std::string promtool = PROMTOOL_BIN;
  ASSERT_FALSE(promtool.empty())
      << "promtool was not found when CMake configured the build: install Debian's "
         "prometheus package (scripts/install-deps.sh does), then reconfigure";
  const std::string data_dir = MakeTempDir();
  std::string text;
  {
    ServerProcess server({"--metrics-listen=127.0.0.1:0", "--data-dir=" + data_dir});
    ASSERT_FALSE(server.address().empty()) << "fisherd did not start";
    std::unique_ptr<FisherClient> client = Connect(server.address());
    ASSERT_NE(client, nullptr);
    ASSERT_TRUE(client->CreateSession("p", Config(v1::REPRESENTATION_DENSE)).ok());
    ASSERT_TRUE(
        client->AddScores(client::MakeScoreBatch("p", "w", 1, RandomRows(16, kDim, 4), {}, kDim))
            .ok());
    ASSERT_TRUE(client->Step("p", std::vector<double>(kDim, 1.0)).ok());
    EXPECT_FALSE(client->GetSession("none").ok());
    EXPECT_FALSE(
        client->AddScores(client::MakeScoreBatch("none", "w", 1, RandomRows(1, kDim, 5), {}, kDim))
            .ok());
    text = HttpGet(server.metrics_address(), "/metrics").body;
    client.reset();  // an open connection holds fisherd's exit for seconds
    EXPECT_EQ(server.Terminate(), 0);
  }
  std::error_code ignored;
  std::filesystem::remove_all(data_dir, ignored);
  ASSERT_THAT(text, HasSubstr("reason=\"not_found\""));

  const std::string file = MakeTempDir() + "/metrics.txt";
  std::ofstream(file) << text;
  const CommandResult checked =
      RunCommand({"/bin/sh", "-c", promtool + " check metrics < " + file});
  EXPECT_EQ(checked.exit_code, 0) << checked.output << "\n--- the exposition:\n" << text;
  std::filesystem::remove_all(std::filesystem::path(file).parent_path(), ignored);
}

TEST(MetricsEndToEndTest, BadOrBusyAddressIsAStartupErrorNamingTheFlag) {
  const CommandResult malformed = RunCommand({FisherdPath(), "--metrics-listen=nowhere"});
  EXPECT_EQ(malformed.exit_code, 2);
  EXPECT_THAT(malformed.output, HasSubstr("--metrics-listen=nowhere: expected HOST:PORT"));

  ServerProcess first({"--metrics-listen=127.0.0.1:0"});
  ASSERT_FALSE(first.metrics_address().empty()) << "fisherd did not start";
  const CommandResult busy = RunCommand(
      {FisherdPath(), "--listen=127.0.0.1:0", "--metrics-listen=" + first.metrics_address()});
  EXPECT_EQ(busy.exit_code, 1);
  EXPECT_THAT(busy.output,
              HasSubstr("--metrics-listen: cannot listen on " + first.metrics_address()));
  // The first one still answers: the second never shared its port.
  EXPECT_EQ(HttpGet(first.metrics_address(), "/metrics").status, 200);
  EXPECT_EQ(first.Terminate(), 0);
}

}  // namespace
}  // namespace fisherd::testing
