// ThreadSanitizer builds only (FISHERD_SANITIZE=thread links this into every target).
//
// Debian's abseil is not built with TSan, so absl::Mutex locks and unlocks in code TSan
// cannot see (futexes and atomics inside libabsl_synchronization.so), and every field a
// Mutex guards would be reported as a data race. This file interposes the out-of-line
// absl::Mutex, CondVar and Notification entry points fisherd and gRPC call: each calls
// the library's function (dlsym RTLD_NEXT) and tells TSan about the happens-before edge
// it implies (__tsan_release on the mutex before an unlock, __tsan_acquire after a lock).
// Reader locks are treated like writer locks, which can hide a write made under a reader
// lock; everything else (a missing lock, a lock on the wrong mutex) is still reported.
#include <dlfcn.h>
#include <sanitizer/tsan_interface.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/base/options.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

namespace {

#define FISHERD_STR2(x) #x
#define FISHERD_STR(x) FISHERD_STR2(x)

// The library's function absl::<inline namespace>::<rest> by its Itanium mangled name,
// e.g. rest = "5Mutex4LockEv"; a leading "K" in rest marks a const member function.
void* Real(const char* rest) {
  const std::string ns = FISHERD_STR(ABSL_OPTION_INLINE_NAMESPACE_NAME);
  const bool is_const = rest[0] == 'K';
  const std::string name = std::string(is_const ? "_ZNK4absl" : "_ZN4absl") +
                           std::to_string(ns.size()) + ns + (is_const ? rest + 1 : rest);
  void* f = dlsym(RTLD_NEXT, name.c_str());
  if (f == nullptr) {
    std::fprintf(stderr, "tsan_absl_sync: %s not found\n", name.c_str());
    std::abort();
  }
  return f;
}

template <typename F>
F Get(F* cache, const char* rest) {
  F f = __atomic_load_n(cache, __ATOMIC_ACQUIRE);
  if (f == nullptr) {
    f = reinterpret_cast<F>(Real(rest));
    __atomic_store_n(cache, f, __ATOMIC_RELEASE);
  }
  return f;
}

#define FISHERD_REAL(type, rest) \
  static type cache_ = nullptr;  \
  type real_ = Get(&cache_, rest)

// absl evaluates a Condition while it holds the mutex, in the waiting thread or in the
// thread that unlocks; the evaluation is a critical section of its own for TSan.
struct AnnotatedCondition {
  absl::Mutex* mu;
  const absl::Condition* cond;
};

bool EvalAnnotated(AnnotatedCondition* a) {
  __tsan_acquire(a->mu);
  const bool result = a->cond->Eval();
  __tsan_release(a->mu);
  return result;
}

}  // namespace

