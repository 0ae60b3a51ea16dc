// CreateSession / GetSession / ListSessions / DeleteSession, their defaults, their
// input errors and the server limits checked before a session is allocated.
#include <cstdio>
#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "server/snapshot_file.h"
#include "storage/record_format.h"
#include "tests/service/test_server.h"

namespace fisherd::testing {
namespace {

using ::testing::HasSubstr;

TEST_F(ServiceTest, CreateEchoesEffectiveConfig) {
  v1::SessionConfig config;
  config.set_dim(5);  // representation UNSPECIFIED, decay 0: wire defaults
  config.set_damping(0.25);
  v1::Session session;
  ASSERT_TRUE(CreateSession("run-1.a_b", config, &session).ok());
  EXPECT_EQ(session.name(), "sessions/run-1.a_b");
  EXPECT_EQ(session.config().dim(), 5u);
  EXPECT_EQ(session.config().representation(), v1::REPRESENTATION_DENSE);
  EXPECT_EQ(session.config().decay(), 1.0);  // 0 on the wire means 1
  EXPECT_EQ(session.config().damping(), 0.25);
  EXPECT_FALSE(session.config().centered());
  EXPECT_EQ(session.stats().sample_count(), 0u);
  EXPECT_EQ(session.stats().weight_sum(), 0.0);
  EXPECT_EQ(session.stats().step_count(), 0u);

  v1::SessionConfig diagonal;
  diagonal.set_dim(3);
  diagonal.set_representation(v1::REPRESENTATION_DIAGONAL);
  diagonal.set_centered(true);
  diagonal.set_decay(0.5);
  ASSERT_TRUE(CreateSession("diag", diagonal, &session).ok());
  EXPECT_EQ(session.config().representation(), v1::REPRESENTATION_DIAGONAL);
  EXPECT_TRUE(session.config().centered());
  EXPECT_EQ(session.config().decay(), 0.5);
}

TEST_F(ServiceTest, GetListDelete) {
  MustCreate("b", DenseConfig(2));
  MustCreate("a", DenseConfig(3));
  MustCreate("c", DenseConfig(4));

  v1::Session session;
  ASSERT_TRUE(GetSession("sessions/a", &session).ok());
  EXPECT_EQ(session.name(), "sessions/a");
  EXPECT_EQ(session.config().dim(), 3u);

  auto list = [this] {
    v1::ListSessionsResponse response;
    grpc::ClientContext context;
    EXPECT_TRUE(stub_->ListSessions(&context, v1::ListSessionsRequest(), &response).ok());
    std::vector<std::string> names;
    for (const v1::Session& s : response.sessions()) names.push_back(s.name());
    return names;
  };
  EXPECT_THAT(list(), ::testing::ElementsAre("sessions/a", "sessions/b", "sessions/c"));

  v1::DeleteSessionRequest request;
  request.set_name("sessions/b");
  v1::DeleteSessionResponse response;
  {
    grpc::ClientContext context;
    ASSERT_TRUE(stub_->DeleteSession(&context, request, &response).ok());
  }
  EXPECT_THAT(list(), ::testing::ElementsAre("sessions/a", "sessions/c"));

  grpc::Status status = GetSession("sessions/b", &session);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(status.error_message(), HasSubstr("sessions/b"));
  {
    grpc::ClientContext context;
    status = stub_->DeleteSession(&context, request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
    EXPECT_THAT(status.error_message(), HasSubstr("sessions/b"));
  }
  // The name is free again.
  EXPECT_TRUE(CreateSession("b", DenseConfig(2)).ok());
}

TEST_F(ServiceTest, RejectsBadSessionIds) {
  for (const std::string& id :
       {std::string(""), std::string("-leading-dash"), std::string(".dot"), std::string("a/b"),
        std::string("sp ace"), std::string("caf\xc3\xa9"), std::string(64, 'x')}) {
    const grpc::Status status = CreateSession(id, DenseConfig(2));
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << id;
    EXPECT_THAT(status.error_message(), HasSubstr("session_id")) << id;
  }
  EXPECT_TRUE(CreateSession(std::string(63, 'x'), DenseConfig(2)).ok());
  EXPECT_TRUE(CreateSession("9_lives", DenseConfig(2)).ok());
}

TEST_F(ServiceTest, RejectsMalformedNames) {
  v1::Session session;
  for (const std::string& name : {std::string("a"), std::string("sessions/"),
                                  std::string("session/a"), std::string("sessions/a/b")}) {
    const grpc::Status status = GetSession(name, &session);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << name;
    EXPECT_THAT(status.error_message(), HasSubstr("name")) << name;
  }
}

TEST_F(ServiceTest, DuplicateIsAlreadyExists) {
  MustCreate("dup", DenseConfig(2));
  const grpc::Status status = CreateSession("dup", DenseConfig(3));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_THAT(status.error_message(), HasSubstr("sessions/dup"));
  v1::Session session;
  ASSERT_TRUE(GetSession("sessions/dup", &session).ok());
  EXPECT_EQ(session.config().dim(), 2u);  // the original is untouched
}

TEST_F(ServiceTest, RejectsBadConfigs) {
  struct Case {
    const char* what;
    v1::SessionConfig config;
    const char* field;
  };
  std::vector<Case> cases;
  {
    v1::SessionConfig c = DenseConfig(0);
    cases.push_back({"dim 0", c, "dim"});
  }
  {
    v1::SessionConfig c = DenseConfig(2);
    c.set_decay(1.5);
    cases.push_back({"decay 1.5", c, "decay"});
  }
  {
    v1::SessionConfig c = DenseConfig(2);
    c.set_decay(-0.5);
    cases.push_back({"decay -0.5", c, "decay"});
  }
  {
    v1::SessionConfig c = DenseConfig(2);
    c.set_damping(-1);
    cases.push_back({"damping -1", c, "damping"});
  }
  {
    v1::SessionConfig c = DenseConfig(2);
    c.set_damping(std::numeric_limits<double>::infinity());
    cases.push_back({"damping inf", c, "damping"});
  }
  {
    v1::SessionConfig c = DenseConfig(2);
    c.set_representation(static_cast<v1::Representation>(7));
    cases.push_back({"representation 7", c, "representation"});
  }
  for (const Case& c : cases) {
    const grpc::Status status = CreateSession("bad", c.config);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.what;
    EXPECT_THAT(status.error_message(), HasSubstr(c.field)) << c.what;
  }
  v1::Session session;
  EXPECT_EQ(GetSession("sessions/bad", &session).error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(ServiceTest, MaxSessionsIsResourceExhausted) {
  server::ServerOptions options = TestServerOptions();
  options.limits.max_sessions = 3;
  StartServer(options);
  for (const char* id : {"s1", "s2", "s3"}) MustCreate(id, DenseConfig(2));
  const grpc::Status status = CreateSession("s4", DenseConfig(2));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(status.error_message(), HasSubstr("--max-sessions"));

  v1::DeleteSessionRequest request;
  request.set_name("sessions/s1");
  v1::DeleteSessionResponse response;
  grpc::ClientContext context;
  ASSERT_TRUE(stub_->DeleteSession(&context, request, &response).ok());
  EXPECT_TRUE(CreateSession("s4", DenseConfig(2)).ok());
}

TEST_F(ServiceTest, DenseDimOverLimitSuggestsDiagonal) {
  // The limit is 4096 (TestServerOptions); the check happens before any allocation.
  const grpc::Status status = CreateSession("big", DenseConfig(100000));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(status.error_message(), HasSubstr("--max-dense-dim"));
  EXPECT_THAT(status.error_message(), HasSubstr("DIAGONAL"));

  v1::SessionConfig diagonal;
  diagonal.set_dim(100000);
  diagonal.set_representation(v1::REPRESENTATION_DIAGONAL);
  EXPECT_TRUE(CreateSession("big", diagonal).ok());
}

TEST_F(ServiceTest, MemoryBudgetIsResourceExhausted) {
  server::ServerOptions options = TestServerOptions();
  options.limits.memory_budget_bytes = uint64_t{48} << 20;
  StartServer(options);
  MustCreate("first", DenseConfig(2048));  // 32 MiB of the 48
  grpc::Status status = CreateSession("second", DenseConfig(2048));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(status.error_message(), HasSubstr("--memory-budget-mb"));
  EXPECT_THAT(status.error_message(), HasSubstr("DIAGONAL"));

  v1::DeleteSessionRequest request;
  request.set_name("sessions/first");
  v1::DeleteSessionResponse response;
  grpc::ClientContext context;
  ASSERT_TRUE(stub_->DeleteSession(&context, request, &response).ok());
  EXPECT_TRUE(CreateSession("second", DenseConfig(2048)).ok());
}

// Found by fuzz/durable_recovery_fuzzer.cc: recovery (Recreate) skipped the memory
// budget for each session, so a damaged data directory naming a huge diagonal session
// made the server allocate it before CheckTotals could refuse it.
TEST(SessionRegistryRecovery, RecreateRefusesASessionLargerThanTheWholeBudget) {
  server::RegistryLimits limits;
  limits.memory_budget_bytes = uint64_t{1} << 20;
  server::SessionRegistry registry(limits);
  v1::SessionConfig config;
  config.set_dim(uint64_t{1} << 40);
  config.set_representation(v1::REPRESENTATION_DIAGONAL);
  const auto entry = registry.Recreate("huge", config, /*incarnation=*/1);
  ASSERT_FALSE(entry.ok());
  EXPECT_EQ(entry.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(entry.status().message()), HasSubstr("--memory-budget-mb"));
  EXPECT_EQ(registry.ReservedBytes(), 0u);
  // Within the budget, recovery still creates it.
  config.set_dim(1000);
  EXPECT_TRUE(registry.Recreate("small", config, /*incarnation=*/2).ok());
}

// Found by fuzz/snapshot_fuzzer.cc: VerifySnapshotFile accepted a header that
// SnapshotReader::Open refuses (another format), so "verified" did not mean "loadable".
TEST(SnapshotFileVerify, RefusesAHeaderOfAnotherFormat) {
  durable::v1::SnapshotHeader header;
  header.set_format(2);
  header.set_session_id("s");
  std::string file;
  AppendRecord(durable::v1::SNAPSHOT_RECORD_TYPE_HEADER, 0, header.SerializeAsString(), &file);
  AppendRecord(durable::v1::SNAPSHOT_RECORD_TYPE_END, 1,
               durable::v1::SnapshotEnd().SerializeAsString(), &file);
  const std::string path = ::testing::TempDir() + "/verify-format.snap";
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << file;
  }
  const absl::Status verified = server::VerifySnapshotFile(path);
  EXPECT_EQ(verified.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(verified.message()), HasSubstr("snapshot format 2"));
  EXPECT_FALSE(server::SnapshotReader::Open(path).ok());
  std::remove(path.c_str());
}

}  // namespace
}  // namespace fisherd::testing
