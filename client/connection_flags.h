// The flags every command-line client shares to reach a server: the target, TLS and
// the bearer token. fisherctl and fisherd-demo both read them with ReadConnectionFlags.
#ifndef FISHERD_CLIENT_CONNECTION_FLAGS_H_
#define FISHERD_CLIENT_CONNECTION_FLAGS_H_

#include "absl/status/status.h"
#include "client/cli_flags.h"
#include "client/fisher_client.h"

namespace fisherd::client {

// Help text for the flags below, one per line, indented like the tools' usage.
extern const char kConnectionFlagsHelp[];

// Fills options->target (default 127.0.0.1:50051), options->tls and options->token
// from --target, --tls, --tls-ca, --tls-cert, --tls-key, --tls-server-name, --token and
// --token-file. TLS is on when --tls or any --tls-* flag is given. INVALID_ARGUMENT for
// a contradiction (--token with --token-file, an empty token); NOT_FOUND for an
// unreadable token file. TLS files are read later, by FisherClient::Create.
absl::Status ReadConnectionFlags(CliFlags& flags, ClientOptions* options);

}  // namespace fisherd::client

#endif  // FISHERD_CLIENT_CONNECTION_FLAGS_H_
