// Writes the seed corpora of the fuzz targets with the project's own encoders (protobuf
// messages, storage/record_format.h frames, server/snapshot_file.h snapshots), so the
// seeds follow format changes: rerun it after changing a format, then commit
// fuzz/corpus/ (README "Fuzzing"):
//   fuzz_write_seeds fuzz/corpus
// It replaces the files named seed-* in corpus/<target>/ and leaves every other file
// (regression inputs, named regress-*) alone.
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <string>
#include <vector>

#include "core/session.h"
#include "fisherd/durable/v1/records.pb.h"
#include "fisherd/v1/fisher.pb.h"
#include "fuzz/fuzz_util.h"
#include "fuzz/layouts.h"
#include "server/batch_decoder.h"
#include "server/conversions.h"
#include "server/snapshot_file.h"
#include "storage/record_format.h"

namespace {

namespace v1 = fisherd::v1;
namespace dv1 = fisherd::durable::v1;
using fisherd::fuzz::AppendSection;
using fisherd::fuzz::FuzzLayouts;

std::string g_root;
int g_written = 0;

void Seed(const std::string& target, const std::string& name, const std::string& bytes) {
  const std::string dir = g_root + "/" + target;
  std::filesystem::create_directories(dir);
  fisherd::fuzz::WriteFileOrDie(dir + "/seed-" + name, bytes);
  ++g_written;
}

void RemoveOldSeeds(const std::string& target) {
  const std::string dir = g_root + "/" + target;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    if (entry.path().filename().string().rfind("seed-", 0) == 0) {
      std::filesystem::remove(entry.path(), ec);
    }
  }
}

// Bytes of the input formats' headers.
std::string B(std::initializer_list<int> bytes) {
  std::string out;
  for (int b : bytes) out.push_back(static_cast<char>(b));
  return out;
}

std::string LittleEndianF32(const std::vector<float>& values) {
  std::string out(values.size() * 4, '\0');
  for (size_t i = 0; i < values.size(); ++i) {
    uint32_t bits;
    std::memcpy(&bits, &values[i], 4);
    for (int b = 0; b < 4; ++b) out[4 * i + b] = static_cast<char>((bits >> (8 * b)) & 0xff);
  }
  return out;
}

std::vector<float> Values(int64_t n, float scale) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[i] = scale * static_cast<float>((i * 7) % 5 - 2) + 0.25f;
  return v;
}

// Batches that decode against `layout`: one per block and factor (or one for a session
// without blocks), alternating the two encodings, with weights and a worker.
std::vector<v1::ScoreBatch> GoodBatches(const fisherd::fuzz::FuzzLayout& layout,
                                        const std::string& session) {
  auto options = fisherd::server::SessionOptionsFromProto(layout.config);
  FUZZ_CHECK(options.ok());
  std::vector<std::pair<std::string, std::pair<v1::Factor, int64_t>>> parts;
  if (options->blocks.empty()) {
    parts.push_back({"", {v1::FACTOR_UNSPECIFIED, options->dim}});
  } else {
    for (const fisherd::BlockOptions& b : options->blocks) {
      if (b.kind == fisherd::BlockKind::kKronecker) {
        parts.push_back({b.name, {v1::FACTOR_ACTIVATIONS, b.in_features}});
        parts.push_back({b.name, {v1::FACTOR_OUTPUT_GRADIENTS, b.out_features}});
      } else {
        parts.push_back({b.name, {v1::FACTOR_UNSPECIFIED, b.dim}});
      }
    }
  }
  std::vector<v1::ScoreBatch> batches;
  uint64_t sequence = 1;
  for (size_t i = 0; i < parts.size(); ++i) {
    const int64_t width = parts[i].second.second;
    const int rows = 2 + static_cast<int>(i % 2);
    v1::ScoreBatch batch;
    batch.set_session(session);
    batch.set_worker_id(i % 2 == 0 ? "w1" : "");
    batch.set_sequence(sequence++);
    batch.set_rows(rows);
    const std::vector<float> values = Values(rows * width, 1.5f);
    if (i % 2 == 0) {
      batch.set_scores_f32(LittleEndianF32(values));
    } else {
      batch.mutable_scores()->Assign(values.begin(), values.end());
    }
    if (i % 3 == 1) {
      for (int r = 0; r < rows; ++r) batch.add_weights(0.5f + r);
    }
    batch.set_block(parts[i].first);
    batch.set_factor(parts[i].second.first);
    batches.push_back(batch);
  }
  return batches;
}

