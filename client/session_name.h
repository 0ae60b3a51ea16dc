// Session resource names. The contract names sessions "sessions/{session_id}"; the client
// API also takes the bare id, because that is what people type.
#ifndef FISHERD_CLIENT_SESSION_NAME_H_
#define FISHERD_CLIENT_SESSION_NAME_H_

#include <string>

#include "absl/strings/string_view.h"

namespace fisherd::client {

// "sessions/{id}" for an id; a name that already has the prefix is returned unchanged.
// Validity of the id itself is the server's to judge (one source of truth).
std::string SessionName(absl::string_view id_or_name);

}  // namespace fisherd::client

#endif  // FISHERD_CLIENT_SESSION_NAME_H_
