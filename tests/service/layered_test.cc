// Layered sessions through the service: the layout as the wire carries it (dim filled
// in, LAYERED echoed), batches routed by block and factor with errors that name the
// block and change nothing, limits naming the block, GetFisher of a block or factor,
// and StreamNaturalGradientStep (chunks up, chunks down) against the unary step.
#include <random>
#include <string>
#include <vector>

#include "Eigen/Cholesky"
#include "gmock/gmock.h"
#include "tests/service/test_server.h"

namespace fisherd::testing {
namespace {

using ::testing::HasSubstr;

// A dense and a solve of the same float64 statistics: both sides compute the same
// numbers in a different order, so they agree to round-off (~1e-14 at these sizes).
constexpr double kTolerance = 1e-10;

v1::BlockConfig Block(const std::string& name, v1::BlockKind kind, uint64_t dim) {
  v1::BlockConfig block;
  block.set_name(name);
  block.set_kind(kind);
  block.set_dim(dim);
  return block;
}

v1::BlockConfig Kronecker(const std::string& name, uint64_t in, uint64_t out, bool bias) {
  v1::BlockConfig block;
  block.set_name(name);
  block.set_kind(v1::BLOCK_KIND_KRONECKER);
  block.set_in_features(in);
  block.set_out_features(out);
  block.set_bias(bias);
  return block;
}

// dense 3 + kronecker 2 x (4 + 1) + diagonal 6 = 19 parameters.
v1::SessionConfig SmallLayout() {
  v1::SessionConfig config;
  *config.add_blocks() = Block("head", v1::BLOCK_KIND_DENSE, 3);
  *config.add_blocks() = Kronecker("fc", 4, 2, true);
  *config.add_blocks() = Block("norm", v1::BLOCK_KIND_DIAGONAL, 6);
  config.set_damping(0.1);
  return config;
}

RowMatrixF RandomRows(int rows, int width, std::mt19937_64& rng) {
  std::normal_distribution<float> normal;
  RowMatrixF out(rows, width);
  for (float& x : out.reshaped()) x = normal(rng);
  return out;
}

v1::ScoreBatch ForBlock(const std::string& session, uint64_t sequence, const std::string& block,
                        v1::Factor factor, const RowMatrixF& rows) {
  v1::ScoreBatch batch = MakeBatch(session, "w", sequence, rows);
  batch.set_block(block);
  batch.set_factor(factor);
  return batch;
}

class LayeredServiceTest : public ServiceTest {
 protected:
  std::string CreateFilled(const std::string& id) {
    const std::string name = MustCreate(id, SmallLayout());
    std::mt19937_64 rng(3);
    std::vector<v1::ScoreBatch> batches = {
        ForBlock(name, 1, "head", v1::FACTOR_UNSPECIFIED, RandomRows(8, 3, rng)),
        ForBlock(name, 2, "fc", v1::FACTOR_ACTIVATIONS, RandomRows(10, 4, rng)),
        ForBlock(name, 3, "fc", v1::FACTOR_OUTPUT_GRADIENTS, RandomRows(5, 2, rng)),
        ForBlock(name, 4, "norm", v1::FACTOR_UNSPECIFIED, RandomRows(7, 6, rng))};
    std::vector<v1::ScoreAck> acks;
    EXPECT_TRUE(StreamBatches(batches, &acks).ok());
    EXPECT_EQ(acks.size(), 4u);
    return name;
  }

  grpc::Status UnaryStep(const std::string& name, const Eigen::VectorXd& g,
                         v1::NaturalGradientStepResponse* response) {
    v1::NaturalGradientStepRequest request;
    request.set_session(name);
    request.mutable_gradient()->Assign(g.data(), g.data() + g.size());
    request.set_skip_decay(true);
    grpc::ClientContext context;
    return stub_->NaturalGradientStep(&context, request, response);
  }

  // Sends `chunks` (the first with the header) and collects the answer's messages.
  grpc::Status StreamStep(const std::vector<v1::StreamNaturalGradientStepRequest>& chunks,
                          std::vector<v1::StreamNaturalGradientStepResponse>* answer) {
    grpc::ClientContext context;
    auto stream = stub_->StreamNaturalGradientStep(&context);
    for (const auto& chunk : chunks) {
      if (!stream->Write(chunk)) break;
    }
    stream->WritesDone();
    v1::StreamNaturalGradientStepResponse message;
    while (stream->Read(&message)) answer->push_back(message);
    return stream->Finish();
  }

