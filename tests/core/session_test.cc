// Session bookkeeping: idempotent sequences, counters, and concurrent writers.
#include "core/session.h"

#include <random>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "tests/core/test_util.h"

namespace fisherd {
namespace {

using testing::Prepare;
using testing::RowMatrixF;

SessionOptions Options(int64_t dim, Representation representation = Representation::kDense) {
  SessionOptions options;
  options.dim = dim;
  options.representation = representation;
  return options;
}

TEST(SessionTest, SequencesAtOrBelowTheLastAreDuplicates) {
  Session session(Options(2));
  const PreparedBatch batch = Prepare(RowMatrixF::Ones(3, 2), Representation::kDense);
  AddResult first = session.AddScores("w1", 5, batch);
  EXPECT_FALSE(first.duplicate);
  EXPECT_EQ(first.sequence, 5u);
  EXPECT_EQ(first.sample_count, 3u);

  for (uint64_t again : {5u, 4u, 1u}) {
    AddResult repeat = session.AddScores("w1", again, batch);
    EXPECT_TRUE(repeat.duplicate);
    EXPECT_EQ(repeat.sequence, 5u);
    EXPECT_EQ(repeat.sample_count, 3u);
  }
  // Another worker has its own sequence; gaps are allowed.
  EXPECT_FALSE(session.AddScores("w2", 1, batch).duplicate);
  EXPECT_FALSE(session.AddScores("w1", 9, batch).duplicate);
  // An anonymous worker is never deduplicated.
  EXPECT_FALSE(session.AddScores("", 0, batch).duplicate);
  EXPECT_FALSE(session.AddScores("", 0, batch).duplicate);

  const SessionStatsSnapshot stats = session.Stats();
  EXPECT_EQ(stats.sample_count, 15u);
  EXPECT_DOUBLE_EQ(stats.weight_sum, 15.0);
  EXPECT_EQ(stats.worker_sequences.at("w1"), 9u);
  EXPECT_EQ(stats.worker_sequences.at("w2"), 1u);
  EXPECT_EQ(stats.worker_sequences.count(""), 0u);
}

TEST(SessionTest, StepValidatesTheGradientAndCountsSteps) {
  Session session(Options(2));
  session.AddScores("", 0, Prepare(RowMatrixF::Identity(2, 2), Representation::kDense));
  EXPECT_EQ(session.Step(Eigen::VectorXd::Ones(3), {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(session.Step(Eigen::Vector2d(1, std::nan("")), {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  StepOptions bad;
  bad.kl_budget = -1;
  EXPECT_EQ(session.Step(Eigen::Vector2d(1, 1), bad).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(session.Stats().step_count, 0u);
  ASSERT_TRUE(session.Step(Eigen::Vector2d(1, 1), {}).ok());
  EXPECT_EQ(session.Stats().step_count, 1u);
}

// 16 writers into one session give the statistics of the serial stream. Sums in a
// different order differ by round-off only: 1e-12 relative is ~1e4 ulps, far below any
// real discrepancy (a lost or doubled batch changes F by about 1/64 here).
TEST(SessionTest, ConcurrentWritersEqualTheSerialResult) {
  const int dim = 24, workers = 16, batches = 20, rows = 32;
  std::vector<std::vector<RowMatrixF>> data(workers);
  std::mt19937_64 rng(59);
  std::normal_distribution<float> normal;
  for (auto& worker : data) {
    for (int b = 0; b < batches; ++b) {
      RowMatrixF batch(rows, dim);
      for (float& x : batch.reshaped()) x = normal(rng);
      worker.push_back(batch);
    }
  }
  for (Representation representation : {Representation::kDense, Representation::kDiagonal}) {
    Session serial(Options(dim, representation)), parallel(Options(dim, representation));
    for (int w = 0; w < workers; ++w) {
      for (int b = 0; b < batches; ++b) {
        serial.AddScores("w" + std::to_string(w), b + 1, Prepare(data[w][b], representation));
      }
    }
    std::vector<std::thread> threads;
    for (int w = 0; w < workers; ++w) {
      threads.emplace_back([&, w] {
        for (int b = 0; b < batches; ++b) {
          // Each batch twice: the resend must be a no-op.
          const PreparedBatch batch = Prepare(data[w][b], representation);
          parallel.AddScores("w" + std::to_string(w), b + 1, batch);
          parallel.AddScores("w" + std::to_string(w), b + 1, batch);
        }
      });
    }
    for (std::thread& t : threads) t.join();

    EXPECT_EQ(parallel.Stats().sample_count, serial.Stats().sample_count);
    const int64_t per_row = serial.EntriesPerRow();
    std::vector<double> a(dim * per_row), b(dim * per_row);
    ASSERT_TRUE(serial.CopyEntries(0, dim, a.data()).ok());
    ASSERT_TRUE(parallel.CopyEntries(0, dim, b.data()).ok());
    const Eigen::Map<Eigen::VectorXd> va(a.data(), a.size()), vb(b.data(), b.size());
    EXPECT_LT((va - vb).norm(), 1e-12 * va.norm());
  }
}

}  // namespace
}  // namespace fisherd
