// StreamNaturalGradientStep: the natural-gradient step for a gradient of any size. The
// gradient arrives in chunks and the answer leaves in chunks, each far below gRPC's
// default 4 MiB message limit, so a session of 1e8 parameters needs no raised limit.
// The server holds the gradient and the step's result, O(dim) doubles, for the call.
//
// The call has two phases that never overlap, so no lock is needed: reading (each chunk
// copied into place on the work pool, then the next read started) until the client
// half-closes, then writing (the step runs on the pool, then the header and one chunk at
// a time, the next copied only after the previous write completed, which is how gRPC
// exposes flow control). Every stage runs on the pool, never on a callback thread.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>

#include "Eigen/Core"
#include "absl/strings/str_cat.h"
#include "common/float32_bytes.h"
#include "server/conversions.h"
#include "server/handlers/handlers.h"

namespace fisherd::server {
namespace {

using Request = v1::StreamNaturalGradientStepRequest;
using Response = v1::StreamNaturalGradientStepResponse;

class StreamStepReactor final : public grpc::ServerBidiReactor<Request, Response> {
 public:
  StreamStepReactor(const ServiceResources& resources, grpc::CallbackServerContext* context)
      : resources_(resources), context_(context) {
    StartRead(&request_);
  }

  ~StreamStepReactor() override {
    if (reserved_bytes_ > 0) resources_.registry->ReleaseWorkingMemory(reserved_bytes_);
  }

