// ShardedLayeredSession end to end: one layout spread over three real fisherd replicas
// against the same layout in one layered session on a fourth, fed the same rows.
//
// Tolerance: 1e-12 relative. Every block's solve runs the same float64 operations on
// the same statistics on both sides (a shard is an ordinary layered session), so the
// natural gradient is identical; only the sums that cross shards (g^T n and the
// predicted KL) are added in another order, a few ulps of difference.
#include "client/sharded_session.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "client/fisher_client.h"
#include "client/score_streamer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/e2e/process.h"

namespace fisherd::testing {
namespace {

using client::FisherClient;
using client::ScoreStreamer;
using client::ScoreStreamerOptions;
using client::ShardedLayeredSession;
using client::StepParams;
using ::testing::HasSubstr;

constexpr double kRelative = 1e-12;

v1::BlockConfig Kronecker(const std::string& name, int in, int out, bool bias) {
  v1::BlockConfig block;
  block.set_name(name);
  block.set_kind(v1::BLOCK_KIND_KRONECKER);
  block.set_in_features(in);
  block.set_out_features(out);
  block.set_bias(bias);
  return block;
}

v1::BlockConfig Sized(const std::string& name, v1::BlockKind kind, int dim, int max_rows = 0) {
  v1::BlockConfig block;
  block.set_name(name);
  block.set_kind(kind);
  block.set_dim(dim);
  block.set_max_rows(max_rows);
  return block;
}

// Costs, worked by hand (a includes the bias column):
//   conv1 kronecker 27x16+bias  28^3 + 16^3 = 26048
//   fc1   kronecker 20x12        20^3 + 12^3 =  9728
//   fc2   kronecker 12x30+bias  13^3 + 30^3 = 29197
//   bn    diagonal 16                           16
//   head  dense 10              10^3         =  1000
//   emb   low_rank 40, 4 rows   40 * 4^2     =   640
// Largest first: fc2 -> shard 0, conv1 -> 1, fc1 -> 2 (totals 29197, 26048, 9728), then
// head, emb and bn each to the smallest total, shard 2.
std::vector<v1::BlockConfig> Layout() {
  return {Kronecker("conv1", 27, 16, true),        Kronecker("fc1", 20, 12, false),
          Kronecker("fc2", 12, 30, true),          Sized("bn", v1::BLOCK_KIND_DIAGONAL, 16),
          Sized("head", v1::BLOCK_KIND_DENSE, 10), Sized("emb", v1::BLOCK_KIND_LOW_RANK, 40, 4)};
}
const std::vector<int> kExpectedShards = {1, 2, 0, 2, 2, 2};

v1::SessionConfig Config() {
  v1::SessionConfig config;
  config.set_representation(v1::REPRESENTATION_LAYERED);
  config.set_damping(0.05);
  config.set_decay(0.9);
  for (const v1::BlockConfig& block : Layout()) *config.add_blocks() = block;
  return config;
}

std::unique_ptr<FisherClient> Connect(const std::string& target) {
  client::ClientOptions options;
  options.target = target;  // the server is up: it printed its address
  absl::StatusOr<std::unique_ptr<FisherClient>> client = FisherClient::Create(options);
  return client.ok() ? *std::move(client) : nullptr;
}

// One batch of rows for every block and factor of the layout, float32 normal values
// and weights in {0.5, 1, 1.5}.
struct Rows {
  client::ScoreTarget target;
  std::vector<float> scores;
  std::vector<float> weights;
};

std::vector<Rows> MakeRows(std::mt19937_64& rng, int rows) {
  std::normal_distribution<float> normal;
  std::vector<Rows> out;
  auto add = [&](const std::string& block, v1::Factor factor, int width) {
    Rows r{{block, factor}, {}, {}};
    for (int i = 0; i < rows * width; ++i) r.scores.push_back(normal(rng));
    for (int i = 0; i < rows; ++i) r.weights.push_back(0.5f * static_cast<float>(1 + rng() % 3));
    out.push_back(std::move(r));
  };
  for (const v1::BlockConfig& block : Layout()) {
    if (block.kind() == v1::BLOCK_KIND_KRONECKER) {
      add(block.name(), v1::FACTOR_ACTIVATIONS, static_cast<int>(block.in_features()));
      add(block.name(), v1::FACTOR_OUTPUT_GRADIENTS, static_cast<int>(block.out_features()));
    } else {
      add(block.name(), v1::FACTOR_UNSPECIFIED, static_cast<int>(block.dim()));
    }
  }
  return out;
}

absl::Status Feed(FisherClient* client, const std::string& session,
                  const std::vector<const Rows*>& rows) {
  ScoreStreamerOptions options;
  options.session = session;
  options.worker_id = "worker";
  absl::StatusOr<std::unique_ptr<ScoreStreamer>> streamer = ScoreStreamer::Create(client, options);
  if (!streamer.ok()) return streamer.status();
  for (const Rows* r : rows) {
    if (absl::Status s = (*streamer)->Append(r->target, r->scores, r->weights); !s.ok()) return s;
  }
  return (*streamer)->Close();
}

void ExpectClose(absl::Span<const double> actual, absl::Span<const double> expected,
                 const std::string& what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  double scale = 0.0;
  for (double e : expected) scale = std::max(scale, std::abs(e));
  for (size_t i = 0; i < actual.size(); ++i) {
    ASSERT_NEAR(actual[i], expected[i], kRelative * scale) << what << "[" << i << "]";
  }
}

void ExpectNear(double actual, double expected, const std::string& what) {
  EXPECT_NEAR(actual, expected, kRelative * std::abs(expected)) << what;
}

class ShardedSessionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (int k = 0; k < 4; ++k) {
      servers_.push_back(
          std::make_unique<ServerProcess>(std::vector<std::string>{"--drain-seconds=1"}));
      ASSERT_FALSE(servers_.back()->address().empty()) << "fisherd " << k << " did not start";
      clients_.push_back(Connect(servers_.back()->address()));
      ASSERT_NE(clients_.back(), nullptr);
    }
  }
  void TearDown() override {
    for (auto& server : servers_) {
      if (server != nullptr) {
        EXPECT_EQ(server->Terminate(), 0);
      }
    }
  }
  std::vector<FisherClient*> Replicas() {
    return {clients_[0].get(), clients_[1].get(), clients_[2].get()};
  }
  FisherClient* single() { return clients_[3].get(); }

