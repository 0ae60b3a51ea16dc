// ServerMetrics: the metrics fisherd exports on --metrics-listen (docs/design.md section
// 10), and the few calls that keep them: the score handlers once per batch, the step
// handlers once per step, the log once per fdatasync, the gRPC interceptor
// (server/call_metrics.h) once per call. Each is a handful of relaxed atomic operations
// on children looked up in advance; the two gauges are sampled only when scraped.
//
// Labels take values from small fixed sets (results, status codes, solver names, the
// service's method names), never from requests: no session ids, worker ids or messages,
// so the number of series stays bounded however the server is used.
#ifndef FISHERD_SERVER_SERVER_METRICS_H_
#define FISHERD_SERVER_SERVER_METRICS_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "metrics/metrics.h"

namespace fisherd::server {

class SessionRegistry;

// The status code of a gRPC or abseil status (they share numbers) as a label value:
// "OK", "INVALID_ARGUMENT", ..., "UNKNOWN" for a number outside the 17 codes.
std::string StatusCodeLabel(int code);

// fisherd_grpc_calls_total{method, code} of one method: a child per code, made when the
// code first occurs and then reached without a lock.
class MethodCallCounters {
 public:
  MethodCallCounters(metrics::Family<metrics::Counter>* family, std::string method);
  void Count(int code);

 private:
  static constexpr int kCodes = 17;  // OK (0) .. UNAUTHENTICATED (16)

  metrics::Family<metrics::Counter>* const family_;
  const std::string method_;
  std::array<std::atomic<metrics::Counter*>, kCodes + 1> by_code_{};  // the last: other codes
};

class ServerMetrics {
 public:
  // durable: the server keeps a write-ahead log (--data-dir), whose metrics are then
  // exported too.
  explicit ServerMetrics(bool durable);

  ServerMetrics(const ServerMetrics&) = delete;
  ServerMetrics& operator=(const ServerMetrics&) = delete;

  // Every metric, in the text exposition format (what GET /metrics answers).
  std::string Render() const;

  // A score batch the server set out to apply (AddScores or one of a stream's), ended
  // with `status`: applied (OK, not a duplicate), a duplicate, or rejected with the
  // status code as the reason. `rows` counts into fisherd_scores_total and `seconds`
  // into fisherd_ingest_duration_seconds only when applied.
  void RecordBatch(const absl::Status& status, bool duplicate, uint64_t rows, double seconds);
  // A step that succeeded, by its solver (SolverSummary::method), and its wall time.
  void RecordStep(absl::string_view solver, double seconds);
  // One fdatasync of the write-ahead log. REQUIRES: constructed with durable = true.
  void RecordLogSync(double seconds);
  // The counters of the RPC `method` ("/fisherd.v1.FisherService/AddScores"). A method
  // the server does not serve (a client may send any path) shares the counters of
  // method="unknown", so arbitrary paths cannot add series.
  MethodCallCounters& CallsOf(absl::string_view method);

  // From now on, every scrape samples fisherd_sessions and fisherd_statistics_bytes
  // from `sessions`. Call once. REQUIRES: sessions outlives every Render.
  void WatchSessions(const SessionRegistry* sessions);

 private:
  metrics::Registry registry_;
  metrics::Family<metrics::Counter>& batches_;
  metrics::Counter& batches_applied_;
  metrics::Counter& batches_duplicate_;
  metrics::Counter& scores_;
  metrics::Histogram& ingest_seconds_;
  metrics::Family<metrics::Counter>& steps_;
  std::array<metrics::Counter*, 5> steps_by_solver_{};  // kSolvers' children, in order
  metrics::Histogram& step_seconds_;
  metrics::Gauge& sessions_;
  metrics::Gauge& statistics_bytes_;
  metrics::Counter* log_syncs_ = nullptr;           // durable only
  metrics::Histogram* log_sync_seconds_ = nullptr;  // durable only
  metrics::Family<metrics::Counter>& calls_;
  // Built in the constructor and never changed after: read without a lock.
  absl::flat_hash_map<std::string, std::unique_ptr<MethodCallCounters>> calls_by_method_;
  MethodCallCounters unknown_method_calls_;
};

}  // namespace fisherd::server

#endif  // FISHERD_SERVER_SERVER_METRICS_H_