  void OnReadDone(bool ok) override {
    // ok == false: the client half-closed (or the call died); the gradient is complete
    // or the step refuses it.
    resources_.pool->Post([this, ok] {
      RunStage(context_, this,
               ok ? &StreamStepReactor::AcceptChunk : &StreamStepReactor::StepAndWriteHeader);
    });
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "the client stopped reading"));
      return;
    }
    resources_.pool->Post([this] { RunStage(context_, this, &StreamStepReactor::WriteNextChunk); });
  }

  void OnDone() override { delete this; }

 private:
  // The first message resolves the session and the step options.
  absl::Status AcceptHeader() {
    if (!request_.has_header()) {
      return absl::InvalidArgumentError(
          "the first message must carry header (the session and the step options)");
    }
    const v1::NaturalGradientStepRequest& header = request_.header();
    absl::StatusOr<std::shared_ptr<Session>> session =
        resources_.registry->Get(header.session(), "header.session");
    if (!session.ok()) return session.status();
    session_ = std::move(*session);
    session_name_ = header.session();
    if (header.gradient_size() != 0) {
      return absl::InvalidArgumentError(
          "header.gradient must be empty: the gradient travels in the chunks");
    }
    if (header.has_damping()) options_.damping = header.damping();
    options_.learning_rate = header.learning_rate();
    options_.kl_budget = header.kl_budget();
    options_.skip_decay = header.skip_decay();
    if (absl::Status status = ValidateStepAnswer(header.answer(), "header.answer"); !status.ok()) {
      return status;
    }
    answer_ = header.answer();
    if (absl::Status status = options_.Validate(); !status.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("header: ", status.message()));
    }
    // The gradient, then n and the update: 3 dim doubles at the peak, counted against
    // the memory budget until the call ends.
    const uint64_t dim = static_cast<uint64_t>(session_->options().dim);
    const uint64_t bytes = dim > (UINT64_MAX / 24) ? UINT64_MAX : 24 * dim;
    if (absl::Status status = resources_.registry->ReserveWorkingMemory(
            bytes, absl::StrCat("a streamed step of session \"", header.session(), "\""));
        !status.ok()) {
      return status;
    }
    reserved_bytes_ = bytes;
    gradient_.resize(session_->options().dim);
    return absl::OkStatus();
  }

  absl::StatusOr<StageOutcome> AcceptChunk() {
    if (session_ == nullptr) {
      if (absl::Status status = AcceptHeader(); !status.ok()) return status;
    } else if (request_.has_header()) {
      return absl::InvalidArgumentError(
          absl::StrCat("header is set again in a later message (at offset ", request_.offset(),
                       "); only the first message carries it"));
    }
    const bool has_doubles = request_.gradient_size() > 0;
    const bool has_floats = !request_.gradient_f32().empty();
    if (has_doubles && has_floats) {
      return absl::InvalidArgumentError(
          absl::StrCat("the chunk at offset ", request_.offset(),
                       " sets both gradient and gradient_f32; set one"));
    }
    if (request_.gradient_f32().size() % sizeof(float) != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("gradient_f32 of the chunk at offset ", request_.offset(), " has ",
                       request_.gradient_f32().size(), " bytes, not a multiple of 4"));
    }
    const int64_t count = has_doubles ? request_.gradient_size()
                                      : static_cast<int64_t>(request_.gradient_f32().size() / 4);
    const int64_t dim = gradient_.size();
    if (count > 0) {
      if (request_.offset() != static_cast<uint64_t>(filled_)) {
        return absl::InvalidArgumentError(
            absl::StrCat("chunk offset is ", request_.offset(), " but the chunks so far end at ",
                         filled_, "; send the chunks in order, without gaps or overlaps"));
      }
      if (count > dim - filled_) {
        return absl::InvalidArgumentError(absl::StrCat("the chunk at offset ", filled_, " has ",
                                                       count, " values, past the session's dim ",
                                                       dim));
      }
      double* out = gradient_.data() + filled_;
      if (has_doubles) {
        std::copy_n(request_.gradient().data(), count, out);
      } else {
        common::WidenFloat32(request_.gradient_f32(), out);
      }
      for (int64_t i = 0; i < count; ++i) {
        if (!std::isfinite(out[i])) {
          return absl::InvalidArgumentError(absl::StrCat("gradient[", filled_ + i, "] is ", out[i],
                                                         "; the gradient must be finite"));
        }
      }
      filled_ += count;
    }
    request_.Clear();
    StartRead(&request_);
    return StageOutcome::kStarted;
  }

  absl::StatusOr<StageOutcome> StepAndWriteHeader() {
    if (session_ == nullptr) {
      return absl::InvalidArgumentError(
          "the stream closed before its first message; send header and the gradient's chunks");
    }
    if (filled_ != gradient_.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("the chunks cover [0, ", filled_, ") of the gradient, but session \"",
                       request_header_session(), "\" has dim ", gradient_.size()));
    }
    const auto start = std::chrono::steady_clock::now();
    absl::StatusOr<StepResult> result = session_->Step(
        gradient_, options_, StepLogger(resources_, request_header_session(), *session_));
    if (!result.ok()) return result.status();
    RecordStep(resources_, result->solver, start);
    WaitDurable(resources_, result->lsn);  // its decay is on disk before anyone sees it
    result_ = *std::move(result);
    gradient_ = Eigen::VectorXd();  // no longer needed: keep the call at O(dim) doubles

    response_.Clear();
    v1::NaturalGradientStepResponse* header = response_.mutable_header();
    StepResult scalars;
    scalars.eta = result_.eta;
    scalars.natural_norm_sq = result_.natural_norm_sq;
    scalars.predicted_kl = result_.predicted_kl;
    scalars.solver = result_.solver;
    StepResultToProto(scalars, v1::STEP_ANSWER_FULL, header);  // its vectors are empty
    // The chunk's vectors within about max_block_bytes: 16, 8 or 4 bytes per value.
    const int64_t value_bytes = answer_ == v1::STEP_ANSWER_FULL     ? 16
                                : answer_ == v1::STEP_ANSWER_UPDATE ? 8
                                                                    : 4;
    chunk_values_ = std::max<int64_t>(1, resources_.max_block_bytes / value_bytes);
    StartWrite(&response_);
    return StageOutcome::kStarted;
  }

  absl::StatusOr<StageOutcome> WriteNextChunk() {
    const int64_t dim = result_.update.size();
    if (next_ >= dim) return StageOutcome::kDone;
    int64_t end = std::min(dim, next_ + chunk_values_);
    response_.Clear();
    const BlockLayout& layout = session_->layout();
    if (!layout.empty()) {
      // A chunk never straddles two blocks, so a client can route it by name.
      const int64_t block = layout.BlockAt(next_);
      end = std::min(end, layout.offset(block + 1));
      response_.set_block(layout.block(block).name);
    }
    response_.set_offset(static_cast<uint64_t>(next_));
    StepChunkToProto(result_, answer_, next_, end, &response_);
    next_ = end;
    StartWrite(&response_);
    return StageOutcome::kStarted;
  }

  const std::string& request_header_session() const { return session_name_; }

  const ServiceResources& resources_;
  grpc::CallbackServerContext* const context_;
  // Touched only by the one stage running at a time (each is posted from the callback
  // of the read or write the previous stage started).
  Request request_;
  Response response_;
  std::shared_ptr<Session> session_;
  std::string session_name_;
  StepOptions options_;
  v1::StepAnswer answer_ = v1::STEP_ANSWER_FULL;
  Eigen::VectorXd gradient_;
  int64_t filled_ = 0;
  StepResult result_;
  int64_t chunk_values_ = 1;
  int64_t next_ = 0;
  uint64_t reserved_bytes_ = 0;  // of the registry's budget, released with the reactor
};

}  // namespace

grpc::ServerBidiReactor<v1::StreamNaturalGradientStepRequest,
                        v1::StreamNaturalGradientStepResponse>*
HandleStreamNaturalGradientStep(const ServiceResources& resources,
                                grpc::CallbackServerContext* context) {
  return new StreamStepReactor(resources, context);
}

}  // namespace fisherd::server
