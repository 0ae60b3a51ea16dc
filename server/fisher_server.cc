#include "server/fisher_server.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "grpc/grpc.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"
#include "server/call_metrics.h"

namespace fisherd::server {
namespace {

// The host part of HOST:PORT ("[::1]" stays bracketed).
absl::string_view HostOf(absl::string_view listen) {
  const size_t colon = listen.rfind(':');
  return colon == absl::string_view::npos ? listen : listen.substr(0, colon);
}

// This machine's name (a StatefulSet pod's is its stable identity, e.g. fisherd-1).
std::string HostName() {
  char name[256] = {};
  if (gethostname(name, sizeof name - 1) != 0 || name[0] == '\0') return "localhost";
  return name;
}

// Every call on `builder`'s server counted in fisherd_grpc_calls_total.
void CountCalls(ServerMetrics* metrics, grpc::ServerBuilder* builder) {
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> creators;
  creators.push_back(std::make_unique<CallMetricsFactory>(metrics));
  builder->experimental().SetInterceptorCreators(std::move(creators));
}

}  // namespace

absl::StatusOr<std::unique_ptr<FisherServer>> FisherServer::Start(const ServerOptions& options) {
  // Both are process-wide switches that must be set before a ServerBuilder exists.
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();

  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials =
      MakeServerCredentials(options.tls);
  if (!credentials.ok()) return credentials.status();

  std::unique_ptr<TokenAuthenticator> auth;
  if (!options.auth_token_file.empty()) {
    absl::StatusOr<std::unique_ptr<TokenAuthenticator>> loaded =
        TokenAuthenticator::FromFile(options.auth_token_file);
    if (!loaded.ok()) return loaded.status();
    auth = *std::move(loaded);
  }

  std::unique_ptr<FisherServer> server(new FisherServer());
  server->auth_ = std::move(auth);
  int threads = options.math_threads;
  if (threads <= 0) threads = static_cast<int>(std::thread::hardware_concurrency());
  if (threads <= 0) threads = 1;
  const bool durable = !options.durability.data_dir.empty();
  server->metrics_ = std::make_unique<ServerMetrics>(durable);
  server->registry_ = std::make_unique<SessionRegistry>(options.limits);
  server->metrics_->WatchSessions(server->registry_.get());
  if (!options.metrics_listen.empty()) {
    // First, so that a busy port fails the start before a long recovery, and before any
    // gRPC port opens; scrapes during recovery see the sessions come back.
    absl::StatusOr<std::unique_ptr<metrics::MetricsHttpServer>> http =
        metrics::MetricsHttpServer::Start(
            options.metrics_listen,
            [metrics = server->metrics_.get()] { return metrics->Render(); });
    if (!http.ok()) {
      server->shut_down_ = true;
      return absl::Status(http.status().code(),
                          absl::StrCat("--metrics-listen: ", http.status().message()));
    }
    server->metrics_http_ = *std::move(http);
    server->metrics_address_ =
        absl::StrCat(HostOf(options.metrics_listen), ":", server->metrics_http_->port());
  }
  if (durable) {
    DurabilityOptions durability = options.durability;
    durability.on_log_sync = [metrics = server->metrics_.get()](double seconds) {
      metrics->RecordLogSync(seconds);
    };
    // Recovery before the port opens: no client sees a session half recovered.
    absl::StatusOr<std::unique_ptr<DurableStore>> store =
        DurableStore::Open(durability, server->registry_.get(), &server->recovery_);
    if (!store.ok()) {
      server->shut_down_ = true;
      return store.status();
    }
    server->store_ = std::move(*store);
  }
  server->pool_ = std::make_unique<WorkPool>(threads);
  server->service_ = std::make_unique<FisherServiceImpl>(
      server->registry_.get(), server->pool_.get(), options.max_message_bytes, server->auth_.get(),
      server->store_.get(), server->metrics_.get());

  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, *credentials, &server->port_);
  // gRPC sets SO_REUSEPORT by default, which would let a second fisherd silently share
  // a port with the first; a busy port must be an error instead.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.SetMaxReceiveMessageSize(options.max_message_bytes);
  builder.SetMaxSendMessageSize(options.max_message_bytes);
  builder.RegisterService(server->service_.get());
  CountCalls(server->metrics_.get(), &builder);
  server->server_ = builder.BuildAndStart();
  if (server->server_ == nullptr || server->port_ == 0) {
    if (server->server_ != nullptr) server->server_->Shutdown();
    server->shut_down_ = true;
    return absl::UnavailableError(absl::StrCat("cannot listen on ", options.listen,
                                               " (address in use, not local, or malformed?)"));
  }
  server->address_ = absl::StrCat(HostOf(options.listen), ":", server->port_);
  server->replica_name_ = options.replica_name.empty()
                              ? absl::StrCat(HostName(), ":", server->port_)
                              : options.replica_name;
  server->registry_->SetReplicaName(server->replica_name_);
  if (!options.health_listen.empty()) {
    // Its own grpc::Server, so that nothing but health is reachable without TLS.
    grpc::ServerBuilder health_builder;
    health_builder.AddListeningPort(options.health_listen, grpc::InsecureServerCredentials(),
                                    &server->health_port_);
    health_builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
    CountCalls(server->metrics_.get(), &health_builder);
    server->health_server_ = health_builder.BuildAndStart();
    if (server->health_server_ == nullptr || server->health_port_ == 0) {
      return absl::UnavailableError(
          absl::StrCat("cannot listen on ", options.health_listen, " (--health-listen)"));
    }
  }
  for (grpc::Server* s : {server->server_.get(), server->health_server_.get()}) {
    if (s == nullptr) continue;
    if (grpc::HealthCheckServiceInterface* health = s->GetHealthCheckService()) {
      // The overall status ("") is SERVING from the start; name the service too so
      // that probes asking for it by name get an answer.
      health->SetServingStatus(v1::FisherService::service_full_name(), true);
    }
  }
  return server;
}

void FisherServer::Shutdown(absl::Duration drain) {
  if (shut_down_) return;
  shut_down_ = true;
  for (grpc::Server* s : {server_.get(), health_server_.get()}) {
    if (s == nullptr) continue;
    if (grpc::HealthCheckServiceInterface* health = s->GetHealthCheckService()) {
      health->SetServingStatus(false);
    }
  }
  const auto deadline = std::chrono::system_clock::now() + absl::ToChronoMilliseconds(drain);
  // Stops accepting, waits for in-flight calls until the deadline, then cancels them;
  // returns once every reactor is done (pool tasks finish their calls even then).
  server_->Shutdown(deadline);
  server_->Wait();
  if (health_server_ != nullptr) {
    health_server_->Shutdown(std::chrono::system_clock::now());
    health_server_->Wait();
  }
  if (store_ != nullptr) {
    if (absl::Status status = store_->Drain(); !status.ok()) {
      // Nothing is lost: the log still holds what the snapshots would have.
      std::fprintf(stderr, "fisherd: the snapshots on drain failed (the log is kept): %s\n",
                   std::string(status.message()).c_str());
    }
  }
  if (metrics_http_ != nullptr) metrics_http_->Stop();
}

FisherServer::~FisherServer() { Shutdown(absl::ZeroDuration()); }

}  // namespace fisherd::server
