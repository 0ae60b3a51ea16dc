// The flags every command-line client shares to reach a server: the target, TLS and
// the bearer token. fisherctl and fisherd-demo both declare them with
// DefineConnectionFlags and turn them into ClientOptions with ReadConnectionFlags.
#ifndef FISHERD_CLIENT_CONNECTION_FLAGS_H_
#define FISHERD_CLIENT_CONNECTION_FLAGS_H_

#include <string>

#include "absl/status/status.h"
#include "client/cli_flags.h"
#include "client/fisher_client.h"

namespace fisherd::client {

// The values of --target, --tls, --tls-ca, --tls-cert, --tls-key, --tls-server-name,
// --token and --token-file. Default-constructed: the defaults of ClientOptions.
struct ConnectionFlags {
  std::string target = ClientOptions().target;
  bool tls = false;
  std::string tls_ca;
  std::string tls_cert;
  std::string tls_key;
  std::string tls_server_name;
  std::string token;
  std::string token_file;
};

// Declares the flags above on *set, bound to *flags. REQUIRES: flags outlives set.
// An empty --token or --token-file is a parse error.
void DefineConnectionFlags(ConnectionFlags* flags, CliFlags* set);

// Fills options->target, options->tls and options->token from parsed flags. TLS is on
// when --tls or any --tls-* flag is given. INVALID_ARGUMENT for a contradiction
// (--tls-cert without --tls-key, --token with --token-file, an empty token file);
// NOT_FOUND / PERMISSION_DENIED for an unreadable token file. TLS files are read later,
// by FisherClient::Create.
absl::Status ReadConnectionFlags(const ConnectionFlags& flags, ClientOptions* options);

}  // namespace fisherd::client

#endif  // FISHERD_CLIENT_CONNECTION_FLAGS_H_
