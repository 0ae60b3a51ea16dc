// ListSessions: every session, sorted by name, without a layered session's per-block
// detail (config.blocks and stats.blocks): 64 sessions of thousands of blocks would not
// fit one message. GetSession has it.
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
      v1::Session* session = response->add_sessions();
      SessionToProto(entry.name, *entry.session, session);
      session->mutable_config()->clear_blocks();
      session->mutable_stats()->clear_blocks();
      WaitSessionDurable(resources, *entry.session);
    }
    return absl::OkStatus();
  });
}

}  // namespace fisherd::server
