// fisherd-soak: the sessions it checks and the score rows it sends to them.
//
// Every batch's rows are a pure function of (worker_id, sequence): values on a 1/4 grid
// in [-2, 2] and weights in {0.5, 1, 2}, so that every sum the server keeps of them
// (W = sum w, sum w s_i^2) is exact in float64 whatever the order of summation. The
// exactly-once check can then rebuild what the server must hold from the worker ids and
// the highest sequence the server applied for each, without keeping any rows, even for
// the rows a killed child process sent.
#ifndef FISHERD_BENCH_SOAK_ROWS_H_
#define FISHERD_BENCH_SOAK_ROWS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "fisherd/v1/fisher.pb.h"

namespace fisherd::soak {

inline constexpr int kRowsPerBatch = 8;

enum class SessionKind { kDense, kDiagonal, kLayered };

// A session the soak creates: its id, kind and configuration.
struct SessionSpec {
  std::string id;
  SessionKind kind = SessionKind::kDense;
  fisherd::v1::SessionConfig config;
  uint64_t dim = 0;  // the parameter count (gradient length)
};

// The checked sessions: dense (dim 64), diagonal (dim 256) and layered (a Kronecker
// block fc 16 -> 8 with bias, a dense block d of 32 and a diagonal block g of 64).
// Decay 1, so nothing a step does changes the sums.
std::vector<SessionSpec> CheckedSessions();
// A short-lived session for churn: dense, dim 32, decay 0.99.
SessionSpec ChurnSession(const std::string& id);

// Where the batch with this sequence goes: a non-layered session's only target, or one
// of the layered session's four (fc activations, fc output gradients, d, g), by sequence.
struct Target {
  std::string block;
  fisherd::v1::Factor factor = fisherd::v1::FACTOR_UNSPECIFIED;
  uint64_t width = 0;
  int index = 0;  // 0 for a non-layered session, else 0..3 as listed above
};
Target TargetFor(const SessionSpec& session, uint64_t sequence);
int TargetCount(const SessionSpec& session);

struct Rows {
  std::vector<float> scores;   // kRowsPerBatch x width, row-major
  std::vector<float> weights;  // kRowsPerBatch
};
Rows MakeRows(absl::string_view worker_id, uint64_t sequence, uint64_t width);

// What a set of batches adds to one target's sums.
struct Sums {
  uint64_t rows = 0;
  double weight = 0.0;       // sum w
  double weighted_sq = 0.0;  // sum w |s|^2
  void Add(const Rows& rows, uint64_t width);
};

// The ScoreBatch for (worker_id, sequence) on `session`, as AddScores sends it.
fisherd::v1::ScoreBatch MakeBatch(const SessionSpec& session, absl::string_view worker_id,
                                  uint64_t sequence);

}  // namespace fisherd::soak

#endif  // FISHERD_BENCH_SOAK_ROWS_H_
