#include "client/score_streamer.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/describe.h"
#include "client/grpc_status.h"
#include "client/score_encoding.h"

namespace fisherd::client {
namespace v1 = ::fisherd::v1;

namespace {

absl::Status ValidateOptions(const ScoreStreamerOptions& o) {
  if (o.session.empty()) return absl::InvalidArgumentError("ScoreStreamerOptions.session is empty");
  if (o.worker_id.empty()) {
    return absl::InvalidArgumentError(
        "ScoreStreamerOptions.worker_id is empty; resends need it for deduplication");
  }
  if (o.rows_per_batch < 1) {
    return absl::InvalidArgumentError("ScoreStreamerOptions.rows_per_batch must be >= 1");
  }
  if (o.max_in_flight < 1) {
    return absl::InvalidArgumentError("ScoreStreamerOptions.max_in_flight must be >= 1");
  }
  if (o.max_retries < 0) {
    return absl::InvalidArgumentError("ScoreStreamerOptions.max_retries must be >= 0");
  }
  if (o.initial_backoff <= absl::ZeroDuration() || o.max_backoff < o.initial_backoff) {
    return absl::InvalidArgumentError(
        "ScoreStreamerOptions: need 0 < initial_backoff <= max_backoff");
  }
  if (o.stream_deadline <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("ScoreStreamerOptions.stream_deadline must be > 0");
  }
  if (!v1::Factor_IsValid(o.factor)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("ScoreStreamerOptions.factor %d is not a Factor", o.factor));
  }
  if (o.block.empty() && o.factor != v1::FACTOR_UNSPECIFIED) {
    return absl::InvalidArgumentError(
        "ScoreStreamerOptions.factor is set without a block; a factor belongs to a Kronecker "
        "block");
  }
  return absl::OkStatus();
}

std::string Describe(const ScoreTarget& target) {
  if (target.block.empty()) return "the session";
  if (target.factor == v1::FACTOR_UNSPECIFIED) return absl::StrFormat("block \"%s\"", target.block);
  return absl::StrFormat("block \"%s\" %s", target.block, v1::Factor_Name(target.factor));
}

// Up to 8 block names of a layout, for an error message.
std::string SomeBlockNames(const v1::SessionConfig& config) {
  std::vector<std::string> names;
  for (const v1::BlockConfig& block : config.blocks()) {
    if (names.size() == 8) {
      names.push_back(absl::StrFormat("... (%d in all)", config.blocks_size()));
      break;
    }
    names.push_back(block.name());
  }
  return absl::StrJoin(names, ", ");
}

}  // namespace

absl::StatusOr<std::unique_ptr<ScoreStreamer>> ScoreStreamer::Create(
    FisherClient* client, const ScoreStreamerOptions& options) {
  if (absl::Status s = ValidateOptions(options); !s.ok()) return s;
  // The session is needed to resume the sequence and to learn row widths; a caller that
  // gives both (a plain session) can create a streamer without reaching the server.
  const bool needs_session =
      options.starting_sequence == 0 || options.dim == 0 || !options.block.empty();
  std::optional<v1::Session> session;
  uint64_t starting_sequence = options.starting_sequence;
  if (needs_session) {
    absl::StatusOr<v1::Session> fetched = client->GetSession(options.session);
    if (!fetched.ok()) return fetched.status();
    session = *std::move(fetched);
  }
  if (starting_sequence == 0) {
    // Resume after what the server already applied for this worker (one sequence space
    // for all blocks of a layered session).
    const auto& sequences = session->stats().worker_sequences();
    auto it = sequences.find(options.worker_id);
    starting_sequence = it == sequences.end() ? 1 : it->second + 1;
  }
  std::unique_ptr<ScoreStreamer> streamer(new ScoreStreamer(client, options, starting_sequence));
  const ScoreTarget target = streamer->default_target_;
  if (session.has_value()) {
    streamer->SetSession(*session);
    const bool layered = session->config().blocks_size() > 0;
    if (layered && target.block.empty()) {
      // A streamer without a default block: every Append names its target.
      if (options.dim != 0) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "ScoreStreamerOptions.dim is %d but %s is layered (%d blocks): name the block its "
            "rows feed in ScoreStreamerOptions.block, or leave dim 0 and pass a ScoreTarget to "
            "Append",
            options.dim, session->name(), session->config().blocks_size()));
      }
      return streamer;
    }
    absl::StatusOr<Shape> shape = streamer->Resolve(target);
    if (!shape.ok()) return shape.status();
    if (options.dim != 0 && options.dim != shape->width) {
      if (!layered) {
        return absl::InvalidArgumentError(
            absl::StrFormat("ScoreStreamerOptions.dim is %d but %s has dim %d", options.dim,
                            session->name(), shape->width));
      }
      return absl::InvalidArgumentError(
          absl::StrFormat("ScoreStreamerOptions.dim is %d but rows of %s of %s have %d values",
                          options.dim, Describe(target), session->name(), shape->width));
    }
    return streamer;
  }
  // No session fetched: dim >= 1 and no block, so the default target is the plain one.
  if (absl::Status s = streamer->ShapeFor(target, options.dim).status(); !s.ok()) return s;
  return streamer;
}

