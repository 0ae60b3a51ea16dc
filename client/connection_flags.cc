#include "client/connection_flags.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace fisherd::client {

const char kConnectionFlagsHelp[] =
    R"(  --target=HOST:PORT           server address (default 127.0.0.1:50051)
  --tls                        use TLS, trusting the system's CA certificates
  --tls-ca=FILE                use TLS, trusting the CA certificates in FILE (PEM)
  --tls-cert=FILE --tls-key=FILE
                               client certificate and key (PEM), for mutual TLS
  --tls-server-name=NAME       expect NAME in the server's certificate instead of the
                               target's host
  --token-file=FILE            send the bearer token in FILE (authorization metadata)
  --token=TOKEN                the same, from the command line (visible to `ps`)
)";

absl::Status ReadConnectionFlags(CliFlags& flags, ClientOptions* options) {
  options->target = flags.GetString("target", "127.0.0.1:50051");

  absl::StatusOr<bool> tls = flags.GetBool("tls", false);
  if (!tls.ok()) return tls.status();
  ClientTlsOptions& t = options->tls;
  t.root_certs_file = flags.GetString("tls-ca", "");
  t.cert_chain_file = flags.GetString("tls-cert", "");
  t.private_key_file = flags.GetString("tls-key", "");
  t.server_name_override = flags.GetString("tls-server-name", "");
  t.enabled = *tls || !t.root_certs_file.empty() || !t.cert_chain_file.empty() ||
              !t.private_key_file.empty() || !t.server_name_override.empty();
  if (t.cert_chain_file.empty() != t.private_key_file.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
  }

  const bool has_token = flags.Has("token");
  const std::string token = flags.GetString("token", "");
  const std::string token_file = flags.GetString("token-file", "");
  if (has_token && !token_file.empty()) {
    return absl::InvalidArgumentError("give --token or --token-file, not both");
  }
  if (has_token) {
    if (token.empty() || token == "true") return absl::InvalidArgumentError("--token is empty");
    options->token = token;
  } else if (flags.Has("token-file")) {
    std::ifstream in(token_file, std::ios::binary);
    if (!in) {
      return absl::NotFoundError(
          absl::StrCat("--token-file=", token_file, ": ", std::strerror(errno)));
    }
    std::ostringstream text;
    text << in.rdbuf();
    options->token = std::string(absl::StripAsciiWhitespace(text.str()));
    if (options->token.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("--token-file=", token_file, " is empty"));
    }
  }
  return absl::OkStatus();
}

}  // namespace fisherd::client
