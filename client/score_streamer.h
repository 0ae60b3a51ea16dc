// ScoreStreamer: one worker's reliable score stream into one session.
//
// A training worker Append()s rows of per-sample scores; the streamer cuts them into
// ScoreBatches of `rows_per_batch` rows numbered 1, 2, 3, ... (or from a resumed
// sequence), sends them over a single StreamScores call and keeps every batch until the
// server acknowledges it. If the stream breaks for a transient reason (server restart,
// connection reset, UNAVAILABLE) the streamer reconnects with backoff and resends every
// unacknowledged batch; the server deduplicates by (worker_id, sequence), so a batch is
// applied exactly once even when it is sent twice. A rejection (INVALID_ARGUMENT,
// NOT_FOUND, FAILED_PRECONDITION, ...) is returned with the server's message.
//
// Memory is bounded: at most `max_in_flight` batches are unacknowledged; Append blocks
// on acknowledgements beyond that, which also paces the worker to the server.
//
// Not thread-safe: one thread per streamer. Many streamers, in many threads, may share
// one FisherClient (and so one connection).
//
//   ScoreStreamerOptions options;
//   options.session = "sessions/mnist";  options.worker_id = "worker-3";  options.dim = d;
//   auto streamer = ScoreStreamer::Create(&client, options);   // resumes the sequence
//   for (...) RETURN_IF_ERROR((*streamer)->Append(scores, weights));
//   RETURN_IF_ERROR((*streamer)->Flush());   // everything applied; now take a step
//
// Layered sessions: every batch feeds one block (and, for a Kronecker block, one factor),
// its ScoreTarget. A streamer has a default target (ScoreStreamerOptions.block and
// .factor) and Append can name another per call. The server keeps ONE sequence space per
// worker_id for all blocks of a session, so one worker's rows for all its blocks go
// through one streamer (a batch is cut whenever the target changes), or each streamer
// gets a worker_id of its own (e.g. "worker-3/fc1"); two streamers sharing a worker_id
// on different blocks would discard each other's batches as duplicates.
//
//   options.block = "";  options.dim = 0;   // widths come from the session's layout
//   auto streamer = ScoreStreamer::Create(&client, options);
//   const ScoreTarget fc1_a{"fc1", v1::FACTOR_ACTIVATIONS};       // 784 values a row
//   const ScoreTarget fc1_g{"fc1", v1::FACTOR_OUTPUT_GRADIENTS};  // 1000 values a row
//   RETURN_IF_ERROR((*streamer)->Append(fc1_a, activations));
//   RETURN_IF_ERROR((*streamer)->Append(fc1_g, output_gradients));
#ifndef FISHERD_CLIENT_SCORE_STREAMER_H_
#define FISHERD_CLIENT_SCORE_STREAMER_H_

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "client/fisher_client.h"
#include "fisherd/v1/fisher.grpc.pb.h"
#include "grpcpp/client_context.h"
#include "grpcpp/support/sync_stream.h"

namespace fisherd::client {

// Where a batch's rows go in a layered session (ScoreBatch.block and .factor). The
// empty target is a non-layered session's only one.
struct ScoreTarget {
  // The block the rows feed; its row width is the block's dim, or for a Kronecker block
  // the factor's in_features or out_features.
  std::string block;
  // Kronecker blocks: FACTOR_ACTIVATIONS or FACTOR_OUTPUT_GRADIENTS. Other kinds:
  // FACTOR_UNSPECIFIED.
  fisherd::v1::Factor factor = fisherd::v1::FACTOR_UNSPECIFIED;

  friend bool operator==(const ScoreTarget& a, const ScoreTarget& b) {
    return a.block == b.block && a.factor == b.factor;
  }
  friend bool operator!=(const ScoreTarget& a, const ScoreTarget& b) { return !(a == b); }
};

struct ScoreStreamerOptions {
  // Session name ("sessions/{id}") or bare id. Required.
  std::string session;
  // The sender's identity for deduplication. Required (non-empty): without it the server
  // could not tell a resend from new data. Two live streamers must never share one, not
  // even for different blocks (one sequence space per worker_id; see above).
  std::string worker_id;
  // Length of every score row of the default target. 0: taken from the session (its
  // dim, or the row width of `block`'s factor), which needs a GetSession at Create.
  // Otherwise it must equal that width. A layered session with no default block takes
  // dim 0 (every Append then names its target).
  uint64_t dim = 0;

  // Layered sessions: the default target of Append(scores, weights). Checked against
  // the session's layout at Create (INVALID_ARGUMENT naming the block).
  std::string block;
  fisherd::v1::Factor factor = fisherd::v1::FACTOR_UNSPECIFIED;