  std::vector<std::unique_ptr<ServerProcess>> servers_;
  std::vector<std::unique_ptr<FisherClient>> clients_;
};

TEST(ShardAssignment, GreedyLargestFirstByHand) {
  const std::vector<v1::BlockConfig> blocks = Layout();
  EXPECT_EQ(client::AssignBlocks(blocks, 3), kExpectedShards);
  // Two shards: fc2 -> 0 (29197), conv1 -> 1 (26048), fc1 -> 1 (35776), head -> 0
  // (30197), emb -> 0 (30837), bn -> 0.
  EXPECT_EQ(client::AssignBlocks(blocks, 2), (std::vector<int>{1, 1, 0, 0, 0, 0}));
  EXPECT_EQ(client::AssignBlocks(blocks, 1), (std::vector<int>(6, 0)));
  // Equal costs keep layout order and equal totals go to the lowest shard.
  EXPECT_EQ(client::AssignBlocks(
                {Sized("a", v1::BLOCK_KIND_DIAGONAL, 5), Sized("b", v1::BLOCK_KIND_DIAGONAL, 5),
                 Sized("c", v1::BLOCK_KIND_DIAGONAL, 5)},
                2),
            (std::vector<int>{0, 1, 0}));
  // Saturation instead of overflow for sizes the server accepts.
  EXPECT_EQ(client::BlockCost(Sized("huge", v1::BLOCK_KIND_DENSE, 1 << 30)),
            std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(client::ShardSessionId("model", 2, 3), "model.2-of-3");
}

TEST_F(ShardedSessionTest, StepsAndStatisticsEqualOneSession) {
  absl::StatusOr<std::unique_ptr<ShardedLayeredSession>> sharded =
      ShardedLayeredSession::Create(Replicas(), "model", Config());
  ASSERT_TRUE(sharded.ok()) << sharded.status();
  ASSERT_TRUE(single()->CreateSession("model", Config()).ok());
  const std::vector<v1::BlockConfig> blocks = Layout();
  for (size_t i = 0; i < blocks.size(); ++i) {
    EXPECT_EQ((*sharded)->shard_of(blocks[i].name()), kExpectedShards[i]) << blocks[i].name();
  }

  // Each shard lives on its replica only, holding its blocks in layout order.
  for (int k = 0; k < 3; ++k) {
    absl::StatusOr<std::vector<v1::Session>> listed = clients_[k]->ListSessions();
    ASSERT_TRUE(listed.ok()) << listed.status();
    ASSERT_EQ(listed->size(), 1u);
    EXPECT_EQ((*listed)[0].name(), "sessions/model." + std::to_string(k) + "-of-3");
    absl::StatusOr<v1::Session> shard = clients_[k]->GetSession((*sharded)->shard_session(k));
    ASSERT_TRUE(shard.ok()) << shard.status();
    std::vector<std::string> names;
    for (const v1::BlockConfig& b : shard->config().blocks()) names.push_back(b.name());
    std::vector<std::string> expected;
    for (size_t i = 0; i < blocks.size(); ++i) {
      if (kExpectedShards[i] == k) expected.push_back(blocks[i].name());
    }
    EXPECT_EQ(names, expected) << "shard " << k;
  }

  std::mt19937_64 rng(11);
  const uint64_t dim = (*sharded)->dim();
  std::normal_distribution<double> normal;
  for (int round = 0; round < 2; ++round) {
    // The same rows: each shard gets its blocks' rows, the single session all of them.
    const std::vector<Rows> rows = MakeRows(rng, 24 + 8 * round);
    std::vector<const Rows*> all;
    std::vector<std::vector<const Rows*>> per_shard(3);
    for (const Rows& r : rows) {
      all.push_back(&r);
      per_shard[static_cast<size_t>((*sharded)->shard_of(r.target.block))].push_back(&r);
    }
    ASSERT_TRUE(Feed(single(), "model", all).ok());
    for (int k = 0; k < 3; ++k) {
      ASSERT_TRUE(Feed((*sharded)->client(k), (*sharded)->shard_session(k), per_shard[k]).ok());
    }

    std::vector<double> g(dim);
    for (double& x : g) x = normal(rng);
    // eta 1; a learning rate; a KL budget with a binding cap, a loose cap and none; the
    // last one decays both sides (skip_decay false) before the next round's rows.
    std::vector<StepParams> cases(5);
    cases[1].learning_rate = 0.3;
    cases[2].kl_budget = 1e-3;
    cases[2].learning_rate = 1e-6;
    cases[3].kl_budget = 1e-3;
    cases[3].learning_rate = 1e3;
    cases[4].kl_budget = 2e-3;
    cases[4].damping = 0.2;
    for (size_t c = 0; c < cases.size(); ++c) {
      cases[c].skip_decay = c + 1 < cases.size();
      const std::string what = "round " + std::to_string(round) + " case " + std::to_string(c);
      absl::StatusOr<v1::NaturalGradientStepResponse> a = (*sharded)->Step(g, cases[c]);
      absl::StatusOr<v1::NaturalGradientStepResponse> b = single()->Step("model", g, cases[c]);
      ASSERT_TRUE(a.ok()) << a.status();
      ASSERT_TRUE(b.ok()) << b.status();
      ExpectClose(a->natural_gradient(), b->natural_gradient(), what + " n");
      ExpectClose(a->update(), b->update(), what + " update");
      ExpectNear(a->eta(), b->eta(), what + " eta");
      ExpectNear(a->natural_norm_sq(), b->natural_norm_sq(), what + " g^T n");
      ExpectNear(a->predicted_kl(), b->predicted_kl(), what + " predicted KL");
      EXPECT_EQ(a->solver().method(), "layered");
      EXPECT_EQ(a->solver().damping(), b->solver().damping());
      ASSERT_EQ(a->solver().blocks_size(), b->solver().blocks_size());
      for (int i = 0; i < b->solver().blocks_size(); ++i) {
        EXPECT_EQ(a->solver().blocks(i).block(), b->solver().blocks(i).block());
        EXPECT_EQ(a->solver().blocks(i).method(), b->solver().blocks(i).method());
      }
      if (c == 2) {
        EXPECT_EQ(a->eta(), 1e-6) << "the cap binds";
      }
    }

    // The statistics: every block's counts exactly, its weight sums to 1e-12.
    absl::StatusOr<v1::Session> whole = single()->GetSession("model");
    ASSERT_TRUE(whole.ok());
    for (const v1::BlockStats& expected : whole->stats().blocks()) {
      const int k = (*sharded)->shard_of(expected.name());
      absl::StatusOr<v1::Session> shard =
          (*sharded)->client(k)->GetSession((*sharded)->shard_session(k));
      ASSERT_TRUE(shard.ok());
      bool found = false;
      for (const v1::BlockStats& actual : shard->stats().blocks()) {
        if (actual.name() != expected.name()) continue;
        found = true;
        EXPECT_EQ(actual.sample_count(), expected.sample_count()) << expected.name();
        EXPECT_EQ(actual.output_gradient_sample_count(), expected.output_gradient_sample_count());
        ExpectNear(actual.weight_sum(), expected.weight_sum(), expected.name() + " W");
      }
      EXPECT_TRUE(found) << expected.name();
    }

    std::vector<double> v(dim);
    for (double& x : v) x = normal(rng);
    auto fvp = (*sharded)->FisherVectorProduct(v);
    auto oracle = single()->FisherVectorProduct("model", v);
    ASSERT_TRUE(fvp.ok() && oracle.ok());
    ExpectClose(fvp->first, oracle->product(), "F v");
    ExpectNear(fvp->second, oracle->quadratic_kl(), "v^T F v / 2");
  }

  // A second process attaches by the same layout; a different layout is refused naming
  // the shard and its replica.
  absl::StatusOr<std::unique_ptr<ShardedLayeredSession>> attached =
      ShardedLayeredSession::Attach(Replicas(), "model", blocks);
  ASSERT_TRUE(attached.ok()) << attached.status();
  std::vector<v1::BlockConfig> changed = blocks;
  changed[3].set_dim(17);  // bn, on shard 2
  absl::StatusOr<std::unique_ptr<ShardedLayeredSession>> refused =
      ShardedLayeredSession::Attach(Replicas(), "model", changed);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.status().message(),
              HasSubstr("shard model.2-of-3 on replica " + servers_[2]->address()));

  // A dead replica fails the step, naming its shard, with UNAVAILABLE.
  const std::string dead = servers_[1]->address();
  servers_[1].reset();  // SIGKILL
  std::vector<double> g(dim, 1.0);
  absl::StatusOr<v1::NaturalGradientStepResponse> failed = (*attached)->Step(g, StepParams{});
  ASSERT_FALSE(failed.ok());
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kUnavailable) << failed.status();
  EXPECT_THAT(failed.status().message(), HasSubstr("shard model.1-of-3 on replica " + dead));
}

