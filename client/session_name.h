// Session resource names. The contract names sessions "sessions/{session_id}"; the client
// API also takes the bare id, because that is what people type.
#ifndef FISHERD_CLIENT_SESSION_NAME_H_
#define FISHERD_CLIENT_SESSION_NAME_H_

#include <string>

#include "absl/strings/string_view.h"

namespace grpc {
class ClientContext;
}  // namespace grpc

namespace fisherd::client {

// The gRPC metadata that names the session a call is about, by its bare id. A proxy in
// front of several fisherd replicas (HAProxy, nginx) hashes it to send every call of a
// session to the one replica that holds it. Every session-scoped call carries it;
// ListSessions and health checks do not.
inline constexpr char kSessionMetadataKey[] = "x-fisherd-session";

// "sessions/{id}" for an id; a name that already has the prefix is returned unchanged.
// Validity of the id itself is the server's to judge (one source of truth).
std::string SessionName(absl::string_view id_or_name);

// The bare id of "sessions/{id}" or of an id.
absl::string_view SessionId(absl::string_view id_or_name);

// Adds kSessionMetadataKey: SessionId(session) to the context. An empty session adds
// nothing (the server then names what is missing).
void AddSessionMetadata(grpc::ClientContext* context, absl::string_view session);

}  // namespace fisherd::client

#endif  // FISHERD_CLIENT_SESSION_NAME_H_
