#include "server/call_metrics.h"

namespace fisherd::server {
namespace {

using grpc::experimental::InterceptionHookPoints;

class CallMetricsInterceptor final : public grpc::experimental::Interceptor {
 public:
  explicit CallMetricsInterceptor(MethodCallCounters* counters) : counters_(counters) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS)) {
      counters_->Count(methods->GetSendStatus().error_code());
    }
    methods->Proceed();
  }

 private:
  MethodCallCounters* const counters_;
};

}  // namespace

grpc::experimental::Interceptor* CallMetricsFactory::CreateServerInterceptor(
    grpc::experimental::ServerRpcInfo* info) {
  // The counters are resolved once per call, here, not at every hook.
  const char* method = info->method();
  return new CallMetricsInterceptor(&metrics_->CallsOf(method != nullptr ? method : ""));
}

}  // namespace fisherd::server
