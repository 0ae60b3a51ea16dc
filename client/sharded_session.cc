#include "client/sharded_session.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "client/describe.h"
#include "client/session_name.h"
#include "google/protobuf/util/message_differencer.h"

namespace fisherd::client {
namespace {

constexpr uint64_t kMaxCost = std::numeric_limits<uint64_t>::max();
constexpr size_t kMaxSessionIdLength = 63;

uint64_t SaturatingAdd(uint64_t a, uint64_t b) { return a > kMaxCost - b ? kMaxCost : a + b; }

uint64_t SaturatingMultiply(uint64_t a, uint64_t b) {
  if (a == 0 || b == 0) return 0;
  return a > kMaxCost / b ? kMaxCost : a * b;
}

uint64_t Cube(uint64_t x) { return SaturatingMultiply(SaturatingMultiply(x, x), x); }

// eta by the server's rule (docs/design.md section 1, "the step rule").
double StepSize(double kl_budget, double learning_rate, double natural_norm_sq) {
  const double fallback = learning_rate > 0.0 ? learning_rate : 1.0;
  if (kl_budget <= 0.0 || natural_norm_sq <= 0.0) return fallback;
  const double eta = std::sqrt(2.0 * kl_budget / natural_norm_sq);
  return learning_rate > 0.0 ? std::min(eta, learning_rate) : eta;
}

// Runs work(k) for every shard, each on a thread of its own, and returns the results in
// shard order. The shards are separate machines: waiting for them one after another
// would add their latencies.
template <typename Result, typename Work>
std::vector<Result> OnEveryShard(int shards, const Work& work) {
  std::vector<Result> results(static_cast<size_t>(shards));
  if (shards == 1) {
    results[0] = work(0);
    return results;
  }
  std::vector<std::thread> threads;
  threads.reserve(static_cast<size_t>(shards));
  for (int k = 0; k < shards; ++k) {
    threads.emplace_back([&results, &work, k] { results[static_cast<size_t>(k)] = work(k); });
  }
  for (std::thread& t : threads) t.join();
  return results;
}

// The options every shard shares, for comparing shards on Attach.
v1::SessionConfig OptionsOnly(v1::SessionConfig config) {
  config.clear_blocks();
  config.clear_dim();
  return config;
}

std::string Describe(const std::vector<v1::BlockConfig>& blocks) {
  std::string out;
  for (const v1::BlockConfig& block : blocks) {
    absl::StrAppend(&out, out.empty() ? "" : ", ", FormatBlockSpec(block));
  }
  return out;
}

}  // namespace

uint64_t BlockCost(const v1::BlockConfig& block) {
  switch (block.kind()) {
    case v1::BLOCK_KIND_KRONECKER:
      return SaturatingAdd(Cube(block.in_features() + (block.bias() ? 1 : 0)),
                           Cube(block.out_features()));
    case v1::BLOCK_KIND_DENSE:
      return Cube(block.dim());
    case v1::BLOCK_KIND_LOW_RANK:
      return SaturatingMultiply(block.dim(),
                                SaturatingMultiply(block.max_rows(), block.max_rows()));
    case v1::BLOCK_KIND_DIAGONAL:
      return block.dim();
    default:
      return 0;
  }
}

std::vector<int> AssignBlocks(absl::Span<const v1::BlockConfig> blocks, int shards) {
  std::vector<uint64_t> costs;
  costs.reserve(blocks.size());
  for (const v1::BlockConfig& block : blocks) costs.push_back(BlockCost(block));
  std::vector<size_t> order(blocks.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&costs](size_t a, size_t b) { return costs[a] > costs[b]; });
  std::vector<uint64_t> totals(static_cast<size_t>(shards), 0);
  std::vector<int> assignment(blocks.size(), 0);
  for (size_t i : order) {
    // min_element keeps the first of equal totals: the lowest shard index.
    const auto k = std::min_element(totals.begin(), totals.end()) - totals.begin();
    assignment[i] = static_cast<int>(k);
    totals[static_cast<size_t>(k)] = SaturatingAdd(totals[static_cast<size_t>(k)], costs[i]);
  }
  return assignment;
}

std::string ShardSessionId(absl::string_view session_id, int k, int shards) {
  return absl::StrCat(session_id, ".", k, "-of-", shards);
}

