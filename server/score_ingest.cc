#include "server/score_ingest.h"

#include <memory>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "server/batch_decoder.h"
#include "server/durable_store.h"

namespace fisherd::server {

absl::Status ApplyScoreBatch(const SessionRegistry& registry, DurableStore* store,
                             const v1::ScoreBatch& batch, v1::ScoreAck* ack, uint64_t* lsn) {
  absl::StatusOr<std::shared_ptr<Session>> session = registry.Get(batch.session(), "session");
  if (!session.ok()) {
    // Same code, but say which batch it was: a streaming client has many in flight.
    return absl::Status(session.status().code(),
                        absl::StrCat(DescribeBatch(batch), ": ", session.status().message()));
  }
  // Decoding is the expensive part and needs no lock (docs/design.md section 5).
  absl::StatusOr<PreparedBatch> prepared =
      DecodeScoreBatch(batch, (*session)->options(), (*session)->layout());
  if (!prepared.ok()) return prepared.status();

  // The record is serialized here, outside the session's lock; only its append is under it.
  const LogBatchFn log = store != nullptr ? store->BatchLogger(batch, **session) : LogBatchFn();
  absl::StatusOr<AddResult> added =
      (*session)->AddScores(batch.worker_id(), batch.sequence(), *prepared, log);
  if (!added.ok()) {
    return absl::Status(added.status().code(),
                        absl::StrCat(DescribeBatch(batch), ": ", added.status().message()));
  }
  const AddResult& result = *added;
  *lsn = result.lsn;
  ack->set_worker_id(batch.worker_id());
  ack->set_sequence(result.sequence);
  ack->set_duplicate(result.duplicate);
  ack->set_sample_count(result.sample_count);
  return absl::OkStatus();
}

}  // namespace fisherd::server
