// Validation and decoding of one wire ScoreBatch into what a core Session consumes.
//
// The whole batch is checked before anything is applied (docs/design.md section 4): a batch
// either decodes completely or is rejected with INVALID_ARGUMENT and the session never
// sees it. Decoding (float32 -> float64, weighting) is the O(rows * dim) part of
// ingestion, so callers run it on the work pool and outside every session lock; only
// the merge (Session::AddScores) takes the lock.
#ifndef FISHERD_SERVER_BATCH_DECODER_H_
#define FISHERD_SERVER_BATCH_DECODER_H_

#include <string>

#include "absl/status/statusor.h"
#include "core/block_layout.h"
#include "core/options.h"
#include "core/score_batch.h"
#include "fisherd/v1/fisher.pb.h"

namespace fisherd::server {

// `batch (worker "w1", sequence 7)`: the prefix of every message about a batch, so a
// client can tell which of its in-flight batches was refused.
std::string DescribeBatch(const v1::ScoreBatch& batch);

// Checks `batch` against a session with `options` and prepares it for
// Session::AddScores. INVALID_ARGUMENT, with a message that starts with
// DescribeBatch(batch) and names the offending field, when:
//   - rows is 0;
//   - not exactly one of scores_f32 and scores is set;
//   - rows * dim overflows;
//   - scores_f32 is not exactly rows * dim * 4 bytes, or scores not rows * dim values;
//   - weights is neither empty nor one value per row;
//   - a score is NaN or infinite, or a weight is negative or not finite.
// scores_f32 is read as little-endian float32 and copied out with memcpy, never
// aliased, since protobuf gives no alignment guarantee for bytes fields.
// Layered sessions (`layout` not empty): block must name one of the layout's blocks and
// factor must suit its kind (FACTOR_ACTIVATIONS or FACTOR_OUTPUT_GRADIENTS for a
// Kronecker block, unspecified for the others); the row width is the block's (dim,
// in_features or out_features). Otherwise block and factor must be empty.
// Does not look at batch.session(); the caller resolved it to `options` and `layout`.
// REQUIRES: options.Validate().ok(), layout built from options.blocks.
absl::StatusOr<PreparedBatch> DecodeScoreBatch(const v1::ScoreBatch& batch,
                                               const SessionOptions& options,
                                               const BlockLayout& layout);
// For a session without blocks (INTERNAL, a caller's bug, for a layered one).
absl::StatusOr<PreparedBatch> DecodeScoreBatch(const v1::ScoreBatch& batch,
                                               const SessionOptions& options);

}  // namespace fisherd::server

#endif  // FISHERD_SERVER_BATCH_DECODER_H_