ShardedLayeredSession::ShardedLayeredSession(std::vector<FisherClient*> replicas,
                                             std::string session_id,
                                             std::vector<v1::BlockConfig> blocks,
                                             std::vector<int> assignment)
    : replicas_(std::move(replicas)),
      session_id_(std::move(session_id)),
      blocks_(std::move(blocks)),
      assignment_(std::move(assignment)) {
  shard_dims_.assign(replicas_.size(), 0);
  for (size_t i = 0; i < blocks_.size(); ++i) {
    const uint64_t size = BlockParameterCount(blocks_[i]);
    slices_.push_back({dim_, size});
    dim_ += size;
    shard_dims_[static_cast<size_t>(assignment_[i])] += size;
  }
  for (int k = 0; k < shard_count(); ++k) {
    shard_names_.push_back(SessionName(ShardSessionId(session_id_, k, shard_count())));
  }
}

namespace {

// The checks of Create and Attach that need no call.
absl::Status CheckLayout(const std::vector<FisherClient*>& replicas, absl::string_view session_id,
                         absl::Span<const v1::BlockConfig> blocks) {
  const int n = static_cast<int>(replicas.size());
  if (n < 1) return absl::InvalidArgumentError("a sharded session needs at least one replica");
  for (FisherClient* replica : replicas) {
    if (replica == nullptr) return absl::InvalidArgumentError("a replica's client is null");
  }
  if (blocks.size() < replicas.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the layout has ", blocks.size(), " block(s) for ", n,
                     " replicas; every shard needs at least one block"));
  }
  std::set<std::string> names;
  for (const v1::BlockConfig& block : blocks) {
    if (!names.insert(block.name()).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("block \"", block.name(),
                       "\" appears twice (each shard sees only its own blocks, "
                       "so no server would notice)"));
    }
  }
  const size_t longest = ShardSessionId(session_id, n - 1, n).size();
  if (session_id.empty() || longest > kMaxSessionIdLength) {
    const size_t suffix = longest - session_id.size();
    return absl::InvalidArgumentError(absl::StrCat(
        "session_id has ", session_id.size(), " characters; with ", n, " replicas a shard id adds ",
        suffix, " (\".K-of-N\") and may have at most ", kMaxSessionIdLength,
        ", so the session_id needs 1 to ", kMaxSessionIdLength - suffix));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<ShardedLayeredSession>> ShardedLayeredSession::Create(
    std::vector<FisherClient*> replicas, absl::string_view session_id,
    const v1::SessionConfig& config) {
  const std::vector<v1::BlockConfig> blocks(config.blocks().begin(), config.blocks().end());
  if (absl::Status s = CheckLayout(replicas, session_id, blocks); !s.ok()) return s;
  const int n = static_cast<int>(replicas.size());
  std::unique_ptr<ShardedLayeredSession> sharded(new ShardedLayeredSession(
      std::move(replicas), std::string(session_id), blocks, AssignBlocks(blocks, n)));
  std::vector<absl::Status> created = OnEveryShard<absl::Status>(n, [&](int k) {
    v1::SessionConfig shard = OptionsOnly(config);
    for (size_t i = 0; i < blocks.size(); ++i) {
      if (sharded->assignment_[i] == k) *shard.add_blocks() = blocks[i];
    }
    return sharded->replicas_[static_cast<size_t>(k)]
        ->CreateSession(SessionId(sharded->shard_names_[static_cast<size_t>(k)]), shard)
        .status();
  });
  for (int k = 0; k < n; ++k) {
    if (!created[static_cast<size_t>(k)].ok()) {
      return sharded->ShardError(k, created[static_cast<size_t>(k)]);
    }
  }
  return sharded;
}

absl::StatusOr<std::unique_ptr<ShardedLayeredSession>> ShardedLayeredSession::Attach(
    std::vector<FisherClient*> replicas, absl::string_view session_id,
    absl::Span<const v1::BlockConfig> blocks) {
  if (absl::Status s = CheckLayout(replicas, session_id, blocks); !s.ok()) return s;
  const int n = static_cast<int>(replicas.size());
  std::unique_ptr<ShardedLayeredSession> sharded(new ShardedLayeredSession(
      std::move(replicas), std::string(session_id),
      std::vector<v1::BlockConfig>(blocks.begin(), blocks.end()), AssignBlocks(blocks, n)));
  std::vector<absl::StatusOr<v1::Session>> shards =
      OnEveryShard<absl::StatusOr<v1::Session>>(n, [&](int k) {
        return sharded->replicas_[static_cast<size_t>(k)]->GetSession(
            sharded->shard_names_[static_cast<size_t>(k)]);
      });
  for (int k = 0; k < n; ++k) {
    const absl::StatusOr<v1::Session>& shard = shards[static_cast<size_t>(k)];
    if (!shard.ok()) return sharded->ShardError(k, shard.status());
    std::vector<v1::BlockConfig> expected;
    for (size_t i = 0; i < sharded->blocks_.size(); ++i) {
      if (sharded->assignment_[i] == k) expected.push_back(sharded->blocks_[i]);
    }
    const std::vector<v1::BlockConfig> actual(shard->config().blocks().begin(),
                                              shard->config().blocks().end());
    const bool same = expected.size() == actual.size() &&
                      std::equal(expected.begin(), expected.end(), actual.begin(),
                                 [](const v1::BlockConfig& a, const v1::BlockConfig& b) {
                                   return google::protobuf::util::MessageDifferencer::Equals(a, b);
                                 });
    if (!same) {
      return sharded->ShardError(k, absl::FailedPreconditionError(absl::StrCat(
                                        "holds blocks [", Describe(actual),
                                        "] where this layout assigns [", Describe(expected), "]")));
    }
    if (!google::protobuf::util::MessageDifferencer::Equals(OptionsOnly(shard->config()),
                                                            OptionsOnly(shards[0]->config()))) {
      return sharded->ShardError(k, absl::FailedPreconditionError(absl::StrCat(
                                        "its options differ from shard 0's: ",
                                        OptionsOnly(shard->config()).ShortDebugString(), " vs ",
                                        OptionsOnly(shards[0]->config()).ShortDebugString())));
    }
  }
  return sharded;
}

int ShardedLayeredSession::shard_of(absl::string_view block) const {
  for (size_t i = 0; i < blocks_.size(); ++i) {
    if (blocks_[i].name() == block) return assignment_[i];
  }
  return -1;
}

std::vector<double> ShardedLayeredSession::Gather(absl::Span<const double> values, int k) const {
  std::vector<double> out;
  for (size_t i = 0; i < blocks_.size(); ++i) {
    if (assignment_[i] != k) continue;
    const auto part = values.subspan(slices_[i].offset, slices_[i].size);
    out.insert(out.end(), part.begin(), part.end());
  }
  return out;
}

void ShardedLayeredSession::Scatter(absl::Span<const double> shard_values, int k,
                                    std::vector<double>* out) const {
  size_t read = 0;
  for (size_t i = 0; i < blocks_.size(); ++i) {
    if (assignment_[i] != k) continue;
    std::copy_n(shard_values.begin() + static_cast<ptrdiff_t>(read), slices_[i].size,
                out->begin() + static_cast<ptrdiff_t>(slices_[i].offset));
    read += slices_[i].size;
  }
}

absl::Status ShardedLayeredSession::ShardError(int k, const absl::Status& status) const {
  return absl::Status(
      status.code(),
      absl::StrCat("shard ", SessionId(shard_names_[static_cast<size_t>(k)]), " on replica ",
                   replicas_[static_cast<size_t>(k)]->options().target, ": ", status.message()));
}

absl::Status ShardedLayeredSession::CheckVector(absl::Span<const double> values,
                                                absl::string_view what) const {
  if (values.size() != dim_) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " has ", values.size(), " values; the sharded session has ", dim_));
  }
  for (size_t i = 0; i < values.size(); ++i) {
    if (!std::isfinite(values[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, "[", i, "] = ", values[i], " is not finite"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::NaturalGradientStepResponse> ShardedLayeredSession::Step(
    absl::Span<const double> gradient, const StepParams& params) {
  if (absl::Status s = CheckVector(gradient, "gradient"); !s.ok()) return s;
  // The shards only ever see 0 for both, so their checks would never fire: the same
  // checks, with the server's words, here.
  if (!(params.learning_rate >= 0.0) || !std::isfinite(params.learning_rate)) {
    return absl::InvalidArgumentError(
        absl::StrCat("learning_rate must be finite and >= 0, got ", params.learning_rate));
  }
  if (!(params.kl_budget >= 0.0) || !std::isfinite(params.kl_budget)) {
    return absl::InvalidArgumentError(
        absl::StrCat("kl_budget must be finite and >= 0, got ", params.kl_budget));
  }
  StepParams unscaled = params;
  unscaled.learning_rate = 0.0;
  unscaled.kl_budget = 0.0;
  std::vector<absl::StatusOr<v1::NaturalGradientStepResponse>> answers =
      OnEveryShard<absl::StatusOr<v1::NaturalGradientStepResponse>>(shard_count(), [&](int k) {
        return replicas_[static_cast<size_t>(k)]->Step(shard_names_[static_cast<size_t>(k)],
                                                       Gather(gradient, k), unscaled);
      });
  for (int k = 0; k < shard_count(); ++k) {
    if (!answers[static_cast<size_t>(k)].ok()) {
      return ShardError(k, answers[static_cast<size_t>(k)].status());
    }
  }

  std::vector<double> natural(dim_, 0.0);
  double natural_norm_sq = 0.0;
  double quadratic = 0.0;  // sum over shards of 1/2 n_k^T F_k n_k
  for (int k = 0; k < shard_count(); ++k) {
    const v1::NaturalGradientStepResponse& answer = *answers[static_cast<size_t>(k)];
    if (static_cast<uint64_t>(answer.natural_gradient_size()) !=
        shard_dims_[static_cast<size_t>(k)]) {
      return ShardError(k, absl::DataLossError("the answer's natural_gradient has the wrong "
                                               "length"));
    }
    Scatter(answer.natural_gradient(), k, &natural);
    natural_norm_sq += answer.natural_norm_sq();
    quadratic += answer.predicted_kl();
  }
  const double eta = StepSize(params.kl_budget, params.learning_rate, natural_norm_sq);

  v1::NaturalGradientStepResponse out;
  out.mutable_natural_gradient()->Add(natural.begin(), natural.end());
  out.mutable_update()->Reserve(static_cast<int>(dim_));
  for (double n : natural) out.add_update(-eta * n);
  out.set_eta(eta);
  out.set_natural_norm_sq(natural_norm_sq);
  out.set_predicted_kl(eta * eta * quadratic);

  // The solver summary of one layered session: every block's, in global order.
  v1::SolverSummary* solver = out.mutable_solver();
  solver->set_method("layered");
  solver->set_damping(answers[0]->solver().damping());
  solver->set_factorization_cached(true);
  double residual_sq = 0.0;
  double gradient_sq = 0.0;
  for (double g : gradient) gradient_sq += g * g;
  for (size_t i = 0; i < blocks_.size(); ++i) {
    const v1::NaturalGradientStepResponse& answer = *answers[static_cast<size_t>(assignment_[i])];
    solver->set_seconds(std::max(solver->seconds(), answer.solver().seconds()));
    for (const v1::SolverSummary& block : answer.solver().blocks()) {
      if (block.block() != blocks_[i].name()) continue;
      *solver->add_blocks() = block;
      // A diagonal block has nothing to factor: it never makes the step uncached.
      if (block.method() != "diagonal") {
        solver->set_factorization_cached(solver->factorization_cached() &&
                                         block.factorization_cached());
      }
      solver->set_factor_age_steps(std::max(solver->factor_age_steps(), block.factor_age_steps()));
      if (!block.kronecker_damping().empty())
        solver->set_kronecker_damping(block.kronecker_damping());
      double part_sq = 0.0;
      for (uint64_t j = 0; j < slices_[i].size; ++j) {
        const double g = gradient[slices_[i].offset + j];
        part_sq += g * g;
      }
      residual_sq += block.residual() * block.residual() * part_sq;
    }
  }
  solver->set_residual(gradient_sq > 0.0 ? std::sqrt(residual_sq / gradient_sq) : 0.0);
  return out;
}

absl::StatusOr<std::pair<std::vector<double>, double>> ShardedLayeredSession::FisherVectorProduct(
    absl::Span<const double> vector) {
  if (absl::Status s = CheckVector(vector, "vector"); !s.ok()) return s;
  std::vector<absl::StatusOr<v1::FisherVectorProductResponse>> answers =
      OnEveryShard<absl::StatusOr<v1::FisherVectorProductResponse>>(shard_count(), [&](int k) {
        return replicas_[static_cast<size_t>(k)]->FisherVectorProduct(
            shard_names_[static_cast<size_t>(k)], Gather(vector, k));
      });
  std::vector<double> product(dim_, 0.0);
  double quadratic = 0.0;
  for (int k = 0; k < shard_count(); ++k) {
    const auto& answer = answers[static_cast<size_t>(k)];
    if (!answer.ok()) return ShardError(k, answer.status());
    if (static_cast<uint64_t>(answer->product_size()) != shard_dims_[static_cast<size_t>(k)]) {
      return ShardError(k, absl::DataLossError("the answer's product has the wrong length"));
    }
    Scatter(answer->product(), k, &product);
    quadratic += answer->quadratic_kl();
  }
  return std::make_pair(std::move(product), quadratic);
}

absl::Status ShardedLayeredSession::Delete() {
  std::vector<absl::Status> deleted = OnEveryShard<absl::Status>(shard_count(), [&](int k) {
    return replicas_[static_cast<size_t>(k)]->DeleteSession(shard_names_[static_cast<size_t>(k)]);
  });
  for (int k = 0; k < shard_count(); ++k) {
    if (!deleted[static_cast<size_t>(k)].ok())
      return ShardError(k, deleted[static_cast<size_t>(k)]);
  }
  return absl::OkStatus();
}

}  // namespace fisherd::client
