// AddScores: the happy paths through both score encodings, every bad batch of
// docs/design.md section 4 (each refused whole, naming field, worker and sequence, with the
// session unchanged), and duplicate sequences.
#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "tests/service/test_server.h"

namespace fisherd::testing {
namespace {

using ::testing::HasSubstr;

RowMatrixF Rows(int rows, int dim, float start) {
  RowMatrixF m(rows, dim);
  for (int i = 0; i < rows; ++i)
    for (int j = 0; j < dim; ++j) m(i, j) = start + 0.5f * static_cast<float>(i * dim + j);
  return m;
}

TEST_F(ServiceTest, AddScoresFromBytes) {
  const std::string name = MustCreate("s", DenseConfig(3));
  const RowMatrixF rows = Rows(2, 3, -1.0f);
  v1::ScoreAck ack;
  ASSERT_TRUE(AddScores(MakeBatch(name, "w1", 7, rows), &ack).ok());
  EXPECT_EQ(ack.worker_id(), "w1");
  EXPECT_EQ(ack.sequence(), 7u);
  EXPECT_FALSE(ack.duplicate());
  EXPECT_EQ(ack.sample_count(), 2u);

  const v1::SessionStats stats = MustGetStats(name);
  EXPECT_EQ(stats.sample_count(), 2u);
  EXPECT_EQ(stats.weight_sum(), 2.0);
  ASSERT_EQ(stats.worker_sequences().count("w1"), 1u);
  EXPECT_EQ(stats.worker_sequences().at("w1"), 7u);

  grpc::Status status;
  const Eigen::MatrixXd f = ReadDenseFisher(name, 3, &status);
  ASSERT_TRUE(status.ok()) << status.error_message();
  // Small multiples of 0.5: every product and sum is exact in double.
  EXPECT_EQ((f - ReferenceFisher(rows)).cwiseAbs().maxCoeff(), 0.0);
}

TEST_F(ServiceTest, AddScoresFromRepeatedFloatsWithWeights) {
  const std::string name = MustCreate("s", DenseConfig(3));
  const RowMatrixF rows = Rows(2, 3, 0.25f);
  const std::vector<float> weights = {0.5f, 2.0f};
  v1::ScoreAck ack;
  ASSERT_TRUE(AddScores(MakeBatch(name, "w1", 1, rows, weights, /*as_bytes=*/false), &ack).ok());
  EXPECT_EQ(ack.sample_count(), 2u);
  EXPECT_EQ(MustGetStats(name).weight_sum(), 2.5);

  grpc::Status status;
  const Eigen::MatrixXd f = ReadDenseFisher(name, 3, &status);
  ASSERT_TRUE(status.ok()) << status.error_message();
  // Weighted rows are sqrt(w) s in the core, so allow round-off here.
  const Eigen::MatrixXd expected = ReferenceFisher(rows, weights);
  EXPECT_LE((f - expected).cwiseAbs().maxCoeff(), 1e-14 * expected.cwiseAbs().maxCoeff());
}

TEST_F(ServiceTest, EveryBadBatchIsRefusedWholeAndNamesItsField) {
  constexpr int kDim = 3;
  const std::string name = MustCreate("s", DenseConfig(kDim));
  // One good batch first, so "unchanged" is checked against non-trivial state.
  ASSERT_TRUE(AddScores(MakeBatch(name, "w1", 5, Rows(2, kDim, 1.0f))).ok());
  const v1::SessionStats before = MustGetStats(name);

  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  struct Case {
    const char* what;
    std::function<void(v1::ScoreBatch*)> mutate;
    grpc::StatusCode code;
    std::vector<std::string> mentions;
  };
  const std::vector<Case> cases = {
      {"scores_f32 one float short",
       [](v1::ScoreBatch* b) { b->mutable_scores_f32()->resize(b->scores_f32().size() - 4); },
       grpc::StatusCode::INVALID_ARGUMENT,
       {"scores_f32", "20 bytes", "expected rows*dim*4 = 24"}},
      {"scores_f32 with an odd byte count",
       [](v1::ScoreBatch* b) { b->mutable_scores_f32()->push_back('\0'); },
       grpc::StatusCode::INVALID_ARGUMENT,
       {"scores_f32", "25 bytes"}},
      {"dim mismatch: rows of dim 4 sent to a dim-3 session",
       [](v1::ScoreBatch* b) {
         const RowMatrixF wide = Rows(2, kDim + 1, 1.0f);
         b->set_scores_f32(ToLittleEndianBytes(wide.data(), wide.size()));
       },
       grpc::StatusCode::INVALID_ARGUMENT,
       {"scores_f32", "session dim 3"}},
      {"repeated scores of the wrong count",
       [](v1::ScoreBatch* b) {
         b->clear_scores_f32();
         for (int k = 0; k < 5; ++k) b->add_scores(1.0f);
       },
       grpc::StatusCode::INVALID_ARGUMENT,
       {"scores has 5 values", "rows*dim = 6"}},
      {"NaN score",
       [nan](v1::ScoreBatch* b) {
         RowMatrixF r = Rows(2, kDim, 1.0f);
         r(1, 2) = nan;
         b->set_scores_f32(ToLittleEndianBytes(r.data(), r.size()));
       },
       grpc::StatusCode::INVALID_ARGUMENT,
       {"scores", "NaN", "row 1", "column 2"}},
      {"infinite score (repeated field)",
       [inf](v1::ScoreBatch* b) {
         b->clear_scores_f32();
         for (int k = 0; k < 6; ++k) b->add_scores(k == 4 ? -inf : 1.0f);
       },
       grpc::StatusCode::INVALID_ARGUMENT,
       {"scores", "infinite"}},
      {"negative weight",
       [](v1::ScoreBatch* b) {
         b->add_weights(1.0f);
         b->add_weights(-0.5f);
       },
       grpc::StatusCode::INVALID_ARGUMENT,
       {"weights[1]"}},
      {"NaN weight",
       [nan](v1::ScoreBatch* b) {
         b->add_weights(nan);
         b->add_weights(1.0f);
       },
       grpc::StatusCode::INVALID_ARGUMENT,
       {"weights[0]"}},
      {"weights count neither 0 nor rows",
       [](v1::ScoreBatch* b) { b->add_weights(1.0f); },
       grpc::StatusCode::INVALID_ARGUMENT,
       {"weights has 1 values"}},
      {"zero rows",
       [](v1::ScoreBatch* b) { b->set_rows(0); },
       grpc::StatusCode::INVALID_ARGUMENT,
       {"rows"}},
      {"both score fields",
       [](v1::ScoreBatch* b) {
         for (int k = 0; k < 6; ++k) b->add_scores(1.0f);
       },
       grpc::StatusCode::INVALID_ARGUMENT,
       {"scores_f32", "scores", "both"}},
      {"neither score field",
       [](v1::ScoreBatch* b) { b->clear_scores_f32(); },
       grpc::StatusCode::INVALID_ARGUMENT,
       {"scores_f32", "scores", "neither"}},
      {"unknown session",
       [](v1::ScoreBatch* b) { b->set_session("sessions/nope"); },
       grpc::StatusCode::NOT_FOUND,
       {"sessions/nope"}},
      {"malformed session name",
       [](v1::ScoreBatch* b) { b->set_session("nope"); },
       grpc::StatusCode::INVALID_ARGUMENT,
       {"session", "nope"}},
  };

  uint64_t sequence = 100;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    v1::ScoreBatch batch = MakeBatch(name, "w1", ++sequence, Rows(2, kDim, 2.0f));
    c.mutate(&batch);
    const grpc::Status status = AddScores(batch);
    EXPECT_EQ(status.error_code(), c.code) << status.error_message();
    // Every message says which batch it was.
    EXPECT_THAT(status.error_message(),
                HasSubstr("worker \"w1\", sequence " + std::to_string(sequence)));
    for (const std::string& mention : c.mentions) {
      EXPECT_THAT(status.error_message(), HasSubstr(mention));
    }
    const v1::SessionStats after = MustGetStats(name);
    EXPECT_EQ(after.sample_count(), before.sample_count());
    EXPECT_EQ(after.weight_sum(), before.weight_sum());
    EXPECT_EQ(after.worker_sequences().at("w1"), 5u);
  }
}

TEST_F(ServiceTest, DuplicateSequenceIsAckedAndCountedOnce) {
  const std::string name = MustCreate("s", DenseConfig(2));
  const RowMatrixF rows = Rows(3, 2, 1.0f);
  v1::ScoreAck ack;
  ASSERT_TRUE(AddScores(MakeBatch(name, "w", 5, rows), &ack).ok());
  EXPECT_FALSE(ack.duplicate());
  EXPECT_EQ(ack.sample_count(), 3u);

  // A resend of 5, and an older 3: acknowledged, not counted.
  for (uint64_t sequence : {5u, 3u}) {
    ASSERT_TRUE(AddScores(MakeBatch(name, "w", sequence, rows), &ack).ok());
    EXPECT_TRUE(ack.duplicate()) << sequence;
    EXPECT_EQ(ack.sequence(), 5u);
    EXPECT_EQ(ack.sample_count(), 3u);
  }
  // A gap is fine.
  ASSERT_TRUE(AddScores(MakeBatch(name, "w", 9, rows), &ack).ok());
  EXPECT_FALSE(ack.duplicate());
  EXPECT_EQ(ack.sequence(), 9u);
  EXPECT_EQ(ack.sample_count(), 6u);
  // Another worker has its own sequence space.
  ASSERT_TRUE(AddScores(MakeBatch(name, "other", 1, rows), &ack).ok());
  EXPECT_FALSE(ack.duplicate());
  EXPECT_EQ(ack.sample_count(), 9u);

  const v1::SessionStats stats = MustGetStats(name);
  EXPECT_EQ(stats.sample_count(), 9u);
  EXPECT_EQ(stats.weight_sum(), 9.0);
  EXPECT_EQ(stats.worker_sequences().at("w"), 9u);
  EXPECT_EQ(stats.worker_sequences().at("other"), 1u);
}

TEST_F(ServiceTest, AnonymousBatchesAreNeverDeduplicated) {
  const std::string name = MustCreate("s", DenseConfig(2));
  v1::ScoreAck ack;
  for (int k = 0; k < 2; ++k) {
    ASSERT_TRUE(AddScores(MakeBatch(name, "", 0, Rows(1, 2, 1.0f)), &ack).ok());
    EXPECT_FALSE(ack.duplicate());
  }
  EXPECT_EQ(ack.sample_count(), 2u);
}

}  // namespace
}  // namespace fisherd::testing
