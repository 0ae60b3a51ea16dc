#include "server/flags.h"

#include <algorithm>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace fisherd::server {

namespace {

// OK if `address` is HOST:PORT with a port in [0, 65535]; the error names `flag`.
absl::Status CheckAddress(absl::string_view flag, absl::string_view address) {
  const size_t colon = address.rfind(':');
  int port = -1;
  if (colon == absl::string_view::npos || colon == 0 ||
      !absl::SimpleAtoi(address.substr(colon + 1), &port) || port < 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, "=", address,
                     ": expected HOST:PORT with a port in [0, 65535] (0 picks a free port)"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckListenAddress(absl::string_view listen) { return CheckAddress("listen", listen); }

void DefineServerFlags(ServerFlags* flags, FlagSet* set) {
  set->LastValueWins();
  if (flags->math_threads <= 0) {
    flags->math_threads = std::max(1u, std::thread::hardware_concurrency());
  }
  set->AddString("listen", &flags->listen,
                 "HOST:PORT to serve on; port 0 picks a free port. The bound address is "
                 "printed as 'fisherd listening on HOST:PORT'.");
  set->AddStringCheck("listen", CheckListenAddress);
  set->AddInt("max-sessions", &flags->max_sessions, 1, 1 << 20,
              "Most sessions alive at once; CreateSession beyond it is RESOURCE_EXHAUSTED.");
  set->AddInt("max-dense-dim", &flags->max_dense_dim, 1, int64_t{1} << 24,
              "Largest dim of a DENSE session (memory 8*dim^2 bytes); use DIAGONAL beyond it.");
  set->AddInt("memory-budget-mb", &flags->memory_budget_mb, 1, int64_t{1} << 30,
              "Budget in MiB for the statistics of all sessions together, checked before "
              "a session is allocated.");
  set->AddInt("max-message-mb", &flags->max_message_mb, 1, 2047,
              "Largest gRPC message, in MiB, the server receives or sends.");
  set->AddInt("math-threads", &flags->math_threads, 1, 1024,
              "Threads that decode, accumulate and solve (default: the number of CPUs).");
  set->AddDouble("drain-seconds", &flags->drain_seconds, 0, 24 * 3600,
                 "On SIGTERM/SIGINT, how long in-flight calls may run before they are "
                 "cancelled.");
  set->AddString("tls-cert", &flags->tls_cert,
                 "PEM certificate chain; with --tls-key, serve TLS only (plaintext clients "
                 "are refused at the handshake).");
  set->AddString("tls-key", &flags->tls_key, "PEM private key of --tls-cert.");
  set->AddString("tls-client-ca", &flags->tls_client_ca,
                 "PEM CA bundle; clients must present a certificate it signed (mutual TLS). "
                 "Needs --tls-cert and --tls-key.");
  set->AddString("auth-token-file", &flags->auth_token_file,
                 "File holding a bearer token; every call but health must send metadata "
                 "'authorization: Bearer <token>' (works over plaintext too).");
  set->AddString("health-listen", &flags->health_listen,
                 "HOST:PORT of an extra plaintext listener serving only grpc.health.v1, for "
                 "probes that cannot use TLS (Kubernetes gRPC probes). Empty: none.");
  set->AddStringCheck("health-listen", [](absl::string_view value) {
    return value.empty() ? absl::OkStatus() : CheckAddress("health-listen", value);
  });
  set->AddString("replica-name", &flags->replica_name,
                 "How NOT_FOUND errors name this server when several replicas sit behind a "
                 "proxy that routes sessions (default: host name and bound port).");
  set->AddString("metrics-listen", &flags->metrics_listen,
                 "HOST:PORT of a plain-HTTP listener serving GET /metrics in Prometheus' text "
                 "format; port 0 picks a free port, printed as 'fisherd metrics on HOST:PORT'. "
                 "Empty: none.");
  set->AddStringCheck("metrics-listen", [](absl::string_view value) {
    return value.empty() ? absl::OkStatus() : CheckAddress("metrics-listen", value);
  });
  set->AddString("data-dir", &flags->data_dir,
                 "Directory for durable sessions: every change is logged and fdatasync'd "
                 "before it is acknowledged, snapshots are taken, and a restart recovers "
                 "every session. Empty: sessions live in memory only.");
  set->AddDouble("snapshot-interval-seconds", &flags->snapshot_interval_seconds, 0, 7 * 24 * 3600,
                 "With --data-dir: snapshot every session this often while anything changed "
                 "(0: only by log size and on drain).");
  set->AddInt("snapshot-log-mb", &flags->snapshot_log_mb, 1, int64_t{1} << 30,
              "With --data-dir: snapshot every session when the log has grown this many MiB "
              "since the last snapshots.");
}

ServerFlags::ServerFlags(const ServerOptions& defaults)
    : listen(defaults.listen),
      max_sessions(defaults.limits.max_sessions),
      max_dense_dim(defaults.limits.max_dense_dim),
      memory_budget_mb(static_cast<int64_t>(defaults.limits.memory_budget_bytes >> 20)),
      max_message_mb(defaults.max_message_bytes >> 20),
      math_threads(defaults.math_threads),
      tls_cert(defaults.tls.cert_file),
      tls_key(defaults.tls.key_file),
      tls_client_ca(defaults.tls.client_ca_file),
      auth_token_file(defaults.auth_token_file),
      health_listen(defaults.health_listen),
      replica_name(defaults.replica_name),
      metrics_listen(defaults.metrics_listen),
      data_dir(defaults.durability.data_dir),
      snapshot_interval_seconds(absl::ToDoubleSeconds(defaults.durability.snapshot_interval)),
      snapshot_log_mb(static_cast<int64_t>(defaults.durability.snapshot_log_bytes >> 20)) {}

ServerOptions ServerFlags::ToServerOptions() const {
  ServerOptions options;
  options.listen = listen;
  options.limits.max_sessions = max_sessions;
  options.limits.max_dense_dim = max_dense_dim;
  options.limits.memory_budget_bytes = static_cast<uint64_t>(memory_budget_mb) << 20;
  options.max_message_bytes = static_cast<int>(max_message_mb << 20);
  options.math_threads = static_cast<int>(math_threads);
  options.tls.cert_file = tls_cert;
  options.tls.key_file = tls_key;
  options.tls.client_ca_file = tls_client_ca;
  options.auth_token_file = auth_token_file;
  options.health_listen = health_listen;
  options.replica_name = replica_name;
  options.metrics_listen = metrics_listen;
  options.durability.data_dir = data_dir;
  options.durability.snapshot_interval = absl::Seconds(snapshot_interval_seconds);
  options.durability.snapshot_log_bytes = static_cast<uint64_t>(snapshot_log_mb) << 20;
  return options;
}

}  // namespace fisherd::server
