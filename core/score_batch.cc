#include "core/score_batch.h"

#include <cmath>
#include <cstdint>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace fisherd {

namespace {

// True when some value is NaN or infinite: its exponent bits are all ones. Branch-free
// over the whole array so that it vectorizes; the slow loop below only runs to name
// the culprit.
bool AnyNonFinite(const float* values, int64_t count) {
  uint32_t all_ones = 0;
  for (int64_t k = 0; k < count; ++k) {
    uint32_t bits;
    std::memcpy(&bits, values + k, sizeof(bits));
    all_ones |= static_cast<uint32_t>((bits & 0x7f800000u) == 0x7f800000u);
  }
  return all_ones != 0;
}

}  // namespace

absl::Status ValidateScores(const ScoreBatchView& batch) {
  if (batch.rows < 1) {
    return absl::InvalidArgumentError(absl::StrCat("rows must be >= 1, got ", batch.rows));
  }
  if (batch.dim < 1) {
    return absl::InvalidArgumentError(absl::StrCat("dim must be >= 1, got ", batch.dim));
  }
  const int64_t count = batch.rows * batch.dim;
  const bool any_bad = AnyNonFinite(batch.scores, count);
  for (int64_t k = 0; any_bad && k < count; ++k) {
    if (!std::isfinite(batch.scores[k])) {
      return absl::InvalidArgumentError(absl::StrCat(
          "scores[row ", k / batch.dim, ", column ", k % batch.dim, "] is ",
          std::isnan(batch.scores[k]) ? "NaN" : "infinite", "; scores must be finite"));
    }
  }
  if (batch.weights != nullptr) {
    for (int64_t i = 0; i < batch.rows; ++i) {
      const float w = batch.weights[i];
      if (!std::isfinite(w) || w < 0.0f) {
        return absl::InvalidArgumentError(
            absl::StrCat("weights[", i, "] is ", w, "; weights must be finite and >= 0"));
      }
    }
  }
  return absl::OkStatus();
}

PreparedBatch PrepareBatch(const ScoreBatchView& batch, Representation representation,
                           DenseKernel kernel) {
  const int64_t rows = batch.rows, dim = batch.dim;
  PreparedBatch prepared;
  prepared.rows = rows;
  prepared.weighted_sum = Eigen::VectorXd::Zero(dim);
  double* sum = prepared.weighted_sum.data();
  auto weight = [&](int64_t i) -> double {
    return batch.weights != nullptr ? static_cast<double>(batch.weights[i]) : 1.0;
  };

  if (representation == Representation::kDiagonal) {
    // One pass over the scores, widening each to float64 as it is read (docs/design.md 5).
    prepared.weighted_squares = Eigen::VectorXd::Zero(dim);
    double* squares = prepared.weighted_squares.data();
    for (int64_t i = 0; i < rows; ++i) {
      const float* row = batch.scores + i * dim;
      const double w = weight(i);
      prepared.weight_sum += w;
      for (int64_t j = 0; j < dim; ++j) {
        const double s = row[j];
        sum[j] += w * s;
        squares[j] += w * s * s;
      }
    }
    return prepared;
  }

  prepared.root_weights.resize(rows);
  for (int64_t i = 0; i < rows; ++i) {
    const float* row = batch.scores + i * dim;
    const double w = weight(i);
    prepared.weight_sum += w;
    prepared.root_weights[i] = std::sqrt(w);
    for (int64_t j = 0; j < dim; ++j) sum[j] += w * static_cast<double>(row[j]);
  }
  const bool float32 = kernel == DenseKernel::kFloat32 ||
                       (kernel == DenseKernel::kAuto && dim >= kFloat32KernelMinDim &&
                        rows >= kFloat32KernelMinRows);
  const Eigen::Map<const PreparedBatch::RowMajorF> scores(batch.scores, rows, dim);
  if (float32) {
    prepared.root_weighted_f32 = scores;
    if (batch.weights != nullptr) {
      for (int64_t i = 0; i < rows; ++i) {
        prepared.root_weighted_f32.row(i) *= static_cast<float>(std::sqrt(weight(i)));
      }
    }
  } else {
    prepared.root_weighted = scores.cast<double>();
    if (batch.weights != nullptr) {
      for (int64_t i = 0; i < rows; ++i) prepared.root_weighted.row(i) *= std::sqrt(weight(i));
    }
  }
  return prepared;
}

PreparedBatch PrepareBatchWithOnes(const ScoreBatchView& batch) {
  const int64_t rows = batch.rows, width = batch.dim + 1;
  PreparedBatch prepared;
  prepared.rows = rows;
  prepared.weighted_sum = Eigen::VectorXd::Zero(width);
  prepared.root_weights.resize(rows);
  prepared.root_weighted.resize(rows, width);
  for (int64_t i = 0; i < rows; ++i) {
    const double w = batch.weights != nullptr ? static_cast<double>(batch.weights[i]) : 1.0;
    const double root = std::sqrt(w);
    prepared.weight_sum += w;
    prepared.root_weights[i] = root;
    const float* row = batch.scores + i * batch.dim;
    double* out = prepared.root_weighted.row(i).data();
    for (int64_t j = 0; j < batch.dim; ++j) {
      const double s = row[j];
      prepared.weighted_sum[j] += w * s;
      out[j] = root * s;
    }
    prepared.weighted_sum[batch.dim] += w;
    out[batch.dim] = root;
  }
  return prepared;
}

PreparedBatch PrepareBlockBatch(const ScoreBatchView& batch, const BlockOptions& block,
                                int64_t block_index, Factor factor, DenseKernel kernel) {
  PreparedBatch prepared;
  if (block.kind == BlockKind::kKronecker && factor == Factor::kActivations && block.bias) {
    prepared = PrepareBatchWithOnes(batch);
  } else if (block.kind == BlockKind::kDiagonal) {
    prepared = PrepareBatch(batch, Representation::kDiagonal);
  } else {
    // Low-rank blocks keep their rows in float64 (the Woodbury path reads them).
    prepared = PrepareBatch(batch, Representation::kDense,
                            block.kind == BlockKind::kLowRank ? DenseKernel::kFloat64 : kernel);
  }
  prepared.block = block_index;
  prepared.factor = factor;
  return prepared;
}

}  // namespace fisherd
