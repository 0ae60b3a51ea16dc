// One function per RPC of fisherd.v1.FisherService (Cartographer cloud/ style): each
// lives in its own file under server/handlers/ and is called by FisherServiceImpl.
// Every handler returns at once and does its work on the server's WorkPool.
#ifndef FISHERD_SERVER_HANDLERS_HANDLERS_H_
#define FISHERD_SERVER_HANDLERS_HANDLERS_H_

#include "fisherd/v1/fisher.pb.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/server_callback.h"
#include "server/handler_util.h"

namespace fisherd::server {

grpc::ServerUnaryReactor* HandleCreateSession(const ServiceResources& resources,
                                              grpc::CallbackServerContext* context,
                                              const v1::CreateSessionRequest* request,
                                              v1::Session* response);

grpc::ServerUnaryReactor* HandleGetSession(const ServiceResources& resources,
                                           grpc::CallbackServerContext* context,
                                           const v1::GetSessionRequest* request,
                                           v1::Session* response);

grpc::ServerUnaryReactor* HandleListSessions(const ServiceResources& resources,
                                             grpc::CallbackServerContext* context,
                                             const v1::ListSessionsRequest* request,
                                             v1::ListSessionsResponse* response);

grpc::ServerUnaryReactor* HandleDeleteSession(const ServiceResources& resources,
                                              grpc::CallbackServerContext* context,
                                              const v1::DeleteSessionRequest* request,
                                              v1::DeleteSessionResponse* response);

grpc::ServerUnaryReactor* HandleAddScores(const ServiceResources& resources,
                                          grpc::CallbackServerContext* context,
                                          const v1::ScoreBatch* request, v1::ScoreAck* response);

grpc::ServerBidiReactor<v1::ScoreBatch, v1::ScoreAck>* HandleStreamScores(
    const ServiceResources& resources, grpc::CallbackServerContext* context);

grpc::ServerUnaryReactor* HandleNaturalGradientStep(const ServiceResources& resources,
                                                    grpc::CallbackServerContext* context,
                                                    const v1::NaturalGradientStepRequest* request,
                                                    v1::NaturalGradientStepResponse* response);

grpc::ServerBidiReactor<v1::StreamNaturalGradientStepRequest,
                        v1::StreamNaturalGradientStepResponse>*
HandleStreamNaturalGradientStep(const ServiceResources& resources,
                                grpc::CallbackServerContext* context);

grpc::ServerUnaryReactor* HandleFisherVectorProduct(const ServiceResources& resources,
                                                    grpc::CallbackServerContext* context,
                                                    const v1::FisherVectorProductRequest* request,
                                                    v1::FisherVectorProductResponse* response);

grpc::ServerWriteReactor<v1::GetFisherResponse>* HandleGetFisher(
    const ServiceResources& resources, grpc::CallbackServerContext* context,
    const v1::GetFisherRequest* request);

}  // namespace fisherd::server

#endif  // FISHERD_SERVER_HANDLERS_HANDLERS_H_
