// Defaults the server and its clients must agree on, in one place.
#ifndef FISHERD_COMMON_DEFAULTS_H_
#define FISHERD_COMMON_DEFAULTS_H_

namespace fisherd::common {

// Where fisherd listens (--listen) and where clients look for it (--target) unless
// told otherwise.
inline constexpr char kDefaultAddress[] = "127.0.0.1:50051";

}  // namespace fisherd::common

#endif  // FISHERD_COMMON_DEFAULTS_H_