ScoreStreamer::ScoreStreamer(FisherClient* client, const ScoreStreamerOptions& options,
                             uint64_t starting_sequence)
    : client_(client),
      options_(options),
      session_name_(SessionName(options.session)),
      default_target_{options.block, options.factor} {
  stats_.next_sequence = starting_sequence;
}

void ScoreStreamer::SetSession(const v1::Session& session) {
  config_ = session.config();
  have_session_ = true;
  block_index_.clear();
  for (int i = 0; i < config_.blocks_size(); ++i) block_index_.emplace(config_.blocks(i).name(), i);
}

absl::StatusOr<ScoreStreamer::Shape> ScoreStreamer::Resolve(const ScoreTarget& target) {
  if (!have_session_) {
    if (target == default_target_) return ShapeFor(target, options_.dim);  // dim >= 1 here
    absl::StatusOr<v1::Session> session = client_->GetSession(session_name_);
    if (!session.ok()) return session.status();
    SetSession(*session);
  }
  if (!v1::Factor_IsValid(target.factor)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("ScoreTarget.factor %d is not a Factor", target.factor));
  }
  if (config_.blocks_size() == 0) {
    if (!target.block.empty() || target.factor != v1::FACTOR_UNSPECIFIED) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s is not layered (it has no blocks), so rows cannot name %s; leave the target empty",
          session_name_, Describe(target)));
    }
    return ShapeFor(target, config_.dim());
  }
  if (target.block.empty()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s is layered: name the block the rows feed (ScoreStreamerOptions.block or a "
        "ScoreTarget); its blocks: %s",
        session_name_, SomeBlockNames(config_)));
  }
  auto it = block_index_.find(target.block);
  if (it == block_index_.end()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("block \"%s\" is not in the layout of %s; its blocks: %s", target.block,
                        session_name_, SomeBlockNames(config_)));
  }
  const v1::BlockConfig& block = config_.blocks(it->second);
  if (block.kind() == v1::BLOCK_KIND_KRONECKER) {
    switch (target.factor) {
      case v1::FACTOR_ACTIVATIONS:
        return ShapeFor(target, block.in_features());
      case v1::FACTOR_OUTPUT_GRADIENTS:
        return ShapeFor(target, block.out_features());
      default:
        return absl::InvalidArgumentError(absl::StrFormat(
            "block \"%s\" of %s is KRONECKER: name the factor the rows feed, "
            "FACTOR_ACTIVATIONS (%d values a row) or FACTOR_OUTPUT_GRADIENTS (%d values a row)",
            block.name(), session_name_, block.in_features(), block.out_features()));
    }
  }
  if (target.factor != v1::FACTOR_UNSPECIFIED) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "block \"%s\" of %s is %s: only Kronecker blocks have factors, so the factor must be "
        "FACTOR_UNSPECIFIED, not %s",
        block.name(), session_name_, BlockKindName(block.kind()), v1::Factor_Name(target.factor)));
  }
  return ShapeFor(target, block.dim());
}

absl::StatusOr<ScoreStreamer::Shape> ScoreStreamer::ShapeFor(const ScoreTarget& target,
                                                             uint64_t width) const {
  if (width == 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("rows of %s of %s have width 0", Describe(target), session_name_));
  }
  Shape shape;
  shape.width = width;
  shape.rows_per_batch = static_cast<size_t>(options_.rows_per_batch);
  if (options_.max_batch_bytes > 0) {
    const uint64_t fitting = options_.max_batch_bytes / (4 * width);
    shape.rows_per_batch = static_cast<size_t>(
        std::max<uint64_t>(1, std::min<uint64_t>(shape.rows_per_batch, fitting)));
  }
  // A batch the channel refuses to send would fail on every retry.
  const double batch_bytes =
      4.0 * shape.rows_per_batch * static_cast<double>(width) + 8.0 * shape.rows_per_batch + 1024;
  if (batch_bytes > client_->options().max_message_bytes) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "ScoreStreamerOptions: a batch of %d rows of %d values (%s, about %.0f bytes) exceeds "
        "the client's max_message_bytes %d; lower rows_per_batch or max_batch_bytes",
        shape.rows_per_batch, width, Describe(target), batch_bytes,
        client_->options().max_message_bytes));
  }
  return shape;
}

