// FisherClient: a typed, blocking C++ client for fisherd.v1.FisherService.
//
// Every method is one RPC with the per-call deadline of ClientOptions and returns the
// server's status as an absl::Status (same code, the server's message kept verbatim).
// Methods do not retry: of the unary RPCs only some are idempotent (NaturalGradientStep
// decays the statistics, CreateSession answers ALREADY_EXISTS the second time), and
// the caller knows which it may repeat. Streaming scores with retries and resends is
// ScoreStreamer's job (client/score_streamer.h).
//
// Thread-safe: one FisherClient (one channel, one HTTP/2 connection) may be shared by
// any number of threads and ScoreStreamers.
//
// Session arguments accept the resource name "sessions/{id}" or the bare id.
#ifndef FISHERD_CLIENT_FISHER_CLIENT_H_
#define FISHERD_CLIENT_FISHER_CLIENT_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "client/session_name.h"
#include "common/defaults.h"
#include "fisherd/v1/fisher.grpc.pb.h"
#include "grpc/health/v1/health.pb.h"
#include "grpcpp/channel.h"
#include "grpcpp/client_context.h"
#include "grpcpp/security/credentials.h"

namespace fisherd::client {

// grpc.health.v1 (proto/grpc/health/v1/health.proto): CheckHealth's answer is a
// HealthCheckResponse::ServingStatus (SERVING, NOT_SERVING, ...);
// HealthCheckResponse::ServingStatus_Name spells it.
using HealthCheckResponse = ::grpc::health::v1::HealthCheckResponse;
using ServingStatus = HealthCheckResponse::ServingStatus;

// TLS towards the server (used when ClientOptions::credentials is null). Each PEM may
// be given inline or as a file path (the inline text wins when both are set).
struct ClientTlsOptions {
  // false: plaintext, unless `credentials` says otherwise.
  bool enabled = false;
  // CA bundle that must have signed the server's certificate; empty: the system's roots.
  std::string root_certs_pem;
  std::string root_certs_file;
  // The client's own certificate chain and key, for servers that require mutual TLS.
  // Both or neither.
  std::string cert_chain_pem;
  std::string cert_chain_file;
  std::string private_key_pem;
  std::string private_key_file;
  // Name to check the server's certificate against instead of the target's host (e.g.
  // when connecting by IP address to a server whose certificate names a DNS name).
  std::string server_name_override;
};

struct ClientOptions {
  // "host:port", or any gRPC target URI ("dns:///host:port", "unix:/path").
  std::string target = common::kDefaultAddress;

  // Largest message the client sends or accepts. A dense NaturalGradientStep response
  // at dim d carries 2 d doubles and GetFisher streams its rows in small blocks, so the
  // default covers dim in the millions; score batches should stay far below it (and
  // below the server's own limit: 64 MiB unless fisherd runs with another
  // --max-message-mb).
  int max_message_bytes = 64 << 20;

  // Deadline of every unary call and of GetFisher's whole stream.
  absl::Duration call_timeout = absl::Seconds(30);

  // false: a call fails with UNAVAILABLE at once when the server cannot be reached.
  // true: it waits for the connection until its deadline (useful right after starting
  // a server).
  bool wait_for_ready = false;

  // Upper bound of gRPC's own reconnect backoff. gRPC's default grows to two minutes,
  // which would make a client that lost its server wait long after the server is back.
  absl::Duration max_reconnect_backoff = absl::Seconds(2);

  // nullptr: built from `tls` (plaintext unless tls.enabled).
  std::shared_ptr<grpc::ChannelCredentials> credentials;

  ClientTlsOptions tls;

