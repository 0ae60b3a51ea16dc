// The per-batch path shared by AddScores and StreamScores: resolve the batch's session,
// decode and validate it without any lock, merge it under the session's lock.
#ifndef FISHERD_SERVER_SCORE_INGEST_H_
#define FISHERD_SERVER_SCORE_INGEST_H_

#include "absl/status/status.h"
#include "fisherd/v1/fisher.pb.h"
#include "server/session_registry.h"

namespace fisherd::server {

// Applies `batch` to the session it names and fills `ack`. Each batch is looked up on
// its own, so the batches of one stream may name different sessions.
// Errors (the session is then unchanged), each message prefixed with
// DescribeBatch(batch): INVALID_ARGUMENT for a malformed session name or a bad batch
// (see DecodeScoreBatch), NOT_FOUND when the session does not exist.
// A batch at or below the worker's highest applied sequence is OK with
// ack->duplicate() set and is not counted again.
// Runs O(rows * dim) work: call it on the work pool, never on a gRPC callback thread.
absl::Status ApplyScoreBatch(const SessionRegistry& registry, const v1::ScoreBatch& batch,
                             v1::ScoreAck* ack);

}  // namespace fisherd::server

#endif  // FISHERD_SERVER_SCORE_INGEST_H_
