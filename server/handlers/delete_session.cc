// DeleteSession: forget the session; requests already running on it finish normally.
#include "server/handlers/handlers.h"

namespace fisherd::server {

grpc::ServerUnaryReactor* HandleDeleteSession(const ServiceResources& resources,
                                              grpc::CallbackServerContext* context,
                                              const v1::DeleteSessionRequest* request,
                                              v1::DeleteSessionResponse* /*response*/) {
  // On the pool: dropping the last reference frees dim^2 doubles.
  return RunUnaryOnPool(resources, context, [&resources, request]() -> absl::Status {
    absl::Status status = resources.registry->Delete(request->name());
    if (status.ok()) WaitAllDurable(resources);  // its deletion record
    return status;
  });
}

}  // namespace fisherd::server
