// ThreadSanitizer builds only (FISHERD_SANITIZE=thread links this into every target).
//
// Debian's gRPC is not built with TSan. gRPC's C++ layer (the grpcpp headers: CallOpSet,
// the interceptor state, ByteBuffer, the callback tags and reactors' bookkeeping) is
// inlined into fisherd's instrumented code, but the core that carries an operation from
// the thread that starts it to the thread that completes it (call combiners, lock-free
// queues and atomics in libgrpc) is not. TSan then sees a CallOpSet filled by one thread
// and finalized by another with nothing in between, and reports gRPC's own objects.
//
// This file interposes the gRPC functions where an operation changes hands, as
// tsan_absl_sync.cc does for absl::Mutex: each calls the library's function (dlsym
// RTLD_NEXT) and tells TSan about the happens-before edge that gRPC guarantees there.
// libgrpc and libgrpc++ call these through their PLT, so the executable's definitions
// are the ones that run.
//   - A tag handed to the core is released first: grpc_call_start_batch,
//     grpc_server_request_call and grpc_server_request_registered_call.
//   - A tag the core completes is released before it is queued (grpc_cq_end_op). This
//     covers what the completing thread prepared for it, e.g. the request object that
//     gRPC++ allocates for an incoming call to a callback method.
//   - A tag the core returns is acquired: grpc_completion_queue_next and _pluck. On
//     Debian's build gRPC++ also runs callback reactors this way: its "nexting" threads
//     call grpc_completion_queue_next and then run the tag's functor.
//   - A call's combiner is a lock in disguise: the thread that queues a closure on it
//     (CallCombiner::Start) releases, the thread that passes it on (Stop, which runs the
//     next queued closure) acquires. The in-process transport (fuzz_replay_service) hands
//     the sender's serialized message to the receiver without a copy across it.
//   - A server call's context is destroyed only after every operation started on the call
//     has completed, so each grpc_call_start_batch also releases the call, and the context's
//     destructor (~ServerContextBase, which libgrpc++ calls through its PLT) acquires it
//     first. This orders a server interceptor's runs before the destructor deletes it: the
//     interceptor runs before the batch it intercepts starts, or, after a batch completes,
//     before the empty batch that gRPC++ starts to deliver the completion (Proceed). Without
//     it, a call that libgrpc++ handles itself (the health check) drops its last reference in
//     uninstrumented code and the deletion looks like a race with the interceptor's last run.
//   - A server reactor's OnDone runs once gRPC++'s count of outstanding callbacks drops to
//     zero (ServerCallbackCall::ScheduleOnDone). The header code decrements the count with
//     acq_rel atomics TSan sees, but libgrpc++ drops its own references (the server
//     context's completion op) in uninstrumented code, so the thread that reaches zero
//     acquires what every decrement released.
// So everything a thread did before it handed an operation to gRPC happens before
// whatever the thread that receives the completion does with it, as the gRPC API
// promises. Nothing else is ordered: fisherd threads that share data without their own
// mutex or atomic are still reported, and so is fisherd touching a message that gRPC
// owns between the start and the completion of its operation.
//
// Each acquire pairs with releases made before it in real time, so no edge is invented:
// the core completes a tag only after it was handed over, hands it out once per
// completion, and a tag is handed over again only after its completion was delivered.
#include <dlfcn.h>
#include <grpc/grpc.h>
#include <grpcpp/server_context.h>
#include <grpcpp/support/server_callback.h>
#include <sanitizer/tsan_interface.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>

#include "absl/base/options.h"
#include "absl/status/status.h"

// gRPC core's internal entry points, exported from libgrpc with C++ linkage; their
// headers (src/core/lib/surface/completion_queue.h, src/core/lib/iomgr/call_combiner.h)
// are not installed. Only the mangled names have to match.
struct grpc_closure;
struct grpc_cq_completion;
void grpc_cq_end_op(grpc_completion_queue* cq, void* tag, absl::Status error,
                    void (*done)(void* done_arg, grpc_cq_completion* storage), void* done_arg,
                    grpc_cq_completion* storage, bool internal);
namespace grpc_core {
class CallCombiner {
 public:
  void Start(grpc_closure* closure, absl::Status error, const char* file, int line,
             const char* reason);
  void Stop(const char* file, int line, const char* reason);
};
}  // namespace grpc_core

