#include "server/handler_util.h"

#include <string>

#include "server/durable_store.h"
#include "server/server_metrics.h"

namespace fisherd::server {

void WaitSessionDurable(const ServiceResources& resources, Session& session) {
  if (resources.store != nullptr) resources.store->WaitDurable(session.last_lsn());
}

void WaitDurable(const ServiceResources& resources, uint64_t lsn) {
  if (resources.store != nullptr && lsn != 0) resources.store->WaitDurable(lsn);
}

void WaitAllDurable(const ServiceResources& resources) {
  if (resources.store != nullptr) resources.store->WaitAllDurable();
}

void RecordStep(const ServiceResources& resources, const SolverSummary& solver,
                std::chrono::steady_clock::time_point start) {
  if (resources.metrics == nullptr) return;
  const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
  resources.metrics->RecordStep(solver.method, elapsed.count());
}

LogStepFn StepLogger(const ServiceResources& resources, absl::string_view name,
                     const Session& session) {
  if (resources.store == nullptr) return LogStepFn();
  absl::StatusOr<std::string> id = ParseSessionName(name, "session");
  return resources.store->StepLogger(id.ok() ? *id : std::string(name), session);
}

}  // namespace fisherd::server
