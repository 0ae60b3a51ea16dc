// StreamScores: ordered acks, a rejected batch ending the stream with the earlier
// batches kept, per-batch session lookup, and many concurrent streams into one session.
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "tests/service/test_server.h"

namespace fisherd::testing {
namespace {

using ::testing::HasSubstr;

RowMatrixF RandomRows(int rows, int dim, std::mt19937_64& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  RowMatrixF m(rows, dim);
  for (int i = 0; i < rows; ++i)
    for (int j = 0; j < dim; ++j) m(i, j) = normal(rng);
  return m;
}

TEST_F(ServiceTest, StreamAcksEveryBatchInOrder) {
  const std::string name = MustCreate("s", DenseConfig(4));
  std::mt19937_64 rng(1);
  std::vector<v1::ScoreBatch> batches;
  for (uint64_t sequence = 1; sequence <= 6; ++sequence) {
    batches.push_back(MakeBatch(name, "w", sequence, RandomRows(3, 4, rng), {}, sequence % 2));
  }
  std::vector<v1::ScoreAck> acks;
  const grpc::Status status = StreamBatches(batches, &acks);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(acks.size(), 6u);
  for (size_t k = 0; k < acks.size(); ++k) {
    EXPECT_EQ(acks[k].worker_id(), "w");
    EXPECT_EQ(acks[k].sequence(), k + 1);
    EXPECT_FALSE(acks[k].duplicate());
    EXPECT_EQ(acks[k].sample_count(), 3 * (k + 1));
  }
}

TEST_F(ServiceTest, RejectedBatchEndsStreamAndKeepsEarlierBatches) {
  const std::string name = MustCreate("s", DenseConfig(4));
  std::mt19937_64 rng(2);
  std::vector<v1::ScoreBatch> batches;
  RowMatrixF applied = RowMatrixF::Zero(0, 4);
  for (uint64_t sequence = 1; sequence <= 3; ++sequence) {
    const RowMatrixF rows = RandomRows(2, 4, rng);
    RowMatrixF grown(applied.rows() + rows.rows(), 4);
    grown << applied, rows;
    applied = grown;
    batches.push_back(MakeBatch(name, "w", sequence, rows));
  }
  v1::ScoreBatch bad = MakeBatch(name, "w", 4, RandomRows(2, 4, rng));
  bad.mutable_scores_f32()->resize(bad.scores_f32().size() - 1);
  batches.push_back(bad);
  // Valid, but after the rejected one: must never be read.
  batches.push_back(MakeBatch(name, "w", 5, RandomRows(2, 4, rng)));

  std::vector<v1::ScoreAck> acks;
  const grpc::Status status = StreamBatches(batches, &acks);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("scores_f32"));
  EXPECT_THAT(status.error_message(), HasSubstr("worker \"w\", sequence 4"));
  ASSERT_EQ(acks.size(), 3u);
  EXPECT_EQ(acks.back().sequence(), 3u);
  EXPECT_EQ(acks.back().sample_count(), 6u);

