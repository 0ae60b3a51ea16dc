#include "server/auth.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/read_file.h"

namespace fisherd::server {
namespace {

using ::fisherd::common::ReadFileToString;

constexpr absl::string_view kAuthorizationKey = "authorization";
constexpr absl::string_view kBearer = "bearer ";

absl::Status CheckPem(const std::string& text, const std::string& path, absl::string_view flag) {
  if (!absl::StrContains(text, "-----BEGIN ")) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, "=", path, ": not a PEM file (no -----BEGIN line)"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TlsFiles& files) {
  if (files.cert_file.empty() && files.key_file.empty() && files.client_ca_file.empty()) {
    return grpc::InsecureServerCredentials();
  }
  if (files.cert_file.empty() || files.key_file.empty()) {
    return absl::InvalidArgumentError(
        "TLS needs both --tls-cert and --tls-key (and --tls-client-ca needs them too)");
  }
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  absl::StatusOr<std::string> cert = ReadFileToString(files.cert_file);
  if (!cert.ok()) return cert.status();
  if (absl::Status s = CheckPem(*cert, files.cert_file, "--tls-cert"); !s.ok()) return s;
  absl::StatusOr<std::string> key = ReadFileToString(files.key_file);
  if (!key.ok()) return key.status();
  if (absl::Status s = CheckPem(*key, files.key_file, "--tls-key"); !s.ok()) return s;
  pair.cert_chain = *std::move(cert);
  pair.private_key = *std::move(key);

  grpc::SslServerCredentialsOptions options(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  if (!files.client_ca_file.empty()) {
    absl::StatusOr<std::string> ca = ReadFileToString(files.client_ca_file);
    if (!ca.ok()) return ca.status();
    if (absl::Status s = CheckPem(*ca, files.client_ca_file, "--tls-client-ca"); !s.ok()) {
      return s;
    }
    options.pem_root_certs = *std::move(ca);
    options.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
    options.force_client_auth = true;
  }
  options.pem_key_cert_pairs.push_back(std::move(pair));
  return grpc::SslServerCredentials(options);
}

bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  // Walk the longer of the two in full so that the time reveals neither the position
  // of the first difference nor, beyond the length, anything of the secret.
  const size_t n = a.size() > b.size() ? a.size() : b.size();
  volatile unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff = diff | static_cast<unsigned char>(x ^ y);
  }
  return diff == 0;
}

absl::StatusOr<std::unique_ptr<TokenAuthenticator>> TokenAuthenticator::FromFile(
    const std::string& path) {
  absl::StatusOr<std::string> text = ReadFileToString(path);
  if (!text.ok()) return text.status();
  const absl::string_view token = absl::StripAsciiWhitespace(*text);
  if (token.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--auth-token-file=", path, ": the file is empty"));
  }
  for (const char c : token) {
    if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f) {
      return absl::InvalidArgumentError(
          absl::StrCat("--auth-token-file=", path,
                       ": the token must be one line of printable characters without spaces"));
    }
  }
  return std::make_unique<TokenAuthenticator>(std::string(token));
}

grpc::Status TokenAuthenticator::Check(const grpc::ServerContextBase& context) const {
  const auto& metadata = context.client_metadata();
  const auto found =
      metadata.find(grpc::string_ref(kAuthorizationKey.data(), kAuthorizationKey.size()));
  if (found == metadata.end()) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "this server requires a token: send metadata "
                        "'authorization: Bearer <token>'");
  }
  const absl::string_view value(found->second.data(), found->second.size());
  if (value.size() < kBearer.size() ||
      !absl::EqualsIgnoreCase(value.substr(0, kBearer.size()), kBearer)) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "the authorization metadata must read 'Bearer <token>'");
  }
  const absl::string_view presented = absl::StripAsciiWhitespace(value.substr(kBearer.size()));
  if (!ConstantTimeEquals(presented, token_)) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "invalid token");
  }
  return grpc::Status::OK;
}

}  // namespace fisherd::server