void ScoreBatchSeeds() {
  const auto layouts = FuzzLayouts();
  for (size_t l = 0; l < layouts.size(); ++l) {
    const auto batches = GoodBatches(layouts[l], "sessions/" + layouts[l].id);
    for (size_t i = 0; i < batches.size(); ++i) {
      std::string input;
      input.push_back(static_cast<char>(l));
      input.push_back(static_cast<char>(i * 5 + 1));  // kernel and step flags vary
      input += batches[i].SerializeAsString();
      Seed("score_batch", layouts[l].id + "-" + std::to_string(i), input);
    }
  }
  // Refusals: zero rows, a NaN score, a negative weight, both encodings, wrong size.
  v1::ScoreBatch bad;
  bad.set_rows(1);
  bad.set_scores_f32(LittleEndianF32({1, std::nanf(""), 2, 3}));
  Seed("score_batch", "nan", std::string("\0\0", 2) + bad.SerializeAsString());
  bad.clear_scores_f32();
  {
    const std::vector<float> v = {1, 2, 3, 4};
    bad.mutable_scores()->Assign(v.begin(), v.end());
  }
  bad.add_weights(-1);
  Seed("score_batch", "negative-weight", std::string("\0\0", 2) + bad.SerializeAsString());
  bad.clear_weights();
  bad.set_scores_f32(LittleEndianF32({1, 2, 3, 4}));
  Seed("score_batch", "both-encodings", std::string("\0\0", 2) + bad.SerializeAsString());
  bad.clear_scores();
  bad.set_rows(0);
  Seed("score_batch", "zero-rows", std::string("\0\0", 2) + bad.SerializeAsString());
  bad.set_rows(3);
  bad.set_block("fc");
  bad.set_factor(v1::FACTOR_ACTIVATIONS);
  Seed("score_batch", "wrong-size", std::string("\3\0", 2) + bad.SerializeAsString());
}

void Call(uint8_t rpc, const std::string& body, std::string* out) {
  out->push_back(static_cast<char>(rpc));
  AppendSection(body, out);
}

