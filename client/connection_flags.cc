#include "client/connection_flags.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/read_file.h"

namespace fisherd::client {
namespace {

absl::Status NotEmpty(absl::string_view flag, absl::string_view value) {
  if (!value.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("--", flag, " is empty"));
}

}  // namespace

void DefineConnectionFlags(ConnectionFlags* flags, CliFlags* set) {
  set->AddString("target", &flags->target, "HOST:PORT of the server");
  set->AddBool("tls", &flags->tls, "use TLS, trusting the system's CA certificates");
  set->AddString("tls-ca", &flags->tls_ca,
                 "use TLS, trusting the CA certificates in this PEM file");
  set->AddString("tls-cert", &flags->tls_cert,
                 "client certificate (PEM), for mutual TLS; needs --tls-key");
  set->AddString("tls-key", &flags->tls_key, "private key (PEM) of --tls-cert");
  set->AddString("tls-server-name", &flags->tls_server_name,
                 "expect this name in the server's certificate instead of the target's host");
  set->AddString("token-file", &flags->token_file,
                 "send the bearer token in this file (authorization metadata)");
  set->AddStringCheck("token-file", [](absl::string_view v) { return NotEmpty("token-file", v); });
  set->AddString("token", &flags->token, "the same, from the command line (visible to `ps`)");
  set->AddStringCheck("token", [](absl::string_view v) { return NotEmpty("token", v); });
}

absl::Status ReadConnectionFlags(const ConnectionFlags& flags, ClientOptions* options) {
  options->target = flags.target;
  ClientTlsOptions& t = options->tls;
  t.root_certs_file = flags.tls_ca;
  t.cert_chain_file = flags.tls_cert;
  t.private_key_file = flags.tls_key;
  t.server_name_override = flags.tls_server_name;
  t.enabled = flags.tls || !t.root_certs_file.empty() || !t.cert_chain_file.empty() ||
              !t.private_key_file.empty() || !t.server_name_override.empty();
  if (t.cert_chain_file.empty() != t.private_key_file.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
  }

  if (!flags.token.empty() && !flags.token_file.empty()) {
    return absl::InvalidArgumentError("give --token or --token-file, not both");
  }
  if (!flags.token.empty()) {
    options->token = flags.token;
  } else if (!flags.token_file.empty()) {
    absl::StatusOr<std::string> text = common::ReadFileToString(flags.token_file);
    if (!text.ok()) {
      return absl::Status(text.status().code(),
                          absl::StrCat("--token-file: ", text.status().message()));
    }
    options->token = std::string(absl::StripAsciiWhitespace(*text));
    if (options->token.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--token-file=", flags.token_file, " is empty"));
    }
  }
  return absl::OkStatus();
}

}  // namespace fisherd::client
