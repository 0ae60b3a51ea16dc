// fisherd-layered-bench: layered sessions (Kronecker blocks) against in-process
// OpenBLAS / LAPACK doing the same arithmetic, in the same run.
//
//   fisherd-layered-bench --mode=kronecker-ingest --target=HOST:PORT --dim=N --batch=B
//                         --seconds=S --repeats=R
// One Kronecker block with in = out = N (no bias). R times over: one StreamScores call
// streams B-row FACTOR_ACTIVATIONS batches (scores_f32, up to --in-flight unacknowledged)
// for S seconds after a warm-up, then the peer, in this process, runs one dsyrk per batch
// of the same rows widened to float64 (k = B, n = N) for S seconds (the two in
// alternating order). Prints both rows/s, medians, and the median of the per-repeat
// ratios fisherd / dsyrk.
//
//   fisherd-layered-bench --mode=kfac-step --layout=resnet18|mlp --target=HOST:PORT
//                         [--server-pid=PID] --repeats=R [--cached-repeats=C] [--fill=2]
//                         [--new-rows=16] [--float32-products]
// (--mode=resnet18-step is --mode=kfac-step --layout=resnet18.) A session whose blocks
// are, with --layout=resnet18, ResNet-18's convolution and linear layers as Kronecker
// blocks (conv: in = in_channels * kh * kw, out = out_channels, no bias; fc 512 -> 1000
// with bias; 11.7M parameters), or with --layout=mlp the 784-1000-1000-10 MLP of the
// Fashion-MNIST example (three Linear layers with bias, 1.8M parameters). Every factor
// first gets fill x (its dim) rows (full rank).
// The peer reads the same factor matrices back with GetFisher. Then R times over:
//   - fresh: new_rows more rows to EVERY factor (untimed; not before the first repeat,
//     which follows the fill), then one StreamNaturalGradientStep (gradient in chunks of
//     --chunk-values doubles), timed by the client from the first chunk sent to the last
//     chunk received; every block must report a new decomposition. The peer: copy each
//     factor and LAPACKE_dsyevd it, then per block U_G^T V U_A, the division by
//     s_G s_A^T + lambda, and U_G N' U_A^T (four dgemm).
//   - cached, C times: the same step again (skip_decay, no new rows), every block must
//     report cached factors; the peer: the four dgemm and the division alone.
// With --float32-products the session has SessionConfig.float32_products, and the peer
// takes the same four products with cblas_sgemm on float32 copies of its eigenvectors
// (made right after its dsyevd, as fisherd makes them), V rounded to float32 on the
// way in and N widened on the way out.
// Each fisherd step and its peer run back to back, in alternating order; medians and the
// median of the per-pair ratios are printed, and fisherd's answer is compared with the
// peer's on the first repeat (same factors).
// With --server-pid, reads the server's VmRSS (before the session and after the last
// step) and VmHWM from /proc/PID/status and compares them with the float64 bytes of the
// factors and their eigenvectors (sum over factors of 2 n^2 8).
// --width-divisor=D divides every channel count (and fc's 1000) by D: the smoke's tiny
// layout with the same structure.
//
// The last line printed is one JSON object. --threads (default 2) calls
// openblas_set_num_threads for the peer, as fisherd --math-threads does for the server.
// It speaks the proto directly through the generated stub, as any outside client would.
#include <cblas.h>
#include <lapacke.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <iostream>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "client/session_name.h"
#include "common/defaults.h"
#include "common/flag_set.h"
#include "common/grpc_status.h"
#include "fisherd/v1/fisher.grpc.pb.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"

extern "C" void openblas_set_num_threads(int);
extern "C" int openblas_get_num_threads(void);

