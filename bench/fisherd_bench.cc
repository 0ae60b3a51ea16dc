// fisherd-bench: a load generator for a running fisherd.
//
//   fisherd-bench --target=HOST:PORT --dim=N --batch=B --workers=W --seconds=S
//                 --representation=dense|diagonal
// creates its own session, streams random float32 scores from W concurrent workers
// (one StreamScores call each, up to --in-flight unacknowledged batches per worker) for
// S seconds and prints a table and, as its last line, one JSON object.
//
//   fisherd-bench --mode=step --target=HOST:PORT --dim=N --batch=B --repeats=R
// times, R times over: one batch (AddScores), a NaturalGradientStep right after it
// (the factorization is new), and a second step with no new samples (cached factor).
// The session first gets more than dim/16 samples, so every timed step is the dense
// Cholesky path (it checks solver.method).
//
//   fisherd-bench --mode=accuracy --target=HOST:PORT --dim=N --batch=B --samples=S
// streams S samples (two payloads, alternating), reads F back with GetFisher and prints
// its relative Frobenius error against the same sums in long double.
//
//   fisherd-bench --mode=fresh-step --target=HOST:PORT --dim=N --batch=B --repeats=R
// times, R times over, the PyTorch user's loop: a new session, one batch, one step
// (F from that batch alone). Session creation and deletion are not timed.
//
// It speaks the proto directly through the generated stub, as any outside client
// would, so that what it measures is the server, not client-side tricks.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <limits>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/session_name.h"
#include "common/defaults.h"
#include "common/flag_set.h"
#include "common/grpc_status.h"
#include "fisherd/v1/fisher.grpc.pb.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"

namespace {

using Clock = std::chrono::steady_clock;
using fisherd::v1::FisherService;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

struct Config {
  std::string target = fisherd::common::kDefaultAddress;
  std::string mode = "ingest";
  std::string representation = "dense";
  std::string session_id;
  int64_t dim = 1024;
  int64_t batch = 256;
  int64_t workers = 1;
  double seconds = 5.0;
  double warmup_seconds = 0.5;
  int64_t in_flight = 8;
  int64_t repeats = 5;
  int64_t samples = 1000000;  // --mode=accuracy
  double damping = 1e-3;
  bool float32_products = false;  // SessionConfig.float32_products
  bool delete_session = false;
  bool channel_per_worker = false;
};

std::shared_ptr<grpc::Channel> MakeChannel(const Config& config, int index) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);
  // A distinct argument keeps gRPC from sharing one connection between channels.
  args.SetInt("fisherd.bench.channel", index);
  return grpc::CreateCustomChannel(config.target, grpc::InsecureChannelCredentials(), args);
}

std::string RandomPayload(int64_t rows, int64_t dim, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> values(static_cast<size_t>(rows * dim));
  for (float& v : values) v = normal(rng);
  std::string bytes(values.size() * sizeof(float), '\0');
  std::memcpy(bytes.data(), values.data(), bytes.size());  // little-endian hosts
  return bytes;
}

absl::Status CreateSession(FisherService::Stub* stub, const Config& config, bool dense) {
  grpc::ClientContext context;
  fisherd::client::AddSessionMetadata(&context, config.session_id);
  context.set_wait_for_ready(true);
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  fisherd::v1::CreateSessionRequest request;
  request.set_session_id(config.session_id);
  request.mutable_config()->set_dim(static_cast<uint64_t>(config.dim));
  request.mutable_config()->set_representation(dense ? fisherd::v1::REPRESENTATION_DENSE
                                                     : fisherd::v1::REPRESENTATION_DIAGONAL);
  request.mutable_config()->set_damping(config.damping);
  request.mutable_config()->set_float32_products(config.float32_products);
  fisherd::v1::Session session;
  return fisherd::common::FromGrpcStatus(stub->CreateSession(&context, request, &session),
                                         "CreateSession");
}

