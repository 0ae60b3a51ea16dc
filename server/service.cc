#include "server/service.h"

#include <algorithm>

#include "server/handlers/handlers.h"

namespace fisherd::server {

namespace {

// Row blocks of about 1 MiB (see handlers/get_fisher.cc), but never more than half the
// send limit, so a block plus its few header bytes always fits in one message.
int64_t MaxBlockBytes(int64_t max_message_bytes) {
  return std::max<int64_t>(sizeof(double), std::min<int64_t>(int64_t{1} << 20,
                                                              max_message_bytes / 2));
}

}  // namespace

FisherServiceImpl::FisherServiceImpl(SessionRegistry* registry, WorkPool* pool,
                                     int64_t max_message_bytes)
    : resources_{registry, pool, MaxBlockBytes(max_message_bytes)} {}

grpc::ServerUnaryReactor* FisherServiceImpl::CreateSession(grpc::CallbackServerContext* context,
                                                           const v1::CreateSessionRequest* request,
                                                           v1::Session* response) {
  return HandleCreateSession(resources_, context, request, response);
}

grpc::ServerUnaryReactor* FisherServiceImpl::GetSession(grpc::CallbackServerContext* context,
                                                        const v1::GetSessionRequest* request,
                                                        v1::Session* response) {
  return HandleGetSession(resources_, context, request, response);
}

grpc::ServerUnaryReactor* FisherServiceImpl::ListSessions(grpc::CallbackServerContext* context,
                                                          const v1::ListSessionsRequest* request,
                                                          v1::ListSessionsResponse* response) {
  return HandleListSessions(resources_, context, request, response);
}

grpc::ServerUnaryReactor* FisherServiceImpl::DeleteSession(grpc::CallbackServerContext* context,
                                                           const v1::DeleteSessionRequest* request,
                                                           v1::DeleteSessionResponse* response) {
  return HandleDeleteSession(resources_, context, request, response);
}

grpc::ServerBidiReactor<v1::ScoreBatch, v1::ScoreAck>* FisherServiceImpl::StreamScores(
    grpc::CallbackServerContext* context) {
  return HandleStreamScores(resources_, context);
}

grpc::ServerUnaryReactor* FisherServiceImpl::AddScores(grpc::CallbackServerContext* context,
                                                       const v1::ScoreBatch* request,
                                                       v1::ScoreAck* response) {
  return HandleAddScores(resources_, context, request, response);
}

grpc::ServerUnaryReactor* FisherServiceImpl::NaturalGradientStep(
    grpc::CallbackServerContext* context, const v1::NaturalGradientStepRequest* request,
    v1::NaturalGradientStepResponse* response) {
  return HandleNaturalGradientStep(resources_, context, request, response);
}

grpc::ServerUnaryReactor* FisherServiceImpl::FisherVectorProduct(
    grpc::CallbackServerContext* context, const v1::FisherVectorProductRequest* request,
    v1::FisherVectorProductResponse* response) {
  return HandleFisherVectorProduct(resources_, context, request, response);
}

grpc::ServerWriteReactor<v1::GetFisherResponse>* FisherServiceImpl::GetFisher(
    grpc::CallbackServerContext* context, const v1::GetFisherRequest* request) {
  return HandleGetFisher(resources_, context, request);
}

}  // namespace fisherd::server
