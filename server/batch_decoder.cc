#include "server/batch_decoder.h"

#include <cstdint>
#include <cstring>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "server/conversions.h"

namespace fisherd::server {
namespace {

// Worker ids are client-chosen; keep messages bounded and printable.
constexpr size_t kMaxWorkerIdInMessage = 64;

absl::Status BatchError(const v1::ScoreBatch& batch, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(DescribeBatch(batch), ": ", what));
}

// Copies little-endian float32 bytes into `out`. memcpy rather than a reinterpret_cast
// because the bytes sit at whatever offset protobuf parsed them to.
void CopyLittleEndianFloats(const std::string& bytes, std::vector<float>* out) {
  out->resize(bytes.size() / sizeof(float));
  std::memcpy(out->data(), bytes.data(), out->size() * sizeof(float));
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  // The wire format is little-endian whatever the host; swap on big-endian hosts.
  for (float& value : *out) {
    uint32_t bits;
    std::memcpy(&bits, &value, sizeof(bits));
    bits = __builtin_bswap32(bits);
    std::memcpy(&value, &bits, sizeof(bits));
  }
#endif
}

}  // namespace

std::string DescribeBatch(const v1::ScoreBatch& batch) {
  if (batch.worker_id().empty()) {
    return absl::StrCat("batch (no worker_id, sequence ", batch.sequence(), ")");
  }
  absl::string_view worker = batch.worker_id();
  const bool truncated = worker.size() > kMaxWorkerIdInMessage;
  if (truncated) worker = worker.substr(0, kMaxWorkerIdInMessage);
  return absl::StrCat("batch (worker \"", absl::CHexEscape(worker), truncated ? "...\"" : "\"",
                      ", sequence ", batch.sequence(), ")");
}

namespace {

// Where a batch's rows go: the block (-1 without blocks), its factor, the row width,
// and "block \"fc1\" factor activations" for messages.
struct Target {
  int64_t block = -1;
  Factor factor = Factor::kNone;
  int64_t width = 0;
  std::string description = "session";
  // "session dim 3" or "block \"fc1\" factor activations row width 784".
  std::string Width() const {
    return absl::StrCat(description, block < 0 ? " dim " : " row width ", width);
  }
};

std::string BoundedName(const std::string& name) {
  constexpr size_t kMax = 128;
  return absl::StrCat("\"", absl::CHexEscape(name.substr(0, kMax)),
                      name.size() > kMax ? "...\"" : "\"");
}

absl::StatusOr<Target> ResolveTarget(const v1::ScoreBatch& batch, const SessionOptions& options,
                                     const BlockLayout& layout) {
  Target target;
  const int factor_value = static_cast<int>(batch.factor());
  if (layout.empty()) {
    if (!batch.block().empty() || factor_value != v1::FACTOR_UNSPECIFIED) {
      return BatchError(batch, absl::StrCat("block ", BoundedName(batch.block()),
                                            " and factor are for layered sessions; this "
                                            "session has no blocks, so leave both unset"));
    }
    target.width = options.dim;
    return target;
  }
  if (batch.block().empty()) {
    return BatchError(batch, absl::StrCat("block is empty; every batch of this layered "
                                          "session names one of its ",
                                          layout.size(), " blocks (the first is ",
                                          BoundedName(layout.block(0).name), ")"));
  }
  target.block = layout.Find(batch.block());
  if (target.block < 0) {
    return BatchError(batch, absl::StrCat("block ", BoundedName(batch.block()),
                                          " is not a block of this session"));
  }
  const BlockOptions& block = layout.block(target.block);
  absl::StatusOr<Factor> factor = FactorFromProto(factor_value, "factor");
  if (!factor.ok()) {
    return BatchError(
        batch, absl::StrCat("block ", BoundedName(block.name), ": ", factor.status().message()));
  }
  target.factor = *factor;
  if (block.kind == BlockKind::kKronecker && target.factor == Factor::kNone) {
    return BatchError(batch,
                      absl::StrCat("block ", BoundedName(block.name),
                                   " is a kronecker block: set factor to "
                                   "FACTOR_ACTIVATIONS (rows of in_features = ",
                                   block.in_features,
                                   " values) or FACTOR_OUTPUT_GRADIENTS (rows of out_features = ",
                                   block.out_features, " values)"));
  }
  if (block.kind != BlockKind::kKronecker && target.factor != Factor::kNone) {
    return BatchError(
        batch, absl::StrCat("block ", BoundedName(block.name), " is a ", BlockKindName(block.kind),
                            " block with no factors: leave factor "
                            "FACTOR_UNSPECIFIED, rows of dim = ",
                            block.dim, " values"));
  }
  target.width = block.RowWidth(target.factor);
  target.description = absl::StrCat("block ", BoundedName(block.name));
  if (target.factor != Factor::kNone) {
    absl::StrAppend(&target.description, " factor ", FactorName(target.factor));
  }
  return target;
}

}  // namespace