void DeleteSession(FisherService::Stub* stub, const std::string& name) {
  grpc::ClientContext context;
  fisherd::client::AddSessionMetadata(&context, name);
  fisherd::v1::DeleteSessionRequest request;
  request.set_name(name);
  fisherd::v1::DeleteSessionResponse response;
  stub->DeleteSession(&context, request, &response);
}

// --- ingest mode -----------------------------------------------------------------------

struct WorkerResult {
  int64_t rows_in_window = 0;
  int64_t rows_total = 0;
  int64_t batches = 0;
  absl::Status status;
};

void RunWorker(const Config& config, std::shared_ptr<grpc::Channel> channel, int index,
               const std::string& session_name, Clock::time_point window_start,
               Clock::time_point window_end, WorkerResult* result) {
  auto stub = FisherService::NewStub(channel);
  fisherd::v1::ScoreBatch batch;
  batch.set_session(session_name);
  batch.set_worker_id(absl::StrCat("bench-worker-", index));
  batch.set_rows(static_cast<uint32_t>(config.batch));
  const std::string payloads[2] = {RandomPayload(config.batch, config.dim, 2 * index + 1),
                                   RandomPayload(config.batch, config.dim, 2 * index + 2)};

  grpc::ClientContext context;
  fisherd::client::AddSessionMetadata(&context, session_name);
  context.set_wait_for_ready(true);
  auto stream = stub->StreamScores(&context);

  std::mutex mu;
  std::condition_variable cv;
  int64_t unacked = 0;
  bool reader_done = false;
  std::thread reader([&] {
    fisherd::v1::ScoreAck ack;
    while (stream->Read(&ack)) {
      const auto now = Clock::now();
      std::lock_guard<std::mutex> lock(mu);
      --unacked;
      result->rows_total += config.batch;
      if (now >= window_start && now <= window_end) result->rows_in_window += config.batch;
      cv.notify_all();
    }
    std::lock_guard<std::mutex> lock(mu);
    reader_done = true;
    cv.notify_all();
  });

  uint64_t sequence = 0;
  while (Clock::now() < window_end) {
    {
      std::unique_lock<std::mutex> lock(mu);
      cv.wait(lock, [&] { return unacked < config.in_flight || reader_done; });
      if (reader_done) break;
      ++unacked;
    }
    batch.set_sequence(++sequence);
    batch.set_scores_f32(payloads[sequence % 2]);
    if (!stream->Write(batch)) break;
    ++result->batches;
  }
  stream->WritesDone();
  reader.join();
  result->status = fisherd::common::FromGrpcStatus(stream->Finish(),
                                                   absl::StrCat("worker ", index, " StreamScores"));
}

