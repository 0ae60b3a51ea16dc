// FisherServer: a running fisherd, assembled from its parts (registry, work pool,
// service, health and reflection) on a real grpc::Server. main.cc and the service
// tests both use it, so the tests exercise exactly what the binary serves.
#ifndef FISHERD_SERVER_FISHER_SERVER_H_
#define FISHERD_SERVER_FISHER_SERVER_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/defaults.h"
#include "grpcpp/server.h"
#include "metrics/http_exporter.h"
#include "server/auth.h"
#include "server/durable_store.h"
#include "server/server_metrics.h"
#include "server/service.h"
#include "server/session_registry.h"
#include "server/work_pool.h"

namespace fisherd::server {

struct ServerOptions {
  // HOST:PORT to listen on; port 0 picks a free port (see FisherServer::address()).
  std::string listen = common::kDefaultAddress;
  RegistryLimits limits;
  // Largest message the server receives or sends (--max-message-mb).
  int max_message_bytes = 64 << 20;
  // Work pool threads; 0 means std::thread::hardware_concurrency() (at least 1).
  int math_threads = 0;
  // TLS key pair and, for mutual TLS, the CA that client certificates must chain to
  // (--tls-cert, --tls-key, --tls-client-ca). All empty: plaintext.
  TlsFiles tls;
  // A file holding the bearer token every FisherService call must carry
  // (--auth-token-file). Empty: no token required. Health never requires it.
  std::string auth_token_file;
  // HOST:PORT of a second, plaintext listener that serves only grpc.health.v1 (for
  // probes that cannot speak TLS, such as Kubernetes' gRPC probes). Empty: none.
  std::string health_listen;
  // How NOT_FOUND errors name this server, for clients that reach it through a proxy
  // routing sessions over several replicas (--replica-name). Empty: the host name and
  // the bound port, "host:port".
  std::string replica_name;
  // HOST:PORT of a plain-HTTP listener serving GET /metrics in Prometheus' text format
  // (--metrics-listen; port 0 picks a free port, see FisherServer::metrics_address()).
  // Empty: none; the metrics are kept anyway (ServerMetrics), for in-process readers.
  std::string metrics_listen;
  // Durable sessions: a data directory (--data-dir) and when to snapshot. An empty
  // data_dir keeps sessions in memory only.
  DurabilityOptions durability;
};

class FisherServer {
 public:
  // Builds and starts the server, first recovering the sessions of
  // options.durability.data_dir when set (see DurableStore::Open for its errors).
  // UNAVAILABLE when an address (--listen, --health-listen, --metrics-listen) cannot be
  // bound; INVALID_ARGUMENT / NOT_FOUND when the TLS or token files are unusable.
  static absl::StatusOr<std::unique_ptr<FisherServer>> Start(const ServerOptions& options);

  // Shuts down with a zero drain if Shutdown was not called.
  ~FisherServer();

  FisherServer(const FisherServer&) = delete;
  FisherServer& operator=(const FisherServer&) = delete;

  // "HOST:PORT" with the port actually bound (the listen host as given).
  const std::string& address() const { return address_; }
  // The name NOT_FOUND errors give this replica (ServerOptions::replica_name).
  const std::string& replica_name() const { return replica_name_; }
  int port() const { return port_; }
  // The health-only listener's bound port; 0 when there is none.
  int health_port() const { return health_port_; }
  // "HOST:PORT" of the metrics listener with the port bound; empty when there is none.
  const std::string& metrics_address() const { return metrics_address_; }

  ServerMetrics& metrics() { return *metrics_; }

  SessionRegistry& registry() { return *registry_; }
  // The data directory's store (nullptr when memory only) and what recovery found.
  DurableStore* store() { return store_.get(); }
  const RecoveryReport& recovery() const { return recovery_; }

  // Reports NOT_SERVING on the health service (so load balancers stop sending new
  // work), lets in-flight RPCs finish for up to `drain`, cancels the rest, and waits
  // until every handler has finished; with a data directory, then takes a last round of
  // snapshots (so the next start replays little); the metrics listener stops last, so
  // that a scrape during the drain still gets an answer. Idempotent.
  void Shutdown(absl::Duration drain);

 private:
  FisherServer() = default;

  std::string address_;
  std::string replica_name_;
  int port_ = 0;
  int health_port_ = 0;
  std::string metrics_address_;
  bool shut_down_ = false;
  // Declaration order is destruction order in reverse: the metrics listener and the
  // grpc::Server go first, then the service, then the pool (running whatever is queued),
  // then the sessions, and the metrics everything counts into last.
  std::unique_ptr<ServerMetrics> metrics_;
  std::unique_ptr<SessionRegistry> registry_;
  std::unique_ptr<DurableStore> store_;  // after the pool: queued tasks may log
  RecoveryReport recovery_;
  std::unique_ptr<WorkPool> pool_;
  std::unique_ptr<TokenAuthenticator> auth_;
  std::unique_ptr<FisherServiceImpl> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<grpc::Server> health_server_;  // only with ServerOptions::health_listen
  std::unique_ptr<metrics::MetricsHttpServer> metrics_http_;  // only with metrics_listen
};

}  // namespace fisherd::server

#endif  // FISHERD_SERVER_FISHER_SERVER_H_
