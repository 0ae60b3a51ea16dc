// How the client layer reads a failed call: grpc::Status becomes absl::Status through
// the one conversion the server and clients share (common/grpc_status.h; the server's
// message is kept verbatim because it names the field, worker and sequence that a
// caller needs to act on, docs/design.md section 4), and IsTransient says which
// failures are worth a retry.
#ifndef FISHERD_CLIENT_GRPC_STATUS_H_
#define FISHERD_CLIENT_GRPC_STATUS_H_

#include "absl/status/status.h"
#include "common/grpc_status.h"

namespace fisherd::client {

// Same code, same message. grpc::Status::OK maps to absl::OkStatus().
using ::fisherd::common::FromGrpcStatus;

// True for failures of the transport or of the server process rather than of the
// request: the same request may succeed if sent again (after a reconnect). Requests
// that are not idempotent must only be resent when the server deduplicates them (score
// batches with a worker_id and sequence are; NaturalGradientStep is not).
bool IsTransient(absl::StatusCode code);

}  // namespace fisherd::client

#endif  // FISHERD_CLIENT_GRPC_STATUS_H_
