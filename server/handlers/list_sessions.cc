// ListSessions: every session, sorted by name.
#include "server/conversions.h"
#include "server/handlers/handlers.h"

namespace fisherd::server {

grpc::ServerUnaryReactor* HandleListSessions(const ServiceResources& resources,
                                             grpc::CallbackServerContext* context,
                                             const v1::ListSessionsRequest* /*request*/,
                                             v1::ListSessionsResponse* response) {
  // On the pool: each Stats() waits for that session's lock.
  return RunUnaryOnPool(resources, context, [&resources, response]() -> absl::Status {
    // The registry lists in name order; the registry lock is not held while the
    // sessions' own locks are taken.
    for (const SessionRegistry::Entry& entry : resources.registry->List()) {
      SessionToProto(entry.name, *entry.session, response->add_sessions());
    }
    return absl::OkStatus();
  });
}

}  // namespace fisherd::server
