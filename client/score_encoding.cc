#include "client/score_encoding.h"

#include <cmath>
#include <cstring>

#include "absl/strings/str_format.h"
#include "client/session_name.h"

namespace fisherd::client {

void AppendFloat32LittleEndian(absl::Span<const float> values, std::string* out) {
  const size_t start = out->size();
  out->resize(start + values.size() * sizeof(float));
  char* dst = out->data() + start;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  if (!values.empty()) std::memcpy(dst, values.data(), values.size() * sizeof(float));
#else
  for (float v : values) {
    uint32_t bits;
    std::memcpy(&bits, &v, sizeof(bits));
    for (int b = 0; b < 4; ++b) *dst++ = static_cast<char>((bits >> (8 * b)) & 0xff);
  }
#endif
}

absl::Status ValidateScoreRows(absl::Span<const float> scores, absl::Span<const float> weights,
                               uint64_t dim) {
  if (scores.empty() || scores.size() % dim != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "scores: %d values is not a positive multiple of dim %d", scores.size(), dim));
  }
  const size_t rows = scores.size() / dim;
  for (size_t i = 0; i < scores.size(); ++i) {
    if (!std::isfinite(scores[i])) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "scores: row %d column %d is not finite (%g)", i / dim, i % dim, scores[i]));
    }
  }
  if (!weights.empty() && weights.size() != rows) {
    return absl::InvalidArgumentError(
        absl::StrFormat("weights: %d values for %d rows", weights.size(), rows));
  }
  for (size_t i = 0; i < weights.size(); ++i) {
    if (!std::isfinite(weights[i]) || weights[i] < 0) {
      return absl::InvalidArgumentError(
          absl::StrFormat("weights: row %d has weight %g; need finite and >= 0", i, weights[i]));
    }
  }
  return absl::OkStatus();
}

fisherd::v1::ScoreBatch MakeScoreBatch(absl::string_view session, absl::string_view worker_id,
                                       uint64_t sequence, absl::Span<const float> scores,
                                       absl::Span<const float> weights, uint64_t dim) {
  fisherd::v1::ScoreBatch batch;
  batch.set_session(SessionName(session));
  batch.set_worker_id(std::string(worker_id));
  batch.set_sequence(sequence);
  batch.set_rows(static_cast<uint32_t>(scores.size() / dim));
  AppendFloat32LittleEndian(scores, batch.mutable_scores_f32());
  batch.mutable_weights()->Add(weights.begin(), weights.end());
  return batch;
}

}  // namespace fisherd::client
