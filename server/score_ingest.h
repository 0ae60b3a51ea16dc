// The per-batch path shared by AddScores and StreamScores: resolve the batch's session,
// decode and validate it without any lock, merge it under the session's lock.
#ifndef FISHERD_SERVER_SCORE_INGEST_H_
#define FISHERD_SERVER_SCORE_INGEST_H_

#include "absl/status/status.h"
#include "fisherd/v1/fisher.pb.h"
#include "server/session_registry.h"

namespace fisherd::server {
class DurableStore;
struct ServiceResources;
}  // namespace fisherd::server

namespace fisherd::server {

// Applies `batch` to the session it names and fills `ack`. Each batch is looked up on
// its own, so the batches of one stream may name different sessions.
// Errors (the session is then unchanged), each message prefixed with
// DescribeBatch(batch): INVALID_ARGUMENT for a malformed session name or a bad batch
// (see DecodeScoreBatch), NOT_FOUND when the session does not exist.
// A batch at or below the worker's highest applied sequence is OK with
// ack->duplicate() set and is not counted again.
// Runs O(rows * dim) work: call it on the work pool, never on a gRPC callback thread.
// Durable sessions: with `store`, the batch is logged before it is applied (a full
// data directory is RESOURCE_EXHAUSTED, session unchanged) and *lsn is what the ack
// must wait for (AddResult::lsn); the caller sends the ack once it is durable.
absl::Status ApplyScoreBatch(const SessionRegistry& registry, DurableStore* store,
                             const v1::ScoreBatch& batch, v1::ScoreAck* ack, uint64_t* lsn);

// What the handlers call: ApplyScoreBatch with the server's registry and store, timed
// and counted in resources.metrics (fisherd_batches_total and the rest). An exception
// is counted as the status RunGuarded turns it into (bad_alloc: resource_exhausted,
// anything else: internal) and passed on to it.
absl::Status IngestScoreBatch(const ServiceResources& resources, const v1::ScoreBatch& batch,
                              v1::ScoreAck* ack, uint64_t* lsn);

}  // namespace fisherd::server

#endif  // FISHERD_SERVER_SCORE_INGEST_H_