int RunIngest(const Config& config) {
  const bool dense = config.representation == "dense";
  auto control = FisherService::NewStub(MakeChannel(config, 0));
  if (absl::Status s = CreateSession(control.get(), config, dense); !s.ok()) {
    std::cerr << "fisherd-bench: " << s << "\n";
    return 1;
  }
  const std::string session_name = "sessions/" + config.session_id;

  std::vector<std::shared_ptr<grpc::Channel>> channels;
  const int64_t channel_count = config.channel_per_worker ? config.workers : 1;
  for (int64_t i = 0; i < channel_count; ++i) channels.push_back(MakeChannel(config, 1 + i));

  // Workers start together; the window opens after the warm-up.
  const auto start = Clock::now() + std::chrono::milliseconds(200);
  const auto window_start = start + std::chrono::duration_cast<Clock::duration>(
                                        std::chrono::duration<double>(config.warmup_seconds));
  const auto window_end = window_start + std::chrono::duration_cast<Clock::duration>(
                                             std::chrono::duration<double>(config.seconds));
  std::vector<WorkerResult> results(config.workers);
  std::vector<std::thread> threads;
  for (int64_t i = 0; i < config.workers; ++i) {
    threads.emplace_back([&, i] {
      RunWorker(config, channels[i % channel_count], static_cast<int>(i), session_name,
                window_start, window_end, &results[i]);
    });
  }
  for (std::thread& t : threads) t.join();

  int64_t rows_in_window = 0, rows_total = 0, batches = 0;
  absl::Status status;
  for (const WorkerResult& r : results) {
    rows_in_window += r.rows_in_window;
    rows_total += r.rows_total;
    batches += r.batches;
    if (!r.status.ok() && status.ok()) status = r.status;
  }
  const double scores_per_second = rows_in_window / config.seconds;
  const double bytes_per_second = scores_per_second * config.dim * 4.0;

  std::printf("fisherd-bench ingest  target %s  session %s\n", config.target.c_str(),
              session_name.c_str());
  std::printf("  %-28s %s\n", "representation", config.representation.c_str());
  std::printf("  %-28s %lld x %lld float32 (%.2f MiB)\n", "batch (rows x dim)",
              static_cast<long long>(config.batch), static_cast<long long>(config.dim),
              config.batch * config.dim * 4.0 / (1 << 20));
  std::printf("  %-28s %lld (in flight per worker %lld)\n", "workers",
              static_cast<long long>(config.workers), static_cast<long long>(config.in_flight));
  std::printf("  %-28s %.1f s after %.1f s warm-up\n", "window", config.seconds,
              config.warmup_seconds);
  std::printf("  %-28s %lld\n", "rows acknowledged (total)", static_cast<long long>(rows_total));
  std::printf("  %-28s %.0f\n", "scores/s", scores_per_second);
  std::printf("  %-28s %.1f MB/s\n", "payload", bytes_per_second / 1e6);
  if (!status.ok()) std::printf("  error: %s\n", std::string(status.message()).c_str());

  if (config.delete_session) DeleteSession(control.get(), session_name);
  std::printf(
      "{\"mode\":\"ingest\",\"session\":\"%s\",\"representation\":\"%s\",\"dim\":%lld,"
      "\"batch\":%lld,\"workers\":%lld,\"seconds\":%.3f,\"rows\":%lld,"
      "\"scores_per_second\":%.1f,\"payload_bytes_per_second\":%.1f,\"ok\":%s}\n",
      session_name.c_str(), config.representation.c_str(), static_cast<long long>(config.dim),
      static_cast<long long>(config.batch), static_cast<long long>(config.workers), config.seconds,
      static_cast<long long>(rows_in_window), scores_per_second, bytes_per_second,
      status.ok() ? "true" : "false");
  return status.ok() ? 0 : 1;
}

// --- step mode -------------------------------------------------------------------------

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// The step every mode times: a fixed random gradient, learning rate 0.1.
fisherd::v1::NaturalGradientStepRequest StepRequest(const std::string& session, int64_t dim) {
  fisherd::v1::NaturalGradientStepRequest step;
  step.set_session(session);
  std::mt19937_64 rng(5);
  std::normal_distribution<double> normal;
  for (int64_t i = 0; i < dim; ++i) step.add_gradient(normal(rng));
  step.set_learning_rate(0.1);
  return step;
}

