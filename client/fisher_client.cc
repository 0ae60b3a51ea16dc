#include "client/fisher_client.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>
#include <utility>

#include "absl/strings/str_format.h"
#include "client/grpc_status.h"
#include "common/float32_bytes.h"
#include "common/read_file.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/support/channel_arguments.h"

namespace fisherd::client {
namespace v1 = ::fisherd::v1;

namespace {

// `pem` if set, else the contents of `file` (empty when both are).
absl::StatusOr<std::string> PemOrFile(const std::string& pem, const std::string& file) {
  if (!pem.empty() || file.empty()) return pem;
  return common::ReadFileToString(file);
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeCredentials(
    const ClientOptions& options) {
  if (options.credentials) return options.credentials;
  const ClientTlsOptions& tls = options.tls;
  if (!tls.enabled) return grpc::InsecureChannelCredentials();
  grpc::SslCredentialsOptions ssl;
  absl::StatusOr<std::string> roots = PemOrFile(tls.root_certs_pem, tls.root_certs_file);
  if (!roots.ok()) return roots.status();
  absl::StatusOr<std::string> chain = PemOrFile(tls.cert_chain_pem, tls.cert_chain_file);
  if (!chain.ok()) return chain.status();
  absl::StatusOr<std::string> key = PemOrFile(tls.private_key_pem, tls.private_key_file);
  if (!key.ok()) return key.status();
  if (chain->empty() != key->empty()) {
    return absl::InvalidArgumentError(
        "a client certificate needs its private key and vice versa (--tls-cert with --tls-key)");
  }
  ssl.pem_root_certs = *std::move(roots);
  ssl.pem_cert_chain = *std::move(chain);
  ssl.pem_private_key = *std::move(key);
  return grpc::SslCredentials(ssl);
}

std::shared_ptr<grpc::Channel> MakeChannel(const ClientOptions& options,
                                           std::shared_ptr<grpc::ChannelCredentials> credentials) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(options.max_message_bytes);
  args.SetMaxSendMessageSize(options.max_message_bytes);
  const int max_backoff_ms =
      static_cast<int>(absl::ToInt64Milliseconds(options.max_reconnect_backoff));
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, max_backoff_ms);
  // The first reconnect must not wait longer than the cap either (gRPC starts at 1 s).
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, std::min(max_backoff_ms, 100));
  // GRPC_ARG_MIN_RECONNECT_BACKOFF_MS stays at gRPC's default on purpose: despite its
  // name it is the minimum time a connection attempt (TCP, TLS handshake, HTTP/2
  // preface) may take before gRPC abandons it ("handshaker shutdown"). Lowered to
  // 100 ms it made every TLS connection over a slow link, or to a loaded server, fail.
  if (options.tls.enabled && !options.tls.server_name_override.empty()) {
    args.SetSslTargetNameOverride(options.tls.server_name_override);
  }
  return grpc::CreateCustomChannel(options.target, credentials, args);
}

// Everything of a step request but the gradient.
v1::NaturalGradientStepRequest StepHeader(absl::string_view session, const StepParams& params) {
  v1::NaturalGradientStepRequest request;
  request.set_session(SessionName(session));
  if (params.damping.has_value()) request.set_damping(*params.damping);
  request.set_learning_rate(params.learning_rate);
  request.set_kl_budget(params.kl_budget);
  request.set_skip_decay(params.skip_decay);
  request.set_answer(params.answer);
  return request;
}

// The unary answer's vectors against the request's answer form and dim; widens
// update_f32 into update.
absl::Status CheckUnaryStepAnswer(v1::StepAnswer answer, size_t dim,
                                  v1::NaturalGradientStepResponse* response) {
  const size_t natural = static_cast<size_t>(response->natural_gradient_size());
  const size_t update = static_cast<size_t>(response->update_size());
  const size_t f32 = response->update_f32().size();
  const size_t expected_natural = answer == v1::STEP_ANSWER_FULL ? dim : 0;
  const size_t expected_update = answer == v1::STEP_ANSWER_UPDATE_F32 ? 0 : dim;
  const size_t expected_f32 = answer == v1::STEP_ANSWER_UPDATE_F32 ? dim * sizeof(float) : 0;
  if (natural != expected_natural || update != expected_update || f32 != expected_f32) {
    return absl::DataLossError(absl::StrFormat(
        "NaturalGradientStep: answer %s for dim %d carries %d natural_gradient values, %d "
        "update values and %d update_f32 bytes",
        v1::StepAnswer_Name(answer), dim, natural, update, f32));
  }
  if (answer == v1::STEP_ANSWER_UPDATE_F32) {
    response->mutable_update()->Resize(static_cast<int>(dim), 0.0);
    common::WidenFloat32(response->update_f32(), response->mutable_update()->mutable_data());
    response->clear_update_f32();
  }
  return absl::OkStatus();
}

