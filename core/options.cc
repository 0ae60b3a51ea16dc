#include "core/options.h"

#include <cmath>
#include <limits>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace fisherd {

const char* RepresentationName(Representation representation) {
  switch (representation) {
    case Representation::kDense:
      return "dense";
    case Representation::kDiagonal:
      return "diagonal";
  }
  return "unknown";
}

const char* BlockKindName(BlockKind kind) {
  switch (kind) {
    case BlockKind::kDense:
      return "dense";
    case BlockKind::kDiagonal:
      return "diagonal";
    case BlockKind::kKronecker:
      return "kronecker";
    case BlockKind::kLowRank:
      return "low-rank";
  }
  return "unknown";
}

const char* FactorName(Factor factor) {
  switch (factor) {
    case Factor::kNone:
      return "unspecified";
    case Factor::kActivations:
      return "activations";
    case Factor::kOutputGradients:
      return "output_gradients";
  }
  return "unknown";
}

const char* KroneckerDampingName(KroneckerDamping damping) {
  return damping == KroneckerDamping::kFactored ? "factored" : "exact";
}

int64_t BlockOptions::ParameterCount() const {
  if (kind == BlockKind::kKronecker) return out_features * (in_features + (bias ? 1 : 0));
  return dim;
}

int64_t BlockOptions::RowWidth(Factor factor) const {
  if (kind == BlockKind::kKronecker) {
    if (factor == Factor::kActivations) return in_features;
    if (factor == Factor::kOutputGradients) return out_features;
    return 0;
  }
  return factor == Factor::kNone ? dim : 0;
}

int64_t BlockOptions::FactorDim(Factor factor) const {
  const int64_t width = RowWidth(factor);
  return kind == BlockKind::kKronecker && factor == Factor::kActivations && bias ? width + 1
                                                                                 : width;
}

namespace {

constexpr size_t kMaxBlockNameLength = 128;
// A factor or block dimension beyond this is refused outright: its matrix could not be
// addressed (the server's limits refuse far smaller ones).
constexpr int64_t kMaxBlockSize = int64_t{1} << 40;

std::string QuoteName(const std::string& name) {
  if (name.size() > kMaxBlockNameLength) {
    return absl::StrCat("\"", absl::CHexEscape(name.substr(0, kMaxBlockNameLength)), "...\"");
  }
  return absl::StrCat("\"", absl::CHexEscape(name), "\"");
}

absl::Status BlockError(size_t index, const BlockOptions& block, absl::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("blocks[", index, "] ", QuoteName(block.name), ": ", what));
}

absl::Status CheckSize(size_t index, const BlockOptions& block, const char* field, int64_t value) {
  if (value < 1 || value > kMaxBlockSize) {
    return BlockError(index, block,
                      absl::StrCat(field, " must be in [1, 2^40] for a ", BlockKindName(block.kind),
                                   " block, got ", value));
  }
  return absl::OkStatus();
}

absl::Status CheckUnused(size_t index, const BlockOptions& block, const char* field,
                         int64_t value) {
  if (value != 0) {
    return BlockError(index, block,
                      absl::StrCat(field, " is ", value, " but means nothing for a ",
                                   BlockKindName(block.kind), " block; leave it 0"));
  }
  return absl::OkStatus();
}