TEST_F(ShardedSessionTest, BadLayoutsAndVectorsAreRefusedBeforeAnyCall) {
  v1::SessionConfig two = Config();
  two.mutable_blocks()->DeleteSubrange(2, 4);  // conv1 and fc1 only
  std::vector<FisherClient*> replicas = Replicas();
  EXPECT_THAT(ShardedLayeredSession::Create(replicas, "few", two).status().message(),
              HasSubstr("2 block(s) for 3 replicas"));
  v1::SessionConfig duplicated = Config();
  *duplicated.add_blocks() = duplicated.blocks(0);
  EXPECT_THAT(ShardedLayeredSession::Create(replicas, "dup", duplicated).status().message(),
              HasSubstr("\"conv1\" appears twice"));
  EXPECT_THAT(
      ShardedLayeredSession::Create(replicas, std::string(57, 'x'), Config()).status().message(),
      HasSubstr("needs 1 to 56"));
  for (int k = 0; k < 3; ++k) {
    absl::StatusOr<std::vector<v1::Session>> listed = clients_[k]->ListSessions();
    ASSERT_TRUE(listed.ok());
    EXPECT_TRUE(listed->empty()) << "replica " << k << " got a session from a refused layout";
  }

  absl::StatusOr<std::unique_ptr<ShardedLayeredSession>> sharded =
      ShardedLayeredSession::Create(replicas, std::string(56, 'y'), Config());
  ASSERT_TRUE(sharded.ok()) << sharded.status();  // 63-character shard ids fit
  std::vector<double> g((*sharded)->dim(), 0.5);
  g[7] = std::nan("");
  EXPECT_THAT((*sharded)->Step(g, StepParams{}).status().message(),
              HasSubstr("gradient[7] = nan is not finite"));
  EXPECT_EQ((*sharded)->Step(std::vector<double>(3), StepParams{}).status().code(),
            absl::StatusCode::kInvalidArgument);
  StepParams negative;
  negative.kl_budget = -1;
  g[7] = 0.5;
  EXPECT_THAT((*sharded)->Step(g, negative).status().message(), HasSubstr("kl_budget"));
  absl::StatusOr<v1::Session> shard = clients_[0]->GetSession((*sharded)->shard_session(0));
  ASSERT_TRUE(shard.ok());
  EXPECT_EQ(shard->stats().step_count(), 0u) << "a refused step reached a shard";
  EXPECT_TRUE((*sharded)->Delete().ok());
}

}  // namespace
}  // namespace fisherd::testing