int RunStep(const Config& config) {
  auto stub = FisherService::NewStub(MakeChannel(config, 0));
  if (absl::Status s = CreateSession(stub.get(), config, /*dense=*/true); !s.ok()) {
    std::cerr << "fisherd-bench: " << s << "\n";
    return 1;
  }
  const std::string session_name = "sessions/" + config.session_id;
  fisherd::v1::ScoreBatch batch;
  batch.set_session(session_name);
  batch.set_worker_id("bench-step");
  batch.set_rows(static_cast<uint32_t>(config.batch));
  const std::string payload = RandomPayload(config.batch, config.dim, 99);
  batch.set_scores_f32(payload);

  fisherd::v1::NaturalGradientStepRequest step = StepRequest(session_name, config.dim);

  uint64_t sequence = 0;
  auto add = [&]() -> absl::Status {
    grpc::ClientContext context;
    fisherd::client::AddSessionMetadata(&context, session_name);
    batch.set_sequence(++sequence);
    fisherd::v1::ScoreAck ack;
    return fisherd::common::FromGrpcStatus(stub->AddScores(&context, batch, &ack), "AddScores");
  };
  auto take_step = [&](fisherd::v1::NaturalGradientStepResponse* response) -> absl::Status {
    grpc::ClientContext context;
    fisherd::client::AddSessionMetadata(&context, session_name);
    return fisherd::common::FromGrpcStatus(stub->NaturalGradientStep(&context, step, response),
                                           "NaturalGradientStep");
  };

  std::vector<double> ingest, first, cached, end_to_end, first_server, cached_server;
  // History before the first timed round: more than dim / 16 samples, past the low-rank
  // start of a dense session (core/dense_statistics.h), so the steps timed are Cholesky.
  absl::Status status;
  for (int64_t h = 0; h <= config.dim / 16 / config.batch && status.ok(); ++h) status = add();
  for (int64_t r = 0; r < config.repeats + 1 && status.ok(); ++r) {
    const auto t0 = Clock::now();
    status = add();
    if (!status.ok()) break;
    const auto t1 = Clock::now();
    fisherd::v1::NaturalGradientStepResponse a, b;
    status = take_step(&a);
    if (!status.ok()) break;
    const auto t2 = Clock::now();
    status = take_step(&b);
    if (!status.ok()) break;
    const auto t3 = Clock::now();
    if (r == 0) continue;  // first round warms caches and threads
    ingest.push_back(Seconds(t1 - t0));
    first.push_back(Seconds(t2 - t1));
    cached.push_back(Seconds(t3 - t2));
    end_to_end.push_back(Seconds(t2 - t0));
    first_server.push_back(a.solver().seconds());
    cached_server.push_back(b.solver().seconds());
    if (a.solver().factorization_cached() || !b.solver().factorization_cached()) {
      status = absl::InternalError(
          "the server did not refactor after new samples, or did not "
          "reuse the factor without them");
    }
    if (a.solver().method() != "cholesky") {
      status = absl::InternalError(
          absl::StrCat("expected the dense Cholesky path, got ", a.solver().method()));
    }
  }
  if (config.delete_session) DeleteSession(stub.get(), session_name);
  if (!status.ok() || first.empty()) {
    std::cerr << "fisherd-bench: " << status << "\n";
    return 1;
  }
  std::printf("fisherd-bench step  target %s  session %s  dim %lld  batch %lld  repeats %lld\n",
              config.target.c_str(), session_name.c_str(), static_cast<long long>(config.dim),
              static_cast<long long>(config.batch), static_cast<long long>(config.repeats));
  std::printf("  %-40s %10s %10s\n", "median seconds", "client", "server");
  std::printf("  %-40s %10.4f %10s\n", "AddScores (one batch)", Median(ingest), "");
  std::printf("  %-40s %10.4f %10.4f\n", "step after new samples", Median(first),
              Median(first_server));
  std::printf("  %-40s %10.4f %10.4f\n", "step, cached factor", Median(cached),
              Median(cached_server));
  std::printf("  %-40s %10.4f %10s\n", "batch + step, end to end", Median(end_to_end), "");
  std::printf(
      "{\"mode\":\"step\",\"session\":\"%s\",\"dim\":%lld,\"batch\":%lld,\"repeats\":%lld,"
      "\"ingest_seconds\":%.6f,\"step_seconds\":%.6f,\"step_server_seconds\":%.6f,"
      "\"cached_step_seconds\":%.6f,\"cached_step_server_seconds\":%.6f,"
      "\"batch_and_step_seconds\":%.6f}\n",
      session_name.c_str(), static_cast<long long>(config.dim),
      static_cast<long long>(config.batch), static_cast<long long>(config.repeats), Median(ingest),
      Median(first), Median(first_server), Median(cached), Median(cached_server),
      Median(end_to_end));
  return 0;
}

// --- accuracy mode ---------------------------------------------------------------------

