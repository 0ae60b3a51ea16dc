// Options for a fisherd session and for one natural-gradient step, in the manner of
// Ceres Solver: plain structs with documented in-class defaults and a Validate() that
// names the offending field. Nothing here allocates or touches statistics.
#ifndef FISHERD_CORE_OPTIONS_H_
#define FISHERD_CORE_OPTIONS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace fisherd {

enum class Representation {
  kDense,     // full dim x dim matrix M = sum w s s^T; O(dim^2) memory
  kDiagonal,  // diag(M) only; O(dim) memory
};

const char* RepresentationName(Representation representation);

// The structure of one block of a layered session (fisher.proto, BlockKind).
enum class BlockKind {
  kDense,      // dim x dim, as a dense session (its low-rank start included)
  kDiagonal,   // diag only, as a diagonal session
  kKronecker,  // G (x) A of a linear or convolution layer (core/kronecker_statistics.h)
  kLowRank,    // the latest max_rows rows, Woodbury steps (core/low_rank_statistics.h)
};

const char* BlockKindName(BlockKind kind);

// Which rows a batch carries: a block's own scores, or one factor of a Kronecker block.
enum class Factor {
  kNone,             // score rows of the block's dim
  kActivations,      // A's rows: in_features values (a 1 is appended when bias)
  kOutputGradients,  // G's rows: out_features values
};

const char* FactorName(Factor factor);

// How a Kronecker block is damped (fisher.proto, KroneckerDamping).
enum class KroneckerDamping {
  kExact,     // (G (x) A + lambda I)^-1, through both eigenbases
  kFactored,  // (G + sqrt(lambda)/pi I)^-1 V (A + pi sqrt(lambda) I)^-1
};

const char* KroneckerDampingName(KroneckerDamping damping);

// One block of a layered session (fisher.proto, BlockConfig).
struct BlockOptions {
  // Unique in the session, 1-128 characters of [a-zA-Z0-9_.-].
  std::string name;
  BlockKind kind = BlockKind::kDense;
  // kDense, kDiagonal, kLowRank: the block's parameters. REQUIRES: >= 1 there.
  int64_t dim = 0;
  // kKronecker: out x in weights (row-major), then out biases when bias.
  int64_t in_features = 0;
  int64_t out_features = 0;
  bool bias = false;
  // kLowRank: rows kept (a sliding window). REQUIRES: >= 1 there.
  int64_t max_rows = 0;

  // Parameters of the block: dim, or out_features * (in_features + bias).
  // REQUIRES: the sizes validated (no overflow).
  int64_t ParameterCount() const;
  // Values per score row that feed `factor`: dim for kNone, in_features or out_features
  // for a Kronecker block's factors; 0 when the factor does not belong to this kind.
  int64_t RowWidth(Factor factor) const;
  // Rows (= columns) of the matrix that rows of `factor` accumulate: RowWidth, plus one
  // for a Kronecker block's activations with bias (the appended 1).
  int64_t FactorDim(Factor factor) const;
};

struct SessionOptions {
  // Length of every score and gradient. REQUIRES: >= 1.
  int64_t dim = 0;

  Representation representation = Representation::kDense;

  // false: F = M / W, i.e. E[s s^T] (the Fisher at the model).
  // true:  F = M / W - (m / W)(m / W)^T, i.e. Cov[s].
  bool centered = false;

  // rho in (0, 1]: after each step taken without skip_decay, W, m and M are
  // multiplied by rho. 1 keeps the whole history.
  double decay = 1.0;

  // Default damping lambda >= 0 for steps: the solve uses F + lambda I.
  double damping = 0.0;

  // false: batch products in float64, exact up to summation round-off.
  // true: large batches of dense sessions, dense blocks and Kronecker factors use the
  // float32 kernel (DenseKernel::kAuto in core/score_batch.h): dense ingest measured 1.2x
  // faster at dim 1024 and 1.4x at dim 4096 (docs/performance.md), ~1e-7 relative error
  // in F; Kronecker blocks also take their steps' eigenbasis products in float32
  // (core/kronecker_statistics.h).
  bool float32_products = false;

  // Non-empty: a layered session. F is block-diagonal, one block each, and the
  // parameter vector is the blocks' parameters concatenated in this order; dim is
  // their total and representation is ignored.
  std::vector<BlockOptions> blocks;

  // Kronecker blocks: how damping enters (see KroneckerDamping).
  KroneckerDamping kronecker_damping = KroneckerDamping::kExact;

  // Kronecker blocks: a factor's eigendecomposition is recomputed at a step only when the
  // factor changed and the decomposition is at least this many steps old. REQUIRES: >= 1.
  int64_t factor_refresh_period = 1;

  bool layered() const { return !blocks.empty(); }

  // OK, or INVALID_ARGUMENT naming the first bad field (and block). For a layered session
  // dim must equal the blocks' total (fill it in with LayeredDim first).
  absl::Status Validate() const;
};

// Upper bound on the blocks of one session, so that a layout is validated and stored in
// bounded time and memory, and so that the messages that echo it (Session with its config
// and per-block stats, a step's per-block solver summaries) stay far below gRPC's 4 MiB
// default: 4096 blocks with 128-character names are about 1.3 MiB. A ResNet-152 has
// about 160 layers.
inline constexpr int64_t kMaxBlocks = 4096;

// The total parameters of `blocks`, or INVALID_ARGUMENT naming the block whose sizes
// are missing, absurd or make the total overflow.
absl::StatusOr<int64_t> LayeredDim(const std::vector<BlockOptions>& blocks);

struct StepOptions {
  // Overrides SessionOptions::damping when set. REQUIRES: >= 0.
  std::optional<double> damping;

  // eta = learning_rate when kl_budget is 0; a cap on eta when kl_budget > 0.
  // 0 means unset. When both are unset, eta = 1.
  double learning_rate = 0.0;

  // KL budget c: eta = sqrt(2c / g^T n) so that 1/2 (eta n)^T F_lambda (eta n) = c.
  // 0 means unset.
  double kl_budget = 0.0;

  // true: leave the statistics undecayed after this step.
  bool skip_decay = false;

  absl::Status Validate() const;
};

// Estimated resident bytes of a session's statistics, for limits checked before
// allocating. Dense: one dim x dim double matrix plus O(dim) vectors. Layered: the sum
// over blocks of EstimateBlockBytes. Saturates at UINT64_MAX instead of wrapping.
uint64_t EstimateSessionBytes(const SessionOptions& options);
// One block: dense as above; diagonal O(dim); low-rank its max_rows x dim rows plus a
// max_rows^2 factor; Kronecker both factors' sums and eigenvectors (2 n^2 doubles per
// factor of n rows) plus the step's scratch (two out x (in + bias) matrices), in float64,
// or with float32_products (the session's) float32 scratch and float32 copies of the
// eigenvectors besides.
uint64_t EstimateBlockBytes(const BlockOptions& block, bool float32_products);
// The same without the fixed cost of a block (its objects, name, bookkeeping), which
// kBlockOverheadBytes accounts for: measured about 1.1 KiB for the smallest blocks.
uint64_t EstimateBlockDataBytes(const BlockOptions& block, bool float32_products);
inline constexpr uint64_t kBlockOverheadBytes = 2048;

}  // namespace fisherd

#endif  // FISHERD_CORE_OPTIONS_H_
