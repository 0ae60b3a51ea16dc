// Vectors of doubles as raw little-endian IEEE float32 bytes, the encoding of the proto's
// gradient_f32 and update_f32 fields. One home for both ends of the wire: the clients
// encode gradients and decode updates, the server the other way round.
#ifndef FISHERD_COMMON_FLOAT32_BYTES_H_
#define FISHERD_COMMON_FLOAT32_BYTES_H_

#include <string>

#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace fisherd::common {

// Appends each value rounded to the nearest float32 (beyond float32's range: +-infinity),
// 4 bytes each, to *out.
void AppendAsFloat32(absl::Span<const double> values, std::string* out);

// Widens bytes.size() / 4 float32 values into out[0, bytes.size() / 4).
// REQUIRES: bytes.size() is a multiple of 4 and out has room for that many values.
void WidenFloat32(absl::string_view bytes, double* out);

}  // namespace fisherd::common

#endif  // FISHERD_COMMON_FLOAT32_BYTES_H_
