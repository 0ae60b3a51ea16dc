// WorkPool: a small fixed set of threads that run the server's math (decode, merge,
// solve, copies of F) so that gRPC's callback threads never block on it (docs/design.md 5).
//
// Tasks run in FIFO order, each to completion. Handlers post a task and return; the
// task finishes the RPC itself (Finish / StartWrite are legal from any thread).
#ifndef FISHERD_SERVER_WORK_POOL_H_
#define FISHERD_SERVER_WORK_POOL_H_

#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace fisherd::server {

class WorkPool {
 public:
  // Starts `threads` workers. REQUIRES: threads >= 1.
  explicit WorkPool(int threads);

  // Runs every task already posted, then joins the workers.
  ~WorkPool();

  WorkPool(const WorkPool&) = delete;
  WorkPool& operator=(const WorkPool&) = delete;

  // Queues `task`. A task that throws is a bug in it; the pool logs and carries on so
  // one bad request cannot take the server down, but the task must not leave its RPC
  // unfinished (handlers catch their own exceptions, see handler_util.h).
  // REQUIRES: not called from or after the destructor.
  void Post(std::function<void()> task) ABSL_LOCKS_EXCLUDED(mu_);

  int size() const { return static_cast<int>(threads_.size()); }

 private:
  void Run() ABSL_LOCKS_EXCLUDED(mu_);
  bool ReadyToRun() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  std::deque<std::function<void()>> tasks_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace fisherd::server

#endif  // FISHERD_SERVER_WORK_POOL_H_
