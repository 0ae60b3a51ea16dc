// What every RPC handler shares: the server-owned resources it works with and the one
// way a unary handler hands its body to the work pool and finishes.
#ifndef FISHERD_SERVER_HANDLER_UTIL_H_
#define FISHERD_SERVER_HANDLER_UTIL_H_

#include <chrono>
#include <cstdint>
#include <exception>
#include <new>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/grpc_status.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/server_callback.h"
#include "server/session_registry.h"
#include "server/work_pool.h"

namespace fisherd::server {

// Every handler finishes through ToGrpcStatus (common/grpc_status.h).
using ::fisherd::common::ToGrpcStatus;

class DurableStore;
class ServerMetrics;

// Owned by the server; outlives every RPC (the server is shut down and waited for
// before either is destroyed).
struct ServiceResources {
  SessionRegistry* registry = nullptr;
  WorkPool* pool = nullptr;
  // Largest payload of values a streamed response message may carry (GetFisher's row
  // blocks): about 1 MiB, less when the server's message limit is smaller.
  int64_t max_block_bytes = int64_t{1} << 20;
  // Durable sessions (--data-dir, server/durable_store.h); nullptr when memory only.
  DurableStore* store = nullptr;
  // What the handlers count (server/server_metrics.h); nullptr: nothing is counted.
  ServerMetrics* metrics = nullptr;
};

// Durable sessions: blocks until every mutation `session` logged so far is on disk, so
// that an answer read from it never shows what a crash could take back. Call it after
// reading. Returns at once without --data-dir.
void WaitSessionDurable(const ServiceResources& resources, Session& session);
// Blocks until the record `lsn` (and all before it) is durable; 0 and memory-only: at once.
void WaitDurable(const ServiceResources& resources, uint64_t lsn);
// Blocks until every record appended so far is durable (a creation, a deletion).
void WaitAllDurable(const ServiceResources& resources);
// The step logger for `session` named `name` ("sessions/{id}"); empty without a store.
LogStepFn StepLogger(const ServiceResources& resources, absl::string_view name,
                     const Session& session);

// Counts a step that succeeded with `solver` and began (its call to Session::Step) at
// `start`.
void RecordStep(const ServiceResources& resources, const SolverSummary& solver,
                std::chrono::steady_clock::time_point start);

// Runs `body` (returning absl::Status) unless the RPC was already cancelled while it
// waited in the pool's queue. Exceptions become statuses so that no RPC is left
// unfinished: bad_alloc (a request larger than memory allows) is RESOURCE_EXHAUSTED,
// anything else INTERNAL.
template <typename Body>
absl::Status RunGuarded(grpc::CallbackServerContext* context, Body& body) {
  if (context->IsCancelled()) {
    return absl::CancelledError("the call was cancelled before the server started on it");
  }
  try {
    return body();
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError("the server ran out of memory for this request");
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("internal error: ", e.what()));
  }
}

// The unary handler pattern: take the default reactor, post `body` to the work pool
// (so no math, and no wait on a session lock, happens on gRPC's callback thread), and
// finish with the status it returns. `body` fills the response before returning OK.
template <typename Body>
grpc::ServerUnaryReactor* RunUnaryOnPool(const ServiceResources& resources,
                                         grpc::CallbackServerContext* context, Body body) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  resources.pool->Post([context, reactor, body = std::move(body)]() mutable {
    const absl::Status status = RunGuarded(context, body);
    // Last touch of the call: after Finish the reactor may be gone.
    reactor->Finish(ToGrpcStatus(status));
  });
  return reactor;
}

// What one stage of a streaming reactor did when it succeeded: started a read or a
// write (whose callback posts the next stage), or finished its work (the call is to end
// with OK). A stage that started a read or write must be the reactor's last touch: the
// callback may run on another thread at once, post the next stage, and that one may
// finish the call and let gRPC delete the reactor.
enum class StageOutcome { kStarted, kDone };

// Runs `stage` of `reactor` (a method returning absl::StatusOr<StageOutcome>) guarded as
// RunGuarded does, and finishes the call on an error or when the stage is done. Call it
// on the work pool, from the constructor or from a read or write callback, so that one
// stage runs at a time.
template <typename Reactor>
void RunStage(grpc::CallbackServerContext* context, Reactor* reactor,
              absl::StatusOr<StageOutcome> (Reactor::*stage)()) {
  StageOutcome outcome = StageOutcome::kStarted;
  auto body = [reactor, stage, &outcome]() -> absl::Status {
    absl::StatusOr<StageOutcome> result = (reactor->*stage)();
    if (!result.ok()) return result.status();
    outcome = *result;
    return absl::OkStatus();
  };
  const absl::Status status = RunGuarded(context, body);
  // After a successful stage that started a read or write, touch nothing.
  if (!status.ok()) {
    reactor->Finish(ToGrpcStatus(status));
  } else if (outcome == StageOutcome::kDone) {
    reactor->Finish(grpc::Status::OK);
  }
}

}  // namespace fisherd::server

#endif  // FISHERD_SERVER_HANDLER_UTIL_H_
