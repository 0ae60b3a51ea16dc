// Shared scaffolding for the service tests: a real fisherd (FisherServer, the same
// assembly the binary runs) on 127.0.0.1 port 0, a real channel with default client
// limits, and helpers that build wire batches.
#ifndef FISHERD_TESTS_SERVICE_TEST_SERVER_H_
#define FISHERD_TESTS_SERVICE_TEST_SERVER_H_

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "Eigen/Core"
#include "fisherd/v1/fisher.grpc.pb.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "server/fisher_server.h"

namespace fisherd::testing {

using RowMatrixF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Limits small enough that tests can reach them cheaply.
inline server::ServerOptions TestServerOptions() {
  server::ServerOptions options;
  options.listen = "127.0.0.1:0";
  options.limits.max_sessions = 16;
  options.limits.max_dense_dim = 4096;
  options.limits.memory_budget_bytes = uint64_t{1024} << 20;
  options.math_threads = 2;
  return options;
}

// Little-endian float32 bytes, built byte by byte so the test does not assume the
// host's byte order (the server must not either).
inline std::string ToLittleEndianBytes(const float* values, size_t count) {
  std::string bytes(count * 4, '\0');
  for (size_t i = 0; i < count; ++i) {
    uint32_t bits;
    std::memcpy(&bits, &values[i], 4);
    for (int b = 0; b < 4; ++b) bytes[4 * i + b] = static_cast<char>((bits >> (8 * b)) & 0xff);
  }
  return bytes;
}

// A batch of `rows` (row-major, one score per row) for `session` ("sessions/{id}").
// as_bytes: scores_f32 (the fast path); otherwise repeated scores.
inline v1::ScoreBatch MakeBatch(const std::string& session, const std::string& worker,
                                uint64_t sequence, const RowMatrixF& rows,
                                const std::vector<float>& weights = {}, bool as_bytes = true) {
  v1::ScoreBatch batch;
  batch.set_session(session);
  batch.set_worker_id(worker);
  batch.set_sequence(sequence);
  batch.set_rows(static_cast<uint32_t>(rows.rows()));
  if (as_bytes) {
    batch.set_scores_f32(ToLittleEndianBytes(rows.data(), rows.size()));
  } else {
    batch.mutable_scores()->Assign(rows.data(), rows.data() + rows.size());
  }
  batch.mutable_weights()->Assign(weights.begin(), weights.end());
  return batch;
}

inline v1::SessionConfig DenseConfig(uint64_t dim) {
  v1::SessionConfig config;
  config.set_dim(dim);
  config.set_representation(v1::REPRESENTATION_DENSE);
  return config;
}

class ServiceTest : public ::testing::Test {
 protected:
  void SetUp() override { StartServer(TestServerOptions()); }

  void TearDown() override {
    stub_.reset();
    channel_.reset();
    if (server_ != nullptr) server_->Shutdown(absl::ZeroDuration());
    server_.reset();
  }

  // (Re)starts the server with `options`, e.g. for tighter limits.
  void StartServer(const server::ServerOptions& options) {
    TearDown();
    auto server = server::FisherServer::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    channel_ = grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials());
    stub_ = v1::FisherService::NewStub(channel_);
  }

  grpc::Status CreateSession(const std::string& id, const v1::SessionConfig& config,
                             v1::Session* session = nullptr) {
    v1::CreateSessionRequest request;
    request.set_session_id(id);
    *request.mutable_config() = config;
    v1::Session unused;
    grpc::ClientContext context;
    return stub_->CreateSession(&context, request, session != nullptr ? session : &unused);
  }

  // Creates the session and returns its name; fails the test on error.
  std::string MustCreate(const std::string& id, const v1::SessionConfig& config) {
    const grpc::Status status = CreateSession(id, config);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return "sessions/" + id;
  }

  grpc::Status GetSession(const std::string& name, v1::Session* session) {
    v1::GetSessionRequest request;
    request.set_name(name);
    grpc::ClientContext context;
    return stub_->GetSession(&context, request, session);
  }

  v1::SessionStats MustGetStats(const std::string& name) {
    v1::Session session;
    const grpc::Status status = GetSession(name, &session);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return session.stats();
  }

  grpc::Status AddScores(const v1::ScoreBatch& batch, v1::ScoreAck* ack = nullptr) {
    v1::ScoreAck unused;
    grpc::ClientContext context;
    return stub_->AddScores(&context, batch, ack != nullptr ? ack : &unused);
  }

  // Streams `batches` over one StreamScores call: writes them all, half-closes, then
  // collects the acks. Returns the call's final status.
  grpc::Status StreamBatches(const std::vector<v1::ScoreBatch>& batches,
                             std::vector<v1::ScoreAck>* acks) {
    grpc::ClientContext context;
    auto stream = stub_->StreamScores(&context);
    for (const v1::ScoreBatch& batch : batches) {
      if (!stream->Write(batch)) break;  // the server ended the call
    }
    stream->WritesDone();
    v1::ScoreAck ack;
    while (stream->Read(&ack)) acks->push_back(ack);
    return stream->Finish();
  }

  // Reads the whole GetFisher stream. `matrix` gets rows x entries-per-row values.
  grpc::Status GetFisher(const std::string& name, bool include_matrix, bool include_eigenvalues,
                         std::vector<v1::GetFisherResponse>* messages) {
    v1::GetFisherRequest request;
    request.set_session(name);
    request.set_include_matrix(include_matrix);
    request.set_include_eigenvalues(include_eigenvalues);
    grpc::ClientContext context;
    auto reader = stub_->GetFisher(&context, request);
    v1::GetFisherResponse response;
    while (reader->Read(&response)) messages->push_back(response);
    return reader->Finish();
  }

  // The dense F the server holds, assembled from GetFisher's row blocks.
  Eigen::MatrixXd ReadDenseFisher(const std::string& name, int dim, grpc::Status* status) {
    std::vector<v1::GetFisherResponse> messages;
    *status = GetFisher(name, /*include_matrix=*/true, /*include_eigenvalues=*/false, &messages);
    Eigen::MatrixXd f = Eigen::MatrixXd::Zero(dim, dim);
    for (size_t k = 1; k < messages.size(); ++k) {
      const v1::GetFisherResponse& m = messages[k];
      for (uint32_t r = 0; r < m.row_count(); ++r) {
        for (int j = 0; j < dim; ++j) f(m.row_offset() + r, j) = m.values(r * dim + j);
      }
    }
    return f;
  }

  std::unique_ptr<server::FisherServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::FisherService::Stub> stub_;
};

// F = sum w s s^T / sum w for rows s with weights w (empty: all 1), in double from the
// same float values the server received.
inline Eigen::MatrixXd ReferenceFisher(const RowMatrixF& rows,
                                       const std::vector<float>& weights = {}) {
  const Eigen::MatrixXd s = rows.cast<double>();
  Eigen::VectorXd w = Eigen::VectorXd::Ones(rows.rows());
  if (!weights.empty()) {
    w = Eigen::Map<const Eigen::VectorXf>(weights.data(), weights.size()).cast<double>();
  }
  return s.transpose() * w.asDiagonal() * s / w.sum();
}

}  // namespace fisherd::testing

#endif  // FISHERD_TESTS_SERVICE_TEST_SERVER_H_