  // Rows per ScoreBatch. Larger batches amortize per-message cost (the server does one
  // rank-k update per batch); keep rows_per_batch * dim * 4 bytes well under the
  // server's message limit (64 MiB by default, fisherd --max-message-mb) and the
  // client's max_message_bytes: 256 rows at dim 1024 is 1 MiB.
  int rows_per_batch = 256;

  // Upper bound on one batch's score bytes (rows * width * 4): wide rows go in fewer
  // rows per batch (at least one), so that batches of every target of a layered session
  // stay under 4 MiB, gRPC's default message limit, which fisherd applies when started
  // with --max-message-mb=4 (its own default is 64 MiB). 0: no bound but rows_per_batch.
  // A single row larger than the client's max_message_bytes is INVALID_ARGUMENT.
  uint64_t max_batch_bytes = uint64_t{2} << 20;

  // Unacknowledged batches allowed before Append waits for acks.
  int max_in_flight = 8;

  // Sequence of the first batch. 0: ask the server (GetSession) and continue after the
  // worker's highest applied sequence, so a restarted worker neither collides with nor
  // silently duplicates its earlier batches. Note that resuming means rows appended but
  // never acknowledged by the previous incarnation are lost, not resent.
  uint64_t starting_sequence = 0;

  // Reconnect attempts after a transient failure before giving up; the count restarts
  // whenever the server acknowledges progress. Giving up is not final: the batches are
  // kept and the next Append/Flush tries again.
  int max_retries = 10;
  absl::Duration initial_backoff = absl::Milliseconds(50);
  absl::Duration max_backoff = absl::Seconds(2);

  // Deadline of one StreamScores call. It bounds how long a hung server can block a
  // call per attempt, not how long the streamer may live: a stream past half its
  // deadline is closed gracefully (its batches acknowledged) and replaced at the next
  // send, and one cut by the deadline is reopened like a broken one (resending is safe).
  absl::Duration stream_deadline = absl::Minutes(5);
};

struct ScoreStreamerStats {
  uint64_t rows_appended = 0;
  uint64_t batches_sent = 0;    // distinct batches, first transmission
  uint64_t batches_resent = 0;  // retransmissions after a broken stream
  uint64_t acks_received = 0;
  uint64_t duplicate_acks = 0;   // acks with duplicate = true (expected after resends)
  uint64_t streams_opened = 0;   // StreamScores calls started
  uint64_t reconnects = 0;       // reopen attempts after a transient failure
  uint64_t target_switches = 0;  // partial batches cut because the target changed
  uint64_t next_sequence = 0;    // sequence the next batch will carry
  bool has_last_ack = false;
  fisherd::v1::ScoreAck last_ack;  // the latest acknowledgement, if any
};

class ScoreStreamer {
 public:
  // INVALID_ARGUMENT for missing or bad options. Asks the server for the session
  // (GetSession) when starting_sequence == 0, dim == 0 or a default block is named, and
  // then returns its error (e.g. NOT_FOUND), and INVALID_ARGUMENT when dim differs from
  // the session's width or the default target does not fit its layout.
  // REQUIRES: client outlives the streamer.
  static absl::StatusOr<std::unique_ptr<ScoreStreamer>> Create(FisherClient* client,
                                                               const ScoreStreamerOptions& options);

  ScoreStreamer(const ScoreStreamer&) = delete;
  ScoreStreamer& operator=(const ScoreStreamer&) = delete;

  // Cancels the stream. Rows not yet acknowledged are dropped: call Flush() or Close()
  // first to keep them.
  ~ScoreStreamer();

  // Buffers rows = scores.size() / dim rows (row-major; dim: the default target's row
  // width) with their weights (empty: all 1, else one per row) and sends every full
  // batch. Validates the rows first (finite scores, finite weights >= 0, whole rows) so
  // a bad row is reported here, with nothing of this call buffered. Returns a server rejection (see
  // failure()) or, after max_retries, the last transient error; in the latter case every row of
  // this call is kept (buffered or in an unacknowledged batch) and goes out with the next call.
  absl::Status Append(absl::Span<const float> scores, absl::Span<const float> weights = {});

  // The same for rows of `target` (see ScoreTarget): rows = scores.size() / its width.
  // Rows buffered for another target are first cut into a batch of their own. The
  // target is checked against the session's layout (fetched with one GetSession the
  // first time a streamer created without it needs it): an unknown block, a Kronecker
  // block without a factor or another block with one, or a block on a session that is
  // not layered, is INVALID_ARGUMENT naming it, with nothing of this call buffered and
  // the streamer not failed.
  absl::Status Append(const ScoreTarget& target, absl::Span<const float> scores,
                      absl::Span<const float> weights = {});

