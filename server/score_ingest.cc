#include "server/score_ingest.h"

#include <chrono>
#include <memory>
#include <new>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "server/batch_decoder.h"
#include "server/durable_store.h"
#include "server/handler_util.h"
#include "server/server_metrics.h"

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

absl::Status IngestScoreBatch(const ServiceResources& resources, const v1::ScoreBatch& batch,
                              v1::ScoreAck* ack, uint64_t* lsn) {
  ServerMetrics* const metrics = resources.metrics;
  if (metrics == nullptr) {
    return ApplyScoreBatch(*resources.registry, resources.store, batch, ack, lsn);
  }
  const auto start = std::chrono::steady_clock::now();
  absl::Status status;
  try {
    status = ApplyScoreBatch(*resources.registry, resources.store, batch, ack, lsn);
  } catch (const std::bad_alloc&) {
    metrics->RecordBatch(absl::ResourceExhaustedError(""), /*duplicate=*/false, 0, 0.0);
    throw;
  } catch (...) {
    metrics->RecordBatch(absl::InternalError(""), /*duplicate=*/false, 0, 0.0);
    throw;
  }
  const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
  metrics->RecordBatch(status, status.ok() && ack->duplicate(), batch.rows(), elapsed.count());
  return status;
}

}  // namespace fisherd::server
