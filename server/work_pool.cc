#include "server/work_pool.h"

#include <exception>
#include <iostream>
#include <utility>

namespace fisherd::server {

WorkPool::WorkPool(int threads) {
  if (threads < 1) threads = 1;
  threads_.reserve(threads);
  for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { Run(); });
}

WorkPool::~WorkPool() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (std::thread& thread : threads_) thread.join();
}

void WorkPool::Post(std::function<void()> task) {
  absl::MutexLock lock(&mu_);
  tasks_.push_back(std::move(task));
}

bool WorkPool::ReadyToRun() const { return stopping_ || !tasks_.empty(); }

void WorkPool::Run() {
  for (;;) {
    std::function<void()> task;
    {
      absl::MutexLock lock(&mu_);
      // Drain before stopping: queued tasks own unfinished RPCs.
      mu_.Await(absl::Condition(this, &WorkPool::ReadyToRun));
      if (tasks_.empty()) return;  // stopping and drained
      task = std::move(tasks_.front());
      tasks_.pop_front();
    }
    try {
      task();
    } catch (const std::exception& e) {
      std::cerr << "fisherd: work pool task threw: " << e.what() << std::endl;
    } catch (...) {
      std::cerr << "fisherd: work pool task threw a non-standard exception" << std::endl;
    }
  }
}

}  // namespace fisherd::server
