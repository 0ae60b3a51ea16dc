// AddScores: the unary form of one StreamScores batch.
#include "server/handlers/handlers.h"
#include "server/score_ingest.h"

namespace fisherd::server {

grpc::ServerUnaryReactor* HandleAddScores(const ServiceResources& resources,
                                          grpc::CallbackServerContext* context,
                                          const v1::ScoreBatch* request, v1::ScoreAck* response) {
  return RunUnaryOnPool(resources, context, [&resources, request, response]() -> absl::Status {
    return ApplyScoreBatch(*resources.registry, *request, response);
  });
}

}  // namespace fisherd::server