namespace {

using Clock = std::chrono::steady_clock;
using fisherd::v1::FisherService;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

double Median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

std::string JsonArray(const std::vector<double>& v) {
  std::string out = "[";
  for (size_t i = 0; i < v.size(); ++i) absl::StrAppend(&out, i ? "," : "", v[i]);
  return out + "]";
}

struct Config {
  std::string target = fisherd::common::kDefaultAddress;
  std::string mode;
  std::string session_id;
  int64_t dim = 1024;   // kronecker-ingest: in = out
  int64_t batch = 256;  // rows per ScoreBatch (ingest and fills)
  int64_t in_flight = 8;
  int64_t repeats = 3;
  int64_t cached_repeats = 3;  // resnet18-step: cached steps per repeat
  double seconds = 4.0;
  double warmup_seconds = 0.5;
  double fill = 2.0;      // resnet18-step: rows per factor, in units of its dim
  int64_t new_rows = 16;  // resnet18-step: rows added to every factor per repeat
  int64_t width_divisor = 1;
  std::string only_blocks;        // resnet18-step: comma-separated block names (diagnostics)
  int64_t chunk_values = 262144;  // 2 MiB of doubles per request message
  int64_t server_pid = 0;
  int64_t threads = 2;
  double damping = 1e-3;
  bool delete_session = false;
  std::string layout = "resnet18";  // kfac-step: resnet18 or mlp
  bool float32_products = false;    // kfac-step: the session's, and the peer's sgemm
};

std::shared_ptr<grpc::Channel> MakeChannel(const Config& config) {
  // gRPC's default limits on purpose (4 MiB received): the layered RPCs are designed
  // to fit them. Sending is unlimited by default; fill batches of the widest factor
  // (256 x 4608 floats, 4.5 MiB) are within the server's --max-message-mb.
  grpc::ChannelArguments args;
  return grpc::CreateCustomChannel(config.target, grpc::InsecureChannelCredentials(), args);
}

// Uniform floats in [-1, 1) from splitmix64: fast enough to generate the hundreds of
// MB a fill needs on the fly, and rows from distinct seeds are linearly independent.
struct FastRng {
  uint64_t state;
  explicit FastRng(uint64_t seed) : state(seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull) {}
  uint64_t Next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  float Uniform() {
    return static_cast<float>(static_cast<int64_t>(Next() >> 40) - (1 << 23)) / (1 << 23);
  }
};

std::string RandomPayload(int64_t rows, int64_t width, uint64_t seed) {
  FastRng rng(seed);
  std::string bytes(static_cast<size_t>(rows * width) * sizeof(float), '\0');
  char* out = bytes.data();
  for (int64_t i = 0; i < rows * width; ++i) {
    const float v = rng.Uniform();
    std::memcpy(out + 4 * i, &v, sizeof(v));  // little-endian hosts
  }
  return bytes;
}

void DeleteSession(FisherService::Stub* stub, const std::string& name) {
  grpc::ClientContext context;
  fisherd::client::AddSessionMetadata(&context, name);
  fisherd::v1::DeleteSessionRequest request;
  request.set_name(name);
  fisherd::v1::DeleteSessionResponse response;
  stub->DeleteSession(&context, request, &response);
}

// --- layouts ---------------------------------------------------------------------------

struct Layer {
  std::string name;
  int64_t in = 0;
  int64_t out = 0;
  bool bias = false;
  int64_t na() const { return in + (bias ? 1 : 0); }
  int64_t parameters() const { return out * na(); }
};

// torchvision's resnet18 in module order: every Conv2d (no bias) and the Linear fc.
std::vector<Layer> ResNet18(int64_t divisor) {
  auto c = [divisor](int64_t channels) { return std::max<int64_t>(1, channels / divisor); };
  std::vector<Layer> layers;
  layers.push_back({"conv1", 3 * 7 * 7, c(64), false});
  int64_t in_channels = c(64);
  const int64_t widths[] = {c(64), c(128), c(256), c(512)};
  for (int stage = 0; stage < 4; ++stage) {
    const int64_t width = widths[stage];
    for (int unit = 0; unit < 2; ++unit) {
      const std::string prefix = absl::StrCat("layer", stage + 1, ".", unit, ".");
      layers.push_back({prefix + "conv1", in_channels * 9, width, false});
      layers.push_back({prefix + "conv2", width * 9, width, false});
      if (unit == 0 && in_channels != width) {
        layers.push_back({prefix + "downsample.0", in_channels, width, false});
      }
      in_channels = width;
    }
  }
  layers.push_back({"fc", in_channels, std::max<int64_t>(1, 1000 / divisor), true});
  return layers;
}

// The Fashion-MNIST example's MLP 784-1000-1000-10, every Linear with bias.
std::vector<Layer> Mlp(int64_t divisor) {
  const int64_t hidden = std::max<int64_t>(1, 1000 / divisor);
  return {{"fc1", 784, hidden, true}, {"fc2", hidden, hidden, true}, {"fc3", hidden, 10, true}};
}

absl::Status CreateLayeredSession(FisherService::Stub* stub, const Config& config,
                                  const std::vector<Layer>& layers, int64_t* dim) {
  grpc::ClientContext context;
  fisherd::client::AddSessionMetadata(&context, config.session_id);
  context.set_wait_for_ready(true);
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  fisherd::v1::CreateSessionRequest request;
  request.set_session_id(config.session_id);
  fisherd::v1::SessionConfig* session = request.mutable_config();
  session->set_representation(fisherd::v1::REPRESENTATION_LAYERED);
  session->set_damping(config.damping);
  session->set_float32_products(config.float32_products);
  for (const Layer& layer : layers) {
    fisherd::v1::BlockConfig* block = session->add_blocks();
    block->set_name(layer.name);
    block->set_kind(fisherd::v1::BLOCK_KIND_KRONECKER);
    block->set_in_features(static_cast<uint64_t>(layer.in));
    block->set_out_features(static_cast<uint64_t>(layer.out));
    block->set_bias(layer.bias);
  }
  fisherd::v1::Session created;
  absl::Status status = fisherd::common::FromGrpcStatus(
      stub->CreateSession(&context, request, &created), "CreateSession");
  if (status.ok()) *dim = static_cast<int64_t>(created.config().dim());
  return status;
}

// --- streaming rows --------------------------------------------------------------------

struct RowJob {
  std::string block;
  fisherd::v1::Factor factor;
  int64_t width;
  int64_t rows;
  uint64_t seed;
};

// Streams every job's rows through one StreamScores call (batches of at most
// batch_rows, generated on the fly; gRPC's flow control bounds what is in flight) and
// waits for every acknowledgement.
absl::Status StreamRows(FisherService::Stub* stub, const std::string& session,
                        const std::vector<RowJob>& jobs, int64_t batch_rows) {
  grpc::ClientContext context;
  fisherd::client::AddSessionMetadata(&context, session);
  auto stream = stub->StreamScores(&context);
  int64_t batches = 0;
  for (const RowJob& job : jobs) batches += (job.rows + batch_rows - 1) / batch_rows;
  std::thread writer([&] {
    fisherd::v1::ScoreBatch batch;
    batch.set_session(session);
    for (const RowJob& job : jobs) {
      batch.set_block(job.block);
      batch.set_factor(job.factor);
      for (int64_t done = 0, b = 0; done < job.rows; ++b) {
        const int64_t rows = std::min(batch_rows, job.rows - done);
        batch.set_rows(static_cast<uint32_t>(rows));
        batch.set_scores_f32(RandomPayload(rows, job.width, job.seed * 1000003 + b));
        if (!stream->Write(batch)) {
          stream->WritesDone();
          return;
        }
        done += rows;
      }
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
  return status;
}

// --- kronecker-ingest ------------------------------------------------------------------

// One worker streaming the two payloads alternately for the window; rows acknowledged
// inside it.
absl::StatusOr<int64_t> IngestWindow(FisherService::Stub* stub, const Config& config,
                                     const std::string& session, const std::string* payloads,
                                     uint64_t* sequence) {
  const auto window_start =
      Clock::now() + std::chrono::duration_cast<Clock::duration>(
                         std::chrono::duration<double>(config.warmup_seconds));
  const auto window_end = window_start + std::chrono::duration_cast<Clock::duration>(
                                             std::chrono::duration<double>(config.seconds));
  fisherd::v1::ScoreBatch batch;
  batch.set_session(session);
  batch.set_worker_id("layered-bench-ingest");
  batch.set_block("fc");
  batch.set_factor(fisherd::v1::FACTOR_ACTIVATIONS);
  batch.set_rows(static_cast<uint32_t>(config.batch));

  grpc::ClientContext context;
  fisherd::client::AddSessionMetadata(&context, session);
  auto stream = stub->StreamScores(&context);
  std::mutex mu;
  std::condition_variable cv;
  int64_t unacked = 0, rows_in_window = 0;
  bool reader_done = false;
  std::thread reader([&] {
    fisherd::v1::ScoreAck ack;
    while (stream->Read(&ack)) {
      const auto now = Clock::now();
      std::lock_guard<std::mutex> lock(mu);
      --unacked;
      if (now >= window_start && now <= window_end) rows_in_window += config.batch;
      cv.notify_all();
    }
    std::lock_guard<std::mutex> lock(mu);
    reader_done = true;
    cv.notify_all();
  });
  while (Clock::now() < window_end) {
    {
      std::unique_lock<std::mutex> lock(mu);
      cv.wait(lock, [&] { return unacked < config.in_flight || reader_done; });
      if (reader_done) break;
      ++unacked;
    }
    batch.set_sequence(++*sequence);
    batch.set_scores_f32(payloads[*sequence % 2]);
    if (!stream->Write(batch)) break;
  }
  stream->WritesDone();
  reader.join();
  absl::Status status = fisherd::common::FromGrpcStatus(stream->Finish(), "StreamScores");
  if (!status.ok()) return status;
  return rows_in_window;
}

// The peer: one dsyrk per batch of the same rows, widened to float64 once, for the
// window. Rows per second.
double DsyrkWindow(const Config& config, const std::vector<double>* widened,
                   std::vector<double>* f) {
  const int n = static_cast<int>(config.dim), k = static_cast<int>(config.batch);
  int64_t batches = 0;
  auto one = [&] {
    // Row-major rows x n is column-major n x rows: F += S^T S is dsyrk NoTrans.
    cblas_dsyrk(CblasColMajor, CblasUpper, CblasNoTrans, n, k, 1.0, widened[batches % 2].data(), n,
                1.0, f->data(), n);
  };
  one();  // warm-up: threads, pages
  const auto start = Clock::now();
  double elapsed = 0.0;
  while (elapsed < config.seconds) {
    one();
    ++batches;
    elapsed = Seconds(Clock::now() - start);
  }
  return batches * config.batch / elapsed;
}

int RunKroneckerIngest(const Config& config) {
  auto stub = FisherService::NewStub(MakeChannel(config));
  Layer layer{"fc", config.dim, config.dim, false};
  int64_t dim = 0;
  if (absl::Status s = CreateLayeredSession(stub.get(), config, {layer}, &dim); !s.ok()) {
    std::cerr << "fisherd-layered-bench: " << s << "\n";
    return 1;
  }
  const std::string session = "sessions/" + config.session_id;
  const std::string payloads[2] = {RandomPayload(config.batch, config.dim, 1),
                                   RandomPayload(config.batch, config.dim, 2)};
  std::vector<double> widened[2];
  for (int p = 0; p < 2; ++p) {
    widened[p].resize(static_cast<size_t>(config.batch * config.dim));
    for (size_t i = 0; i < widened[p].size(); ++i) {
      float v;
      std::memcpy(&v, payloads[p].data() + 4 * i, sizeof(v));
      widened[p][i] = v;
    }
  }
  std::vector<double> f(static_cast<size_t>(config.dim * config.dim), 0.0);

  std::vector<double> ours, peer, ratios;
  uint64_t sequence = 0;
  absl::Status status;
  for (int64_t r = 0; r < config.repeats; ++r) {
    // Back to back, in alternating order (a drift of the machine favours neither).
    double peer_rate = r % 2 == 1 ? DsyrkWindow(config, widened, &f) : 0.0;
    absl::StatusOr<int64_t> rows = IngestWindow(stub.get(), config, session, payloads, &sequence);
    if (!rows.ok()) {
      status = rows.status();
      break;
    }
    const double fisherd_rate = *rows / config.seconds;
    if (r % 2 == 0) peer_rate = DsyrkWindow(config, widened, &f);
    ours.push_back(fisherd_rate);
    peer.push_back(peer_rate);
    ratios.push_back(fisherd_rate / peer_rate);
    std::printf("  repeat %lld: fisherd %.0f rows/s, dsyrk %.0f rows/s, ratio %.3f\n",
                static_cast<long long>(r) + 1, fisherd_rate, peer_rate, fisherd_rate / peer_rate);
  }
  if (config.delete_session) DeleteSession(stub.get(), session);
  if (!status.ok()) {
    std::cerr << "fisherd-layered-bench: " << status << "\n";
    return 1;
  }
  std::printf(
      "kronecker ingest in = out = %lld, no bias, %lld-row FACTOR_ACTIVATIONS batches; "
      "peer dsyrk k = %lld n = %lld, %d threads\n",
      static_cast<long long>(config.dim), static_cast<long long>(config.batch),
      static_cast<long long>(config.batch), static_cast<long long>(config.dim),
      openblas_get_num_threads());
  std::printf("  medians: fisherd %.0f rows/s, dsyrk %.0f rows/s, paired ratio %.3f\n",
              Median(ours), Median(peer), Median(ratios));
  std::printf(
      "{\"mode\":\"kronecker-ingest\",\"dim\":%lld,\"batch\":%lld,\"repeats\":%lld,"
      "\"seconds\":%.3f,\"threads\":%d,\"rows_per_second\":%.1f,"
      "\"dsyrk_rows_per_second\":%.1f,\"ratio\":%.4f,\"runs\":%s,\"dsyrk_runs\":%s}\n",
      static_cast<long long>(config.dim), static_cast<long long>(config.batch),
      static_cast<long long>(config.repeats), config.seconds, openblas_get_num_threads(),
      Median(ours), Median(peer), Median(ratios), JsonArray(ours).c_str(), JsonArray(peer).c_str());
  return 0;
}

// --- resnet18-step ---------------------------------------------------------------------

// VmRSS and VmHWM of a process, in kB (0 when unreadable).
void ReadMemory(int64_t pid, int64_t* rss_kb, int64_t* hwm_kb) {
  *rss_kb = *hwm_kb = 0;
  std::ifstream status(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(status, line)) {
    std::istringstream fields(line);
    std::string key;
    int64_t value = 0;
    fields >> key >> value;
    if (key == "VmRSS:") *rss_kb = value;
    if (key == "VmHWM:") *hwm_kb = value;
  }
}

// The same factor matrix the server holds, read back with GetFisher (row blocks of a
// symmetric matrix: row-major and column-major agree).
absl::Status ReadFactor(FisherService::Stub* stub, const std::string& session,
                        const std::string& block, fisherd::v1::Factor factor, int64_t n,
                        std::vector<double>* out) {
  out->assign(static_cast<size_t>(n * n), 0.0);
  grpc::ClientContext context;
  fisherd::client::AddSessionMetadata(&context, session);
  fisherd::v1::GetFisherRequest request;
  request.set_session(session);
  request.set_block(block);
  request.set_factor(factor);
  request.set_include_matrix(true);
  auto reader = stub->GetFisher(&context, request);
  fisherd::v1::GetFisherResponse response;
  int64_t rows = 0;
  while (reader->Read(&response)) {
    if (response.has_summary() && static_cast<int64_t>(response.summary().dim()) != n) {
      return absl::InternalError(absl::StrCat("GetFisher of ", block, " factor ", factor,
                                              " has dim ", response.summary().dim(), ", not ", n));
    }
    const size_t offset = static_cast<size_t>(response.row_offset() * n);
    if (offset + static_cast<size_t>(response.values_size()) > out->size()) {
      return absl::InternalError("GetFisher sent rows past the factor");
    }
    std::copy(response.values().begin(), response.values().end(), out->begin() + offset);
    rows += response.row_count();
  }
  absl::Status status = fisherd::common::FromGrpcStatus(reader->Finish(), "GetFisher");
  if (status.ok() && rows != n) {
    status = absl::InternalError(
        absl::StrCat("GetFisher of ", block, " sent ", rows, " of ", n, " rows"));
  }
  return status;
}

// What the client saw of one StreamNaturalGradientStep.
struct StepRun {
  double seconds = 0.0;         // first chunk sent .. last chunk received
  double server_seconds = 0.0;  // solver.seconds (the layered solve)
  // The client's view of where `seconds` went: sending the chunks (until WritesDone),
  // waiting for the header (the server's step), receiving the answer's chunks.
  double upload_seconds = 0.0;
  double wait_seconds = 0.0;
  double download_seconds = 0.0;
  int64_t fresh_blocks = 0;  // blocks that reported a new decomposition
  int64_t blocks = 0;
  double residual = 0.0;
};

absl::Status StreamStep(FisherService::Stub* stub, const Config& config, const std::string& session,
                        const std::vector<double>& gradient, std::vector<double>* natural_gradient,
                        StepRun* run) {
  const int64_t dim = static_cast<int64_t>(gradient.size());
  natural_gradient->assign(gradient.size(), 0.0);
  grpc::ClientContext context;
  fisherd::client::AddSessionMetadata(&context, session);
  auto stream = stub->StreamNaturalGradientStep(&context);
  fisherd::v1::StreamNaturalGradientStepRequest request;
  const auto t0 = Clock::now();
  for (int64_t offset = 0; offset < dim; offset += config.chunk_values) {
    request.Clear();
    if (offset == 0) {
      fisherd::v1::NaturalGradientStepRequest* header = request.mutable_header();
      header->set_session(session);
      header->set_learning_rate(0.1);
      header->set_skip_decay(true);
    }
    const int64_t end = std::min(dim, offset + config.chunk_values);
    request.set_offset(static_cast<uint64_t>(offset));
    request.mutable_gradient()->Assign(gradient.data() + offset, gradient.data() + end);
    if (!stream->Write(request)) break;
  }
  stream->WritesDone();
  const auto t_sent = Clock::now();
  fisherd::v1::StreamNaturalGradientStepResponse response;
  int64_t covered = 0;
  auto t1 = t0, t_header = t0;
  bool have_header = false;
  while (stream->Read(&response)) {
    if (response.has_header()) {
      t_header = Clock::now();
      have_header = true;
      const fisherd::v1::SolverSummary& solver = response.header().solver();
      run->server_seconds = solver.seconds();
      run->residual = solver.residual();
      run->blocks = solver.blocks_size();
      run->fresh_blocks = 0;
      for (const auto& block : solver.blocks()) run->fresh_blocks += !block.factorization_cached();
    }
    const int64_t offset = static_cast<int64_t>(response.offset());
    const int64_t count = response.natural_gradient_size();
    if (count > 0) {
      if (offset + count > dim) return absl::InternalError("a step chunk lies past dim");
      std::copy(response.natural_gradient().begin(), response.natural_gradient().end(),
                natural_gradient->begin() + offset);
      covered += count;
      if (covered == dim) t1 = Clock::now();
    }
  }
  absl::Status status =
      fisherd::common::FromGrpcStatus(stream->Finish(), "StreamNaturalGradientStep");
  if (!status.ok()) return status;
  if (!have_header || covered != dim) {
    return absl::InternalError(absl::StrCat("the step's chunks covered ", covered, " of ", dim,
                                            have_header ? "" : " (no header)"));
  }
  run->seconds = Seconds(t1 - t0);
  run->upload_seconds = Seconds(t_sent - t0);
  run->wait_seconds = Seconds(t_header - t_sent);
  run->download_seconds = Seconds(t1 - t_header);
  return absl::OkStatus();
}

// The in-process peer: the same factors (read back from the server), decomposed with
// LAPACKE_dsyevd after a copy (the factors must be kept, as the server keeps them), and
// the step's four products per block with cblas_dgemm (or, float32, cblas_sgemm).
class KfacPeer {
 public:
  struct Block {
    Layer layer;
    int64_t offset = 0;                   // in the parameter vector
    std::vector<double> f_a, f_g;         // factors (n x n, symmetric)
    std::vector<double> u_a, u_g;         // eigenvectors, column-major
    std::vector<double> s_a, s_g;         // eigenvalues
    std::vector<double> v, n;             // gradient and answer, out x na column-major
    std::vector<float> u_a_f32, u_g_f32;  // float32: the eigenvectors rounded
  };

  KfacPeer(double damping, bool float32) : damping_(damping), float32_(float32) {}

  std::vector<Block>& blocks() { return blocks_; }

  void Prepare(const std::vector<double>& gradient) {
    int64_t largest = 0;
    for (Block& b : blocks_) {
      const int64_t out = b.layer.out, na = b.layer.na(), in = b.layer.in;
      b.u_a.assign(b.f_a.size(), 0.0);
      b.u_g.assign(b.f_g.size(), 0.0);
      b.s_a.assign(static_cast<size_t>(na), 0.0);
      b.s_g.assign(static_cast<size_t>(out), 0.0);
      b.v.assign(static_cast<size_t>(out * na), 0.0);
      b.n.assign(static_cast<size_t>(out * na), 0.0);
      // V = [grad W | grad b]: the weights row-major out x in, then the biases.
      for (int64_t i = 0; i < out; ++i) {
        for (int64_t j = 0; j < in; ++j) b.v[j * out + i] = gradient[b.offset + i * in + j];
        if (b.layer.bias) b.v[in * out + i] = gradient[b.offset + out * in + i];
      }
      largest = std::max(largest, out * na);
    }
    half_.assign(static_cast<size_t>(largest), 0.0);
    if (float32_) {
      v_f32_.assign(static_cast<size_t>(largest), 0.0f);
      half_f32_.assign(static_cast<size_t>(largest), 0.0f);
    }
  }

  // Copy and dsyevd of every factor; returns false if LAPACK failed.
  bool Decompose() {
    for (Block& b : blocks_) {
      for (int side = 0; side < 2; ++side) {
        const std::vector<double>& f = side ? b.f_g : b.f_a;
        std::vector<double>& u = side ? b.u_g : b.u_a;
        std::vector<double>& s = side ? b.s_g : b.s_a;
        const lapack_int n = static_cast<lapack_int>(s.size());
        std::memcpy(u.data(), f.data(), f.size() * sizeof(double));
        if (LAPACKE_dsyevd(LAPACK_COL_MAJOR, 'V', 'U', n, u.data(), n, s.data()) != 0) {
          return false;
        }
        if (float32_) {
          std::vector<float>& rounded = side ? b.u_g_f32 : b.u_a_f32;
          rounded.assign(u.begin(), u.end());
        }
      }
    }
    return true;
  }

  // n = U_G [(U_G^T V U_A) ./ (s_G s_A^T + lambda)] U_A^T for every block.
  void Products() {
    if (float32_) {
      ProductsFloat32();
      return;
    }
    for (Block& b : blocks_) {
      const int out = static_cast<int>(b.layer.out), na = static_cast<int>(b.layer.na());
      double* half = half_.data();
      cblas_dgemm(CblasColMajor, CblasTrans, CblasNoTrans, out, na, out, 1.0, b.u_g.data(), out,
                  b.v.data(), out, 0.0, half, out);
      cblas_dgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, out, na, na, 1.0, half, out,
                  b.u_a.data(), na, 0.0, b.n.data(), out);
      for (int j = 0; j < na; ++j) {
        double* column = b.n.data() + static_cast<size_t>(j) * out;
        const double sa = b.s_a[j];
        for (int i = 0; i < out; ++i) column[i] /= b.s_g[i] * sa + damping_;
      }
      cblas_dgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, out, na, out, 1.0, b.u_g.data(), out,
                  b.n.data(), out, 0.0, half, out);
      cblas_dgemm(CblasColMajor, CblasNoTrans, CblasTrans, out, na, na, 1.0, half, out,
                  b.u_a.data(), na, 0.0, b.n.data(), out);
    }
  }

  // The same in float32: V rounded in, four sgemm, the division, N widened out.
  void ProductsFloat32() {
    for (Block& b : blocks_) {
      const int out = static_cast<int>(b.layer.out), na = static_cast<int>(b.layer.na());
      const size_t size = static_cast<size_t>(out) * na;
      float* v = v_f32_.data();
      float* half = half_f32_.data();
      for (size_t k = 0; k < size; ++k) v[k] = static_cast<float>(b.v[k]);
      cblas_sgemm(CblasColMajor, CblasTrans, CblasNoTrans, out, na, out, 1.0f, b.u_g_f32.data(),
                  out, v, out, 0.0f, half, out);
      cblas_sgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, out, na, na, 1.0f, half, out,
                  b.u_a_f32.data(), na, 0.0f, v, out);
      for (int j = 0; j < na; ++j) {
        float* column = v + static_cast<size_t>(j) * out;
        const double sa = b.s_a[j];
        for (int i = 0; i < out; ++i) {
          column[i] = static_cast<float>(column[i] / (b.s_g[i] * sa + damping_));
        }
      }
      cblas_sgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, out, na, out, 1.0f, b.u_g_f32.data(),
                  out, v, out, 0.0f, half, out);
      cblas_sgemm(CblasColMajor, CblasNoTrans, CblasTrans, out, na, na, 1.0f, half, out,
                  b.u_a_f32.data(), na, 0.0f, v, out);
      for (size_t k = 0; k < size; ++k) b.n[k] = v[k];
    }
  }

