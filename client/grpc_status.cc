#include "client/grpc_status.h"

namespace fisherd::client {

bool IsTransient(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kUnavailable:  // connection refused/reset, server draining
    case absl::StatusCode::kAborted:      // concurrency conflict on the server side
    // A stream cancelled by the server (for example on shutdown) reports CANCELLED; the
    // client layer never cancels a call it still needs, so seeing it means "try again".
    case absl::StatusCode::kCancelled:
    // Only stream deadlines reach the callers of IsTransient(); a stream that outlived
    // its deadline is reopened, and the sequence numbers make the resends harmless.
    case absl::StatusCode::kDeadlineExceeded:
      return true;
    default:
      return false;
  }
}

}  // namespace fisherd::client
