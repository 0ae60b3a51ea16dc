// StreamScores: one ack per batch, in order. A rejected batch ends the stream with its
// status; the batches acknowledged before it stay applied and none after it is applied.
//
// The reactor pipelines one batch deep: while batch k is decoded and merged on the
// work pool, batch k+1 is already being read (received and parsed by gRPC), so a single
// stream keeps the network, the decoder and the merge busy at once instead of taking
// turns (docs/performance.md measured the one-at-a-time loop at about half of what
// eight streams reach). Order is still trivially right: at most one pool task per
// stream applies batches, in the order they were read, and acks are written one at a
// time in that same order. At most kMaxUnacked batches are held per stream.
//
// Durable sessions (--data-dir): an ack is queued when its batch is applied but written
// only once the batch's log record is on disk (DurableStore::WhenDurable marks it
// ready). Acks stay in batch order because only the front of the queue is ever written:
// a later batch made durable first waits behind an earlier one. The pool thread never
// waits for a sync, so the next batch is merged while the previous one is being synced.
#include <algorithm>
#include <deque>
#include <memory>

#include "absl/synchronization/mutex.h"
#include "server/durable_store.h"
#include "server/handlers/handlers.h"
#include "server/score_ingest.h"

namespace fisherd::server {
namespace {

// Batches read but not yet acknowledged, per stream: the one being merged and the one
// read ahead of it. Bounds the memory a stream holds to two messages.
constexpr int kMaxUnacked = 2;

class StreamScoresReactor final : public grpc::ServerBidiReactor<v1::ScoreBatch, v1::ScoreAck> {
 public:
  StreamScoresReactor(const ServiceResources& resources, grpc::CallbackServerContext* context)
      : resources_(resources), context_(context) {
    absl::MutexLock lock(&mu_);
    StartReadLocked();
  }

  void OnReadDone(bool ok) override {
    grpc::Status status;
    {
      absl::MutexLock lock(&mu_);
      if (!ReadDoneLocked(ok, &status)) return;
    }
    Finish(status);
  }

  void OnWriteDone(bool ok) override {
    grpc::Status status;
    {
      absl::MutexLock lock(&mu_);
      if (!WriteDoneLocked(ok, &status)) return;
    }
    Finish(status);
  }

  void OnDone() override { delete this; }

 private:
  // Each returns true when the call is to be finished now with *status; the caller
  // does that after releasing mu_, since the reactor may be deleted once Finish runs.
  bool ReadDoneLocked(bool ok, grpc::Status* status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    reading_ = false;
    if (!ok) {
      // The client closed its side (or the call died): finish once every batch read
      // so far has been applied and acknowledged.
      read_closed_ = true;
      return MaybeFinishLocked(status);
    }
    ++unacked_;
    to_apply_.push_back(std::move(read_buffer_));
    if (!applying_ && !failed_) {
      applying_ = true;
      resources_.pool->Post([this] { ApplyOnPool(); });
    }
    if (!failed_ && unacked_ < kMaxUnacked) StartReadLocked();
    return false;
  }

  bool WriteDoneLocked(bool ok, grpc::Status* status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    writing_ = false;
    to_write_.pop_front();
    ++front_id_;
    --unacked_;
    if (!ok) {
      // The call is dead: acks queued behind this one can never be written, and
      // waiting for them would keep the call (and server shutdown) open forever.
      Fail(grpc::Status(grpc::StatusCode::CANCELLED, "the client stopped receiving acks"));
      unacked_ -= static_cast<int>(to_write_.size());
      front_id_ += to_write_.size();
      to_write_.clear();
    } else {
      MaybeStartWriteLocked();
    }
    if (!failed_ && !read_closed_ && !reading_ && unacked_ < kMaxUnacked) StartReadLocked();
    return MaybeFinishLocked(status);
  }

