// The assembled server: health checking, a busy port, and shutdown with work in flight.
#include <future>
#include <string>

#include "gmock/gmock.h"
#include "grpcpp/completion_queue.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/support/byte_buffer.h"
#include "tests/service/test_server.h"

namespace fisherd::testing {
namespace {

// grpc.health.v1.Health/Check through the generic stub: the request
// HealthCheckRequest{service} and the reply HealthCheckResponse{status} are tiny
// enough to encode by hand, which spares the tests the health proto.
grpc::Status HealthCheck(grpc::Channel* channel, const std::string& service, int* serving_status) {
  std::string request;
  if (!service.empty()) {
    request.push_back(0x0a);  // field 1, length-delimited
    request.push_back(static_cast<char>(service.size()));
    request += service;
  }
  grpc::Slice slice(request);
  grpc::ByteBuffer request_buffer(&slice, 1);
  grpc::ByteBuffer response_buffer;
  grpc::GenericStub stub(channel->shared_from_this());
  grpc::ClientContext context;
  std::promise<grpc::Status> done;
  stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request_buffer,
                 &response_buffer, [&done](grpc::Status status) { done.set_value(status); });
  const grpc::Status status = done.get_future().get();
  if (!status.ok()) return status;
  std::vector<grpc::Slice> slices;
  (void)response_buffer.Dump(&slices);
  std::string response;
  for (const grpc::Slice& s : slices) response.append(reinterpret_cast<const char*>(s.begin()), s.size());
  // HealthCheckResponse{status = 1: SERVING, 2: NOT_SERVING} is 0x08 <status>.
  *serving_status = response.size() == 2 && response[0] == 0x08 ? response[1] : -1;
  return status;
}

TEST_F(ServiceTest, HealthServiceReportsServing) {
  int serving = 0;
  ASSERT_TRUE(HealthCheck(channel_.get(), "", &serving).ok());
  EXPECT_EQ(serving, 1);
  ASSERT_TRUE(HealthCheck(channel_.get(), "fisherd.v1.FisherService", &serving).ok());
  EXPECT_EQ(serving, 1);
}

// grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo, list_services, over the
// generic async API with hand-encoded bytes: ServerReflectionRequest{list_services: ""}
// is field 7, length 0. The reply lists service names as plain strings.
std::string ListServicesByReflection(grpc::Channel* channel, grpc::Status* status) {
  grpc::GenericStub stub(channel->shared_from_this());
  grpc::ClientContext context;
  grpc::CompletionQueue cq;
  auto call = stub.PrepareCall(&context,
                               "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                               &cq);
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
