// Building fisherd.v1.ScoreBatch messages on the fast path: scores as raw float32 bytes.
#ifndef FISHERD_CLIENT_SCORE_ENCODING_H_
#define FISHERD_CLIENT_SCORE_ENCODING_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "fisherd/v1/fisher.pb.h"

namespace fisherd::client {

// Appends `values` to *out as little-endian IEEE float32, the layout of
// ScoreBatch.scores_f32. A memcpy on little-endian hosts, a byte swap elsewhere.
void AppendFloat32LittleEndian(absl::Span<const float> values, std::string* out);

// Checks what the server would reject anyway (docs/design.md section 4), so that a bad row
// is reported by the call that supplied it instead of ending a score stream later:
// scores.size() a positive multiple of dim, every score finite, weights empty or one
// finite weight >= 0 per row. The message names the offending row and column.
// REQUIRES: dim >= 1.
absl::Status ValidateScoreRows(absl::Span<const float> scores, absl::Span<const float> weights,
                               uint64_t dim);

// A batch of rows = scores.size() / dim rows with scores in scores_f32 and weights
// copied when non-empty. `session` may be the name or the bare id. REQUIRES:
// ValidateScoreRows(scores, weights, dim).ok().
fisherd::v1::ScoreBatch MakeScoreBatch(absl::string_view session, absl::string_view worker_id,
                                       uint64_t sequence, absl::Span<const float> scores,
                                       absl::Span<const float> weights, uint64_t dim);

}  // namespace fisherd::client

#endif  // FISHERD_CLIENT_SCORE_ENCODING_H_