ScoreStreamer::~ScoreStreamer() {
  if (stream_ == nullptr) return;
  context_->TryCancel();
  v1::ScoreAck ack;
  while (stream_->Read(&ack)) {
  }
  stream_->Finish().IgnoreError();
}

absl::Status ScoreStreamer::Append(absl::Span<const float> scores,
                                   absl::Span<const float> weights) {
  return Append(default_target_, scores, weights);
}

absl::Status ScoreStreamer::Append(const ScoreTarget& target, absl::Span<const float> scores,
                                   absl::Span<const float> weights) {
  if (!failure_.ok()) return failure_;
  absl::StatusOr<Shape> shape = Resolve(target);
  if (!shape.ok()) return shape.status();
  if (absl::Status s = ValidateScoreRows(scores, weights, shape->width); !s.ok()) {
    if (target.block.empty()) return s;
    return absl::Status(s.code(), absl::StrCat(Describe(target), ": ", s.message()));
  }
  const size_t dim = shape->width;
  const size_t rows = scores.size() / dim;
  const size_t per_batch = shape->rows_per_batch;
  stats_.rows_appended += rows;

  size_t row = 0;  // rows [0, row) of this call are in a batch or in the pending buffer
  auto buffer_rest = [&](size_t end) {
    pending_scores_.insert(pending_scores_.end(), scores.begin() + row * dim,
                           scores.begin() + end * dim);
    for (size_t r = row; r < end; ++r)
      pending_weights_.push_back(weights.empty() ? 1.0f : weights[r]);
    row = end;
  };
  // On failure the rest of the call waits in the buffer for the next Append/Flush.
  auto fail = [&](absl::Status s) {
    buffer_rest(rows);
    return s;
  };

  // 0. A batch holds one target's rows: those of another target go out first. Either
  // way the buffer is empty afterwards and becomes this target's.
  absl::Status switched;
  if (!pending_weights_.empty() && pending_target_ != target) switched = CutPendingBatches();
  if (pending_weights_.empty()) {
    pending_target_ = target;
    pending_shape_ = *shape;
  }
  if (!switched.ok()) return fail(switched);

  // 1. Complete the partial batch left by earlier calls (after a failed call the buffer
  // may hold several batches' worth).
  // Top it up from this call's rows and send it, until the buffer is empty (then step 2
  // sends whole batches straight from the caller's rows) or this call's rows run out.
  while (!pending_weights_.empty()) {
    if (pending_weights_.size() < per_batch) {
      buffer_rest(std::min(rows, row + (per_batch - pending_weights_.size())));
      if (pending_weights_.size() < per_batch) break;  // the call's rows are all buffered
    }
    if (absl::Status s = SendPendingBatch(); !s.ok()) return fail(s);
  }
  // 2. Full batches straight from the caller's rows, without a copy into the buffer.
  // (Only once the buffer is empty: rows must go out in the order they came.)
  while (pending_weights_.empty() && rows - row >= per_batch) {
    if (absl::Status s = WaitForAcks(options_.max_in_flight - 1); !s.ok()) return fail(s);
    Enqueue(target, dim, scores.subspan(row * dim, per_batch * dim),
            weights.empty() ? weights : weights.subspan(row, per_batch));
    row += per_batch;
    if (absl::Status s = SendNewest(); !s.ok()) return fail(s);
  }
  // 3. The remainder starts the next batch.
  buffer_rest(rows);
  return absl::OkStatus();
}

absl::Status ScoreStreamer::Flush() {
  if (!failure_.ok()) return failure_;
  while (!pending_weights_.empty()) {
    if (absl::Status s = SendPendingBatch(); !s.ok()) return s;
  }
  return WaitForAcks(0);
}