// Gradient values per StreamNaturalGradientStep request: at most 2 MiB of them (the
// proto's advice), and at most half the client's own message limit.
size_t StepChunkValues(const StepParams& params, int max_message_bytes) {
  if (params.chunk_values > 0) return params.chunk_values;
  const size_t value_bytes = params.float32_gradient ? sizeof(float) : sizeof(double);
  const size_t budget =
      std::min<size_t>(size_t{2} << 20, static_cast<size_t>(max_message_bytes) / 2);
  return std::max<size_t>(1, budget / value_bytes);
}

// " (block NAME)" for messages about a chunk that names its block.
std::string BlockSuffix(const std::string& block) {
  return block.empty() ? std::string() : absl::StrFormat(" (block %s)", block);
}

// Whether GetFisher streams one value per row (a diagonal) rather than full rows: a
// diagonal session, or a DIAGONAL block of a layered one. A Kronecker factor and dense
// or low-rank blocks stream full rows.
bool StreamsDiagonal(const v1::FisherSummary& summary) {
  if (!summary.block().empty()) {
    return summary.block_kind() == v1::BLOCK_KIND_DIAGONAL &&
           summary.factor() == v1::FACTOR_UNSPECIFIED;
  }
  return summary.representation() == v1::REPRESENTATION_DIAGONAL;
}

}  // namespace

absl::StatusOr<std::unique_ptr<FisherClient>> FisherClient::Create(const ClientOptions& options) {
  if (options.target.empty()) return absl::InvalidArgumentError("ClientOptions.target is empty");
  if (options.max_message_bytes <= 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "ClientOptions.max_message_bytes must be > 0, got %d", options.max_message_bytes));
  }
  if (options.call_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("ClientOptions.call_timeout must be > 0");
  }
  if (options.max_reconnect_backoff <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("ClientOptions.max_reconnect_backoff must be > 0");
  }
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials = MakeCredentials(options);
  if (!credentials.ok()) return credentials.status();
  return std::make_unique<FisherClient>(MakeChannel(options, *std::move(credentials)), options);
}

FisherClient::FisherClient(std::shared_ptr<grpc::Channel> channel, const ClientOptions& options)
    : options_(options),
      channel_(std::move(channel)),
      stub_(v1::FisherService::NewStub(channel_)) {}

void FisherClient::PrepareContext(grpc::ClientContext* context, absl::string_view session) const {
  context->set_deadline(absl::ToChronoTime(absl::Now() + options_.call_timeout));
  context->set_wait_for_ready(options_.wait_for_ready);
  AddToken(context);
  AddSessionMetadata(context, session);
}

void FisherClient::AddToken(grpc::ClientContext* context) const {
  if (!options_.token.empty()) context->AddMetadata("authorization", "Bearer " + options_.token);
}

absl::StatusOr<v1::Session> FisherClient::CreateSession(absl::string_view session_id,
                                                        const v1::SessionConfig& config) {
  v1::CreateSessionRequest request;
  request.set_session_id(std::string(session_id));
  *request.mutable_config() = config;
  grpc::ClientContext context;
  PrepareContext(&context, session_id);
  v1::Session session;
  grpc::Status status = stub_->CreateSession(&context, request, &session);
  if (!status.ok()) return FromGrpcStatus(status);
  return session;
}

absl::StatusOr<v1::Session> FisherClient::GetSession(absl::string_view name) {
  v1::GetSessionRequest request;
  request.set_name(SessionName(name));
  grpc::ClientContext context;
  PrepareContext(&context, name);
  v1::Session session;
  grpc::Status status = stub_->GetSession(&context, request, &session);
  if (!status.ok()) return FromGrpcStatus(status);
  return session;
}