absl::Status ValidateBlock(size_t index, const BlockOptions& block) {
  if (block.name.empty() || block.name.size() > kMaxBlockNameLength) {
    return BlockError(index, block,
                      absl::StrCat("name has ", block.name.size(),
                                   " characters; use 1-128 characters of [a-zA-Z0-9_.-]"));
  }
  for (size_t i = 0; i < block.name.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(block.name[i]);
    if (!absl::ascii_isalnum(c) && c != '_' && c != '.' && c != '-') {
      return BlockError(index, block,
                        absl::StrCat("name has a character outside [a-zA-Z0-9_.-] at offset ", i));
    }
  }
  switch (block.kind) {
    case BlockKind::kDense:
    case BlockKind::kDiagonal:
    case BlockKind::kLowRank:
      if (absl::Status s = CheckSize(index, block, "dim", block.dim); !s.ok()) return s;
      if (absl::Status s = CheckUnused(index, block, "in_features", block.in_features); !s.ok()) {
        return s;
      }
      if (absl::Status s = CheckUnused(index, block, "out_features", block.out_features); !s.ok()) {
        return s;
      }
      if (block.bias) return BlockError(index, block, "bias is only for kronecker blocks");
      if (block.kind == BlockKind::kLowRank) {
        if (absl::Status s = CheckSize(index, block, "max_rows", block.max_rows); !s.ok()) {
          return s;
        }
      } else if (absl::Status s = CheckUnused(index, block, "max_rows", block.max_rows); !s.ok()) {
        return s;
      }
      return absl::OkStatus();
    case BlockKind::kKronecker:
      if (absl::Status s = CheckSize(index, block, "in_features", block.in_features); !s.ok()) {
        return s;
      }
      if (absl::Status s = CheckSize(index, block, "out_features", block.out_features); !s.ok()) {
        return s;
      }
      if (absl::Status s = CheckUnused(index, block, "dim", block.dim); !s.ok()) return s;
      if (absl::Status s = CheckUnused(index, block, "max_rows", block.max_rows); !s.ok()) {
        return s;
      }
      {
        int64_t parameters = 0;
        if (__builtin_mul_overflow(block.out_features, block.in_features + (block.bias ? 1 : 0),
                                   &parameters)) {
          return BlockError(index, block, "out_features * (in_features + bias) overflows");
        }
      }
      return absl::OkStatus();
  }
  return BlockError(index, block, "kind is unknown");
}

}  // namespace

absl::StatusOr<int64_t> LayeredDim(const std::vector<BlockOptions>& blocks) {
  if (static_cast<int64_t>(blocks.size()) > kMaxBlocks) {
    return absl::InvalidArgumentError(absl::StrCat(
        "blocks has ", blocks.size(), " entries; at most ", kMaxBlocks, " are allowed"));
  }
  std::set<std::string> names;
  int64_t total = 0;
  for (size_t i = 0; i < blocks.size(); ++i) {
    if (absl::Status status = ValidateBlock(i, blocks[i]); !status.ok()) return status;
    if (!names.insert(blocks[i].name).second) {
      return BlockError(i, blocks[i], "name is already used by an earlier block");
    }
    if (__builtin_add_overflow(total, blocks[i].ParameterCount(), &total)) {
      return BlockError(i, blocks[i], "the blocks' parameters overflow a 64-bit count");
    }
  }
  return total;
}

absl::Status SessionOptions::Validate() const {
  if (layered()) {
    absl::StatusOr<int64_t> total = LayeredDim(blocks);
    if (!total.ok()) return total.status();
    if (dim != *total) {
      return absl::InvalidArgumentError(
          absl::StrCat("dim is ", dim, " but the blocks hold ", *total,
                       " parameters; set dim to their total or leave it 0"));
    }
    for (size_t i = 0; i < blocks.size(); ++i) {
      if (centered && blocks[i].kind == BlockKind::kKronecker) {
        return BlockError(i, blocks[i],
                          "a centered Kronecker block is not defined (K-FAC's factors are "
                          "uncentered second moments); use centered = false");
      }
    }
    if (factor_refresh_period < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("factor_refresh_period must be >= 1 (0 on the wire means 1), got ",
                       factor_refresh_period));
    }
  }
  if (dim < 1) {
    return absl::InvalidArgumentError(absl::StrCat("dim must be >= 1, got ", dim));
  }
  if (!(decay > 0.0 && decay <= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("decay must be in (0, 1] (0 on the wire means 1), got ", decay));
  }
  if (!(damping >= 0.0) || !std::isfinite(damping)) {
    return absl::InvalidArgumentError(
        absl::StrCat("damping must be finite and >= 0, got ", damping));
  }
  return absl::OkStatus();
}

