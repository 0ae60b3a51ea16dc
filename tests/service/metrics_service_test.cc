// The server's metrics in-process (FisherServer::metrics()), for what the end-to-end
// test cannot reach cheaply: calls refused before any handler (a missing token, a method
// the server does not serve), other services' calls, rejection reasons, and the
// statistics gauge against the registry's own accounting.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/completion_queue.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/support/byte_buffer.h"
#include "tests/service/test_server.h"

namespace fisherd::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// A unary call of `method` with an empty request, whatever the server serves.
grpc::Status CallByName(grpc::Channel* channel, const std::string& method) {
  grpc::GenericStub stub(channel->shared_from_this());
  grpc::ClientContext context;
  grpc::CompletionQueue cq;
  grpc::ByteBuffer request, response;
  grpc::Status status;
  std::unique_ptr<grpc::GenericClientAsyncResponseReader> call =
      stub.PrepareUnaryCall(&context, method, request, &cq);
  call->StartCall();
  call->Finish(&response, &status, reinterpret_cast<void*>(1));
  void* tag = nullptr;
  bool ok = false;
  EXPECT_TRUE(cq.Next(&tag, &ok));
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  return status;
}

std::string Line(const std::string& method, const std::string& code, int count) {
  return "fisherd_grpc_calls_total{method=\"" + method + "\",code=\"" + code + "\"} " +
         std::to_string(count) + "\n";
}

TEST_F(ServiceTest, MetricsCountEveryCallByMethodAndCode) {
  MustCreate("s", DenseConfig(4));
  EXPECT_EQ(CreateSession("s", DenseConfig(4)).error_code(), grpc::StatusCode::ALREADY_EXISTS);
  grpc::health::v1::HealthCheckRequest request;
  grpc::health::v1::HealthCheckResponse response;
  grpc::ClientContext context;
  ASSERT_TRUE(
      grpc::health::v1::Health::NewStub(channel_)->Check(&context, request, &response).ok());
  // Paths the server does not serve, in its service and outside it: one series for all.
  EXPECT_EQ(CallByName(channel_.get(), "/fisherd.v1.FisherService/NoSuchMethod").error_code(),
            grpc::StatusCode::UNIMPLEMENTED);
  EXPECT_EQ(CallByName(channel_.get(), "/made.up.Service/Anything").error_code(),
            grpc::StatusCode::UNIMPLEMENTED);

  const std::string text = server_->metrics().Render();
  EXPECT_THAT(text, HasSubstr(Line("/fisherd.v1.FisherService/CreateSession", "OK", 1)));
  EXPECT_THAT(text,
              HasSubstr(Line("/fisherd.v1.FisherService/CreateSession", "ALREADY_EXISTS", 1)));
  EXPECT_THAT(text, HasSubstr(Line("/grpc.health.v1.Health/Check", "OK", 1)));
  EXPECT_THAT(text, HasSubstr(Line("unknown", "UNIMPLEMENTED", 2)));
  EXPECT_THAT(text, Not(HasSubstr("NoSuchMethod")));
  EXPECT_THAT(text, Not(HasSubstr("made.up")));
}

TEST_F(ServiceTest, MetricsCountCallsRefusedForAMissingToken) {
  const std::string token_file =
      (std::filesystem::temp_directory_path() / "fisherd-metrics-token").string();
  std::ofstream(token_file) << "secret-token-for-the-test";
  server::ServerOptions options = TestServerOptions();
  options.auth_token_file = token_file;
  StartServer(options);
  EXPECT_EQ(CreateSession("s", DenseConfig(4)).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  std::remove(token_file.c_str());
  EXPECT_THAT(server_->metrics().Render(),
              HasSubstr(Line("/fisherd.v1.FisherService/CreateSession", "UNAUTHENTICATED", 1)));
}

TEST_F(ServiceTest, MetricsGiveRejectedBatchesTheirCodeAsReason) {
  const std::string name = MustCreate("s", DenseConfig(4));
  const RowMatrixF rows = RowMatrixF::Ones(2, 4);
  EXPECT_EQ(AddScores(MakeBatch("sessions/none", "w", 1, rows)).error_code(),
            grpc::StatusCode::NOT_FOUND);
  v1::ScoreBatch short_batch = MakeBatch(name, "w", 1, rows);
  short_batch.set_rows(3);
  EXPECT_EQ(AddScores(short_batch).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  ASSERT_TRUE(AddScores(MakeBatch(name, "w", 1, rows)).ok());

  const std::string text = server_->metrics().Render();
  EXPECT_THAT(text,
              HasSubstr("fisherd_batches_total{result=\"applied\"} 1\n"
                        "fisherd_batches_total{result=\"duplicate\"} 0\n"
                        "fisherd_batches_total{result=\"rejected\",reason=\"invalid_argument\"} 1\n"
                        "fisherd_batches_total{result=\"rejected\",reason=\"not_found\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("fisherd_scores_total 2\n"));
}

// The gauge is the registry's budget accounting of live sessions: with no call in
// flight, exactly what it has reserved.
TEST_F(ServiceTest, MetricsStatisticsBytesAreTheBudgetsAccounting) {
  MustCreate("dense", DenseConfig(64));
  v1::SessionConfig diagonal;
  diagonal.set_dim(1000);
  diagonal.set_representation(v1::REPRESENTATION_DIAGONAL);
  MustCreate("diagonal", diagonal);
  const std::string text = server_->metrics().Render();
  EXPECT_THAT(text, HasSubstr("fisherd_sessions 2\n"));
  EXPECT_THAT(text, HasSubstr("fisherd_statistics_bytes " +
                              std::to_string(server_->registry().ReservedBytes()) + "\n"));
}

TEST_F(ServiceTest, MetricsListenerIsOffByDefault) { EXPECT_EQ(server_->metrics_address(), ""); }

}  // namespace
}  // namespace fisherd::testing
