#include "client/health_wire.h"

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace fisherd::client {
namespace {

// Protobuf wire types (the low three bits of a field's tag).
constexpr uint32_t kVarint = 0;
constexpr uint32_t kFixed64 = 1;
constexpr uint32_t kLengthDelimited = 2;
constexpr uint32_t kFixed32 = 5;

void AppendVarint(uint64_t value, std::string* out) {
  while (value >= 0x80) {
    out->push_back(static_cast<char>((value & 0x7f) | 0x80));
    value >>= 7;
  }
  out->push_back(static_cast<char>(value));
}

// Reads a base-128 varint at *pos, advancing it. False on truncation or > 10 bytes.
bool ReadVarint(absl::string_view bytes, size_t* pos, uint64_t* value) {
  *value = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (*pos >= bytes.size()) return false;
    const uint8_t byte = static_cast<uint8_t>(bytes[(*pos)++]);
    *value |= static_cast<uint64_t>(byte & 0x7f) << shift;
    if ((byte & 0x80) == 0) return true;
  }
  return false;
}

}  // namespace

const char* ServingStatusName(ServingStatus status) {
  switch (status) {
    case ServingStatus::kUnknown:
      return "UNKNOWN";
    case ServingStatus::kServing:
      return "SERVING";
    case ServingStatus::kNotServing:
      return "NOT_SERVING";
    case ServingStatus::kServiceUnknown:
      return "SERVICE_UNKNOWN";
  }
  return "UNKNOWN";
}

std::string EncodeHealthCheckRequest(absl::string_view service) {
  std::string out;
  if (service.empty()) return out;  // proto3 omits default values
  AppendVarint((1u << 3) | kLengthDelimited, &out);
  AppendVarint(service.size(), &out);
  out.append(service.data(), service.size());
  return out;
}

absl::StatusOr<ServingStatus> DecodeHealthCheckResponse(absl::string_view bytes) {
  uint64_t status = 0;  // proto3 default when the field is absent
  size_t pos = 0;
  while (pos < bytes.size()) {
    uint64_t tag;
    if (!ReadVarint(bytes, &pos, &tag)) {
      return absl::InvalidArgumentError("HealthCheckResponse: truncated tag");
    }
    const uint64_t field = tag >> 3;
    const uint32_t wire_type = static_cast<uint32_t>(tag & 7);
    uint64_t value = 0;
    switch (wire_type) {
      case kVarint:
        if (!ReadVarint(bytes, &pos, &value)) {
          return absl::InvalidArgumentError("HealthCheckResponse: truncated varint");
        }
        if (field == 1) status = value;  // last one wins, as in protobuf
        break;
      case kFixed64:
      case kFixed32: {
        const size_t width = wire_type == kFixed64 ? 8 : 4;
        if (bytes.size() - pos < width) {
          return absl::InvalidArgumentError("HealthCheckResponse: truncated fixed field");
        }
        pos += width;
        break;
      }
      case kLengthDelimited:
        if (!ReadVarint(bytes, &pos, &value) || bytes.size() - pos < value) {
          return absl::InvalidArgumentError("HealthCheckResponse: truncated bytes field");
        }
        pos += value;
        break;
      default:
        return absl::InvalidArgumentError(
            absl::StrCat("HealthCheckResponse: unsupported wire type ", wire_type));
    }
  }
  // Enum values this client does not know are reported as UNKNOWN, never as SERVING.
  if (status > static_cast<uint64_t>(ServingStatus::kServiceUnknown)) {
    return ServingStatus::kUnknown;
  }
  return static_cast<ServingStatus>(status);
}

}  // namespace fisherd::client
