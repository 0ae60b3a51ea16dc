// Hand-written wire format of the two grpc.health.v1 messages the client needs.
//
// Debian's libgrpc++ does not ship generated grpc.health.v1 stubs as public headers,
// and the contract under proto/ is ours to keep free of vendored protos, so the client
// calls /grpc.health.v1.Health/Check through grpc::GenericStub with these bytes:
//
//   message HealthCheckRequest  { string service = 1; }
//   message HealthCheckResponse { ServingStatus status = 1; }   // enum, varint
//   enum ServingStatus { UNKNOWN = 0; SERVING = 1; NOT_SERVING = 2; SERVICE_UNKNOWN = 3; }
//
// An empty service name ("the whole server") encodes to zero bytes.
#ifndef FISHERD_CLIENT_HEALTH_WIRE_H_
#define FISHERD_CLIENT_HEALTH_WIRE_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace fisherd::client {

// Values of grpc.health.v1.HealthCheckResponse.ServingStatus.
enum class ServingStatus {
  kUnknown = 0,
  kServing = 1,
  kNotServing = 2,
  kServiceUnknown = 3,  // only sent by the Watch RPC; listed for completeness
};

// "SERVING", "NOT_SERVING", ... as the health protocol spells them.
const char* ServingStatusName(ServingStatus status);

// Serialized HealthCheckRequest{service}.
std::string EncodeHealthCheckRequest(absl::string_view service);

// Parses a serialized HealthCheckResponse. Unknown fields are skipped, as protobuf
// parsers do, so a newer server that adds fields still decodes. A missing status field
// is its proto3 default, UNKNOWN. INVALID_ARGUMENT for malformed bytes.
absl::StatusOr<ServingStatus> DecodeHealthCheckResponse(absl::string_view bytes);

}  // namespace fisherd::client

#endif  // FISHERD_CLIENT_HEALTH_WIRE_H_
