#include "server/server_metrics.h"

#include <algorithm>
#include <iterator>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "fisherd/v1/fisher.grpc.pb.h"
#include "google/protobuf/descriptor.h"
#include "metrics/exposition.h"
#include "server/session_registry.h"

namespace fisherd::server {
namespace {

using metrics::Counter;
using metrics::Family;
using metrics::Histogram;

// Bucket bounds in seconds, 1-2.5-5 per decade, each range wide enough for what it
// times on this class of machine (docs/performance.md): a batch merges in microseconds
// (diagonal) to tens of milliseconds (dense dim 4096); a step takes microseconds
// (diagonal) to seconds (a Cholesky at dim 16384); an fdatasync takes about a
// millisecond on an SSD and can stall for seconds.
const std::vector<double> kIngestBounds = {0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005,
                                           0.001,   0.0025,   0.005,   0.01,   0.025,   0.05,
                                           0.1,     0.25,     0.5,     1,      2.5};
const std::vector<double> kStepBounds = {0.00001, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                         0.01,    0.025,  0.05,    0.1,    0.25,  0.5,    1,
                                         2.5,     5,      10,      30,     60};
const std::vector<double> kSyncBounds = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                         0.025,  0.05,    0.1,    0.25,  0.5,    1,     2.5};

// What SolverSummary::method can be (core/solve.h); anything else is counted as
// "other", so that a new solver cannot go unnoticed nor add series unplanned.
constexpr absl::string_view kSolvers[] = {"cholesky", "woodbury", "diagonal", "kronecker",
                                          "layered"};

// The methods of the services fisherd registers besides its own, whose names come from
// the generated descriptor. Reflection's v1 name is listed for gRPC versions that serve
// it too.
constexpr absl::string_view kOtherMethods[] = {
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
};

std::vector<std::string> ServedMethods() {
  std::vector<std::string> methods(std::begin(kOtherMethods), std::end(kOtherMethods));
  const google::protobuf::ServiceDescriptor* service =
      google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(
          v1::FisherService::service_full_name());
  for (int i = 0; service != nullptr && i < service->method_count(); ++i) {
    methods.push_back(absl::StrCat("/", service->full_name(), "/", service->method(i)->name()));
  }
  return methods;
}

}  // namespace

std::string StatusCodeLabel(int code) {
  if (code < 0 || code > 16) return "UNKNOWN";
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
}

MethodCallCounters::MethodCallCounters(Family<Counter>* family, std::string method)
    : family_(family), method_(std::move(method)) {}

void MethodCallCounters::Count(int code) {
  const int slot = code >= 0 && code < kCodes ? code : kCodes;
  Counter* counter = by_code_[slot].load(std::memory_order_acquire);
  if (counter == nullptr) {
    // Two first calls may race here; WithLabels returns the same child to both.
    counter = &family_->WithLabels({method_, StatusCodeLabel(code)});
    by_code_[slot].store(counter, std::memory_order_release);
  }
  counter->Increment();
}

ServerMetrics::ServerMetrics(bool durable)
    : batches_(registry_.AddCounter(
          "fisherd_batches_total",
          "Score batches by outcome: applied, duplicate (a resend, acknowledged but not applied "
          "again) or rejected, with the status code as the reason (invalid_argument, not_found, "
          "resource_exhausted, ...).",
          {"result", "reason"})),
      batches_applied_(batches_.WithLabels({"applied", ""})),
      batches_duplicate_(batches_.WithLabels({"duplicate", ""})),
      scores_(registry_.AddCounter("fisherd_scores_total", "Score rows applied.").WithLabels({})),
      ingest_seconds_(registry_
                          .AddHistogram("fisherd_ingest_duration_seconds",
                                        "Time to apply one score batch (lookup, decoding and "
                                        "validation, merge), for batches applied.",
                                        kIngestBounds)
                          .WithLabels({})),
      steps_(registry_.AddCounter("fisherd_steps_total",
                                  "Natural-gradient steps taken, by solver method.", {"solver"})),
      step_seconds_(registry_
                        .AddHistogram("fisherd_step_duration_seconds",
                                      "Time of a successful step in the session: waiting for its "
                                      "lock, the solve and the decay.",
                                      kStepBounds)
                        .WithLabels({})),
      sessions_(registry_.AddGauge("fisherd_sessions", "Sessions alive.").WithLabels({})),
      statistics_bytes_(registry_
                            .AddGauge("fisherd_statistics_bytes",
                                      "Bytes the sessions' statistics take, as counted against "
                                      "--memory-budget-mb.")
                            .WithLabels({})),
      calls_(registry_.AddCounter("fisherd_grpc_calls_total",
                                  "Completed RPCs by full method name and status code.",
                                  {"method", "code"})),
      unknown_method_calls_(&calls_, "unknown") {
  static_assert(std::size(kSolvers) == std::tuple_size_v<decltype(steps_by_solver_)>);
  for (size_t i = 0; i < std::size(kSolvers); ++i) {
    steps_by_solver_[i] = &steps_.WithLabels({std::string(kSolvers[i])});
  }
  if (durable) {
    log_syncs_ = &registry_
                      .AddCounter("fisherd_log_syncs_total",
                                  "fdatasync calls of the write-ahead log (one per segment a "
                                  "group commit wrote to).")
                      .WithLabels({});
    log_sync_seconds_ =
        &registry_
             .AddHistogram("fisherd_log_sync_duration_seconds",
                           "Time of one fdatasync of the write-ahead log.", kSyncBounds)
             .WithLabels({});
  }
  for (std::string& method : ServedMethods()) {
    auto counters = std::make_unique<MethodCallCounters>(&calls_, method);
    calls_by_method_.emplace(std::move(method), std::move(counters));
  }
}

std::string ServerMetrics::Render() const { return metrics::RenderText(registry_.Collect()); }

void ServerMetrics::RecordBatch(const absl::Status& status, bool duplicate, uint64_t rows,
                                double seconds) {
  if (!status.ok()) {
    // Rare: the lookup under the family's lock is fine here.
    batches_.WithLabels({"rejected", absl::AsciiStrToLower(StatusCodeLabel(status.raw_code()))})
        .Increment();
  } else if (duplicate) {
    batches_duplicate_.Increment();
  } else {
    batches_applied_.Increment();
    scores_.Increment(rows);
    ingest_seconds_.Observe(seconds);
  }
}

void ServerMetrics::RecordStep(absl::string_view solver, double seconds) {
  const size_t i =
      std::find(std::begin(kSolvers), std::end(kSolvers), solver) - std::begin(kSolvers);
  if (i < steps_by_solver_.size()) {
    steps_by_solver_[i]->Increment();
  } else {
    steps_.WithLabels({"other"}).Increment();
  }
  step_seconds_.Observe(seconds);
}

void ServerMetrics::RecordLogSync(double seconds) {
  if (log_syncs_ == nullptr) return;
  log_syncs_->Increment();
  log_sync_seconds_->Observe(seconds);
}

MethodCallCounters& ServerMetrics::CallsOf(absl::string_view method) {
  auto it = calls_by_method_.find(method);
  return it == calls_by_method_.end() ? unknown_method_calls_ : *it->second;
}

void ServerMetrics::WatchSessions(const SessionRegistry* sessions) {
  registry_.AddCollectHook([this, sessions] {
    const SessionRegistry::Usage usage = sessions->CurrentUsage();
    sessions_.Set(static_cast<double>(usage.sessions));
    statistics_bytes_.Set(static_cast<double>(usage.statistics_bytes));
  });
}

}  // namespace fisherd::server
