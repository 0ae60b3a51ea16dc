// Transport security and the bearer token, in one place for the whole server.
//
// TLS (--tls-cert, --tls-key) and mutual TLS (--tls-client-ca) are gRPC server
// credentials: a plaintext client, or one without a certificate signed by the client
// CA, is refused during the handshake and never reaches a handler.
//
// The token (--auth-token-file) is checked per call by TokenAuthenticator. It works
// over plaintext as well as TLS (for use behind a TLS-terminating proxy), which is why
// it is not a grpc::AuthMetadataProcessor (those run only on secure credentials).
// FisherServiceImpl calls Check() first thing in every RPC, before a handler sees the
// request. grpc.health.v1.Health stays reachable without a token (probes carry none).
// Server reflection also stays open: it describes only the public contract
// (proto/fisherd/v1), never sessions or data, and lets tools discover the API.
#ifndef FISHERD_SERVER_AUTH_H_
#define FISHERD_SERVER_AUTH_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/status.h"

namespace fisherd::server {

// Where the TLS material lives; all empty means plaintext.
struct TlsFiles {
  std::string cert_file;       // PEM certificate chain of the server
  std::string key_file;        // PEM private key of that certificate
  std::string client_ca_file;  // PEM CA bundle; set: clients must present a cert it signed
};

// Plaintext when files is all empty; TLS with the given key pair otherwise, and mutual
// TLS (client certificate required and verified) when client_ca_file is set.
// INVALID_ARGUMENT for an incomplete combination (a cert without a key, a client CA
// without a server certificate) or a file that does not look like PEM.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TlsFiles& files);

// Compares in time that depends only on the lengths, never on where they differ.
bool ConstantTimeEquals(absl::string_view a, absl::string_view b);

class TokenAuthenticator {
 public:
  // Reads the token from `path`; surrounding whitespace (a trailing newline) is
  // ignored. INVALID_ARGUMENT for an empty token or one with inner whitespace or
  // control characters.
  static absl::StatusOr<std::unique_ptr<TokenAuthenticator>> FromFile(const std::string& path);
  // REQUIRES: token is non-empty.
  explicit TokenAuthenticator(std::string token) : token_(std::move(token)) {}

  // OK when the call carries `authorization: Bearer <token>` (scheme case-insensitive);
  // UNAUTHENTICATED with a message saying what is missing or wrong otherwise.
  grpc::Status Check(const grpc::ServerContextBase& context) const;

 private:
  const std::string token_;
};

}  // namespace fisherd::server

#endif  // FISHERD_SERVER_AUTH_H_