  static std::vector<v1::StreamNaturalGradientStepRequest> Chunks(const std::string& name,
                                                                  const Eigen::VectorXd& g,
                                                                  int per_chunk) {
    std::vector<v1::StreamNaturalGradientStepRequest> chunks;
    for (int offset = 0; offset < g.size(); offset += per_chunk) {
      v1::StreamNaturalGradientStepRequest chunk;
      if (offset == 0) {
        chunk.mutable_header()->set_session(name);
        chunk.mutable_header()->set_skip_decay(true);
      }
      chunk.set_offset(offset);
      const int end = std::min<int>(g.size(), offset + per_chunk);
      chunk.mutable_gradient()->Assign(g.data() + offset, g.data() + end);
      chunks.push_back(chunk);
    }
    return chunks;
  }
};

TEST_F(LayeredServiceTest, CreateFillsInDimAndEchoesTheLayout) {
  v1::Session session;
  ASSERT_TRUE(CreateSession("net", SmallLayout(), &session).ok());
  EXPECT_EQ(session.config().dim(), 19u);
  EXPECT_EQ(session.config().representation(), v1::REPRESENTATION_LAYERED);
  ASSERT_EQ(session.config().blocks_size(), 3);
  EXPECT_EQ(session.config().blocks(1).name(), "fc");
  EXPECT_TRUE(session.config().blocks(1).bias());
  EXPECT_EQ(session.config().kronecker_damping(), v1::KRONECKER_DAMPING_EXACT);
  EXPECT_EQ(session.config().factor_refresh_period(), 1u);

  const v1::SessionStats stats = MustGetStats(CreateFilled("filled"));
  ASSERT_EQ(stats.blocks_size(), 3);
  EXPECT_EQ(stats.blocks(1).sample_count(), 10u);
  EXPECT_EQ(stats.blocks(1).output_gradient_sample_count(), 5u);
  EXPECT_EQ(stats.sample_count(), 8u + 10u + 5u + 7u);
}

TEST_F(LayeredServiceTest, BadLayoutsAreRefusedNamingTheBlock) {
  v1::SessionConfig config = SmallLayout();
  config.set_dim(20);
  grpc::Status status = CreateSession("a", config);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("blocks hold 19"));

  config = SmallLayout();
  config.set_representation(v1::REPRESENTATION_DIAGONAL);
  EXPECT_EQ(CreateSession("b", config).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  config = SmallLayout();
  config.mutable_blocks(2)->set_kind(static_cast<v1::BlockKind>(9));
  status = CreateSession("c", config);
  EXPECT_THAT(status.error_message(), HasSubstr("blocks[2] \"norm\""));

  config = SmallLayout();
  config.set_centered(true);
  status = CreateSession("d", config);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("\"fc\""));

  // The test server's --max-dense-dim is 4096: a factor of 5000 rows is refused.
  config = SmallLayout();
  *config.add_blocks() = Kronecker("features.0", 5000, 16, false);
  status = CreateSession("e", config);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(status.error_message(), HasSubstr("\"features.0\""));
  EXPECT_THAT(status.error_message(), HasSubstr("--max-dense-dim"));

  // The budget (1 GiB in tests): 40 dense blocks of 2048 need 1.25 GiB.
  config = SmallLayout();
  for (int i = 0; i < 40; ++i) {
    *config.add_blocks() = Block("layer" + std::to_string(i), v1::BLOCK_KIND_DENSE, 2048);
  }
  status = CreateSession("f", config);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(status.error_message(), HasSubstr("largest block"));