  // ||fisherd's n - the peer's|| / ||the peer's||, in parameter order.
  double Disagreement(const std::vector<double>& natural_gradient) const {
    double diff = 0.0, norm = 0.0;
    for (const Block& b : blocks_) {
      const int64_t out = b.layer.out, in = b.layer.in;
      for (int64_t i = 0; i < out; ++i) {
        for (int64_t j = 0; j < b.layer.na(); ++j) {
          const int64_t p = j < in ? b.offset + i * in + j : b.offset + out * in + i;
          const double ours = b.n[j * out + i];
          diff += (natural_gradient[p] - ours) * (natural_gradient[p] - ours);
          norm += ours * ours;
        }
      }
    }
    return std::sqrt(diff / norm);
  }

 private:
  const double damping_;
  const bool float32_;
  std::vector<Block> blocks_;
  std::vector<double> half_;
  std::vector<float> v_f32_, half_f32_;  // float32's scratch
};

int RunKfacStep(const Config& config) {
  auto stub = FisherService::NewStub(MakeChannel(config));
  std::vector<Layer> layers =
      config.layout == "mlp" ? Mlp(config.width_divisor) : ResNet18(config.width_divisor);
  if (!config.only_blocks.empty()) {
    const std::string wanted = "," + config.only_blocks + ",";
    layers.erase(std::remove_if(layers.begin(), layers.end(),
                                [&](const Layer& layer) {
                                  return wanted.find("," + layer.name + ",") == std::string::npos;
                                }),
                 layers.end());
    if (layers.empty()) {
      std::cerr << "fisherd-layered-bench: --only-blocks names no block of the layout\n";
      return 2;
    }
  }
  int64_t rss_idle_kb = 0, hwm_idle_kb = 0;
  if (config.server_pid > 0) ReadMemory(config.server_pid, &rss_idle_kb, &hwm_idle_kb);

  int64_t dim = 0, expected = 0, factors = 0, largest = 0;
  double factor_bytes = 0.0;
  for (const Layer& layer : layers) {
    expected += layer.parameters();
    factors += 2;
    largest = std::max({largest, layer.na(), layer.out});
    factor_bytes += 2.0 * 8.0 * (double(layer.na()) * layer.na() + double(layer.out) * layer.out);
  }
  const auto t_create = Clock::now();
  if (absl::Status s = CreateLayeredSession(stub.get(), config, layers, &dim); !s.ok()) {
    std::cerr << "fisherd-layered-bench: " << s << "\n";
    return 1;
  }
  const std::string session = "sessions/" + config.session_id;
  absl::Status status;
  if (dim != expected) {
    status =
        absl::InternalError(absl::StrCat("the session's dim is ", dim, ", expected ", expected));
  }
  std::printf(
      "%s layout: %zu Kronecker blocks, %lld parameters, %lld factors, largest "
      "factor %lld; factors + eigenvectors %.0f MiB; %s products\n",
      config.layout.c_str(), layers.size(), static_cast<long long>(dim),
      static_cast<long long>(factors), static_cast<long long>(largest), factor_bytes / (1 << 20),
      config.float32_products ? "float32" : "float64");

  // Fill: fill x n rows into every factor (activations: in values a row; the server
  // appends the bias's 1).
  std::vector<RowJob> jobs;
  uint64_t seed = 1;
  for (const Layer& layer : layers) {
    jobs.push_back({layer.name, fisherd::v1::FACTOR_ACTIVATIONS, layer.in,
                    static_cast<int64_t>(std::ceil(config.fill * layer.na())), seed++});
    jobs.push_back({layer.name, fisherd::v1::FACTOR_OUTPUT_GRADIENTS, layer.out,
                    static_cast<int64_t>(std::ceil(config.fill * layer.out)), seed++});
  }
  int64_t fill_rows = 0;
  for (const RowJob& job : jobs) fill_rows += job.rows;
  if (status.ok()) status = StreamRows(stub.get(), session, jobs, config.batch);
  const double fill_seconds = Seconds(Clock::now() - t_create);
  if (status.ok()) {
    std::printf("  filled %lld rows in %.1f s\n", static_cast<long long>(fill_rows), fill_seconds);
  }

  // The peer's copy of the same factors, and the gradient.
  KfacPeer peer(config.damping, config.float32_products);
  std::vector<double> gradient(static_cast<size_t>(dim));
  {
    std::mt19937_64 rng(5);
    std::normal_distribution<double> normal;
    for (double& g : gradient) g = normal(rng);
  }
  if (status.ok()) {
    const auto t0 = Clock::now();
    int64_t offset = 0;
    for (const Layer& layer : layers) {
      KfacPeer::Block block;
      block.layer = layer;
      block.offset = offset;
      offset += layer.parameters();
      status = ReadFactor(stub.get(), session, layer.name, fisherd::v1::FACTOR_ACTIVATIONS,
                          layer.na(), &block.f_a);
      if (status.ok()) {
        status = ReadFactor(stub.get(), session, layer.name, fisherd::v1::FACTOR_OUTPUT_GRADIENTS,
                            layer.out, &block.f_g);
      }
      if (!status.ok()) break;
      peer.blocks().push_back(std::move(block));
    }
    if (status.ok()) {
      peer.Prepare(gradient);
      std::printf("  read the factors back for the peer in %.1f s\n", Seconds(Clock::now() - t0));
    }
  }

  std::vector<double> fresh, fresh_server, peer_fresh, peer_dsyevd, fresh_ratio;
  std::vector<double> cached, cached_server, peer_products, cached_ratio;
  std::vector<double> cached_upload, cached_wait, cached_download;
  double disagreement_fresh = -1.0, disagreement_cached = -1.0, residual = 0.0;
  std::vector<double> natural_gradient;
  for (int64_t r = 0; r < config.repeats && status.ok(); ++r) {
    if (r > 0) {
      // New rows for every factor: every block must decompose both factors again.
      std::vector<RowJob> more;
      for (const Layer& layer : layers) {
        more.push_back(
            {layer.name, fisherd::v1::FACTOR_ACTIVATIONS, layer.in, config.new_rows, seed++});
        more.push_back(
            {layer.name, fisherd::v1::FACTOR_OUTPUT_GRADIENTS, layer.out, config.new_rows, seed++});
      }
      status = StreamRows(stub.get(), session, more, config.batch);
      if (!status.ok()) break;
    }
    // fisherd and the peer back to back, in alternating order, so that a drift of the
    // machine does not always favour the one that runs first.
    StepRun run;
    double peer_seconds = 0.0, dsyevd_seconds = 0.0;
    auto peer_fresh_run = [&]() -> absl::Status {
      const auto p0 = Clock::now();
      if (!peer.Decompose()) return absl::InternalError("the peer's dsyevd failed");
      const auto p1 = Clock::now();
      peer.Products();
      const auto p2 = Clock::now();
      peer_seconds = Seconds(p2 - p0);
      dsyevd_seconds = Seconds(p1 - p0);
      return absl::OkStatus();
    };
    if (r % 2 == 1) status = peer_fresh_run();
    if (status.ok())
      status = StreamStep(stub.get(), config, session, gradient, &natural_gradient, &run);
    if (status.ok() && r % 2 == 0) status = peer_fresh_run();
    if (!status.ok()) break;
    if (run.fresh_blocks != static_cast<int64_t>(layers.size())) {
      status = absl::InternalError(absl::StrCat("after new rows only ", run.fresh_blocks, " of ",
                                                layers.size(), " blocks decomposed again"));
      break;
    }
    residual = std::max(residual, run.residual);
    if (r == 0) disagreement_fresh = peer.Disagreement(natural_gradient);
    fresh.push_back(run.seconds);
    fresh_server.push_back(run.server_seconds);
    peer_fresh.push_back(peer_seconds);
    peer_dsyevd.push_back(dsyevd_seconds);
    fresh_ratio.push_back(run.seconds / peer_seconds);
    std::printf(
        "  repeat %lld fresh: fisherd %.3f s (server solve %.3f s), peer %.3f s "
        "(dsyevd %.3f s), ratio %.3f\n",
        static_cast<long long>(r) + 1, run.seconds, run.server_seconds, peer_seconds,
        dsyevd_seconds, fresh_ratio.back());
    std::fflush(stdout);

    for (int64_t c = 0; c < config.cached_repeats && status.ok(); ++c) {
      StepRun again;
      double products_seconds = 0.0;
      auto peer_cached_run = [&] {
        const auto q0 = Clock::now();
        peer.Products();
        products_seconds = Seconds(Clock::now() - q0);
      };
      const bool peer_first = (r + c) % 2 == 1;
      if (peer_first) peer_cached_run();
      status = StreamStep(stub.get(), config, session, gradient, &natural_gradient, &again);
      if (!status.ok()) break;
      if (again.fresh_blocks != 0) {
        status = absl::InternalError(
            absl::StrCat("without new rows ", again.fresh_blocks, " blocks decomposed again"));
        break;
      }
      if (!peer_first) peer_cached_run();
      if (r == 0 && c == 0) disagreement_cached = peer.Disagreement(natural_gradient);
      cached.push_back(again.seconds);
      cached_server.push_back(again.server_seconds);
      cached_upload.push_back(again.upload_seconds);
      cached_wait.push_back(again.wait_seconds);
      cached_download.push_back(again.download_seconds);
      peer_products.push_back(products_seconds);
      cached_ratio.push_back(again.seconds / products_seconds);
      std::printf(
          "  repeat %lld cached %lld: fisherd %.3f s (server solve %.3f s), peer %.3f s, "
          "ratio %.3f\n",
          static_cast<long long>(r) + 1, static_cast<long long>(c) + 1, again.seconds,
          again.server_seconds, products_seconds, cached_ratio.back());
      std::fflush(stdout);
    }
  }
  int64_t rss_kb = 0, hwm_kb = 0;
  if (config.server_pid > 0) ReadMemory(config.server_pid, &rss_kb, &hwm_kb);
  if (config.delete_session) DeleteSession(stub.get(), session);
  if (!status.ok() || fresh.empty()) {
    std::cerr << "fisherd-layered-bench: " << status << "\n";
    return 1;
  }

  const double memory_ratio = rss_kb * 1024.0 / factor_bytes;
  const char* gemm = config.float32_products ? "sgemm" : "dgemm";
  std::printf(
      "%s step, %s products, %lld repeats (%lld cached steps each), medians; peer with %d "
      "threads\n",
      config.layout.c_str(), config.float32_products ? "float32" : "float64",
      static_cast<long long>(config.repeats), static_cast<long long>(config.cached_repeats),
      openblas_get_num_threads());
  std::printf("  %-44s %10s %10s %10s %8s\n", "", "client s", "server s", "peer s", "ratio");
  std::printf("  %-44s %10.3f %10.3f %10.3f %8.3f\n",
              absl::StrCat("fresh factors (dsyevd + 4 ", gemm, ")").c_str(), Median(fresh),
              Median(fresh_server), Median(peer_fresh), Median(fresh_ratio));
  std::printf("  %-44s %10s %10s %10.3f\n", "  of which the peer's dsyevd", "", "",
              Median(peer_dsyevd));
  std::printf("  %-44s %10.3f %10.3f %10.3f %8.3f\n",
              absl::StrCat("cached factors (4 ", gemm, ")").c_str(), Median(cached),
              Median(cached_server), Median(peer_products), Median(cached_ratio));
  std::printf(
      "  cached step, client's view: sending the gradient %.3f s, waiting for the "
      "header %.3f s, receiving the answer %.3f s\n",
      Median(cached_upload), Median(cached_wait), Median(cached_download));
  std::printf("  agreement with the peer (relative): fresh %.2e, cached %.2e; residual %.2e\n",
              disagreement_fresh, disagreement_cached, residual);
  if (config.server_pid > 0) {
    std::printf(
        "  server memory: idle %.0f MiB, after %.0f MiB, peak %.0f MiB; factors + "
        "eigenvectors %.0f MiB; ratio %.3f\n",
        rss_idle_kb / 1024.0, rss_kb / 1024.0, hwm_kb / 1024.0, factor_bytes / (1 << 20),
        memory_ratio);
  }
  std::printf(
      "{\"mode\":\"kfac-step\",\"layout\":\"%s\",\"float32_products\":%s,\"parameters\":%lld,"
      "\"blocks\":%zu,\"factors\":%lld,"
      "\"largest_factor\":%lld,\"width_divisor\":%lld,\"fill\":%.3f,\"fill_rows\":%lld,"
      "\"fill_seconds\":%.3f,\"new_rows\":%lld,\"repeats\":%lld,\"cached_repeats\":%lld,"
      "\"threads\":%d,\"step_seconds\":%.6f,\"step_server_seconds\":%.6f,"
      "\"peer_fresh_seconds\":%.6f,\"peer_dsyevd_seconds\":%.6f,\"fresh_ratio\":%.4f,"
      "\"cached_step_seconds\":%.6f,\"cached_step_server_seconds\":%.6f,"
      "\"peer_products_seconds\":%.6f,\"cached_ratio\":%.4f,\"cached_upload_seconds\":%.6f,"
      "\"cached_wait_seconds\":%.6f,\"cached_download_seconds\":%.6f,\"disagreement_fresh\":%.3g,"
      "\"disagreement_cached\":%.3g,\"residual\":%.3g,\"factor_bytes\":%.0f,"
      "\"rss_idle_kb\":%lld,\"rss_kb\":%lld,\"hwm_kb\":%lld,\"memory_ratio\":%.4f,"
      "\"fresh_runs\":%s,\"peer_fresh_runs\":%s,\"cached_runs\":%s,\"peer_products_runs\":%s}\n",
      config.layout.c_str(), config.float32_products ? "true" : "false",
      static_cast<long long>(dim), layers.size(), static_cast<long long>(factors),
      static_cast<long long>(largest), static_cast<long long>(config.width_divisor), config.fill,
      static_cast<long long>(fill_rows), fill_seconds, static_cast<long long>(config.new_rows),
      static_cast<long long>(config.repeats), static_cast<long long>(config.cached_repeats),
      openblas_get_num_threads(), Median(fresh), Median(fresh_server), Median(peer_fresh),
      Median(peer_dsyevd), Median(fresh_ratio), Median(cached), Median(cached_server),
      Median(peer_products), Median(cached_ratio), Median(cached_upload), Median(cached_wait),
      Median(cached_download), disagreement_fresh, disagreement_cached, residual, factor_bytes,
      static_cast<long long>(rss_idle_kb), static_cast<long long>(rss_kb),
      static_cast<long long>(hwm_kb), config.server_pid > 0 ? memory_ratio : 0.0,
      JsonArray(fresh).c_str(), JsonArray(peer_fresh).c_str(), JsonArray(cached).c_str(),
      JsonArray(peer_products).c_str());
  return 0;
}

