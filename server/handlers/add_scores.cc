// AddScores: the unary form of one StreamScores batch.
#include "server/handlers/handlers.h"
#include "server/score_ingest.h"

namespace fisherd::server {

grpc::ServerUnaryReactor* HandleAddScores(const ServiceResources& resources,
                                          grpc::CallbackServerContext* context,
                                          const v1::ScoreBatch* request, v1::ScoreAck* response) {
  return RunUnaryOnPool(resources, context, [&resources, request, response]() -> absl::Status {
    uint64_t lsn = 0;
    absl::Status status = IngestScoreBatch(resources, *request, response, &lsn);
    // The ack only once the batch is on disk (durable sessions).
    if (status.ok()) WaitDurable(resources, lsn);
    return status;
  });
}

}  // namespace fisherd::server
