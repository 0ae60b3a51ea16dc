// GetSession: the effective config and the current counters of one session.
#include "server/conversions.h"
#include "server/handlers/handlers.h"

namespace fisherd::server {

grpc::ServerUnaryReactor* HandleGetSession(const ServiceResources& resources,
                                           grpc::CallbackServerContext* context,
                                           const v1::GetSessionRequest* request,
                                           v1::Session* response) {
  // On the pool: Stats() waits for the session lock, which a merge or solve may hold.
  return RunUnaryOnPool(resources, context, [&resources, request, response]() -> absl::Status {
    absl::StatusOr<std::shared_ptr<Session>> session = resources.registry->Get(request->name());
    if (!session.ok()) return session.status();
    SessionToProto(request->name(), **session, response);
    WaitSessionDurable(resources, **session);
    return absl::OkStatus();
  });
}

}  // namespace fisherd::server