absl::Status ScoreStreamer::Close() {
  if (absl::Status s = Flush(); !s.ok()) return s;
  if (stream_ == nullptr) return absl::OkStatus();
  grpc::Status status = FinishStream();
  if (!failure_.ok()) return failure_;
  return FromGrpcStatus(status);
}

absl::Status ScoreStreamer::SendPendingBatch() {
  if (absl::Status s = WaitForAcks(options_.max_in_flight - 1); !s.ok()) return s;
  EnqueuePending();
  return SendNewest();
}

absl::Status ScoreStreamer::CutPendingBatches() {
  // Usually one partial batch. After a failed Append the buffer may hold more; each
  // batch is written as it is queued. Once a wait or write fails there is no stream
  // (or the streamer has failed), and the batches queued unsent meanwhile are written
  // when the next stream opens, like every unacknowledged batch.
  absl::Status status;
  while (!pending_weights_.empty()) {
    if (status.ok()) status = WaitForAcks(options_.max_in_flight - 1);
    EnqueuePending();
    ++stats_.target_switches;
    if (status.ok()) status = SendNewest();
  }
  return status;
}

void ScoreStreamer::EnqueuePending() {
  const size_t rows = std::min(pending_weights_.size(), pending_shape_.rows_per_batch);
  const size_t values = rows * pending_shape_.width;
  Enqueue(pending_target_, pending_shape_.width,
          absl::MakeConstSpan(pending_scores_.data(), values),
          absl::MakeConstSpan(pending_weights_.data(), rows));
  pending_scores_.erase(pending_scores_.begin(), pending_scores_.begin() + values);
  pending_weights_.erase(pending_weights_.begin(), pending_weights_.begin() + rows);
}

void ScoreStreamer::Enqueue(const ScoreTarget& target, uint64_t width,
                            absl::Span<const float> scores, absl::Span<const float> weights) {
  // Unit weights are the default; leaving them out saves 4 bytes a row on the wire.
  const bool all_ones =
      std::all_of(weights.begin(), weights.end(), [](float w) { return w == 1.0f; });
  Batch batch;
  batch.message = MakeScoreBatch(session_name_, options_.worker_id, stats_.next_sequence++, scores,
                                 all_ones ? absl::Span<const float>() : weights, width);
  batch.message.set_block(target.block);
  batch.message.set_factor(target.factor);
  unacked_.push_back(std::move(batch));
}

absl::Status ScoreStreamer::SendNewest() {
  // Replace a stream past half its deadline gracefully, before the deadline cuts it
  // with batches in flight (which would then be resent as duplicates).
  if (stream_ != nullptr && absl::Now() - stream_opened_ > options_.stream_deadline / 2) {
    if (grpc::Status status = FinishStream(); !status.ok()) return Recover(status);
  }
  if (stream_ == nullptr) return EnsureStream();  // opening writes every unacked batch
  Batch& batch = unacked_.back();
  CountTransmission(&batch);
  if (stream_->Write(batch.message)) return absl::OkStatus();
  return Recover(CloseBrokenStream());
}

absl::Status ScoreStreamer::WaitForAcks(size_t limit) {
  while (failure_.ok() && unacked_.size() > limit) {
    if (stream_ == nullptr) {
      // Recovery may end without a stream when the drained acks retired everything;
      // the loop condition decides whether one is still needed.
      if (absl::Status s = EnsureStream(); !s.ok()) return s;
      continue;
    }
    v1::ScoreAck ack;
    if (stream_->Read(&ack)) {
      ProcessAck(ack);
      continue;
    }
    if (absl::Status s = Recover(CloseBrokenStream()); !s.ok()) return s;
  }
  return failure_;
}

void ScoreStreamer::ProcessAck(const v1::ScoreAck& ack) {
  ++stats_.acks_received;
  if (ack.duplicate()) ++stats_.duplicate_acks;
  stats_.last_ack = ack;
  stats_.has_last_ack = true;
  // The server's highest applied sequence for this worker can only come from this
  // streamer's batches. Anything higher means another sender uses the same worker_id (or
  // starting_sequence was too low), and our batches at or below it were dropped as
  // duplicates: silent data loss, so it is an error.
  if (ack.sequence() > highest_transmitted_) {
    failure_ = absl::FailedPreconditionError(absl::StrFormat(
        "worker %s on %s: the server has applied sequence %d but this streamer has sent "
        "only up to %d, so its batches at or below %d were discarded as duplicates; another "
        "process uses this worker_id or starting_sequence is too low",
        options_.worker_id, session_name_, ack.sequence(), highest_transmitted_, ack.sequence()));
    return;
  }
  // Acks are per batch and in order, but a cumulative ack (one for several batches) is
  // handled the same way: everything at or below the acknowledged sequence is applied.
  bool progress = false;
  while (!unacked_.empty() && unacked_.front().message.sequence() <= ack.sequence()) {
    unacked_.pop_front();
    progress = true;
  }
  if (progress) consecutive_failures_ = 0;
}