absl::StatusOr<std::vector<v1::Session>> FisherClient::ListSessions() {
  grpc::ClientContext context;
  PrepareContext(&context);
  v1::ListSessionsResponse response;
  grpc::Status status = stub_->ListSessions(&context, v1::ListSessionsRequest(), &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return std::vector<v1::Session>(response.sessions().begin(), response.sessions().end());
}

absl::Status FisherClient::DeleteSession(absl::string_view name) {
  v1::DeleteSessionRequest request;
  request.set_name(SessionName(name));
  grpc::ClientContext context;
  PrepareContext(&context, name);
  v1::DeleteSessionResponse response;
  return FromGrpcStatus(stub_->DeleteSession(&context, request, &response));
}

absl::StatusOr<v1::ScoreAck> FisherClient::AddScores(const v1::ScoreBatch& batch) {
  grpc::ClientContext context;
  PrepareContext(&context, batch.session());
  v1::ScoreAck ack;
  grpc::Status status = stub_->AddScores(&context, batch, &ack);
  if (!status.ok()) return FromGrpcStatus(status);
  return ack;
}

absl::StatusOr<v1::NaturalGradientStepResponse> FisherClient::Step(
    absl::string_view session, absl::Span<const double> gradient, const StepParams& params) {
  if (params.float32_gradient || gradient.size() > kMaxUnaryStepValues) {
    return StreamStep(session, gradient, params);
  }
  v1::NaturalGradientStepRequest request = StepHeader(session, params);
  request.mutable_gradient()->Add(gradient.begin(), gradient.end());
  grpc::ClientContext context;
  PrepareContext(&context, session);
  v1::NaturalGradientStepResponse response;
  grpc::Status status = stub_->NaturalGradientStep(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  if (absl::Status s = CheckUnaryStepAnswer(params.answer, gradient.size(), &response); !s.ok()) {
    return s;
  }
  return response;
}

absl::StatusOr<v1::NaturalGradientStepResponse> FisherClient::StreamStep(
    absl::string_view session, absl::Span<const double> gradient, const StepParams& params) {
  const size_t dim = gradient.size();
  if (dim > static_cast<size_t>(std::numeric_limits<int>::max())) {
    // A protobuf repeated field (the answer's vectors) holds at most 2^31 - 1 values.
    return absl::InvalidArgumentError(
        absl::StrFormat("gradient has %d values; a step takes at most 2^31 - 1", dim));
  }
  const size_t chunk = StepChunkValues(params, options_.max_message_bytes);
  grpc::ClientContext context;
  PrepareContext(&context, session);
  std::unique_ptr<grpc::ClientReaderWriter<v1::StreamNaturalGradientStepRequest,
                                           v1::StreamNaturalGradientStepResponse>>
      stream = stub_->StreamNaturalGradientStep(&context);

  // Up: the header with the first chunk, then one chunk a message. A failed Write means
  // the call is over (the server refused it, or the connection went); its status is
  // what Finish reports below, so stop writing and read what is left.
  bool writing = true;
  size_t offset = 0;
  do {
    v1::StreamNaturalGradientStepRequest request;
    if (offset == 0) *request.mutable_header() = StepHeader(session, params);
    const size_t count = std::min(chunk, dim - offset);
    request.set_offset(offset);
    if (params.float32_gradient) {
      common::AppendAsFloat32(gradient.subspan(offset, count), request.mutable_gradient_f32());
    } else {
      request.mutable_gradient()->Add(gradient.begin() + offset, gradient.begin() + offset + count);
    }
    offset += count;
    writing = stream->Write(request);
  } while (writing && offset < dim);
  if (writing) stream->WritesDone();

  // Down: the header, then chunks [offset, offset + size) of the vectors params.answer
  // asked for, in order.
  const bool full = params.answer == v1::STEP_ANSWER_FULL;
  const bool f32 = params.answer == v1::STEP_ANSWER_UPDATE_F32;
  v1::NaturalGradientStepResponse result;
  absl::Status protocol_error;  // first violation; the stream is still drained
  bool have_header = false;
  uint64_t next = 0;
  v1::StreamNaturalGradientStepResponse message;
  while (stream->Read(&message)) {
    if (!protocol_error.ok()) continue;
    if (!have_header) {
      if (!message.has_header()) {
        protocol_error =
            absl::DataLossError("StreamNaturalGradientStep: first answer has no header");
        continue;
      }
      result = std::move(*message.mutable_header());
      have_header = true;
      result.clear_natural_gradient();
      result.clear_update();
      result.clear_update_f32();
      if (full) result.mutable_natural_gradient()->Resize(static_cast<int>(dim), 0.0);
      result.mutable_update()->Resize(static_cast<int>(dim), 0.0);
    } else if (message.has_header()) {
      protocol_error =
          absl::DataLossError("StreamNaturalGradientStep: a second answer carries a header");
      continue;
    }
    const uint64_t naturals = static_cast<uint64_t>(message.natural_gradient_size());
    const uint64_t updates = static_cast<uint64_t>(message.update_size());
    const uint64_t f32_bytes = message.update_f32().size();
    if (naturals == 0 && updates == 0 && f32_bytes == 0) continue;
    if ((!full && naturals != 0) || (f32 && updates != 0) || (!f32 && f32_bytes != 0) ||
        f32_bytes % sizeof(float) != 0) {
      protocol_error = absl::DataLossError(absl::StrFormat(
          "StreamNaturalGradientStep: chunk at %d%s carries %d natural_gradient values, %d "
          "update values and %d update_f32 bytes, not the form %s asked for",
          message.offset(), BlockSuffix(message.block()), naturals, updates, f32_bytes,
          v1::StepAnswer_Name(params.answer)));
      continue;
    }
    const uint64_t size = full ? naturals : f32 ? f32_bytes / sizeof(float) : updates;
    if (message.offset() != next) {
      protocol_error = absl::DataLossError(
          absl::StrFormat("StreamNaturalGradientStep: chunk%s starts at %d, expected %d",
                          BlockSuffix(message.block()), message.offset(), next));
      continue;
    }
    if (full && updates != size) {
      protocol_error = absl::DataLossError(absl::StrFormat(
          "StreamNaturalGradientStep: chunk at %d%s has %d natural_gradient but %d update "
          "values",
          message.offset(), BlockSuffix(message.block()), size, message.update_size()));
      continue;
    }
    if (size > dim - next) {
      protocol_error = absl::DataLossError(
          absl::StrFormat("StreamNaturalGradientStep: chunk [%d, %d)%s exceeds dim %d", next,
                          next + size, BlockSuffix(message.block()), dim));
      continue;
    }
    if (full) {
      std::copy(message.natural_gradient().begin(), message.natural_gradient().end(),
                result.mutable_natural_gradient()->begin() + next);
    }
    if (f32) {
      common::WidenFloat32(message.update_f32(), result.mutable_update()->mutable_data() + next);
    } else {
      std::copy(message.update().begin(), message.update().end(),
                result.mutable_update()->begin() + next);
    }
    next += size;
  }
  grpc::Status status = stream->Finish();
  if (!status.ok()) return FromGrpcStatus(status);
  if (!writing) {
    // The server ended the call with OK while the gradient was still going up.
    return absl::DataLossError(absl::StrFormat(
        "StreamNaturalGradientStep: the server closed the call after %d of %d values", offset,
        dim));
  }
  if (!protocol_error.ok()) return protocol_error;
  if (!have_header) return absl::DataLossError("StreamNaturalGradientStep: empty answer stream");
  if (next != dim) {
    return absl::DataLossError(absl::StrFormat(
        "StreamNaturalGradientStep: answer ended after %d of %d values", next, dim));
  }
  return result;
}

absl::StatusOr<v1::FisherVectorProductResponse> FisherClient::FisherVectorProduct(
    absl::string_view session, absl::Span<const double> vector) {
  v1::FisherVectorProductRequest request;
  request.set_session(SessionName(session));
  request.mutable_vector()->Add(vector.begin(), vector.end());
  grpc::ClientContext context;
  PrepareContext(&context, session);
  v1::FisherVectorProductResponse response;
  grpc::Status status = stub_->FisherVectorProduct(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::StatusOr<FisherEstimate> FisherClient::GetFisher(absl::string_view session,
                                                       bool include_matrix,
                                                       bool include_eigenvalues) {
  FisherQuery query;
  query.include_matrix = include_matrix;
  query.include_eigenvalues = include_eigenvalues;
  return GetFisher(session, query);
}

absl::StatusOr<FisherEstimate> FisherClient::GetFisher(absl::string_view session,
                                                       const FisherQuery& query) {
  const bool include_matrix = query.include_matrix;
  v1::GetFisherRequest request;
  request.set_session(SessionName(session));
  request.set_include_matrix(include_matrix);
  request.set_include_eigenvalues(query.include_eigenvalues);
  request.set_block(query.block);
  request.set_factor(query.factor);
  grpc::ClientContext context;
  PrepareContext(&context, session);
  std::unique_ptr<grpc::ClientReader<v1::GetFisherResponse>> reader =
      stub_->GetFisher(&context, request);

  FisherEstimate estimate;
  absl::Status protocol_error;  // first violation; the stream is still drained
  bool have_summary = false;
  uint64_t next_row = 0;
  uint64_t values_per_row = 1;
  v1::GetFisherResponse message;
  while (reader->Read(&message)) {
    if (!protocol_error.ok()) continue;
    if (!have_summary) {
      if (!message.has_summary()) {
        protocol_error = absl::DataLossError("GetFisher: first message has no summary");
        continue;
      }
      estimate.summary = message.summary();
      have_summary = true;
      const uint64_t dim = estimate.summary.dim();
      const bool diagonal = StreamsDiagonal(estimate.summary);
      estimate.diagonal = diagonal;
      values_per_row = diagonal ? 1 : dim;
      // Reserve up to 512 MiB on the summary's word; anything larger grows only as the
      // values actually arrive, so a bogus dim cannot trigger a huge allocation.
      const bool modest = diagonal ? dim <= (uint64_t{1} << 26) : dim <= (uint64_t{1} << 13);
      if (include_matrix && modest) estimate.values.reserve(dim * values_per_row);
    }
    if (message.row_count() == 0 && message.values_size() == 0) continue;
    if (message.row_offset() != next_row) {
      protocol_error = absl::DataLossError(absl::StrFormat(
          "GetFisher: block starts at row %d, expected %d", message.row_offset(), next_row));
      continue;
    }
    if (static_cast<uint64_t>(message.values_size()) != message.row_count() * values_per_row) {
      protocol_error = absl::DataLossError(absl::StrFormat(
          "GetFisher: block at row %d has %d values for %d rows of %d", message.row_offset(),
          message.values_size(), message.row_count(), values_per_row));
      continue;
    }
    if (next_row + message.row_count() > estimate.summary.dim()) {
      protocol_error = absl::DataLossError(absl::StrFormat("GetFisher: rows [%d, %d) exceed dim %d",
                                                           next_row, next_row + message.row_count(),
                                                           estimate.summary.dim()));
      continue;
    }
    estimate.values.insert(estimate.values.end(), message.values().begin(), message.values().end());
    next_row += message.row_count();
  }
  grpc::Status status = reader->Finish();
  if (!status.ok()) return FromGrpcStatus(status);
  if (!protocol_error.ok()) return protocol_error;
  if (!have_summary) return absl::DataLossError("GetFisher: empty response stream");
  if (include_matrix && next_row != estimate.summary.dim()) {
    return absl::DataLossError(absl::StrFormat("GetFisher: stream ended after %d of %d rows",
                                               next_row, estimate.summary.dim()));
  }
  return estimate;
}

absl::StatusOr<ServingStatus> FisherClient::CheckHealth(absl::Duration timeout,
                                                        absl::string_view service) {
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(std::string(service));
  HealthCheckResponse response;
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  context.set_wait_for_ready(true);
  const grpc::Status status =
      grpc::health::v1::Health::NewStub(channel_)->Check(&context, request, &response);
  if (!status.ok()) {
    absl::Status result = FromGrpcStatus(status);
    if (result.code() == absl::StatusCode::kDeadlineExceeded) {
      return absl::DeadlineExceededError(
          absl::StrFormat("server at %s not reachable or not answering within %s (%s)",
                          options_.target, absl::FormatDuration(timeout), result.message()));
    }
    return result;
  }
  // proto3 enums are open: a value this client does not know arrives as its number.
  if (!HealthCheckResponse::ServingStatus_IsValid(response.status())) {
    return HealthCheckResponse::UNKNOWN;
  }
  return response.status();
}

}  // namespace fisherd::client
