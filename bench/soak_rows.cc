#include "bench/soak_rows.h"

#include "client/score_encoding.h"
#include "client/session_name.h"

namespace fisherd::soak {
namespace v1 = ::fisherd::v1;
namespace {

uint64_t SplitMix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// A stable hash of the worker id (absl::Hash is salted per process; the child process
// must produce the same rows as the parent's oracle).
uint64_t StableHash(absl::string_view s) {
  uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ULL;
  return h;
}

}  // namespace

std::vector<SessionSpec> CheckedSessions() {
  std::vector<SessionSpec> sessions(3);
  sessions[0].id = "soak-dense";
  sessions[0].kind = SessionKind::kDense;
  sessions[0].config.set_dim(64);
  sessions[0].config.set_representation(v1::REPRESENTATION_DENSE);
  sessions[0].config.set_damping(1e-3);
  sessions[0].dim = 64;

  sessions[1].id = "soak-diagonal";
  sessions[1].kind = SessionKind::kDiagonal;
  sessions[1].config.set_dim(256);
  sessions[1].config.set_representation(v1::REPRESENTATION_DIAGONAL);
  sessions[1].config.set_damping(1e-3);
  sessions[1].dim = 256;

  sessions[2].id = "soak-layered";
  sessions[2].kind = SessionKind::kLayered;
  sessions[2].config.set_damping(1e-3);
  v1::BlockConfig* fc = sessions[2].config.add_blocks();
  fc->set_name("fc");
  fc->set_kind(v1::BLOCK_KIND_KRONECKER);
  fc->set_in_features(16);
  fc->set_out_features(8);
  fc->set_bias(true);
  v1::BlockConfig* d = sessions[2].config.add_blocks();
  d->set_name("d");
  d->set_kind(v1::BLOCK_KIND_DENSE);
  d->set_dim(32);
  v1::BlockConfig* g = sessions[2].config.add_blocks();
  g->set_name("g");
  g->set_kind(v1::BLOCK_KIND_DIAGONAL);
  g->set_dim(64);
  sessions[2].dim = 8 * 17 + 32 + 64;
  return sessions;
}

SessionSpec ChurnSession(const std::string& id) {
  SessionSpec s;
  s.id = id;
  s.kind = SessionKind::kDense;
  s.config.set_dim(32);
  s.config.set_representation(v1::REPRESENTATION_DENSE);
  s.config.set_decay(0.99);
  s.config.set_damping(1e-2);
  s.dim = 32;
  return s;
}

int TargetCount(const SessionSpec& session) {
  return session.kind == SessionKind::kLayered ? 4 : 1;
}

Target TargetFor(const SessionSpec& session, uint64_t sequence) {
  if (session.kind != SessionKind::kLayered)
    return Target{"", v1::FACTOR_UNSPECIFIED, session.dim, 0};
  switch (sequence % 4) {
    case 0:
      return Target{"fc", v1::FACTOR_ACTIVATIONS, 16, 0};
    case 1:
      return Target{"fc", v1::FACTOR_OUTPUT_GRADIENTS, 8, 1};
    case 2:
      return Target{"d", v1::FACTOR_UNSPECIFIED, 32, 2};
    default:
      return Target{"g", v1::FACTOR_UNSPECIFIED, 64, 3};
  }
}

Rows MakeRows(absl::string_view worker_id, uint64_t sequence, uint64_t width) {
  Rows rows;
  rows.scores.resize(kRowsPerBatch * width);
  rows.weights.resize(kRowsPerBatch);
  uint64_t state = SplitMix(StableHash(worker_id) ^ SplitMix(sequence));
  for (int r = 0; r < kRowsPerBatch; ++r) {
    state = SplitMix(state);
    static constexpr float kWeights[3] = {0.5f, 1.0f, 2.0f};
    rows.weights[r] = kWeights[state % 3];
    for (uint64_t c = 0; c < width; ++c) {
      state = SplitMix(state);
      rows.scores[r * width + c] = 0.25f * static_cast<float>(static_cast<int>(state % 17) - 8);
    }
  }
  return rows;
}

void Sums::Add(const Rows& r, uint64_t width) {
  for (size_t i = 0; i < r.weights.size(); ++i) {
    const double w = r.weights[i];
    double sq = 0.0;
    for (uint64_t c = 0; c < width; ++c) {
      const double s = r.scores[i * width + c];
      sq += s * s;
    }
    ++rows;
    weight += w;
    weighted_sq += w * sq;
  }
}

v1::ScoreBatch MakeBatch(const SessionSpec& session, absl::string_view worker_id,
                         uint64_t sequence) {
  const Target target = TargetFor(session, sequence);
  const Rows rows = MakeRows(worker_id, sequence, target.width);
  v1::ScoreBatch batch = client::MakeScoreBatch(client::SessionName(session.id), worker_id,
                                                sequence, rows.scores, rows.weights, target.width);
  batch.set_block(target.block);
  batch.set_factor(target.factor);
  return batch;
}

}  // namespace fisherd::soak