// G = P^T P for a rows x dim row-major float32 payload, in long double (the float products
// are exact in double and the sums here carry 64-bit mantissas).
std::vector<long double> GramLongDouble(const std::string& payload, int64_t rows, int64_t dim) {
  std::vector<float> values(static_cast<size_t>(rows * dim));
  std::memcpy(values.data(), payload.data(), payload.size());
  std::vector<long double> gram(static_cast<size_t>(dim * dim), 0.0L);
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = values.data() + r * dim;
    for (int64_t i = 0; i < dim; ++i) {
      const long double si = row[i];
      long double* out = gram.data() + i * dim;
      for (int64_t j = 0; j < dim; ++j) out[j] += si * static_cast<long double>(row[j]);
    }
  }
  return gram;
}

int RunAccuracy(const Config& config) {
  auto stub = FisherService::NewStub(MakeChannel(config, 0));
  if (absl::Status s = CreateSession(stub.get(), config, /*dense=*/true); !s.ok()) {
    std::cerr << "fisherd-bench: " << s << "\n";
    return 1;
  }
  const std::string name = "sessions/" + config.session_id;
  const std::string payloads[2] = {RandomPayload(config.batch, config.dim, 7),
                                   RandomPayload(config.batch, config.dim, 8)};
  const int64_t batches = (config.samples + config.batch - 1) / config.batch;

  // One stream, all batches written before the acks are read back (gRPC's flow control
  // bounds what is in flight).
  grpc::ClientContext context;
  fisherd::client::AddSessionMetadata(&context, name);
  auto stream = stub->StreamScores(&context);
  fisherd::v1::ScoreBatch batch;
  batch.set_session(name);
  batch.set_worker_id("bench-accuracy");
  batch.set_rows(static_cast<uint32_t>(config.batch));
  std::thread writer([&] {
    for (int64_t b = 0; b < batches; ++b) {
      batch.set_sequence(static_cast<uint64_t>(b + 1));
      batch.set_scores_f32(payloads[b % 2]);
      if (!stream->Write(batch)) break;
    }
    stream->WritesDone();
  });
  fisherd::v1::ScoreAck ack;
  int64_t acked = 0;
  while (stream->Read(&ack)) ++acked;
  writer.join();
  absl::Status status = fisherd::common::FromGrpcStatus(stream->Finish(), "StreamScores");
  if (status.ok() && acked != batches) {
    status = absl::InternalError(absl::StrCat(acked, " of ", batches, " batches acknowledged"));
  }

  // F from the server, row blocks in order.
  std::vector<double> f(static_cast<size_t>(config.dim * config.dim), 0.0);
  if (status.ok()) {
    grpc::ClientContext get_context;
    fisherd::client::AddSessionMetadata(&get_context, name);
    fisherd::v1::GetFisherRequest request;
    request.set_session(name);
    request.set_include_matrix(true);
    auto reader = stub->GetFisher(&get_context, request);
    fisherd::v1::GetFisherResponse response;
    while (reader->Read(&response)) {
      const size_t offset = static_cast<size_t>(response.row_offset() * config.dim);
      if (offset + static_cast<size_t>(response.values_size()) > f.size()) break;
      std::copy(response.values().begin(), response.values().end(), f.begin() + offset);
    }
    status = fisherd::common::FromGrpcStatus(reader->Finish(), "GetFisher");
  }
  if (config.delete_session) DeleteSession(stub.get(), name);
  if (!status.ok()) {
    std::cerr << "fisherd-bench: " << status << "\n";
    return 1;
  }

  // Reference: (n_0 G_0 + n_1 G_1) / (rows streamed), in long double.
  const std::vector<long double> g0 = GramLongDouble(payloads[0], config.batch, config.dim);
  const std::vector<long double> g1 = GramLongDouble(payloads[1], config.batch, config.dim);
  const long double n0 = static_cast<long double>((batches + 1) / 2);
  const long double n1 = static_cast<long double>(batches / 2);
  const long double rows = static_cast<long double>(batches * config.batch);
  long double error_sq = 0.0L, norm_sq = 0.0L;
  for (size_t k = 0; k < f.size(); ++k) {
    const long double expected = (n0 * g0[k] + n1 * g1[k]) / rows;
    error_sq += (f[k] - expected) * (f[k] - expected);
    norm_sq += expected * expected;
  }
  const double relative_error = static_cast<double>(std::sqrt(error_sq / norm_sq));
  std::printf("fisherd-bench accuracy  target %s  dim %lld  samples %lld  float32_products %s\n",
              config.target.c_str(), static_cast<long long>(config.dim),
              static_cast<long long>(batches * config.batch),
              config.float32_products ? "on" : "off");
  std::printf("  relative Frobenius error of F vs long-double sums: %.3g\n", relative_error);
  std::printf(
      "{\"mode\":\"accuracy\",\"dim\":%lld,\"samples\":%lld,\"float32_products\":%s,"
      "\"relative_error\":%.6g}\n",
      static_cast<long long>(config.dim), static_cast<long long>(batches * config.batch),
      config.float32_products ? "true" : "false", relative_error);
  return 0;
}

