// The one place where absl::Status and grpc::Status become each other: the server
// finishes every RPC through ToGrpcStatus, and the clients (the C++ client library and
// the benchmarks) read every answer through FromGrpcStatus.
//
// Codes and messages cross unchanged: core and server build messages for humans that
// name the field, worker and sequence a caller needs to act on, and clients branch on
// codes (INVALID_ARGUMENT: fix the request; FAILED_PRECONDITION: add samples or
// damping; RESOURCE_EXHAUSTED: a server limit; NOT_FOUND: a missing session).
#ifndef FISHERD_COMMON_GRPC_STATUS_H_
#define FISHERD_COMMON_GRPC_STATUS_H_

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "grpcpp/support/status.h"

namespace fisherd::common {

// Same code, same message. Codes absl knows but gRPC does not (there are none today)
// become UNKNOWN with the message kept.
grpc::Status ToGrpcStatus(const absl::Status& status);

// Same code, same message; grpc::Status::OK maps to absl::OkStatus(). With `context`
// (e.g. the RPC's name), the message reads "CONTEXT: MESSAGE".
absl::Status FromGrpcStatus(const grpc::Status& status, absl::string_view context = {});

}  // namespace fisherd::common

#endif  // FISHERD_COMMON_GRPC_STATUS_H_