  // Sends the partial batch, if any, and waits until the server has acknowledged every
  // batch, i.e. applied all rows appended so far. The stream stays open.
  absl::Status Flush();

  // Flush(), then half-closes the stream and waits for the server's final status. A
  // later Append opens a new stream.
  absl::Status Close();

  // Once the server rejected a batch (INVALID_ARGUMENT, NOT_FOUND, ...) or an ack
  // revealed another sender with this worker_id (FAILED_PRECONDITION), the streamer is
  // failed and every later call returns that status: the rejected batch and those after
  // it are not applied. Start a new streamer (it resumes after the last applied
  // sequence) to continue.
  const absl::Status& failure() const { return failure_; }

  const ScoreStreamerStats& stats() const { return stats_; }
  const ScoreStreamerOptions& options() const { return options_; }

 private:
  struct Batch {
    fisherd::v1::ScoreBatch message;
    int transmissions = 0;  // Write attempts, over all streams
  };

  // A target's rows: their width and how many go in one batch.
  struct Shape {
    uint64_t width = 0;
    size_t rows_per_batch = 0;
  };

  ScoreStreamer(FisherClient* client, const ScoreStreamerOptions& options,
                uint64_t starting_sequence);

  // Remembers the session's configuration (its layout) for Resolve.
  void SetSession(const fisherd::v1::Session& session);
  // The shape of `target`'s rows, from the session's layout (fetched if not yet known)
  // or, without a layout, from options.dim for the default target.
  absl::StatusOr<Shape> Resolve(const ScoreTarget& target);
  // The shape for a target known to need `width` values a row, or INVALID_ARGUMENT if
  // even one batch of it would exceed the client's message limit.
  absl::StatusOr<Shape> ShapeFor(const ScoreTarget& target, uint64_t width) const;

  // Cuts up to rows_per_batch buffered rows into a batch and sends it.
  absl::Status SendPendingBatch();
  // Cuts every buffered row into batches (the target changes) and sends them; on a
  // failure the rest are queued unsent, for the next stream to carry.
  absl::Status CutPendingBatches();
  // Moves up to one batch of buffered rows into unacked_.
  void EnqueuePending();
  // Appends a batch with the next sequence to unacked_. REQUIRES: rows validated.
  void Enqueue(const ScoreTarget& target, uint64_t width, absl::Span<const float> scores,
               absl::Span<const float> weights);
  // Writes unacked_.back() on the current stream, reconnecting if needed.
  absl::Status SendNewest();
  // Reads acknowledgements until at most `limit` batches are unacknowledged.
  absl::Status WaitForAcks(size_t limit);
  void ProcessAck(const fisherd::v1::ScoreAck& ack);
  void CountTransmission(Batch* batch);

  // Opens a stream if none is open (resending everything unacknowledged).
  absl::Status EnsureStream();
  // Opens a stream and writes all unacknowledged batches; false if a write failed.
  bool OpenAndResend();
  // Half-closes the stream, reads the remaining acks and returns the final status.
  grpc::Status FinishStream();
  // Drains a stream on which Write or Read failed and returns its final status.
  grpc::Status CloseBrokenStream();
  // Given the final status of a broken stream: fails the streamer when the status is
  // not transient; otherwise reopens a stream (with backoff) and resends every
  // unacknowledged batch. OK means a stream is open and everything unacked is written.
  absl::Status Recover(const grpc::Status& broken);

  FisherClient* const client_;
  const ScoreStreamerOptions options_;
  const std::string session_name_;
  const ScoreTarget default_target_;

  bool have_session_ = false;  // config_ holds the session's configuration
  fisherd::v1::SessionConfig config_;
  std::map<std::string, int> block_index_;  // layered: block name -> index in config_

  ScoreTarget pending_target_;  // the target of every pending row
  Shape pending_shape_;
  std::vector<float> pending_scores_;   // rows not yet cut into a batch
  std::vector<float> pending_weights_;  // one per pending row (1 when not given)
  std::deque<Batch> unacked_;           // sent (or to be resent), oldest first

  std::unique_ptr<grpc::ClientContext> context_;
  std::unique_ptr<grpc::ClientReaderWriter<fisherd::v1::ScoreBatch, fisherd::v1::ScoreAck>> stream_;
  absl::Time stream_opened_;
  uint64_t highest_transmitted_ = 0;  // highest sequence ever written to a stream
  int consecutive_failures_ = 0;      // transient failures since the last acked progress
  absl::Status failure_;              // sticky: set by a rejection

  ScoreStreamerStats stats_;
};

}  // namespace fisherd::client

#endif  // FISHERD_CLIENT_SCORE_STREAMER_H_
