// StreamScores: one ack per batch, in order. A rejected batch ends the stream with its
// status; the batches acknowledged before it stay applied and nothing after it is read.
//
// The reactor keeps one operation in flight at a time: read a batch, apply it on the
// work pool, write its ack, read the next. That makes ordering trivially right (acks
// leave in batch order, and batch k+1 is merged only after batch k), and gRPC's own
// flow-control window still lets the client keep several batches in the pipe.
#include "server/handlers/handlers.h"
#include "server/score_ingest.h"

namespace fisherd::server {
namespace {

class StreamScoresReactor final
    : public grpc::ServerBidiReactor<v1::ScoreBatch, v1::ScoreAck> {
 public:
  StreamScoresReactor(const ServiceResources& resources, grpc::CallbackServerContext* context)
      : resources_(resources), context_(context) {
    StartRead(&batch_);
  }

  void OnReadDone(bool ok) override {
    // !ok: the client closed its side (or the call died). Every batch read so far has
    // been acked, because the next read starts only after the previous ack is written.
    if (!ok) {
      Finish(grpc::Status::OK);
      return;
    }
    resources_.pool->Post([this] { ApplyOnPool(); });
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "the client stopped receiving acks"));
      return;
    }
    StartRead(&batch_);
  }

  void OnDone() override { delete this; }

 private:
  void ApplyOnPool() {
    auto body = [this] { return ApplyScoreBatch(*resources_.registry, batch_, &ack_); };
    ack_.Clear();
    const absl::Status status = RunGuarded(context_, body);
    if (!status.ok()) {
      Finish(ToGrpcStatus(status));
      return;
    }
    StartWrite(&ack_);
  }

  const ServiceResources& resources_;
  grpc::CallbackServerContext* const context_;
  // One of each in flight at a time, so single buffers suffice.
  v1::ScoreBatch batch_;
  v1::ScoreAck ack_;
};

}  // namespace

grpc::ServerBidiReactor<v1::ScoreBatch, v1::ScoreAck>* HandleStreamScores(
    const ServiceResources& resources, grpc::CallbackServerContext* context) {
  return new StreamScoresReactor(resources, context);
}

}  // namespace fisherd::server
