#include "client/session_name.h"

#include <grpcpp/client_context.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace fisherd::client {

namespace {
constexpr absl::string_view kPrefix = "sessions/";
}  // namespace

std::string SessionName(absl::string_view id_or_name) {
  if (absl::StartsWith(id_or_name, kPrefix)) return std::string(id_or_name);
  return absl::StrCat(kPrefix, id_or_name);
}

absl::string_view SessionId(absl::string_view id_or_name) {
  return absl::StripPrefix(id_or_name, kPrefix);
}

void AddSessionMetadata(grpc::ClientContext* context, absl::string_view session) {
  const absl::string_view id = SessionId(session);
  if (!id.empty()) context->AddMetadata(kSessionMetadataKey, std::string(id));
}

}  // namespace fisherd::client