void ServiceSeeds() {
  // RPC numbers as in service_fuzzer.cc.
  enum { kCreate, kGet, kList, kDelete, kAdd, kStreamScores, kStep, kStreamStep, kFvp, kGetFisher };
  const auto layouts = FuzzLayouts();
  for (const auto& layout : layouts) {
    const std::string name = "sessions/" + layout.id;
    auto options = fisherd::server::SessionOptionsFromProto(layout.config);
    std::string input;
    const auto batches = GoodBatches(layout, name);
    Call(kAdd, batches[0].SerializeAsString(), &input);
    std::string stream;
    for (const auto& b : batches) AppendSection(b.SerializeAsString(), &stream);
    Call(kStreamScores, stream, &input);
    v1::NaturalGradientStepRequest step;
    step.set_session(name);
    for (int64_t i = 0; i < options->dim; ++i) step.add_gradient(0.1 * (i + 1));
    step.set_damping(0.01);
    step.set_kl_budget(0.001);
    Call(kStep, step.SerializeAsString(), &input);
    v1::FisherVectorProductRequest fvp;
    fvp.set_session(name);
    for (int64_t i = 0; i < options->dim; ++i) fvp.add_vector(1.0 - i);
    Call(kFvp, fvp.SerializeAsString(), &input);
    v1::GetFisherRequest get;
    get.set_session(name);
    get.set_include_matrix(true);
    get.set_include_eigenvalues(true);
    if (!layout.config.blocks().empty()) get.set_block(layout.config.blocks(0).name());
    Call(kGetFisher, get.SerializeAsString(), &input);
    Seed("service", layout.id + "-calls", input);

    // A streamed step: the header, then the gradient in two chunks (float64, float32).
    std::string chunks;
    v1::StreamNaturalGradientStepRequest first;
    first.mutable_header()->set_session(name);
    first.mutable_header()->set_learning_rate(0.5);
    const int64_t half = options->dim / 2;
    for (int64_t i = 0; i < half; ++i) first.add_gradient(0.2 * i - 0.1);
    AppendSection(first.SerializeAsString(), &chunks);
    v1::StreamNaturalGradientStepRequest second;
    second.set_offset(half);
    second.set_gradient_f32(LittleEndianF32(Values(options->dim - half, 0.3f)));
    AppendSection(second.SerializeAsString(), &chunks);
    std::string streamed;
    Call(kStreamStep, chunks, &streamed);
    Seed("service", layout.id + "-stream-step", streamed);
  }
  std::string crud;
  v1::CreateSessionRequest create;
  create.set_session_id("fresh");
  *create.mutable_config() = layouts[3].config;
  Call(kCreate, create.SerializeAsString(), &crud);
  v1::GetSessionRequest get;
  get.set_name("sessions/fresh");
  Call(kGet, get.SerializeAsString(), &crud);
  Call(kList, "", &crud);
  v1::DeleteSessionRequest del;
  del.set_name("sessions/dense");
  Call(kDelete, del.SerializeAsString(), &crud);
  Call(kGet, get.SerializeAsString(), &crud);
  create.set_session_id("diag2");
  create.mutable_config()->Clear();
  create.mutable_config()->set_dim(100);
  create.mutable_config()->set_representation(v1::REPRESENTATION_DIAGONAL);
  Call(kCreate, create.SerializeAsString(), &crud);
  Seed("service", "crud", crud);
}

std::string Args(const std::vector<std::string>& args, char mode) {
  std::string out(1, mode);
  for (size_t i = 0; i < args.size(); ++i) {
    if (i > 0) out.push_back('\0');
    out += args[i];
  }
  return out;
}

void FlagsSeeds() {
  Seed("flags", "server",
       Args({"--listen=127.0.0.1:0", "--max-sessions=3", "--memory-budget-mb=16",
             "--drain-seconds=0.5", "--data-dir=data", "--snapshot-interval-seconds=60"},
            0));
  Seed("flags", "server-help", Args({"--help"}, 0));
  Seed("flags", "server-bad", Args({"--max-message-mb=x", "positional", "--nope=1"}, 0));
  Seed("flags", "server-tls",
       Args({"--tls-cert=c.pem", "--tls-key=k.pem", "--health-listen=[::1]:8081",
             "--math-threads=2"},
            0));
  Seed("flags", "client",
       Args({"create", "sessions/x", "--dim=8", "--centered", "--decay=0.9",
             "--block=fc:kronecker:3x2+bias", "--block=emb:low_rank:16/4", "--target=localhost:1",
             "--token=secret", "--", "--not-a-flag"},
            1));
  Seed("flags", "client-tls",
       Args({"step", "--tls", "--tls-ca=ca.pem", "--tls-server-name=x", "--token-file=t",
             "--timeout-seconds=1e3", "--quiet=no"},
            1));
  Seed("flags", "layout",
       std::string(1, 2) +
           "# a layout\nfc:kronecker:784x128+bias\nnorm:diagonal:128\n"
           "\nhead:dense:10  # trailing comment\nemb:LOW_RANK:64/8\n");
}