absl::Status StepOptions::Validate() const {
  if (damping.has_value() && (!(*damping >= 0.0) || !std::isfinite(*damping))) {
    return absl::InvalidArgumentError(
        absl::StrCat("damping must be finite and >= 0, got ", *damping));
  }
  if (!(learning_rate >= 0.0) || !std::isfinite(learning_rate)) {
    return absl::InvalidArgumentError(
        absl::StrCat("learning_rate must be finite and >= 0 (0 means unset), got ", learning_rate));
  }
  if (!(kl_budget >= 0.0) || !std::isfinite(kl_budget)) {
    return absl::InvalidArgumentError(
        absl::StrCat("kl_budget must be finite and >= 0 (0 means unset), got ", kl_budget));
  }
  return absl::OkStatus();
}

namespace {

// a * b and a + b, saturating at UINT64_MAX.
uint64_t SaturatingProduct(uint64_t a, uint64_t b) {
  uint64_t out = 0;
  return __builtin_mul_overflow(a, b, &out) ? UINT64_MAX : out;
}
uint64_t SaturatingSum(uint64_t a, uint64_t b) {
  uint64_t out = 0;
  return __builtin_add_overflow(a, b, &out) ? UINT64_MAX : out;
}
uint64_t Square(int64_t n) {
  const uint64_t u = n < 0 ? 0 : static_cast<uint64_t>(n);
  return SaturatingProduct(u, u);
}

}  // namespace

uint64_t EstimateBlockBytes(const BlockOptions& block, bool float32_products) {
  return SaturatingSum(kBlockOverheadBytes, EstimateBlockDataBytes(block, float32_products));
}

uint64_t EstimateBlockDataBytes(const BlockOptions& block, bool float32_products) {
  constexpr uint64_t kDouble = sizeof(double);
  const uint64_t dim = block.dim < 0 ? 0 : static_cast<uint64_t>(block.dim);
  const uint64_t vectors = SaturatingProduct(8 * kDouble, dim);
  switch (block.kind) {
    case BlockKind::kDiagonal:
      return vectors;
    case BlockKind::kDense:
      return SaturatingSum(SaturatingProduct(Square(block.dim), kDouble), vectors);
    case BlockKind::kLowRank: {
      const uint64_t rows = block.max_rows < 0 ? 0 : static_cast<uint64_t>(block.max_rows);
      const uint64_t held = SaturatingProduct(SaturatingProduct(rows, dim), kDouble);
      return SaturatingSum(SaturatingSum(held, SaturatingProduct(Square(block.max_rows), kDouble)),
                           vectors);
    }
    case BlockKind::kKronecker: {
      const int64_t a = block.FactorDim(Factor::kActivations);
      const int64_t g = block.FactorDim(Factor::kOutputGradients);
      // Sums and eigenvectors of each factor (and their float32 copies), a few vectors,
      // and the step's scratch (two matrices of the parameters, float32 or float64).
      constexpr uint64_t kFloat = sizeof(float);
      const uint64_t per_entry = float32_products ? 2 * kDouble + kFloat : 2 * kDouble;
      uint64_t bytes = SaturatingProduct(SaturatingSum(Square(a), Square(g)), per_entry);
      bytes = SaturatingSum(bytes, SaturatingProduct(8 * kDouble, static_cast<uint64_t>(a + g)));
      const uint64_t parameters =
          SaturatingProduct(static_cast<uint64_t>(a), static_cast<uint64_t>(g));
      return SaturatingSum(
          bytes, SaturatingProduct(parameters, 2 * (float32_products ? kFloat : kDouble)));
    }
  }
  return UINT64_MAX;
}

uint64_t EstimateSessionBytes(const SessionOptions& options) {
  if (options.layered()) {
    uint64_t total = 0;
    for (const BlockOptions& block : options.blocks) {
      total = SaturatingSum(total, EstimateBlockBytes(block, options.float32_products));
    }
    return total;
  }
  const uint64_t dim = options.dim < 0 ? 0 : static_cast<uint64_t>(options.dim);
  // A few O(dim) vectors (m, the factor's diagonal, scratch) beside the main storage.
  const uint64_t vectors = 8 * sizeof(double) * dim;
  if (options.representation == Representation::kDiagonal) return vectors;
  // Saturate instead of wrapping for absurd dims, so that limits still refuse them.
  if (dim > (uint64_t{1} << 28)) return UINT64_MAX;
  return dim * dim * sizeof(double) + vectors;
}

}  // namespace fisherd
