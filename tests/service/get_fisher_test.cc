// GetFisher: the summary message, the row blocks (consecutive, under gRPC's default 4 MiB
// client limit, equal to F), one consistent estimate while scores arrive, eigenvalues,
// the diagonal form, and errors.
#include <algorithm>
#include <atomic>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "tests/service/test_server.h"

namespace fisherd::testing {
namespace {

using ::testing::HasSubstr;

// Dense dim 2048 (32 MiB of F) through a channel with default message limits. The
// scores are small integers, so every product and sum is exact in float64 and F (a
// division by n = 64) is exact too: the rows must equal the oracle exactly.
TEST_F(ServiceTest, GetFisherStreamsAllRowsOfALargeDenseEstimate) {
  constexpr int kDim = 2048, kRows = 64;
  const std::string name = MustCreate("large", DenseConfig(kDim));
  std::mt19937_64 rng(5);
  std::uniform_int_distribution<int> pick(-4, 4);
  RowMatrixF rows(kRows, kDim);
  for (int i = 0; i < kRows; ++i)
    for (int j = 0; j < kDim; ++j) rows(i, j) = static_cast<float>(pick(rng));
  ASSERT_TRUE(AddScores(MakeBatch(name, "w", 1, rows)).ok());
  const Eigen::MatrixXd expected = ReferenceFisher(rows);

  std::vector<v1::GetFisherResponse> messages;
  const grpc::Status status = GetFisher(name, true, false, &messages);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_GE(messages.size(), 2u);

  const v1::FisherSummary& summary = messages[0].summary();
  ASSERT_TRUE(messages[0].has_summary());
  EXPECT_EQ(messages[0].values_size(), 0);
  EXPECT_EQ(summary.dim(), static_cast<uint64_t>(kDim));
  EXPECT_EQ(summary.representation(), v1::REPRESENTATION_DENSE);
  EXPECT_FALSE(summary.centered());
  EXPECT_EQ(summary.sample_count(), static_cast<uint64_t>(kRows));
  EXPECT_EQ(summary.weight_sum(), kRows);
  EXPECT_NEAR(summary.trace(), expected.trace(), 1e-12 * expected.trace());
  EXPECT_NEAR(summary.frobenius_norm(), expected.norm(), 1e-12 * expected.norm());
  EXPECT_FALSE(summary.has_eigenvalues());

  Eigen::MatrixXd received = Eigen::MatrixXd::Constant(kDim, kDim, -1e300);
  uint64_t next_row = 0;
  for (size_t k = 1; k < messages.size(); ++k) {
    const v1::GetFisherResponse& m = messages[k];
    EXPECT_FALSE(m.has_summary());
    EXPECT_EQ(m.row_offset(), next_row);  // consecutive blocks, no gaps or overlaps
    EXPECT_GE(m.row_count(), 1u);
    ASSERT_EQ(m.values_size(), static_cast<int>(m.row_count()) * kDim);
    EXPECT_LE(m.ByteSizeLong(), size_t{(1 << 20) + 4096});  // ~1 MiB blocks
    for (uint32_t r = 0; r < m.row_count(); ++r)
      for (int j = 0; j < kDim; ++j) received(m.row_offset() + r, j) = m.values(r * kDim + j);
    next_row += m.row_count();
  }
  EXPECT_EQ(next_row, static_cast<uint64_t>(kDim));
  EXPECT_EQ((received - expected).cwiseAbs().maxCoeff(), 0.0);
}

TEST_F(ServiceTest, GetFisherSummaryOnlyWithEigenvalues) {
  const std::string name = MustCreate("small", DenseConfig(3));
  // Rows 2 e1, 4 e2, 6 e3 and a zero row: F = diag(4, 16, 36) / 4 = diag(1, 4, 9).
  RowMatrixF rows = RowMatrixF::Zero(4, 3);
  rows(0, 0) = 2;
  rows(1, 1) = 4;
  rows(2, 2) = 6;
  ASSERT_TRUE(AddScores(MakeBatch(name, "w", 1, rows)).ok());

  std::vector<v1::GetFisherResponse> messages;
  ASSERT_TRUE(
      GetFisher(name, /*include_matrix=*/false, /*include_eigenvalues=*/true, &messages).ok());
  ASSERT_EQ(messages.size(), 1u);
  const v1::FisherSummary& summary = messages[0].summary();
  EXPECT_EQ(summary.trace(), 14.0);
  EXPECT_TRUE(summary.has_eigenvalues());
  EXPECT_NEAR(summary.min_eigenvalue(), 1.0, 1e-12);
  EXPECT_NEAR(summary.max_eigenvalue(), 9.0, 1e-12);
  EXPECT_NEAR(summary.condition_number(), 9.0, 1e-11);
}

TEST_F(ServiceTest, GetFisherDiagonalStreamsTheDiagonal) {
  v1::SessionConfig config;
  config.set_dim(5);
  config.set_representation(v1::REPRESENTATION_DIAGONAL);
  const std::string name = MustCreate("diag", config);
  RowMatrixF rows(2, 5);
  rows << 1, 2, 3, 4, 5, 1, 0, -1, 2, 1;
  ASSERT_TRUE(AddScores(MakeBatch(name, "w", 1, rows)).ok());

  std::vector<v1::GetFisherResponse> messages;
  ASSERT_TRUE(GetFisher(name, true, false, &messages).ok());
  ASSERT_EQ(messages.size(), 2u);
  EXPECT_EQ(messages[0].summary().representation(), v1::REPRESENTATION_DIAGONAL);
  EXPECT_EQ(messages[1].row_offset(), 0u);
  EXPECT_EQ(messages[1].row_count(), 5u);
  EXPECT_THAT(messages[1].values(), ::testing::ElementsAre(1.0, 2.0, 5.0, 10.0, 13.0));
}

// Dense dim 4096 (128 MiB) streams under default limits, and a batch merged while the
// rows are on their way changes none of them: every row is of the estimate the summary
// describes. 128 MiB is far more than gRPC's flow-control windows hold, so the server is
// certainly still streaming when the batch lands. (The old stream ended with ABORTED.)
TEST_F(ServiceTest, GetFisherStreamsOneEstimateWhileScoresArrive) {
  constexpr int kDim = 4096;
  const std::string name = MustCreate("huge", DenseConfig(kDim));
  ASSERT_TRUE(AddScores(MakeBatch(name, "w", 1, RowMatrixF::Ones(2, kDim))).ok());  // F = 1

  v1::GetFisherRequest request;
  request.set_session(name);
  request.set_include_matrix(true);
  grpc::ClientContext context;
  auto reader = stub_->GetFisher(&context, request);
  v1::GetFisherResponse response;
  ASSERT_TRUE(reader->Read(&response));  // summary
  EXPECT_EQ(response.summary().sample_count(), 2u);
  EXPECT_EQ(response.summary().trace(), kDim);
  ASSERT_TRUE(reader->Read(&response));  // first block
  EXPECT_EQ(response.row_offset(), 0u);
  EXPECT_EQ(response.row_count(), 32u);  // 1 MiB / (4096 * 8 bytes)
  // Rows of 3: F would become (2 * 1 + 2 * 9) / 4 = 5 everywhere.
  ASSERT_TRUE(AddScores(MakeBatch(name, "w", 2, RowMatrixF::Constant(2, kDim, 3.0f))).ok());
  uint64_t rows_seen = response.row_count();
  double min_entry = 1.0, max_entry = 1.0;
  while (reader->Read(&response)) {
    rows_seen += response.row_count();
    for (double v : response.values()) {
      min_entry = std::min(min_entry, v);
      max_entry = std::max(max_entry, v);
    }
  }
  const grpc::Status status = reader->Finish();
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(rows_seen, static_cast<uint64_t>(kDim));
  EXPECT_EQ(min_entry, 1.0);  // products of 1s summed and divided exactly
  EXPECT_EQ(max_entry, 1.0);

  // The next reading sees the new batch.
  std::vector<v1::GetFisherResponse> messages;
  ASSERT_TRUE(GetFisher(name, false, false, &messages).ok());
  EXPECT_EQ(messages[0].summary().sample_count(), 4u);
  EXPECT_EQ(messages[0].summary().trace(), 5.0 * kDim);
}

// A summary's counts and its numbers describe one state even while a worker streams:
// batch k holds the single row k e_1, so after n batches trace(F) = sum k^2 / n =
// (n + 1)(2n + 1) / 6 for the n the same summary reports. The old handler read the counts
// and the trace under two holds of the lock, so a batch in between broke the identity.
// Sums of squared integers are exact in float64; 1e-12 covers the one division.
TEST_F(ServiceTest, GetFisherSummaryCountsMatchItsNumbersDuringIngestion) {
  constexpr int kBatches = 400;
  const std::string name = MustCreate("polled", DenseConfig(2));
  ASSERT_TRUE(AddScores(MakeBatch(name, "w", 1, RowMatrixF{{1.0f, 0.0f}})).ok());
  std::atomic<bool> done{false};
  std::thread worker([&] {
    for (int k = 2; k <= kBatches; ++k) {
      RowMatrixF row(1, 2);
      row << static_cast<float>(k), 0.0f;
      EXPECT_TRUE(AddScores(MakeBatch(name, "w", k, row)).ok());
    }
    done = true;
  });
  int polls = 0;
  while (!done || polls == 0) {
    std::vector<v1::GetFisherResponse> messages;
    const grpc::Status status = GetFisher(name, false, false, &messages);
    ASSERT_TRUE(status.ok()) << status.error_message();
    const v1::FisherSummary& summary = messages[0].summary();
    const double n = static_cast<double>(summary.sample_count());
    EXPECT_EQ(summary.weight_sum(), n);
    EXPECT_NEAR(summary.trace(), (n + 1) * (2 * n + 1) / 6, 1e-12 * n * n)
        << "sample_count " << summary.sample_count() << " after " << polls << " polls";
    ++polls;
  }
  worker.join();
}

// The copy a matrix stream holds is working memory under --memory-budget-mb: when it
// does not fit, the call says so and changes nothing; the summary alone still works.
TEST_F(ServiceTest, GetFisherCopyCountsAgainstTheMemoryBudget) {
  constexpr int kDim = 2048;  // F is 32 MiB
  v1::SessionConfig config = DenseConfig(kDim);
  server::ServerOptions options = TestServerOptions();
  SessionOptions session_options;
  session_options.dim = kDim;
  options.limits.memory_budget_bytes = EstimateSessionBytes(session_options) + (16u << 20);
  StartServer(options);
  const std::string name = MustCreate("tight", config);
  ASSERT_TRUE(AddScores(MakeBatch(name, "w", 1, RowMatrixF::Ones(1, kDim))).ok());

  std::vector<v1::GetFisherResponse> messages;
  grpc::Status status = GetFisher(name, true, false, &messages);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(status.error_message(), HasSubstr("GetFisher"));
  EXPECT_THAT(status.error_message(), HasSubstr("memory-budget-mb"));
  messages.clear();
  status = GetFisher(name, false, false, &messages);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(messages[0].summary().trace(), kDim);
}

TEST_F(ServiceTest, GetFisherSurvivesAClientThatLeaves) {
  constexpr int kDim = 2048;
  const std::string name = MustCreate("s", DenseConfig(kDim));
  ASSERT_TRUE(AddScores(MakeBatch(name, "w", 1, RowMatrixF::Ones(1, kDim))).ok());
  {
    v1::GetFisherRequest request;
    request.set_session(name);
    request.set_include_matrix(true);
    grpc::ClientContext context;
    auto reader = stub_->GetFisher(&context, request);
    v1::GetFisherResponse response;
    ASSERT_TRUE(reader->Read(&response));
    context.TryCancel();
    while (reader->Read(&response)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  // The server is unharmed and the session still answers in full.
  std::vector<v1::GetFisherResponse> messages;
  ASSERT_TRUE(GetFisher(name, true, false, &messages).ok());
  EXPECT_EQ(messages.size(), 1u + kDim / 64);
}

// With --max-message-mb=1 a 1 MiB block plus its header would exceed the server's own
// send limit; blocks shrink to half the limit instead.
TEST_F(ServiceTest, GetFisherBlocksRespectTheServerMessageLimit) {
  server::ServerOptions options = TestServerOptions();
  options.max_message_bytes = 1 << 20;
  StartServer(options);
  constexpr int kDim = 1024;  // 8 MiB of F
  const std::string name = MustCreate("s", DenseConfig(kDim));
  ASSERT_TRUE(AddScores(MakeBatch(name, "w", 1, RowMatrixF::Ones(2, kDim))).ok());
  std::vector<v1::GetFisherResponse> messages;
  const grpc::Status status = GetFisher(name, true, false, &messages);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(messages.size(), 1u + kDim / 64);  // 64 rows = 512 KiB per block
  uint64_t rows = 0;
  for (size_t k = 1; k < messages.size(); ++k) {
    EXPECT_LT(messages[k].ByteSizeLong(), size_t{1} << 20);
    rows += messages[k].row_count();
  }
  EXPECT_EQ(rows, static_cast<uint64_t>(kDim));
}

TEST_F(ServiceTest, GetFisherErrors) {
  const std::string name = MustCreate("empty", DenseConfig(3));
  std::vector<v1::GetFisherResponse> messages;
  grpc::Status status = GetFisher(name, true, false, &messages);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_FALSE(status.error_message().empty());

  status = GetFisher("sessions/missing", true, false, &messages);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(status.error_message(), HasSubstr("sessions/missing"));
  EXPECT_TRUE(messages.empty());
}

}  // namespace
}  // namespace fisherd::testing