// --- flags -----------------------------------------------------------------------------

const char kDescription[] =
    "Layered sessions (Kronecker blocks) against in-process OpenBLAS / LAPACK doing the same\n"
    "arithmetic, in the same run. --mode=kronecker-ingest: --dim, --batch, --seconds,\n"
    "--repeats, --warmup-seconds, --in-flight. --mode=kfac-step: --layout, --repeats,\n"
    "--cached-repeats, --fill, --new-rows, --server-pid, --width-divisor, --chunk-values,\n"
    "--batch, --only-blocks, --float32-products (--mode=resnet18-step: --layout=resnet18).\n"
    "Both: --threads, --damping, --session, --delete-session.";

// The flags on *flags, bound to *config. REQUIRES: config outlives flags.
void DefineFlags(Config* config, fisherd::common::FlagSet* flags) {
  constexpr int64_t kMost = std::numeric_limits<int64_t>::max();
  flags->AddString("target", &config->target, "HOST:PORT of the server");
  flags->AddString("mode", &config->mode, "kronecker-ingest or kfac-step (or resnet18-step)");
  flags->AddString("layout", &config->layout, "kfac-step: resnet18 (default) or mlp");
  flags->AddString("session", &config->session_id, "session id (default: unique)");
  flags->AddString("only-blocks", &config->only_blocks,
                   "resnet18-step: only these blocks of the layout, NAME,NAME (for profiles)");
  flags->AddInt("dim", &config->dim, 1, kMost, "kronecker-ingest: in = out");
  flags->AddInt("batch", &config->batch, 1, kMost, "rows per ScoreBatch (ingest and fills)");
  flags->AddInt("in-flight", &config->in_flight, 1, kMost, "unacknowledged batches");
  flags->AddInt("repeats", &config->repeats, 1, kMost, "repeats");
  flags->AddInt("cached-repeats", &config->cached_repeats, 0, kMost,
                "resnet18-step: cached steps per repeat");
  flags->AddInt("new-rows", &config->new_rows, 1, kMost,
                "resnet18-step: rows added to every factor per repeat");
  flags->AddInt("width-divisor", &config->width_divisor, 1, kMost,
                "divides every channel count (and fc's 1000): a tiny layout, same structure");
  flags->AddInt("chunk-values", &config->chunk_values, 1, kMost,
                "doubles per request message of the gradient");
  flags->AddInt("server-pid", &config->server_pid, 0, kMost,
                "read the server's memory from /proc/PID/status (0: do not)");
  flags->AddInt("threads", &config->threads, 1, kMost, "the peer's OpenBLAS threads");
  flags->AddDouble("seconds", &config->seconds, 1e-9, 1e9, "measured time per repeat");
  flags->AddDouble("warmup-seconds", &config->warmup_seconds, 0, 1e9, "untimed start");
  flags->AddDouble("fill", &config->fill, 1e-9, 1e9,
                   "resnet18-step: rows per factor first, in units of its dim");
  flags->AddDouble("damping", &config->damping, 0, 1e300, "damping of the session");
  flags->AddBool("delete-session", &config->delete_session, "delete the session at the end");
  flags->AddBool("float32-products", &config->float32_products,
                 "kfac-step: the session's float32_products; the peer uses sgemm");
  flags->AddStringCheck("layout", [](absl::string_view layout) {
    if (layout == "resnet18" || layout == "mlp") return absl::OkStatus();
    return absl::InvalidArgumentError(
        absl::StrCat("--layout=", layout, ": must be resnet18 or mlp"));
  });
  flags->AddStringCheck("mode", [](absl::string_view mode) {
    if (mode == "kronecker-ingest" || mode == "kfac-step" || mode == "resnet18-step") {
      return absl::OkStatus();
    }
    return absl::InvalidArgumentError(
        absl::StrCat("--mode=", mode, ": must be kronecker-ingest, kfac-step or resnet18-step"));
  });
}

}  // namespace