// --- fresh-step mode -------------------------------------------------------------------

int RunFreshStep(const Config& config) {
  auto stub = FisherService::NewStub(MakeChannel(config, 0));
  fisherd::v1::NaturalGradientStepRequest step = StepRequest("", config.dim);

  std::vector<double> ingest, solve, end_to_end;
  std::string method;
  absl::Status status;
  for (int64_t r = 0; r < config.repeats + 1 && status.ok(); ++r) {
    Config round = config;
    round.session_id = absl::StrCat(config.session_id, "-", r);
    const std::string name = "sessions/" + round.session_id;
    status = CreateSession(stub.get(), round, /*dense=*/true);
    if (!status.ok()) break;
    fisherd::v1::ScoreBatch batch;
    batch.set_session(name);
    batch.set_worker_id("bench-fresh-step");
    batch.set_sequence(1);
    batch.set_rows(static_cast<uint32_t>(config.batch));
    batch.set_scores_f32(RandomPayload(config.batch, config.dim, 1000 + r));
    step.set_session(name);

    const auto t0 = Clock::now();
    grpc::ClientContext add_context;
    fisherd::client::AddSessionMetadata(&add_context, name);
    fisherd::v1::ScoreAck ack;
    status =
        fisherd::common::FromGrpcStatus(stub->AddScores(&add_context, batch, &ack), "AddScores");
    const auto t1 = Clock::now();
    fisherd::v1::NaturalGradientStepResponse response;
    if (status.ok()) {
      grpc::ClientContext step_context;
      fisherd::client::AddSessionMetadata(&step_context, name);
      status = fisherd::common::FromGrpcStatus(
          stub->NaturalGradientStep(&step_context, step, &response), "NaturalGradientStep");
    }
    const auto t2 = Clock::now();
    DeleteSession(stub.get(), name);
    if (!status.ok() || r == 0) continue;  // the first round warms caches and threads
    ingest.push_back(Seconds(t1 - t0));
    solve.push_back(Seconds(t2 - t1));
    end_to_end.push_back(Seconds(t2 - t0));
    method = response.solver().method();
  }
  if (!status.ok() || end_to_end.empty()) {
    std::cerr << "fisherd-bench: " << status << "\n";
    return 1;
  }
  std::printf("fisherd-bench fresh-step  target %s  dim %lld  batch %lld  repeats %lld\n",
              config.target.c_str(), static_cast<long long>(config.dim),
              static_cast<long long>(config.batch), static_cast<long long>(config.repeats));
  std::printf("  %-40s %10.4f\n", "AddScores (one batch), median s", Median(ingest));
  std::printf("  %-40s %10.4f  (%s)\n", "step, median s", Median(solve), method.c_str());
  std::printf("  %-40s %10.4f\n", "new session: batch + step, median s", Median(end_to_end));
  std::printf(
      "{\"mode\":\"fresh-step\",\"dim\":%lld,\"batch\":%lld,\"repeats\":%lld,"
      "\"method\":\"%s\",\"ingest_seconds\":%.6f,\"step_seconds\":%.6f,"
      "\"batch_and_step_seconds\":%.6f}\n",
      static_cast<long long>(config.dim), static_cast<long long>(config.batch),
      static_cast<long long>(config.repeats), method.c_str(), Median(ingest), Median(solve),
      Median(end_to_end));
  return 0;
}