  const v1::SessionStats stats = MustGetStats(name);
  EXPECT_EQ(stats.sample_count(), 6u);
  EXPECT_EQ(stats.worker_sequences().at("w"), 3u);
  grpc::Status read;
  const Eigen::MatrixXd f = ReadDenseFisher(name, 4, &read);
  ASSERT_TRUE(read.ok());
  const Eigen::MatrixXd expected = ReferenceFisher(applied);
  EXPECT_LE((f - expected).cwiseAbs().maxCoeff(), 1e-13 * expected.cwiseAbs().maxCoeff());
}

TEST_F(ServiceTest, UnknownSessionMidStreamIsNotFound) {
  const std::string name = MustCreate("s", DenseConfig(2));
  std::mt19937_64 rng(3);
  std::vector<v1::ScoreBatch> batches = {MakeBatch(name, "w", 1, RandomRows(1, 2, rng)),
                                         MakeBatch("sessions/gone", "w", 2, RandomRows(1, 2, rng))};
  std::vector<v1::ScoreAck> acks;
  const grpc::Status status = StreamBatches(batches, &acks);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(status.error_message(), HasSubstr("sessions/gone"));
  EXPECT_EQ(acks.size(), 1u);
  EXPECT_EQ(MustGetStats(name).sample_count(), 1u);
}

TEST_F(ServiceTest, OneStreamMayFeedSeveralSessions) {
  const std::string a = MustCreate("a", DenseConfig(2));
  v1::SessionConfig diagonal;
  diagonal.set_dim(5);
  diagonal.set_representation(v1::REPRESENTATION_DIAGONAL);
  const std::string b = MustCreate("b", diagonal);
  std::mt19937_64 rng(4);
  std::vector<v1::ScoreBatch> batches = {MakeBatch(a, "w", 1, RandomRows(2, 2, rng)),
                                         MakeBatch(b, "w", 1, RandomRows(3, 5, rng)),
                                         MakeBatch(a, "w", 2, RandomRows(4, 2, rng))};
  std::vector<v1::ScoreAck> acks;
  ASSERT_TRUE(StreamBatches(batches, &acks).ok());
  ASSERT_EQ(acks.size(), 3u);
  EXPECT_EQ(acks[0].sample_count(), 2u);
  EXPECT_EQ(acks[1].sample_count(), 3u);
  EXPECT_EQ(acks[2].sample_count(), 6u);
  EXPECT_EQ(MustGetStats(a).sample_count(), 6u);
  EXPECT_EQ(MustGetStats(b).sample_count(), 3u);
}

// 16 workers stream concurrently into one session; the estimate must equal that of
// the same batches sent one after another (a second session, fed serially) and the
// float64 reference computed here.
//
// Why "within round-off" and not bit-equal: each score product s_i s_j of two float32
// values is exact in float64 (24 + 24 significant bits <= 53), so the sessions differ
// only in the order in which the same exact terms are added. With N = 2048 rows that
// reorders sums of N terms whose magnitudes are bounded by the diagonal entries, so
// |difference| <= N * eps * max|F| ~ 2048 * 1.1e-16 * max|F| ~ 2.3e-13 max|F|;
// 1e-12 max|F| leaves headroom and still catches a lost or doubled batch (>= 1/N).
TEST_F(ServiceTest, ConcurrentStreamsEqualSerialResult) {
  constexpr int kWorkers = 16, kBatches = 8, kRows = 16, kDim = 48;
  const std::string concurrent = MustCreate("concurrent", DenseConfig(kDim));
  const std::string serial = MustCreate("serial", DenseConfig(kDim));

  std::vector<std::vector<v1::ScoreBatch>> per_worker(kWorkers);
  RowMatrixF all(kWorkers * kBatches * kRows, kDim);
  int next = 0;
  for (int w = 0; w < kWorkers; ++w) {
    std::mt19937_64 rng(100 + w);
    for (int b = 0; b < kBatches; ++b) {
      const RowMatrixF rows = RandomRows(kRows, kDim, rng);
      all.middleRows(next, kRows) = rows;
      next += kRows;
      per_worker[w].push_back(MakeBatch(concurrent, "worker-" + std::to_string(w), b + 1, rows));
    }
  }

  std::vector<grpc::Status> statuses(kWorkers);
  std::vector<size_t> ack_counts(kWorkers);
  {
    std::vector<std::thread> threads;
    for (int w = 0; w < kWorkers; ++w) {
      threads.emplace_back([&, w] {
        // Each worker has its own stub call; all share the channel like real clients.
        std::vector<v1::ScoreAck> acks;
        statuses[w] = StreamBatches(per_worker[w], &acks);
        ack_counts[w] = acks.size();
      });
    }
    for (std::thread& t : threads) t.join();
  }
  for (int w = 0; w < kWorkers; ++w) {
    EXPECT_TRUE(statuses[w].ok()) << w << ": " << statuses[w].error_message();
    EXPECT_EQ(ack_counts[w], static_cast<size_t>(kBatches));
  }

  std::vector<v1::ScoreBatch> serial_batches;
  for (auto& batches : per_worker) {
    for (v1::ScoreBatch batch : batches) {
      batch.set_session(serial);
      serial_batches.push_back(batch);
    }
  }
  std::vector<v1::ScoreAck> acks;
  ASSERT_TRUE(StreamBatches(serial_batches, &acks).ok());

  const v1::SessionStats stats = MustGetStats(concurrent);
  EXPECT_EQ(stats.sample_count(), static_cast<uint64_t>(all.rows()));
  EXPECT_EQ(stats.worker_sequences().size(), static_cast<size_t>(kWorkers));

  grpc::Status status;
  const Eigen::MatrixXd f_concurrent = ReadDenseFisher(concurrent, kDim, &status);
  ASSERT_TRUE(status.ok()) << status.error_message();
  const Eigen::MatrixXd f_serial = ReadDenseFisher(serial, kDim, &status);
  ASSERT_TRUE(status.ok()) << status.error_message();
  const Eigen::MatrixXd reference = ReferenceFisher(all);
  const double tolerance = 1e-12 * reference.cwiseAbs().maxCoeff();
  EXPECT_LE((f_concurrent - f_serial).cwiseAbs().maxCoeff(), tolerance);
  EXPECT_LE((f_concurrent - reference).cwiseAbs().maxCoeff(), tolerance);
}

}  // namespace
}  // namespace fisherd::testing