  // Applies queued batches in order, one pool task per stream at a time.
  void ApplyOnPool() {
    for (;;) {
      std::unique_ptr<v1::ScoreBatch> batch;
      grpc::Status status;
      bool finish = false;
      {
        absl::MutexLock lock(&mu_);
        if (to_apply_.empty() || failed_) {
          applying_ = false;
          finish = MaybeFinishLocked(&status);
        } else {
          batch = std::move(to_apply_.front());
          to_apply_.pop_front();
        }
      }
      if (batch == nullptr) {
        if (finish) Finish(status);  // last touch of the reactor
        return;
      }
      v1::ScoreAck ack;
      uint64_t lsn = 0;
      auto body = [this, &batch, &ack, &lsn] {
        return IngestScoreBatch(resources_, *batch, &ack, &lsn);
      };
      const absl::Status applied = RunGuarded(context_, body);
      uint64_t id = 0, wait_for = 0;
      {
        absl::MutexLock lock(&mu_);
        if (!applied.ok()) {
          Fail(ToGrpcStatus(applied));
          continue;  // leaves through the check above
        }
        const bool durable = resources_.store == nullptr;
        to_write_.push_back(PendingAck{std::move(ack), durable});
        if (durable) {
          MaybeStartWriteLocked();
          continue;
        }
        id = front_id_ + to_write_.size() - 1;
        // A duplicate's lsn may be below an earlier batch's (another session's): the
        // stream's high-water mark keeps every ack behind what precedes it anyway.
        stream_lsn_ = std::max(stream_lsn_, lsn);
        wait_for = stream_lsn_;
        ++awaiting_durable_;
      }
      // Outside mu_: the callback may run right here when the record is already durable.
      resources_.store->WhenDurable(wait_for, [this, id] { OnDurable(id); });
    }
  }

  // The log record of ack `id` is on disk: it may be written once those before it are.
  void OnDurable(uint64_t id) {
    grpc::Status status;
    {
      absl::MutexLock lock(&mu_);
      --awaiting_durable_;
      if (id >= front_id_ && id - front_id_ < to_write_.size()) {
        to_write_[id - front_id_].durable = true;
        MaybeStartWriteLocked();
      }
      if (!MaybeFinishLocked(&status)) return;
    }
    Finish(status);
  }

  void MaybeStartWriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (writing_ || to_write_.empty() || !to_write_.front().durable) return;
    writing_ = true;
    StartWrite(&to_write_.front().ack);
  }

  void StartReadLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    read_buffer_ = std::make_unique<v1::ScoreBatch>();
    reading_ = true;
    StartRead(read_buffer_.get());
  }

  // The first failure wins; batches read after the failed one are dropped unapplied.
  void Fail(const grpc::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (failed_) return;
    failed_ = true;
    final_status_ = status;
    to_apply_.clear();
  }

  // Finish once nothing is in flight: every applied batch's ack written (so a rejected
  // batch's predecessors are acknowledged first) and no read, apply or write pending.
  bool MaybeFinishLocked(grpc::Status* status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_ || applying_ || writing_ || !to_write_.empty() || awaiting_durable_ > 0) {
      return false;
    }
    if (failed_) {
      finished_ = true;
      *status = final_status_;
      return true;
    }
    if (read_closed_ && to_apply_.empty() && !reading_) {
      finished_ = true;
      *status = grpc::Status::OK;
      return true;
    }
    return false;
  }

  const ServiceResources& resources_;
  grpc::CallbackServerContext* const context_;

  absl::Mutex mu_;
  std::unique_ptr<v1::ScoreBatch> read_buffer_ ABSL_GUARDED_BY(mu_);  // target of StartRead
  std::deque<std::unique_ptr<v1::ScoreBatch>> to_apply_ ABSL_GUARDED_BY(mu_);
  struct PendingAck {
    v1::ScoreAck ack;
    bool durable = false;  // its batch's log record is on disk (always, without a log)
  };
  // Acks in batch order; the front one is being written (deque keeps it in place).
  std::deque<PendingAck> to_write_ ABSL_GUARDED_BY(mu_);
  uint64_t front_id_ ABSL_GUARDED_BY(mu_) = 0;     // id of to_write_.front(); ids count acks
  uint64_t stream_lsn_ ABSL_GUARDED_BY(mu_) = 0;   // highest LSN an ack of this stream waits for
  int awaiting_durable_ ABSL_GUARDED_BY(mu_) = 0;  // WhenDurable callbacks not yet run
  int unacked_ ABSL_GUARDED_BY(mu_) = 0;           // read, not yet acknowledged or dropped
  bool reading_ ABSL_GUARDED_BY(mu_) = false;
  bool applying_ ABSL_GUARDED_BY(mu_) = false;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool read_closed_ ABSL_GUARDED_BY(mu_) = false;
  bool failed_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status final_status_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

grpc::ServerBidiReactor<v1::ScoreBatch, v1::ScoreAck>* HandleStreamScores(
    const ServiceResources& resources, grpc::CallbackServerContext* context) {
  return new StreamScoresReactor(resources, context);
}

}  // namespace fisherd::server