int main(int argc, char** argv) {
  Config config;
  fisherd::common::FlagSet flags("fisherd-layered-bench", kDescription);
  DefineFlags(&config, &flags);
  bool help = false;
  absl::Status status = flags.Parse(argc, argv, &help);
  if (help) {
    std::cout << flags.Help();
    return 0;
  }
  if (status.ok() && config.mode.empty()) status = absl::InvalidArgumentError("--mode is required");
  if (!status.ok()) {
    std::cerr << "fisherd-layered-bench: " << status.message()
              << "\n(run fisherd-layered-bench --help)\n";
    return 2;
  }
  if (config.session_id.empty()) {
    config.session_id =
        absl::StrCat("layered-bench-", getpid(), "-",
                     std::chrono::system_clock::now().time_since_epoch().count() % 1000000007);
  }
  openblas_set_num_threads(static_cast<int>(config.threads));
  if (config.mode == "kronecker-ingest") return RunKroneckerIngest(config);
  if (config.mode == "resnet18-step") {
    if (flags.Given("layout") && config.layout != "resnet18") {
      std::cerr << "fisherd-layered-bench: --mode=resnet18-step takes no --layout=" << config.layout
                << " (use --mode=kfac-step)\n";
      return 2;
    }
    config.layout = "resnet18";
  }
  return RunKfacStep(config);
}