absl::StatusOr<PreparedBatch> DecodeScoreBatch(const v1::ScoreBatch& batch,
                                               const SessionOptions& options) {
  if (options.layered()) {
    return absl::InternalError("DecodeScoreBatch without a layout called for a layered session");
  }
  return DecodeScoreBatch(batch, options, BlockLayout({}));
}

absl::StatusOr<PreparedBatch> DecodeScoreBatch(const v1::ScoreBatch& batch,
                                               const SessionOptions& options,
                                               const BlockLayout& layout) {
  absl::StatusOr<Target> target = ResolveTarget(batch, options, layout);
  if (!target.ok()) return target.status();
  const int64_t dim = target->width;
  const int64_t rows = batch.rows();
  if (rows == 0) return BatchError(batch, "rows is 0; a batch needs at least one row");

  const bool has_bytes = !batch.scores_f32().empty();
  const bool has_floats = batch.scores_size() > 0;
  if (has_bytes && has_floats) {
    return BatchError(batch, "both scores_f32 and scores are set; set exactly one");
  }
  if (!has_bytes && !has_floats) {
    return BatchError(batch,
                      "neither scores_f32 nor scores is set; set exactly one "
                      "(scores_f32 is the fast path)");
  }

  // rows < 2^32 and dim is bounded by the registry's limits, but the check is cheap and
  // keeps a wrapped product from ever matching a short buffer.
  int64_t count = 0;
  int64_t byte_count = 0;
  if (__builtin_mul_overflow(rows, dim, &count) ||
      __builtin_mul_overflow(count, int64_t{sizeof(float)}, &byte_count)) {
    return BatchError(
        batch, absl::StrCat("rows * dim overflows (rows ", rows, ", ", target->Width(), ")"));
  }

  std::vector<float> decoded;  // owns the scores when they came as bytes
  const float* scores = nullptr;
  if (has_bytes) {
    const int64_t size = static_cast<int64_t>(batch.scores_f32().size());
    if (size != byte_count) {
      return BatchError(
          batch, absl::StrCat("scores_f32 has ", size, " bytes, expected rows*dim*4 = ", byte_count,
                              " (rows ", rows, ", ", target->Width(), ")"));
    }
    CopyLittleEndianFloats(batch.scores_f32(), &decoded);
    scores = decoded.data();
  } else {
    if (batch.scores_size() != count) {
      return BatchError(batch, absl::StrCat("scores has ", batch.scores_size(),
                                            " values, expected rows*dim = ", count, " (rows ", rows,
                                            ", ", target->Width(), ")"));
    }
    // A RepeatedField<float> is a contiguous, aligned array: no copy needed.
    scores = batch.scores().data();
  }

  const float* weights = nullptr;
  if (batch.weights_size() != 0) {
    if (batch.weights_size() != rows) {
      return BatchError(batch, absl::StrCat("weights has ", batch.weights_size(),
                                            " values, expected 0 (all 1) or rows = ", rows));
    }
    weights = batch.weights().data();
  }

  ScoreBatchView view;
  view.rows = rows;
  view.dim = dim;
  view.scores = scores;
  view.weights = weights;
  // Core names the row and column of a non-finite score and the row of a bad weight.
  if (absl::Status status = ValidateScores(view); !status.ok()) {
    return BatchError(batch, target->block >= 0
                                 ? absl::StrCat(target->description, ": ", status.message())
                                 : std::string(status.message()));
  }
  const DenseKernel kernel = options.float32_products ? DenseKernel::kAuto : DenseKernel::kFloat64;
  if (target->block >= 0) {
    return PrepareBlockBatch(view, layout.block(target->block), target->block, target->factor,
                             kernel);
  }
  return PrepareBatch(view, options.representation, kernel);
}

}  // namespace fisherd::server
