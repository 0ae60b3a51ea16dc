// The one place where core's absl::Status becomes the grpc::Status a client sees.
//
// Every handler finishes through ToGrpcStatus so that codes and messages cross the
// layer boundary unchanged: core and server build messages for humans, and clients
// branch on codes (INVALID_ARGUMENT: fix the request; FAILED_PRECONDITION: add samples
// or damping; RESOURCE_EXHAUSTED: a server limit; NOT_FOUND: a missing session).
#ifndef FISHERD_SERVER_STATUS_MAPPING_H_
#define FISHERD_SERVER_STATUS_MAPPING_H_

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace fisherd::server {

// Same code, same message. Codes absl knows but gRPC does not (there are none today)
// become UNKNOWN with the message kept.
grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace fisherd::server

#endif  // FISHERD_SERVER_STATUS_MAPPING_H_
