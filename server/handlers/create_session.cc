// CreateSession: validate the id and config, check the server's limits, then allocate.
#include "server/conversions.h"
#include "server/handlers/handlers.h"

namespace fisherd::server {

grpc::ServerUnaryReactor* HandleCreateSession(const ServiceResources& resources,
                                              grpc::CallbackServerContext* context,
                                              const v1::CreateSessionRequest* request,
                                              v1::Session* response) {
  // On the pool: a dense session allocates and zeroes dim^2 doubles.
  return RunUnaryOnPool(resources, context, [&resources, request, response]() -> absl::Status {
    absl::StatusOr<SessionRegistry::Entry> entry =
        resources.registry->Create(request->session_id(), request->config());
    if (!entry.ok()) return entry.status();
    SessionToProto(entry->name, *entry->session, response);
    WaitAllDurable(resources);  // its creation record
    return absl::OkStatus();
  });
}

}  // namespace fisherd::server
