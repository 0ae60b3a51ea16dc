#include "core/score_batch.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace fisherd {

absl::Status ValidateScores(const ScoreBatchView& batch) {
  if (batch.rows < 1) {
    return absl::InvalidArgumentError(absl::StrCat("rows must be >= 1, got ", batch.rows));
  }
  if (batch.dim < 1) {
    return absl::InvalidArgumentError(absl::StrCat("dim must be >= 1, got ", batch.dim));
  }
  const int64_t count = batch.rows * batch.dim;
  for (int64_t k = 0; k < count; ++k) {
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
        return absl::InvalidArgumentError(absl::StrCat(
            "weights[", i, "] is ", w, "; weights must be finite and >= 0"));
      }
    }
  }
  return absl::OkStatus();
}

PreparedBatch PrepareBatch(const ScoreBatchView& batch, Representation representation) {
  using RowMajorF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const Eigen::Map<const RowMajorF> scores(batch.scores, batch.rows, batch.dim);
  Eigen::VectorXd weights = Eigen::VectorXd::Ones(batch.rows);
  if (batch.weights != nullptr) {
    weights = Eigen::Map<const Eigen::VectorXf>(batch.weights, batch.rows).cast<double>();
  }

  PreparedBatch prepared;
  prepared.rows = batch.rows;
  prepared.weight_sum = weights.sum();
  // Scores widen to float64 once, here; every later sum is in float64 (DESIGN.md 5).
  if (representation == Representation::kDense) {
    prepared.root_weighted = scores.cast<double>();
    prepared.weighted_sum = prepared.root_weighted.transpose() * weights;
    if (batch.weights != nullptr) {
      prepared.root_weighted = weights.cwiseSqrt().asDiagonal() * prepared.root_weighted;
    }
  } else {
    const Eigen::MatrixXd wide = scores.cast<double>();
    prepared.weighted_sum = wide.transpose() * weights;
    prepared.weighted_squares = wide.cwiseAbs2().transpose() * weights;
  }
  return prepared;
}

}  // namespace fisherd