namespace absl {
ABSL_NAMESPACE_BEGIN

using MutexFn = void (*)(Mutex*);
using MutexBoolFn = bool (*)(Mutex*);
using MutexCondFn = void (*)(Mutex*, const Condition&);
using MutexCondDurationFn = bool (*)(Mutex*, const Condition&, Duration);
using MutexCondTimeFn = bool (*)(Mutex*, const Condition&, Time);

void Mutex::Lock() {
  FISHERD_REAL(MutexFn, "5Mutex4LockEv");
  real_(this);
  __tsan_acquire(this);
}

void Mutex::ReaderLock() {
  FISHERD_REAL(MutexFn, "5Mutex10ReaderLockEv");
  real_(this);
  __tsan_acquire(this);
}

bool Mutex::TryLock() {
  FISHERD_REAL(MutexBoolFn, "5Mutex7TryLockEv");
  const bool locked = real_(this);
  if (locked) __tsan_acquire(this);
  return locked;
}

bool Mutex::ReaderTryLock() {
  FISHERD_REAL(MutexBoolFn, "5Mutex13ReaderTryLockEv");
  const bool locked = real_(this);
  if (locked) __tsan_acquire(this);
  return locked;
}

void Mutex::Unlock() {
  FISHERD_REAL(MutexFn, "5Mutex6UnlockEv");
  __tsan_release(this);
  real_(this);
}

void Mutex::ReaderUnlock() {
  FISHERD_REAL(MutexFn, "5Mutex12ReaderUnlockEv");
  __tsan_release(this);
  real_(this);
}

void Mutex::LockWhen(const Condition& cond) {
  AnnotatedCondition annotated{this, &cond};
  FISHERD_REAL(MutexCondFn, "5Mutex8LockWhenERKNS0_9ConditionE");
  real_(this, Condition(&EvalAnnotated, &annotated));
  __tsan_acquire(this);
}

void Mutex::ReaderLockWhen(const Condition& cond) {
  AnnotatedCondition annotated{this, &cond};
  FISHERD_REAL(MutexCondFn, "5Mutex14ReaderLockWhenERKNS0_9ConditionE");
  real_(this, Condition(&EvalAnnotated, &annotated));
  __tsan_acquire(this);
}

bool Mutex::LockWhenWithTimeout(const Condition& cond, Duration timeout) {
  AnnotatedCondition annotated{this, &cond};
  FISHERD_REAL(MutexCondDurationFn, "5Mutex19LockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  const bool met = real_(this, Condition(&EvalAnnotated, &annotated), timeout);
  __tsan_acquire(this);  // held whether or not the condition became true
  return met;
}

bool Mutex::LockWhenWithDeadline(const Condition& cond, Time deadline) {
  AnnotatedCondition annotated{this, &cond};
  FISHERD_REAL(MutexCondTimeFn, "5Mutex20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  const bool met = real_(this, Condition(&EvalAnnotated, &annotated), deadline);
  __tsan_acquire(this);
  return met;
}

// Await releases the mutex while it waits and holds it again when it returns.
void Mutex::Await(const Condition& cond) {
  AnnotatedCondition annotated{this, &cond};
  FISHERD_REAL(MutexCondFn, "5Mutex5AwaitERKNS0_9ConditionE");
  __tsan_release(this);
  real_(this, Condition(&EvalAnnotated, &annotated));
  __tsan_acquire(this);
}

bool Mutex::AwaitWithTimeout(const Condition& cond, Duration timeout) {
  AnnotatedCondition annotated{this, &cond};
  FISHERD_REAL(MutexCondDurationFn, "5Mutex16AwaitWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  __tsan_release(this);
  const bool met = real_(this, Condition(&EvalAnnotated, &annotated), timeout);
  __tsan_acquire(this);
  return met;
}

bool Mutex::AwaitWithDeadline(const Condition& cond, Time deadline) {
  AnnotatedCondition annotated{this, &cond};
  FISHERD_REAL(MutexCondTimeFn, "5Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  __tsan_release(this);
  const bool met = real_(this, Condition(&EvalAnnotated, &annotated), deadline);
  __tsan_acquire(this);
  return met;
}

using CondVarWaitFn = void (*)(CondVar*, Mutex*);
using CondVarTimeoutFn = bool (*)(CondVar*, Mutex*, Duration);
using CondVarDeadlineFn = bool (*)(CondVar*, Mutex*, Time);

void CondVar::Wait(Mutex* mu) {
  FISHERD_REAL(CondVarWaitFn, "7CondVar4WaitEPNS0_5MutexE");
  __tsan_release(mu);
  real_(this, mu);
  __tsan_acquire(mu);
}

bool CondVar::WaitWithTimeout(Mutex* mu, Duration timeout) {
  FISHERD_REAL(CondVarTimeoutFn, "7CondVar15WaitWithTimeoutEPNS0_5MutexENS0_8DurationE");
  __tsan_release(mu);
  const bool timed_out = real_(this, mu, timeout);
  __tsan_acquire(mu);
  return timed_out;
}

bool CondVar::WaitWithDeadline(Mutex* mu, Time deadline) {
  FISHERD_REAL(CondVarDeadlineFn, "7CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE");
  __tsan_release(mu);
  const bool timed_out = real_(this, mu, deadline);
  __tsan_acquire(mu);
  return timed_out;
}

using NotifyFn = void (*)(Notification*);
using WaitFn = void (*)(const Notification*);
using WaitTimeoutFn = bool (*)(const Notification*, Duration);
using WaitDeadlineFn = bool (*)(const Notification*, Time);

void Notification::Notify() {
  FISHERD_REAL(NotifyFn, "12Notification6NotifyEv");
  __tsan_release(this);
  real_(this);
}

void Notification::WaitForNotification() const {
  FISHERD_REAL(WaitFn, "K12Notification19WaitForNotificationEv");
  real_(this);
  __tsan_acquire(const_cast<Notification*>(this));
}

bool Notification::WaitForNotificationWithTimeout(Duration timeout) const {
  FISHERD_REAL(WaitTimeoutFn, "K12Notification30WaitForNotificationWithTimeoutENS0_8DurationE");
  const bool notified = real_(this, timeout);
  if (notified) __tsan_acquire(const_cast<Notification*>(this));
  return notified;
}

bool Notification::WaitForNotificationWithDeadline(Time deadline) const {
  FISHERD_REAL(WaitDeadlineFn, "K12Notification31WaitForNotificationWithDeadlineENS0_4TimeE");
  const bool notified = real_(this, deadline);
  if (notified) __tsan_acquire(const_cast<Notification*>(this));
  return notified;
}

ABSL_NAMESPACE_END
}  // namespace absl