  v1::ListSessionsResponse list;
  grpc::ClientContext context;
  ASSERT_TRUE(stub_->ListSessions(&context, v1::ListSessionsRequest(), &list).ok());
  EXPECT_EQ(list.sessions_size(), 0);
}

TEST_F(LayeredServiceTest, BadBatchesNameTheBlockAndChangeNothing) {
  const std::string name = CreateFilled("net");
  const v1::SessionStats before = MustGetStats(name);
  std::mt19937_64 rng(5);
  struct Case {
    v1::ScoreBatch batch;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {ForBlock(name, 10, "nope", v1::FACTOR_UNSPECIFIED, RandomRows(2, 3, rng)),
       "block \"nope\" is not a block"},
      {ForBlock(name, 11, "fc", v1::FACTOR_UNSPECIFIED, RandomRows(2, 4, rng)),
       "set factor to FACTOR_ACTIVATIONS"},
      {ForBlock(name, 12, "head", v1::FACTOR_ACTIVATIONS, RandomRows(2, 3, rng)),
       "leave factor FACTOR_UNSPECIFIED"},
      {ForBlock(name, 13, "fc", v1::FACTOR_OUTPUT_GRADIENTS, RandomRows(2, 4, rng)),
       "block \"fc\" factor output_gradients row width 2"},
      {ForBlock(name, 14, "", v1::FACTOR_UNSPECIFIED, RandomRows(2, 3, rng)), "block is empty"},
  };
  for (const Case& c : cases) {
    const grpc::Status status = AddScores(c.batch);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.expected;
    EXPECT_THAT(status.error_message(), HasSubstr(c.expected));
    EXPECT_THAT(status.error_message(),
                HasSubstr("sequence " + std::to_string(c.batch.sequence())));
  }
  EXPECT_EQ(MustGetStats(name).DebugString(), before.DebugString());
}

TEST_F(LayeredServiceTest, GetFisherStreamsOneFactorOrBlock) {
  const std::string name = CreateFilled("net");
  v1::GetFisherRequest request;
  request.set_session(name);
  request.set_include_matrix(true);
  request.set_block("fc");
  request.set_factor(v1::FACTOR_ACTIVATIONS);
  grpc::ClientContext context;
  auto reader = stub_->GetFisher(&context, request);
  std::vector<v1::GetFisherResponse> messages;
  v1::GetFisherResponse message;
  while (reader->Read(&message)) messages.push_back(message);
  ASSERT_TRUE(reader->Finish().ok());
  ASSERT_GE(messages.size(), 2u);
  EXPECT_EQ(messages[0].summary().dim(), 5u);  // in_features + the bias's 1
  EXPECT_EQ(messages[0].summary().block(), "fc");
  EXPECT_EQ(messages[0].summary().block_kind(), v1::BLOCK_KIND_KRONECKER);
  // The appended 1 makes A's last diagonal entry exactly 1.
  EXPECT_DOUBLE_EQ(messages.back().values(messages.back().values_size() - 1), 1.0);

  // The whole layered F, and a whole Kronecker block, are never streamed.
  for (const std::string& block : {std::string(), std::string("fc")}) {
    request.set_block(block);
    request.set_factor(v1::FACTOR_UNSPECIFIED);
    grpc::ClientContext refused;
    auto r = stub_->GetFisher(&refused, request);
    while (r->Read(&message)) {
    }
    EXPECT_EQ(r->Finish().error_code(), grpc::StatusCode::INVALID_ARGUMENT) << block;
  }
}

TEST_F(LayeredServiceTest, StreamedStepEqualsTheUnaryStep) {
  const std::string name = CreateFilled("net");
  const Eigen::VectorXd g = Eigen::VectorXd::LinSpaced(19, -1.0, 2.0);
  v1::NaturalGradientStepResponse unary;
  ASSERT_TRUE(UnaryStep(name, g, &unary).ok());
  ASSERT_EQ(unary.solver().blocks_size(), 3);
  EXPECT_EQ(unary.solver().blocks(1).method(), "kronecker");

  std::vector<v1::StreamNaturalGradientStepResponse> answer;
  const grpc::Status status = StreamStep(Chunks(name, g, 4), &answer);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_GE(answer.size(), 4u);  // the header, then at least one chunk per block
  EXPECT_NEAR(answer[0].header().eta(), unary.eta(), 0.0);
  EXPECT_NEAR(answer[0].header().natural_norm_sq(), unary.natural_norm_sq(),
              kTolerance * unary.natural_norm_sq());
  std::vector<double> n;
  for (size_t k = 1; k < answer.size(); ++k) {
    EXPECT_EQ(answer[k].offset(), n.size());
    EXPECT_FALSE(answer[k].block().empty());
    n.insert(n.end(), answer[k].natural_gradient().begin(), answer[k].natural_gradient().end());
  }
  ASSERT_EQ(n.size(), 19u);
  for (int i = 0; i < 19; ++i) EXPECT_NEAR(n[i], unary.natural_gradient(i), kTolerance) << i;
  EXPECT_EQ(answer[1].block(), "head");
  EXPECT_EQ(answer.back().block(), "norm");
}

TEST_F(LayeredServiceTest, StreamedStepRefusesBrokenChunking) {
  const std::string name = CreateFilled("net");
  const Eigen::VectorXd g = Eigen::VectorXd::Ones(19);
  std::vector<v1::StreamNaturalGradientStepRequest> gap = Chunks(name, g, 5);
  gap.erase(gap.begin() + 1);
  std::vector<v1::StreamNaturalGradientStepResponse> answer;
  grpc::Status status = StreamStep(gap, &answer);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("chunk offset is 10"));

  std::vector<v1::StreamNaturalGradientStepRequest> short_one = Chunks(name, g, 5);
  short_one.pop_back();
  answer.clear();
  status = StreamStep(short_one, &answer);
  EXPECT_THAT(status.error_message(), HasSubstr("cover [0, 15)"));

  std::vector<v1::StreamNaturalGradientStepRequest> no_header = Chunks(name, g, 19);
  no_header[0].clear_header();
  answer.clear();
  EXPECT_EQ(StreamStep(no_header, &answer).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(MustGetStats(name).step_count(), 0u);
}

}  // namespace
}  // namespace fisherd::testing
