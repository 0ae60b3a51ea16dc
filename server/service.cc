#include "server/service.h"

#include <algorithm>

#include "server/handlers/handlers.h"

namespace fisherd::server {

namespace {

// Row blocks of about 1 MiB (see handlers/get_fisher.cc), but never more than half the
// send limit, so a block plus its few header bytes always fits in one message.
int64_t MaxBlockBytes(int64_t max_message_bytes) {
  return std::max<int64_t>(sizeof(double),
                           std::min<int64_t>(int64_t{1} << 20, max_message_bytes / 2));
}

// Reactors that end a call at once with `status` (a refused token): the handler, and
// so the request, is never touched.
grpc::ServerUnaryReactor* RejectUnary(grpc::CallbackServerContext* context,
                                      const grpc::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(status);
  return reactor;
}

template <typename Request, typename Response>
class RejectedBidi final : public grpc::ServerBidiReactor<Request, Response> {
 public:
  explicit RejectedBidi(const grpc::Status& status) { this->Finish(status); }
  void OnDone() override { delete this; }
};

template <typename Response>
class RejectedWriter final : public grpc::ServerWriteReactor<Response> {
 public:
  explicit RejectedWriter(const grpc::Status& status) { this->Finish(status); }
  void OnDone() override { delete this; }
};

}  // namespace

FisherServiceImpl::FisherServiceImpl(SessionRegistry* registry, WorkPool* pool,
                                     int64_t max_message_bytes, const TokenAuthenticator* auth,
                                     DurableStore* store, ServerMetrics* metrics)
    : resources_{registry, pool, MaxBlockBytes(max_message_bytes), store, metrics}, auth_(auth) {}

grpc::Status FisherServiceImpl::Authorize(const grpc::CallbackServerContext* context) const {
  return auth_ == nullptr ? grpc::Status::OK : auth_->Check(*context);
}

// Every RPC below starts with the same gate, so no handler runs for a refused call.
#define FISHERD_AUTHORIZE_UNARY(context)                                  \
  if (grpc::Status auth_status = Authorize(context); !auth_status.ok()) { \
    return RejectUnary(context, auth_status);                             \
  }

grpc::ServerUnaryReactor* FisherServiceImpl::CreateSession(grpc::CallbackServerContext* context,
                                                           const v1::CreateSessionRequest* request,
                                                           v1::Session* response) {
  FISHERD_AUTHORIZE_UNARY(context);
  return HandleCreateSession(resources_, context, request, response);
}

grpc::ServerUnaryReactor* FisherServiceImpl::GetSession(grpc::CallbackServerContext* context,
                                                        const v1::GetSessionRequest* request,
                                                        v1::Session* response) {
  FISHERD_AUTHORIZE_UNARY(context);
  return HandleGetSession(resources_, context, request, response);
}

grpc::ServerUnaryReactor* FisherServiceImpl::ListSessions(grpc::CallbackServerContext* context,
                                                          const v1::ListSessionsRequest* request,
                                                          v1::ListSessionsResponse* response) {
  FISHERD_AUTHORIZE_UNARY(context);
  return HandleListSessions(resources_, context, request, response);
}

grpc::ServerUnaryReactor* FisherServiceImpl::DeleteSession(grpc::CallbackServerContext* context,
                                                           const v1::DeleteSessionRequest* request,
                                                           v1::DeleteSessionResponse* response) {
  FISHERD_AUTHORIZE_UNARY(context);
  return HandleDeleteSession(resources_, context, request, response);
}

grpc::ServerBidiReactor<v1::ScoreBatch, v1::ScoreAck>* FisherServiceImpl::StreamScores(
    grpc::CallbackServerContext* context) {
  if (grpc::Status auth_status = Authorize(context); !auth_status.ok()) {
    return new RejectedBidi<v1::ScoreBatch, v1::ScoreAck>(auth_status);
  }
  return HandleStreamScores(resources_, context);
}

grpc::ServerUnaryReactor* FisherServiceImpl::AddScores(grpc::CallbackServerContext* context,
                                                       const v1::ScoreBatch* request,
                                                       v1::ScoreAck* response) {
  FISHERD_AUTHORIZE_UNARY(context);
  return HandleAddScores(resources_, context, request, response);
}

grpc::ServerUnaryReactor* FisherServiceImpl::NaturalGradientStep(
    grpc::CallbackServerContext* context, const v1::NaturalGradientStepRequest* request,
    v1::NaturalGradientStepResponse* response) {
  FISHERD_AUTHORIZE_UNARY(context);
  return HandleNaturalGradientStep(resources_, context, request, response);
}

grpc::ServerBidiReactor<v1::StreamNaturalGradientStepRequest,
                        v1::StreamNaturalGradientStepResponse>*
FisherServiceImpl::StreamNaturalGradientStep(grpc::CallbackServerContext* context) {
  if (grpc::Status auth_status = Authorize(context); !auth_status.ok()) {
    return new RejectedBidi<v1::StreamNaturalGradientStepRequest,
                            v1::StreamNaturalGradientStepResponse>(auth_status);
  }
  return HandleStreamNaturalGradientStep(resources_, context);
}

grpc::ServerUnaryReactor* FisherServiceImpl::FisherVectorProduct(
    grpc::CallbackServerContext* context, const v1::FisherVectorProductRequest* request,
    v1::FisherVectorProductResponse* response) {
  FISHERD_AUTHORIZE_UNARY(context);
  return HandleFisherVectorProduct(resources_, context, request, response);
}

grpc::ServerWriteReactor<v1::GetFisherResponse>* FisherServiceImpl::GetFisher(
    grpc::CallbackServerContext* context, const v1::GetFisherRequest* request) {
  if (grpc::Status auth_status = Authorize(context); !auth_status.ok()) {
    return new RejectedWriter<v1::GetFisherResponse>(auth_status);
  }
  return HandleGetFisher(resources_, context, request);
}

#undef FISHERD_AUTHORIZE_UNARY

}  // namespace fisherd::server
