// The assembled server: health checking, a busy port, and shutdown with work in flight.
#include <future>
#include <string>

#include "gmock/gmock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/completion_queue.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/support/byte_buffer.h"
#include "tests/service/test_server.h"

namespace fisherd::testing {
namespace {

using ::grpc::health::v1::HealthCheckRequest;
using ::grpc::health::v1::HealthCheckResponse;

// grpc.health.v1.Health/Check through the generated stub (proto/grpc/health/v1).
grpc::Status HealthCheck(const std::shared_ptr<grpc::Channel>& channel, const std::string& service,
                         HealthCheckResponse* response) {
  HealthCheckRequest request;
  request.set_service(service);
  grpc::ClientContext context;
  return grpc::health::v1::Health::NewStub(channel)->Check(&context, request, response);
}

TEST_F(ServiceTest, HealthServiceReportsServing) {
  HealthCheckResponse response;
  ASSERT_TRUE(HealthCheck(channel_, "", &response).ok());
  EXPECT_EQ(response.status(), HealthCheckResponse::SERVING);
  ASSERT_TRUE(HealthCheck(channel_, "fisherd.v1.FisherService", &response).ok());
  EXPECT_EQ(response.status(), HealthCheckResponse::SERVING);
  // A service the server does not serve is NOT_FOUND, not some serving status.
  EXPECT_EQ(HealthCheck(channel_, "no.such.Service", &response).error_code(),
            grpc::StatusCode::NOT_FOUND);
}

// grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo, list_services, over the
// generic async API with hand-encoded bytes: ServerReflectionRequest{list_services: ""}
// is field 7, length 0. The reply lists service names as plain strings.
std::string ListServicesByReflection(grpc::Channel* channel, grpc::Status* status) {
  grpc::GenericStub stub(channel->shared_from_this());
  grpc::ClientContext context;
  grpc::CompletionQueue cq;
  auto call = stub.PrepareCall(
      &context, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  void* tag = nullptr;
  bool ok = false;
  auto await = [&](intptr_t expected) {
    EXPECT_TRUE(cq.Next(&tag, &ok));
    EXPECT_EQ(reinterpret_cast<intptr_t>(tag), expected);
    return ok;
  };
  call->StartCall(reinterpret_cast<void*>(1));
  await(1);
  const std::string request("\x3a\x00", 2);
  grpc::Slice slice(request);
  grpc::ByteBuffer request_buffer(&slice, 1);
  call->Write(request_buffer, reinterpret_cast<void*>(2));
  await(2);
  call->WritesDone(reinterpret_cast<void*>(3));
  await(3);
  grpc::ByteBuffer response_buffer;
  call->Read(&response_buffer, reinterpret_cast<void*>(4));
  std::string response;
  if (await(4)) {
    std::vector<grpc::Slice> slices;
    (void)response_buffer.Dump(&slices);
    for (const grpc::Slice& s : slices) {
      response.append(reinterpret_cast<const char*>(s.begin()), s.size());
    }
  }
  call->Finish(status, reinterpret_cast<void*>(5));
  await(5);
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  return response;
}

TEST_F(ServiceTest, ReflectionListsTheService) {
  grpc::Status status;
  const std::string services = ListServicesByReflection(channel_.get(), &status);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_THAT(services, ::testing::HasSubstr("fisherd.v1.FisherService"));
  EXPECT_THAT(services, ::testing::HasSubstr("grpc.health.v1.Health"));
}

// --max-message-mb governs what the server accepts: a 6 MiB batch (above gRPC's 4 MiB
// default) goes through at the default 64 MiB and is refused by gRPC itself under a
// 1 MiB limit, leaving the session untouched.
TEST_F(ServiceTest, MaxMessageSizeIsTheConfiguredOne) {
  const RowMatrixF rows = RowMatrixF::Ones(3072, 512);  // 6 MiB of float32
  std::string name = MustCreate("s", DenseConfig(512));
  v1::ScoreAck ack;
  grpc::Status status = AddScores(MakeBatch(name, "w", 1, rows), &ack);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(ack.sample_count(), 3072u);

  server::ServerOptions options = TestServerOptions();
  options.max_message_bytes = 1 << 20;
  StartServer(options);
  name = MustCreate("s", DenseConfig(512));
  status = AddScores(MakeBatch(name, "w", 1, rows));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(MustGetStats(name).sample_count(), 0u);
}

TEST_F(ServiceTest, BusyPortIsAnError) {
  server::ServerOptions options = TestServerOptions();
  options.listen = server_->address();
  auto second = server::FisherServer::Start(options);
  EXPECT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(second.status().message()), ::testing::HasSubstr(server_->address()));
}

TEST_F(ServiceTest, ShutdownFinishesCallsInFlight) {
  const std::string name = MustCreate("s", DenseConfig(512));
  RowMatrixF rows = RowMatrixF::Ones(256, 512);
  // Queue work, then shut down with a drain: every call must end (with any status)
  // rather than hang, and the server must come down.
  std::vector<std::future<grpc::Status>> calls;
  for (int k = 0; k < 8; ++k) {
    calls.push_back(std::async(std::launch::async, [&, k] {
      return AddScores(MakeBatch(name, "w" + std::to_string(k), 1, rows));
    }));
  }
  server_->Shutdown(absl::Seconds(5));
  for (auto& call : calls) {
    const grpc::Status status = call.get();
    EXPECT_TRUE(status.ok() || status.error_code() == grpc::StatusCode::UNAVAILABLE ||
                status.error_code() == grpc::StatusCode::CANCELLED)
        << status.error_message();
  }
}

}  // namespace
}  // namespace fisherd::testing
