// Counts every completed RPC in fisherd_grpc_calls_total{method, code}: a gRPC server
// interceptor, so that each call is counted exactly once, whatever ends it (a handler,
// the token check, a stream's rejected batch), and without touching the handlers.
#ifndef FISHERD_SERVER_CALL_METRICS_H_
#define FISHERD_SERVER_CALL_METRICS_H_

#include <memory>

#include "grpcpp/support/server_interceptor.h"
#include "server/server_metrics.h"

namespace fisherd::server {

// Install with ServerBuilder::experimental().SetInterceptorCreators. A call is counted
// when the server sends its status (once, at the end, for streams too), with the code
// it sends. REQUIRES: metrics outlives the grpc::Server.
class CallMetricsFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit CallMetricsFactory(ServerMetrics* metrics) : metrics_(metrics) {}

  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override;

 private:
  ServerMetrics* const metrics_;
};

}  // namespace fisherd::server

#endif  // FISHERD_SERVER_CALL_METRICS_H_