namespace {

void* Real(const char* name) {
  void* f = dlsym(RTLD_NEXT, name);
  if (f == nullptr) {
    std::fprintf(stderr, "tsan_grpc_sync: %s not found\n", name);
    std::abort();
  }
  return f;
}

template <typename F>
F Get(F* cache, const char* name) {
  F f = __atomic_load_n(cache, __ATOMIC_ACQUIRE);
  if (f == nullptr) {
    f = reinterpret_cast<F>(Real(name));
    __atomic_store_n(cache, f, __ATOMIC_RELEASE);
  }
  return f;
}

#define FISHERD_STR2(x) #x
#define FISHERD_STR(x) FISHERD_STR2(x)

// The mangled absl::Status parameter, in abseil's inline namespace.
std::string MangledStatus() {
  const std::string ns = FISHERD_STR(ABSL_OPTION_INLINE_NAMESPACE_NAME);
  return "N4absl" + std::to_string(ns.size()) + ns + "6StatusE";
}

// ServerCallbackCall's reference count is private. Naming a member in an explicit
// instantiation skips the access check, so this reaches it without copying the class
// layout; a renamed member stops the build.
using CallbackCount = std::atomic_int grpc::internal::ServerCallbackCall::*;
CallbackCount OutstandingMember();
template <CallbackCount Member>
struct OutstandingAccess {
  friend CallbackCount OutstandingMember() { return Member; }
};
template struct OutstandingAccess<&grpc::internal::ServerCallbackCall::callbacks_outstanding_>;

void AcquireCompleted(const grpc_event& event) {
  if (event.type == GRPC_OP_COMPLETE) __tsan_acquire(event.tag);
}

}  // namespace

extern "C" {

grpc_call_error grpc_call_start_batch(grpc_call* call, const grpc_op* ops, size_t nops, void* tag,
                                      void* reserved) {
  using Fn = grpc_call_error (*)(grpc_call*, const grpc_op*, size_t, void*, void*);
  static Fn cache = nullptr;
  const Fn real = Get(&cache, "grpc_call_start_batch");
  __tsan_release(tag);
  __tsan_release(call);  // acquired when the call's server context is destroyed
  return real(call, ops, nops, tag, reserved);
}

grpc_call_error grpc_server_request_call(grpc_server* server, grpc_call** call,
                                         grpc_call_details* details,
                                         grpc_metadata_array* request_metadata,
                                         grpc_completion_queue* cq_bound_to_call,
                                         grpc_completion_queue* cq_for_notification,
                                         void* tag_new) {
  using Fn =
      grpc_call_error (*)(grpc_server*, grpc_call**, grpc_call_details*, grpc_metadata_array*,
                          grpc_completion_queue*, grpc_completion_queue*, void*);
  static Fn cache = nullptr;
  const Fn real = Get(&cache, "grpc_server_request_call");
  __tsan_release(tag_new);
  return real(server, call, details, request_metadata, cq_bound_to_call, cq_for_notification,
              tag_new);
}

grpc_call_error grpc_server_request_registered_call(grpc_server* server, void* registered_method,
                                                    grpc_call** call, gpr_timespec* deadline,
                                                    grpc_metadata_array* request_metadata,
                                                    grpc_byte_buffer** optional_payload,
                                                    grpc_completion_queue* cq_bound_to_call,
                                                    grpc_completion_queue* cq_for_notification,
                                                    void* tag_new) {
  using Fn = grpc_call_error (*)(grpc_server*, void*, grpc_call**, gpr_timespec*,
                                 grpc_metadata_array*, grpc_byte_buffer**, grpc_completion_queue*,
                                 grpc_completion_queue*, void*);
  static Fn cache = nullptr;
  const Fn real = Get(&cache, "grpc_server_request_registered_call");
  __tsan_release(tag_new);
  return real(server, registered_method, call, deadline, request_metadata, optional_payload,
              cq_bound_to_call, cq_for_notification, tag_new);
}

grpc_event grpc_completion_queue_next(grpc_completion_queue* cq, gpr_timespec deadline,
                                      void* reserved) {
  using Fn = grpc_event (*)(grpc_completion_queue*, gpr_timespec, void*);
  static Fn cache = nullptr;
  const Fn real = Get(&cache, "grpc_completion_queue_next");
  const grpc_event event = real(cq, deadline, reserved);
  AcquireCompleted(event);
  return event;
}

grpc_event grpc_completion_queue_pluck(grpc_completion_queue* cq, void* tag, gpr_timespec deadline,
                                       void* reserved) {
  using Fn = grpc_event (*)(grpc_completion_queue*, void*, gpr_timespec, void*);
  static Fn cache = nullptr;
  const Fn real = Get(&cache, "grpc_completion_queue_pluck");
  const grpc_event event = real(cq, tag, deadline, reserved);
  AcquireCompleted(event);
  return event;
}

}  // extern "C"

