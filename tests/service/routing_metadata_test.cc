// The C++ client's routing metadata: every call about one session carries
// x-fisherd-session with the bare session id, so that a proxy can hash it. The oracle is
// what a gRPC server actually receives: a recording FisherService on a real port notes
// each call's metadata as the call arrives and answers UNIMPLEMENTED (GetSession alone
// answers, because the ScoreStreamer reads the session's width before it opens its
// stream).
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "client/fisher_client.h"
#include "client/score_streamer.h"
#include "fisherd/v1/fisher.grpc.pb.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "gtest/gtest.h"

namespace fisherd::testing {
namespace {

class RecordingService final : public v1::FisherService::Service {
 public:
  // method -> the x-fisherd-session values of its calls ("<none>" when absent)
  std::map<std::string, std::vector<std::string>> Seen() const {
    absl::MutexLock lock(&mu_);
    return seen_;
  }

  grpc::Status CreateSession(grpc::ServerContext* c, const v1::CreateSessionRequest*,
                             v1::Session*) override {
    return Record("CreateSession", c);
  }
  grpc::Status GetSession(grpc::ServerContext* c, const v1::GetSessionRequest* request,
                          v1::Session* session) override {
    Record("GetSession", c);
    session->set_name(request->name());
    session->mutable_config()->set_dim(2);
    session->mutable_config()->set_representation(v1::REPRESENTATION_DENSE);
    return grpc::Status::OK;
  }
  grpc::Status ListSessions(grpc::ServerContext* c, const v1::ListSessionsRequest*,
                            v1::ListSessionsResponse*) override {
    return Record("ListSessions", c);
  }
  grpc::Status DeleteSession(grpc::ServerContext* c, const v1::DeleteSessionRequest*,
                             v1::DeleteSessionResponse*) override {
    return Record("DeleteSession", c);
  }
  grpc::Status StreamScores(grpc::ServerContext* c,
                            grpc::ServerReaderWriter<v1::ScoreAck, v1::ScoreBatch>*) override {
    return Record("StreamScores", c);
  }
  grpc::Status AddScores(grpc::ServerContext* c, const v1::ScoreBatch*, v1::ScoreAck*) override {
    return Record("AddScores", c);
  }
  grpc::Status NaturalGradientStep(grpc::ServerContext* c, const v1::NaturalGradientStepRequest*,
                                   v1::NaturalGradientStepResponse*) override {
    return Record("NaturalGradientStep", c);
  }
  grpc::Status StreamNaturalGradientStep(
      grpc::ServerContext* c,
      grpc::ServerReaderWriter<v1::StreamNaturalGradientStepResponse,
                               v1::StreamNaturalGradientStepRequest>*) override {
    return Record("StreamNaturalGradientStep", c);
  }
  grpc::Status FisherVectorProduct(grpc::ServerContext* c, const v1::FisherVectorProductRequest*,
                                   v1::FisherVectorProductResponse*) override {
    return Record("FisherVectorProduct", c);
  }
  grpc::Status GetFisher(grpc::ServerContext* c, const v1::GetFisherRequest*,
                         grpc::ServerWriter<v1::GetFisherResponse>*) override {
    return Record("GetFisher", c);
  }

 private:
  grpc::Status Record(const std::string& method, grpc::ServerContext* context) {
    std::string value = "<none>";
    const auto& metadata = context->client_metadata();
    if (auto it = metadata.find("x-fisherd-session"); it != metadata.end()) {
      value.assign(it->second.data(), it->second.size());
    }
    absl::MutexLock lock(&mu_);
    seen_[method].push_back(value);
    return grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "recording only");
  }

  mutable absl::Mutex mu_;
  std::map<std::string, std::vector<std::string>> seen_;
};

TEST(RoutingMetadata, EverySessionCallCarriesTheBareSessionId) {
  RecordingService service;
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_NE(server, nullptr);

  client::ClientOptions options;
  options.target = "127.0.0.1:" + std::to_string(port);
  absl::StatusOr<std::unique_ptr<client::FisherClient>> made =
      client::FisherClient::Create(options);
  ASSERT_TRUE(made.ok());
  client::FisherClient& c = **made;

  // The bare id and the resource name must give the same header.
  (void)c.CreateSession("job-7", v1::SessionConfig());
  (void)c.GetSession("sessions/job-7");
  (void)c.ListSessions();
  v1::ScoreBatch batch;
  batch.set_session("sessions/job-7");
  (void)c.AddScores(batch);
  const std::vector<double> g = {1.0, 2.0};
  (void)c.Step("job-7", g, client::StepParams{});
  client::StepParams streamed;
  streamed.float32_gradient = true;  // through StreamNaturalGradientStep
  (void)c.Step("sessions/job-7", g, streamed);
  (void)c.FisherVectorProduct("job-7", g);
  (void)c.GetFisher("job-7", client::FisherQuery{});
  {
    client::ScoreStreamerOptions stream_options;
    stream_options.session = "sessions/job-7";
    stream_options.worker_id = "w";
    absl::StatusOr<std::unique_ptr<client::ScoreStreamer>> streamer =
        client::ScoreStreamer::Create(&c, stream_options);
    ASSERT_TRUE(streamer.ok()) << streamer.status();
    const std::vector<float> row = {1.0f, 2.0f};
    (void)(*streamer)->Append(row);
    (void)(*streamer)->Flush();  // opens the stream, which the server refuses
  }
  (void)c.DeleteSession("job-7");

  const std::map<std::string, std::vector<std::string>> seen = service.Seen();
  for (const char* method : {"CreateSession", "GetSession", "AddScores", "NaturalGradientStep",
                             "StreamNaturalGradientStep", "FisherVectorProduct", "GetFisher",
                             "StreamScores", "DeleteSession"}) {
    auto it = seen.find(method);
    ASSERT_NE(it, seen.end()) << method << " never reached the server";
    for (const std::string& value : it->second) EXPECT_EQ(value, "job-7") << method;
  }
  // ListSessions is about no session: nothing to route by.
  ASSERT_EQ(seen.count("ListSessions"), 1u);
  EXPECT_EQ(seen.at("ListSessions"), std::vector<std::string>{"<none>"});
  server->Shutdown();
}

}  // namespace
}  // namespace fisherd::testing