  // Non-empty: every call (health excepted) carries metadata
  // "authorization: Bearer <token>", for servers started with --auth-token-file. Sent
  // over plaintext too: use TLS, or a trusted network, to keep it secret.
  std::string token;
};

// What a natural-gradient step request may set besides the gradient
// (NaturalGradientStepRequest, docs/design.md section 1).
struct StepParams {
  // lambda for this step; unset: the session's default damping.
  std::optional<double> damping;
  // eta when kl_budget is 0; with kl_budget > 0, a cap on eta when > 0.
  double learning_rate = 0.0;
  // c > 0: eta = sqrt(2 c / g^T n), so that the damped quadratic KL of the step is c.
  double kl_budget = 0.0;
  // true: leave the statistics undecayed after the step.
  bool skip_decay = false;
  // What the answer carries (StepAnswer): FULL, n and the update; UPDATE, the update
  // alone (half the bytes); UPDATE_F32, the update rounded to float32 (a quarter), which
  // the client widens back into the response's update field. natural_gradient is empty
  // unless FULL; update_f32 is always empty in what Step and StreamStep return.
  v1::StepAnswer answer = v1::STEP_ANSWER_FULL;

  // Streaming form only (StreamStep; Step switches to it when this is set): send the
  // gradient as float32 (StreamNaturalGradientStepRequest.gradient_f32), half the bytes
  // of float64, each value rounded to the nearest float. The answer is float64 either way.
  bool float32_gradient = false;
  // Streaming form only: values per request chunk. 0: the most that stays at 2 MiB,
  // 256k doubles or 512k floats (halved further if ClientOptions::max_message_bytes is
  // below 4 MiB), as the proto advises. Small values are for tests of the chunking.
  uint32_t chunk_values = 0;
};

// Above this many values Step sends the gradient through StreamNaturalGradientStep.
// The unary answer carries two vectors of dim doubles (natural_gradient and update):
// 128k values keep the request at 1 MiB and the answer at 2 MiB, so the unary form fits
// every default 4 MiB limit along the way (the client's, the server's, a proxy's).
inline constexpr size_t kMaxUnaryStepValues = size_t{1} << 17;

// What GetFisher asks for (GetFisherRequest).
struct FisherQuery {
  // Stream the entries: dense rows, a diagonal, or a Kronecker factor's rows.
  bool include_matrix = false;
  // Compute the extreme eigenvalues and the condition number.
  bool include_eigenvalues = false;
  // Layered sessions: describe (and stream) this block only; empty: the whole F (whose
  // matrix is never streamed).
  std::string block;
  // A Kronecker block: FACTOR_ACTIVATIONS (A) or FACTOR_OUTPUT_GRADIENTS (G); needed
  // with include_matrix, since G (x) A itself is never formed.
  fisherd::v1::Factor factor = fisherd::v1::FACTOR_UNSPECIFIED;
};

// The Fisher estimate as GetFisher streams it.
struct FisherEstimate {
  fisherd::v1::FisherSummary summary;
  // Empty unless requested. Dense (a dense or low-rank block, a Kronecker factor
  // included): dim x dim, row-major. Diagonal: the dim diagonal entries.
  std::vector<double> values;
  // true when `values` is a diagonal (one value per row), false for full rows.
  bool diagonal = false;
};

class FisherClient {
 public:
  // Connects lazily: creating a client never fails because the server is down, the
  // first call does. INVALID_ARGUMENT for an empty target or non-positive limits.
  static absl::StatusOr<std::unique_ptr<FisherClient>> Create(const ClientOptions& options);

  // Over an existing channel, e.g. grpc::Server::InProcessChannel() in tests.
  // options.target, credentials and the channel-level limits are then ignored.
  // REQUIRES: channel != nullptr.
  FisherClient(std::shared_ptr<grpc::Channel> channel, const ClientOptions& options);

  FisherClient(const FisherClient&) = delete;
  FisherClient& operator=(const FisherClient&) = delete;

  // --- Sessions -------------------------------------------------------------------
  absl::StatusOr<fisherd::v1::Session> CreateSession(absl::string_view session_id,
                                                     const fisherd::v1::SessionConfig& config);
  absl::StatusOr<fisherd::v1::Session> GetSession(absl::string_view name);
  // All sessions, sorted by name.
  absl::StatusOr<std::vector<fisherd::v1::Session>> ListSessions();
  absl::Status DeleteSession(absl::string_view name);

