// FisherServiceImpl: fisherd.v1.FisherService on gRPC's callback API. It only routes:
// each RPC goes to its handler in server/handlers/, which posts the work to the pool.
#ifndef FISHERD_SERVER_SERVICE_H_
#define FISHERD_SERVER_SERVICE_H_

#include <cstdint>

#include "fisherd/v1/fisher.grpc.pb.h"
#include "server/auth.h"
#include "server/handler_util.h"
#include "server/session_registry.h"
#include "server/work_pool.h"

namespace fisherd::server {

class FisherServiceImpl final : public v1::FisherService::CallbackService {
 public:
  // REQUIRES: registry and pool outlive the grpc::Server this service is registered
  // with (shut it down and Wait() before destroying them); max_message_bytes >= 4096
  // is the server's send limit, which streamed responses stay under. auth: when not
  // null, every RPC must pass auth->Check() before its handler runs (server/auth.h);
  // REQUIRES: it outlives the server too.
  // store: durable sessions (--data-dir), or nullptr; REQUIRES: it outlives the server.
  // metrics: where batches and steps are counted, or nullptr; REQUIRES: it outlives the
  // server and the pool (queued work counts too).
  FisherServiceImpl(SessionRegistry* registry, WorkPool* pool, int64_t max_message_bytes,
                    const TokenAuthenticator* auth = nullptr, DurableStore* store = nullptr,
                    ServerMetrics* metrics = nullptr);

  grpc::ServerUnaryReactor* CreateSession(grpc::CallbackServerContext* context,
                                          const v1::CreateSessionRequest* request,
                                          v1::Session* response) override;
  grpc::ServerUnaryReactor* GetSession(grpc::CallbackServerContext* context,
                                       const v1::GetSessionRequest* request,
                                       v1::Session* response) override;
  grpc::ServerUnaryReactor* ListSessions(grpc::CallbackServerContext* context,
                                         const v1::ListSessionsRequest* request,
                                         v1::ListSessionsResponse* response) override;
  grpc::ServerUnaryReactor* DeleteSession(grpc::CallbackServerContext* context,
                                          const v1::DeleteSessionRequest* request,
                                          v1::DeleteSessionResponse* response) override;
  grpc::ServerBidiReactor<v1::ScoreBatch, v1::ScoreAck>* StreamScores(
      grpc::CallbackServerContext* context) override;
  grpc::ServerUnaryReactor* AddScores(grpc::CallbackServerContext* context,
                                      const v1::ScoreBatch* request,
                                      v1::ScoreAck* response) override;
  grpc::ServerUnaryReactor* NaturalGradientStep(grpc::CallbackServerContext* context,
                                                const v1::NaturalGradientStepRequest* request,
                                                v1::NaturalGradientStepResponse* response) override;
  grpc::ServerBidiReactor<v1::StreamNaturalGradientStepRequest,
                          v1::StreamNaturalGradientStepResponse>*
  StreamNaturalGradientStep(grpc::CallbackServerContext* context) override;
  grpc::ServerUnaryReactor* FisherVectorProduct(grpc::CallbackServerContext* context,
                                                const v1::FisherVectorProductRequest* request,
                                                v1::FisherVectorProductResponse* response) override;
  grpc::ServerWriteReactor<v1::GetFisherResponse>* GetFisher(
      grpc::CallbackServerContext* context, const v1::GetFisherRequest* request) override;

 private:
  // OK without an authenticator; otherwise its verdict on the call's metadata.
  grpc::Status Authorize(const grpc::CallbackServerContext* context) const;

  const ServiceResources resources_;
  const TokenAuthenticator* const auth_;
};

}  // namespace fisherd::server

#endif  // FISHERD_SERVER_SERVICE_H_
