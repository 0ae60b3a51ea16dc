#include "client/session_name.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace fisherd::client {

std::string SessionName(absl::string_view id_or_name) {
  constexpr absl::string_view kPrefix = "sessions/";
  if (absl::StartsWith(id_or_name, kPrefix)) return std::string(id_or_name);
  return absl::StrCat(kPrefix, id_or_name);
}

}  // namespace fisherd::client
