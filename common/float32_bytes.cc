#include "common/float32_bytes.h"

#include <cstring>

namespace fisherd::common {

static_assert(sizeof(float) == 4, "float32 on the wire");
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "fisherd's float32 fields are copied as host floats: a little-endian host is required"
#endif

void AppendAsFloat32(absl::Span<const double> values, std::string* out) {
  const size_t start = out->size();
  out->resize(start + values.size() * sizeof(float));
  char* bytes = out->data() + start;
  for (const double value : values) {
    const float rounded = static_cast<float>(value);
    std::memcpy(bytes, &rounded, sizeof(float));
    bytes += sizeof(float);
  }
}

void WidenFloat32(absl::string_view bytes, double* out) {
  // memcpy, never a cast: protobuf gives bytes no alignment.
  for (size_t at = 0; at + sizeof(float) <= bytes.size(); at += sizeof(float)) {
    float value;
    std::memcpy(&value, bytes.data() + at, sizeof(float));
    *out++ = value;
  }
}

}  // namespace fisherd::common