void RecordFormatSeeds() {
  std::string file;
  fisherd::AppendRecord(1, 1, "first", &file);
  fisherd::AppendRecord(2, 2, std::string(40, 'x'), &file);
  fisherd::AppendRecord(3, 3, "", &file);
  Seed("record_format", "clean", std::string(1, 0) + file);
  Seed("record_format", "zeros", std::string(1, 1) + file + std::string(64, '\0'));
  std::string torn = file;
  fisherd::AppendRecord(4, 4, "torn away", &torn);
  torn.resize(torn.size() - 3);
  Seed("record_format", "torn", std::string(1, 3) + torn);
  std::string flipped = file;
  flipped[30] ^= 1;
  Seed("record_format", "flipped", std::string(1, 1) + flipped);
}

std::string Segment(uint64_t first_lsn, int records) {
  std::string file;
  for (int i = 0; i < records; ++i) {
    fisherd::AppendRecord(static_cast<uint8_t>(1 + i % 4), first_lsn + i,
                          "payload " + std::to_string(first_lsn + i), &file);
  }
  return file;
}

void JournalSeeds() {
  // [from_lsn][segments] then per segment [first LSN][flags][section].
  std::string one = B({0, 0, /*LSN 1*/ 0, 0});
  AppendSection(Segment(1, 3) + std::string(32, '\0'), &one);
  Seed("journal", "one-segment", one);
  std::string two = B({2, 1, /*LSN 1*/ 0, 0});
  AppendSection(Segment(1, 3), &two);
  two += B({/*LSN 4*/ 3, 0});
  AppendSection(Segment(4, 2), &two);
  Seed("journal", "two-segments", two);
  std::string torn = B({0, 1, /*LSN 1*/ 0, 1});
  std::string first = Segment(1, 3);
  first.resize(first.size() - 5);  // torn record 3, superseded by the next segment
  AppendSection(first, &torn);
  torn += B({/*LSN 3*/ 2, 0});
  AppendSection(Segment(3, 2), &torn);
  AppendSection("notes.txt", &torn);
  Seed("journal", "superseded-torn", torn);
}

// A snapshot of a session of each layout after its good batches, as the server writes it.
std::vector<std::pair<std::string, std::string>> Snapshots(uint64_t lsn, uint64_t incarnation) {
  std::vector<std::pair<std::string, std::string>> out;
  const std::string path = fisherd::fuzz::ScratchDir() + "/seed.snap";
  for (const auto& layout : FuzzLayouts()) {
    auto options = fisherd::server::SessionOptionsFromProto(layout.config);
    fisherd::Session session(*options);
    for (const auto& batch : GoodBatches(layout, "sessions/" + layout.id)) {
      auto prepared = fisherd::server::DecodeScoreBatch(batch, *options, session.layout());
      FUZZ_CHECK(prepared.ok());
      session.AddScores(batch.worker_id(), batch.sequence(), *prepared);
    }
    Eigen::VectorXd g = Eigen::VectorXd::Ones(options->dim);
    fisherd::StepOptions step;
    step.damping = 0.1;
    FUZZ_CHECK(session.Step(g, step).ok());
    absl::Status written;
    session.SaveState(
        [&](const fisherd::SessionCounters& counters, fisherd::ScoreStatistics& statistics) {
          fisherd::SessionCounters c = counters;
          c.lsn = lsn;
          written = fisherd::server::WriteSnapshot(path, layout.id, incarnation, layout.config, c,
                                                   statistics);
        });
    FUZZ_CHECK(written.ok());
    std::ifstream in(path, std::ios::binary);
    out.emplace_back(layout.id, std::string((std::istreambuf_iterator<char>(in)),
                                            std::istreambuf_iterator<char>()));
  }
  return out;
}

void SnapshotSeeds() {
  for (const auto& [id, file] : Snapshots(5, 1)) {
    Seed("snapshot", id, std::string(1, 0) + file);
  }
}

