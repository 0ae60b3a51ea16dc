// GetFisher: the summary first, then (on request) consecutive blocks of rows of F, each
// at most about 1 MiB of doubles so that dense dim 4096 (128 MiB) fits the default
// 4 MiB receive limit of every gRPC client. The next block is written only after the
// previous write completed (OnWriteDone), which is how gRPC exposes flow control.
//
// Consistency: the summary, the session's counters and every entry the stream will send
// are read under one hold of the session lock (Session::ReadPart), so a client polling
// while workers stream scores always gets one estimate and never has to retry. The
// price is a copy of the requested part for the life of the stream, counted against
// --memory-budget-mb as working memory (RESOURCE_EXHAUSTED when it does not fit); a
// slow reader costs that copy plus what gRPC's window buffers.
#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "server/conversions.h"
#include "server/handlers/handlers.h"

namespace fisherd::server {
namespace {

class GetFisherReactor final : public grpc::ServerWriteReactor<v1::GetFisherResponse> {
 public:
  GetFisherReactor(const ServiceResources& resources, grpc::CallbackServerContext* context,
                   const v1::GetFisherRequest* request)
      : resources_(resources), context_(context), request_(request) {
    resources_.pool->Post([this] { RunStage(context_, this, &GetFisherReactor::WriteSummary); });
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "the client stopped reading"));
      return;
    }
    // Copying the next block takes the session lock: not on a callback thread.
    resources_.pool->Post(
        [this] { RunStage(context_, this, &GetFisherReactor::WriteNextBlockOrFinish); });
  }

  void OnDone() override {
    if (reserved_bytes_ > 0) resources_.registry->ReleaseWorkingMemory(reserved_bytes_);
    delete this;
  }

 private:
  absl::StatusOr<StageOutcome> WriteSummary() {
    absl::StatusOr<std::shared_ptr<Session>> session =
        resources_.registry->Get(request_->session(), "session");
    if (!session.ok()) return session.status();
    session_ = std::move(*session);

    absl::StatusOr<EstimatePart> resolved = ResolvePart();
    if (!resolved.ok()) return resolved.status();
    const EstimatePart part = *resolved;

    rows_ = request_->include_matrix() ? session_->PartRows(part) : 0;
    entries_per_row_ = session_->PartEntriesPerRow(part);
    // About 1 MiB of doubles per message (resources_.max_block_bytes): large enough that
    // per-message overhead is negligible (1 MiB messages move at about 1.7 GB/s on
    // loopback, docs/design.md 5), far below the default 4 MiB client receive limit. At
    // least one row, whatever its size.
    const int64_t block_values = resources_.max_block_bytes / static_cast<int64_t>(sizeof(double));
    if (rows_ > 0 && entries_per_row_ > block_values) {
      // Only a low-rank block can get here (its dim is not bounded by --max-dense-dim):
      // one of its rows would not fit a message.
      return absl::ResourceExhaustedError(absl::StrCat(
          "one row of ",
          request_->block().empty() ? "the estimate" : "block \"" + request_->block() + "\"",
          " has ", entries_per_row_, " values, more than one message carries (", block_values,
          "); ask for the summary only, or use FisherVectorProduct"));
    }
    rows_per_block_ = std::max<int64_t>(1, block_values / entries_per_row_);
    if (rows_ > 0) {
      const uint64_t bytes =
          static_cast<uint64_t>(rows_) * static_cast<uint64_t>(entries_per_row_) * sizeof(double);
      if (absl::Status status = resources_.registry->ReserveWorkingMemory(
              bytes, absl::StrCat("a copy of the estimate of session \"", request_->session(),
                                  "\" for GetFisher"));
          !status.ok()) {
        return status;
      }
      reserved_bytes_ = bytes;
    }

    // FAILED_PRECONDITION before any sample: F = M / W is undefined at W = 0.
    absl::StatusOr<PartReading> reading =
        session_->ReadPart(part, request_->include_eigenvalues(), rows_ > 0);
    if (!reading.ok()) return reading.status();
    WaitSessionDurable(resources_, *session_);
    entries_ = std::move(reading->entries);

    response_.Clear();
    FisherSummaryToProto(reading->summary, *session_, part, reading->stats,
                         response_.mutable_summary());
    StartWrite(&response_);
    return StageOutcome::kStarted;
  }

  absl::StatusOr<StageOutcome> WriteNextBlockOrFinish() {
    if (next_row_ >= rows_) return StageOutcome::kDone;
    const int64_t count = std::min(rows_per_block_, rows_ - next_row_);
    response_.Clear();
    response_.set_row_offset(static_cast<uint64_t>(next_row_));
    response_.set_row_count(static_cast<uint32_t>(count));
    const double* first = entries_.data() + next_row_ * entries_per_row_;
    response_.mutable_values()->Add(first, first + count * entries_per_row_);
    next_row_ += count;
    StartWrite(&response_);
    return StageOutcome::kStarted;
  }

  // The block (and factor) the request names. A layered session's whole F is never
  // streamed: its rows would be dim values each, mostly zeros; a block at a time is.
  absl::StatusOr<EstimatePart> ResolvePart() const {
    EstimatePart part;
    absl::StatusOr<Factor> factor = FactorFromProto(static_cast<int>(request_->factor()), "factor");
    if (!factor.ok()) return factor.status();
    part.factor = *factor;
    const BlockLayout& layout = session_->layout();
    if (!request_->block().empty()) {
      if (layout.empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat("block \"", absl::CHexEscape(request_->block().substr(0, 128)),
                         "\" is set but session \"", request_->session(), "\" has no blocks"));
      }
      part.block = layout.Find(request_->block());
      if (part.block < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("block \"", absl::CHexEscape(request_->block().substr(0, 128)),
                         "\" is not a block of session \"", request_->session(), "\""));
      }
    } else if (!layout.empty() && request_->include_matrix()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "include_matrix on a layered session needs a block (and, for a kronecker block, a "
          "factor); session \"",
          request_->session(), "\" has ", layout.size(), " blocks"));
    }
    if (absl::Status status = session_->CheckPart(part); !status.ok()) return status;
    if (part.block >= 0 && request_->include_matrix() && part.factor == Factor::kNone &&
        layout.block(part.block).kind == BlockKind::kKronecker) {
      return absl::InvalidArgumentError(
          absl::StrCat("block \"", layout.block(part.block).name,
                       "\" is a kronecker block, whose G (x) A is never formed: set factor to "
                       "FACTOR_ACTIVATIONS or FACTOR_OUTPUT_GRADIENTS to stream that factor"));
    }
    return part;
  }

  const ServiceResources& resources_;
  grpc::CallbackServerContext* const context_;
  const v1::GetFisherRequest* const request_;
  // Touched only by the stage running on the pool; stages are serialized by the write
  // cycle (a stage is posted only from the constructor or from OnWriteDone). OnDone
  // runs after the last stage.
  std::shared_ptr<Session> session_;
  uint64_t reserved_bytes_ = 0;  // working memory held for entries_
  std::vector<double> entries_;  // the part's rows, read with the summary
  int64_t entries_per_row_ = 1;
  int64_t rows_ = 0;
  int64_t rows_per_block_ = 1;
  int64_t next_row_ = 0;
  v1::GetFisherResponse response_;  // the one message in flight
};

}  // namespace

grpc::ServerWriteReactor<v1::GetFisherResponse>* HandleGetFisher(
    const ServiceResources& resources, grpc::CallbackServerContext* context,
    const v1::GetFisherRequest* request) {
  return new GetFisherReactor(resources, context, request);
}

}  // namespace fisherd::server