void grpc_cq_end_op(grpc_completion_queue* cq, void* tag, absl::Status error,
                    void (*done)(void* done_arg, grpc_cq_completion* storage), void* done_arg,
                    grpc_cq_completion* storage, bool internal) {
  using Fn = void (*)(grpc_completion_queue*, void*, absl::Status,
                      void (*)(void*, grpc_cq_completion*), void*, grpc_cq_completion*, bool);
  static Fn cache = nullptr;
  static const std::string name = "_Z14grpc_cq_end_opP21grpc_completion_queuePv" + MangledStatus() +
                                  "PFvS1_P18grpc_cq_completionES1_S6_b";
  const Fn real = Get(&cache, name.c_str());
  __tsan_release(tag);
  real(cq, tag, std::move(error), done, done_arg, storage, internal);
}

namespace grpc_core {

void CallCombiner::Start(grpc_closure* closure, absl::Status error, const char* file, int line,
                         const char* reason) {
  using Fn = void (*)(CallCombiner*, grpc_closure*, absl::Status, const char*, int, const char*);
  static Fn cache = nullptr;
  static const std::string name =
      "_ZN9grpc_core12CallCombiner5StartEP12grpc_closure" + MangledStatus() + "PKciS7_";
  const Fn real = Get(&cache, name.c_str());
  __tsan_release(this);
  real(this, closure, std::move(error), file, line, reason);
}

void CallCombiner::Stop(const char* file, int line, const char* reason) {
  using Fn = void (*)(CallCombiner*, const char*, int, const char*);
  static Fn cache = nullptr;
  const Fn real = Get(&cache, "_ZN9grpc_core12CallCombiner4StopEPKciS2_");
  real(this, file, line, reason);
  __tsan_acquire(this);  // before the next closure, which runs from this thread's ExecCtx
}

}  // namespace grpc_core

// ~ServerContextBase in its complete-object (D1) and base-object (D2) variants; the
// deleting destructor (D0) calls D1 through the PLT. A destructor cannot be declared outside
// its class, so these are plain functions under the destructors' mangled names.
void ServerContextBaseCompleteDestructor(grpc::ServerContextBase* self) __asm__(
    "_ZN4grpc17ServerContextBaseD1Ev");
void ServerContextBaseBaseDestructor(grpc::ServerContextBase* self) __asm__(
    "_ZN4grpc17ServerContextBaseD2Ev");

namespace {

using ContextDestructor = void (*)(grpc::ServerContextBase*);

// Acquires what every batch started on the context's call released, then runs the real
// destructor `name` (looked up once into *cache).
void AcquireCallThenDestroy(grpc::ServerContextBase* self, ContextDestructor* cache,
                            const char* name) {
  const ContextDestructor real = Get(cache, name);
  grpc_call* call = self->c_call();
  if (call != nullptr) __tsan_acquire(call);
  real(self);
}

}  // namespace

void ServerContextBaseCompleteDestructor(grpc::ServerContextBase* self) {
  static ContextDestructor cache = nullptr;
  AcquireCallThenDestroy(self, &cache, "_ZN4grpc17ServerContextBaseD1Ev");
}

void ServerContextBaseBaseDestructor(grpc::ServerContextBase* self) {
  static ContextDestructor cache = nullptr;
  AcquireCallThenDestroy(self, &cache, "_ZN4grpc17ServerContextBaseD2Ev");
}

namespace grpc {
namespace internal {

void ServerCallbackCall::ScheduleOnDone(bool inline_ondone) {
  using Fn = void (*)(ServerCallbackCall*, bool);
  static Fn cache = nullptr;
  const Fn real = Get(&cache, "_ZN4grpc8internal18ServerCallbackCall14ScheduleOnDoneEb");
  __tsan_acquire(&(this->*OutstandingMember()));
  real(this, inline_ondone);
}

}  // namespace internal
}  // namespace grpc