  // --- Scores ---------------------------------------------------------------------
  // One batch, unary. Resending a batch with a worker_id after a failure is safe (the
  // server acknowledges it with duplicate = true); build it with MakeScoreBatch().
  absl::StatusOr<fisherd::v1::ScoreAck> AddScores(const fisherd::v1::ScoreBatch& batch);

  // --- Steps and products -----------------------------------------------------------
  // REQUIRES: gradient.size() == the session's dim (else the server answers
  // INVALID_ARGUMENT). Not idempotent: unless params.skip_decay, the server decays the
  // statistics after the step. Unary NaturalGradientStep up to kMaxUnaryStepValues
  // values; beyond that, or with params.float32_gradient, StreamStep, so that a step of
  // any size works under default message limits. Both return the same response.
  absl::StatusOr<fisherd::v1::NaturalGradientStepResponse> Step(absl::string_view session,
                                                                absl::Span<const double> gradient,
                                                                const StepParams& params = {});
  // The step through StreamNaturalGradientStep: the gradient goes up in chunks (see
  // StepParams::chunk_values), the answer comes back in chunks that are reassembled by
  // offset into one NaturalGradientStepResponse (header fields plus both full
  // vectors). The answer's chunks must start with the header and cover [0, dim)
  // consecutively, natural_gradient and update of equal length each; a violation is
  // DATA_LOSS (a server bug, not the caller's). The call has ClientOptions::call_timeout
  // as a whole. Holds the answer (16 bytes per value) besides the caller's gradient.
  absl::StatusOr<fisherd::v1::NaturalGradientStepResponse> StreamStep(
      absl::string_view session, absl::Span<const double> gradient, const StepParams& params = {});
  // F v (undamped) and 1/2 v^T F v.
  absl::StatusOr<fisherd::v1::FisherVectorProductResponse> FisherVectorProduct(
      absl::string_view session, absl::Span<const double> vector);

  // Reads the whole GetFisher stream. Checks that the first message carries the
  // summary, that row blocks are consecutive from 0 and of the announced size, and
  // that they cover all dim rows; a violation is DATA_LOSS (a server bug, not the
  // caller's). include_matrix on a dense session of dim d needs 8 d^2 bytes here.
  // A block or factor the session does not have is the server's INVALID_ARGUMENT.
  absl::StatusOr<FisherEstimate> GetFisher(absl::string_view session, const FisherQuery& query);
  // The whole session's F (no block), as before layered sessions.
  absl::StatusOr<FisherEstimate> GetFisher(absl::string_view session, bool include_matrix,
                                           bool include_eigenvalues);

  // --- Health ---------------------------------------------------------------------
  // grpc.health.v1.Health/Check for `service` ("" = the whole server). Waits up to
  // `timeout` for the server to become reachable (wait-for-ready), so it doubles as
  // "wait until the server is up". DEADLINE_EXCEEDED when it is not reachable in time,
  // NOT_FOUND for a service the server does not know, UNIMPLEMENTED when the server has
  // no health service. A status value newer than this client's copy of the protocol is
  // reported as UNKNOWN, never as SERVING.
  absl::StatusOr<ServingStatus> CheckHealth(absl::Duration timeout, absl::string_view service = "");

  // For layers built on top (ScoreStreamer): the generated stub and the channel.
  fisherd::v1::FisherService::Stub* stub() { return stub_.get(); }
  const std::shared_ptr<grpc::Channel>& channel() const { return channel_; }
  const ClientOptions& options() const { return options_; }

  // Applies the per-call deadline, wait-for-ready setting and token to a fresh context,
  // and for a session-scoped call (session not empty) the x-fisherd-session metadata
  // that proxies route by (client/session_name.h).
  void PrepareContext(grpc::ClientContext* context, absl::string_view session = {}) const;
  // Only the token (for calls that set their own deadline, such as streams).
  void AddToken(grpc::ClientContext* context) const;

 private:
  const ClientOptions options_;
  const std::shared_ptr<grpc::Channel> channel_;
  const std::unique_ptr<fisherd::v1::FisherService::Stub> stub_;
};

}  // namespace fisherd::client

#endif  // FISHERD_CLIENT_FISHER_CLIENT_H_