// A log as a durable server writes it: sessions created, batches, steps, a deletion.
std::string LogOf(const fisherd::fuzz::FuzzLayout& layout, const std::string& id, uint64_t* lsn,
                  bool delete_it) {
  std::string file;
  const uint64_t incarnation = *lsn;
  dv1::SessionCreated created;
  created.set_session_id(id);
  *created.mutable_config() = layout.config;
  fisherd::AppendRecord(dv1::LOG_RECORD_TYPE_SESSION_CREATED, (*lsn)++, created.SerializeAsString(),
                        &file);
  for (const auto& batch : GoodBatches(layout, "sessions/" + id)) {
    dv1::BatchApplied applied;
    *applied.mutable_batch() = batch;
    applied.set_incarnation(incarnation);
    fisherd::AppendRecord(dv1::LOG_RECORD_TYPE_BATCH_APPLIED, (*lsn)++, applied.SerializeAsString(),
                          &file);
  }
  dv1::StepApplied step;
  step.set_session_id(id);
  step.set_taken(true);
  step.set_decay(layout.config.decay() == 0 ? 1.0 : layout.config.decay());
  step.set_incarnation(incarnation);
  if (!layout.config.blocks().empty()) {
    dv1::FactorRefreshed* refresh = step.add_refreshes();
    refresh->set_block(0);
    refresh->set_factor(v1::FACTOR_ACTIVATIONS);
  }
  fisherd::AppendRecord(dv1::LOG_RECORD_TYPE_STEP_APPLIED, (*lsn)++, step.SerializeAsString(),
                        &file);
  if (delete_it) {
    dv1::SessionDeleted deleted;
    deleted.set_session_id(id);
    deleted.set_incarnation(incarnation);
    fisherd::AppendRecord(dv1::LOG_RECORD_TYPE_SESSION_DELETED, (*lsn)++,
                          deleted.SerializeAsString(), &file);
  }
  return file;
}

void DurableRecoverySeeds() {
  const auto layouts = FuzzLayouts();
  // [segments][snapshots], per segment [first LSN][flags][section],
  // per snapshot [session selector][LSN][flags][section]. Selectors: a, b, dense, layered.
  for (size_t l = 0; l < layouts.size(); ++l) {
    uint64_t lsn = 1;
    const std::string log = LogOf(layouts[l], "a", &lsn, /*delete_it=*/l % 2 == 1);
    std::string input = B({1, 0, /*LSN 1*/ 0, 0});
    AppendSection(log, &input);
    Seed("durable_recovery", "log-" + layouts[l].id, input);
  }
  // A snapshot of "dense" at LSN 5 (created at 1), and a log after it with another session.
  const auto snapshots = Snapshots(5, 1);
  uint64_t lsn = 6;
  std::string second = LogOf(layouts[3], "b", &lsn, false);
  // The segment with its creation was dropped once the snapshot covered it.
  std::string input = B({1, 1});
  input += B({/*LSN 6*/ 5, 0});
  AppendSection(second, &input);
  input += B({/*dense*/ 2, /*LSN*/ 5, 0});
  AppendSection(snapshots[0].second, &input);
  Seed("durable_recovery", "snapshot-and-log", input);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR (fuzz/corpus)\n", argv[0]);
    return 2;
  }
  g_root = argv[1];
  for (const char* target : {"score_batch", "service", "flags", "record_format", "journal",
                             "snapshot", "durable_recovery"}) {
    std::filesystem::create_directories(g_root + "/" + target);
    RemoveOldSeeds(target);
  }
  ScoreBatchSeeds();
  ServiceSeeds();
  FlagsSeeds();
  RecordFormatSeeds();
  JournalSeeds();
  SnapshotSeeds();
  DurableRecoverySeeds();
  fisherd::fuzz::RemoveContents(fisherd::fuzz::ScratchDir());
  rmdir(fisherd::fuzz::ScratchDir().c_str());
  std::printf("wrote %d seeds under %s\n", g_written, g_root.c_str());
  return 0;
}