void ScoreStreamer::CountTransmission(Batch* batch) {
  if (batch->transmissions++ == 0) {
    ++stats_.batches_sent;
  } else {
    ++stats_.batches_resent;
  }
  highest_transmitted_ = std::max(highest_transmitted_, batch->message.sequence());
}

absl::Status ScoreStreamer::EnsureStream() {
  if (!failure_.ok()) return failure_;
  if (stream_ != nullptr) return absl::OkStatus();
  if (OpenAndResend()) return absl::OkStatus();
  return Recover(CloseBrokenStream());
}

bool ScoreStreamer::OpenAndResend() {
  context_ = std::make_unique<grpc::ClientContext>();
  context_->set_deadline(absl::ToChronoTime(absl::Now() + options_.stream_deadline));
  client_->AddToken(context_.get());
  AddSessionMetadata(context_.get(), options_.session);
  stream_ = client_->stub()->StreamScores(context_.get());
  stream_opened_ = absl::Now();
  ++stats_.streams_opened;
  for (Batch& batch : unacked_) {
    CountTransmission(&batch);
    if (!stream_->Write(batch.message)) return false;
  }
  return true;
}

grpc::Status ScoreStreamer::FinishStream() {
  // The server acknowledges every batch written before the half-close, then ends the
  // call; batches not yet written (the newest) stay in unacked_ for the next stream.
  stream_->WritesDone();
  return CloseBrokenStream();
}

grpc::Status ScoreStreamer::CloseBrokenStream() {
  // Acks the server sent before the end are real: they retire batches that would
  // otherwise be resent (harmlessly, as duplicates).
  v1::ScoreAck ack;
  while (stream_->Read(&ack)) ProcessAck(ack);
  grpc::Status status = stream_->Finish();
  stream_.reset();
  context_.reset();
  return status;
}

absl::Status ScoreStreamer::Recover(const grpc::Status& broken) {
  if (!failure_.ok()) return failure_;  // ProcessAck found a conflict while draining
  absl::Status last = FromGrpcStatus(broken);
  if (last.ok()) {
    // The server ended the call cleanly without acknowledging everything, e.g. while
    // draining for shutdown: the batches are still ours to resend.
    last = absl::UnavailableError(absl::StrFormat(
        "the server closed the score stream with %d batches unacknowledged", unacked_.size()));
  }
  if (!IsTransient(last.code())) {
    failure_ = last;  // a rejection: the server's message names field, worker and sequence
    return failure_;
  }
  absl::Duration backoff = options_.initial_backoff;
  while (true) {
    if (unacked_.empty()) return absl::OkStatus();  // nothing left to deliver
    if (consecutive_failures_ >= options_.max_retries) {
      // Start afresh on the next call: giving up is reported, not remembered.
      const int attempts = consecutive_failures_;
      consecutive_failures_ = 0;
      return absl::Status(
          last.code(), absl::StrFormat("score stream to %s: gave up after %d reconnect "
                                       "attempts, %d batches unacknowledged: %s",
                                       session_name_, attempts, unacked_.size(), last.message()));
    }
    ++consecutive_failures_;
    ++stats_.reconnects;
    // Each attempt waits `backoff`, spent asking the channel to connect (it would
    // otherwise retry only on its own, slower schedule) and then sleeping out the rest,
    // so a server that keeps refusing streams is not hammered.
    const absl::Time until = absl::Now() + backoff;
    client_->channel()->WaitForConnected(absl::ToChronoTime(until));
    absl::SleepFor(until - absl::Now());
    backoff = std::min(2 * backoff, options_.max_backoff);
    if (OpenAndResend()) return absl::OkStatus();
    grpc::Status status = CloseBrokenStream();
    if (!failure_.ok()) return failure_;
    last = FromGrpcStatus(status);
    if (last.ok()) last = absl::UnavailableError("the server closed the score stream");
    if (!IsTransient(last.code())) {
      failure_ = last;
      return failure_;
    }
  }
}

}  // namespace fisherd::client