const char kDescription[] =
    "A load generator for a running fisherd. Modes:\n"
    "  ingest (default): create a session, stream random float32 scores from --workers\n"
    "      workers for --seconds (after --warmup-seconds), print a table and a last line of\n"
    "      JSON: session, scores_per_second, payload_bytes_per_second, workers, dim, batch, ...\n"
    "  step: --repeats rounds of AddScores(one batch), a step, a cached step; JSON:\n"
    "      step_seconds, cached_step_seconds, batch_and_step_seconds (medians); the session\n"
    "      first gets more than dim/16 samples, so the steps are Cholesky\n"
    "  accuracy: stream --samples samples, read F back, print its relative Frobenius error\n"
    "      vs long-double sums of the same scores; JSON: relative_error\n"
    "  fresh-step: --repeats rounds of a new session, one batch, one step (F from that batch\n"
    "      alone, as in the PyTorch peer); JSON: batch_and_step_seconds, method";

}  // namespace

int main(int argc, char** argv) {
  Config config;
  config.session_id =
      absl::StrCat("bench-", getpid(), "-",
                   std::chrono::system_clock::now().time_since_epoch().count() % 1000000007);
  constexpr int64_t kMost = std::numeric_limits<int64_t>::max();
  fisherd::common::FlagSet flags("fisherd-bench", kDescription);
  flags.AddString("target", &config.target, "HOST:PORT of the server");
  flags.AddString("mode", &config.mode, "ingest, step, fresh-step or accuracy");
  flags.AddString("representation", &config.representation, "dense or diagonal");
  flags.AddString("session", &config.session_id, "session id (default bench-<pid>-<time>)");
  flags.AddInt("dim", &config.dim, 1, kMost, "parameters");
  flags.AddInt("batch", &config.batch, 1, kMost, "rows per batch");
  flags.AddInt("workers", &config.workers, 1, kMost, "concurrent workers (ingest)");
  flags.AddInt("in-flight", &config.in_flight, 1, kMost, "unacknowledged batches per worker");
  flags.AddInt("repeats", &config.repeats, 1, kMost, "rounds (step, fresh-step)");
  flags.AddInt("samples", &config.samples, 1, kMost, "samples (accuracy)");
  flags.AddDouble("seconds", &config.seconds, 1e-9, 1e9, "measured time (ingest)");
  flags.AddDouble("warmup-seconds", &config.warmup_seconds, 0, 1e9, "untimed start (ingest)");
  flags.AddDouble("damping", &config.damping, 0, 1e300, "damping of the session");
  flags.AddBool("delete-session", &config.delete_session, "delete the session at the end");
  flags.AddBool("float32-products", &config.float32_products,
                "the session multiplies large batches in float32 (faster, ~1e-7 in F)");
  flags.AddBool("channel-per-worker", &config.channel_per_worker,
                "one connection per worker instead of one shared");
  bool help = false;
  absl::Status status = flags.Parse(argc, argv, &help);
  if (help) {
    std::cout << flags.Help();
    return 0;
  }
  if (status.ok() && config.representation != "dense" && config.representation != "diagonal") {
    status = absl::InvalidArgumentError("--representation must be dense or diagonal");
  }
  if (status.ok() && config.mode != "ingest" && config.mode != "step" &&
      config.mode != "fresh-step" && config.mode != "accuracy") {
    status = absl::InvalidArgumentError("--mode must be ingest, step, fresh-step or accuracy");
  }
  if (!status.ok()) {
    std::cerr << "fisherd-bench: " << status.message() << "\n(run fisherd-bench --help)\n";
    return 2;
  }
  if (config.mode == "step") return RunStep(config);
  if (config.mode == "fresh-step") return RunFreshStep(config);
  if (config.mode == "accuracy") return RunAccuracy(config);
  return RunIngest(config);
}
