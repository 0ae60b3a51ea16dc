// ShardedLayeredSession: one model's layered session spread over several fisherd
// replicas, the C++ side of the contract that the Python client's fisherd.sharded
// implements (docs/design.md, "Sharded layered sessions"), so that workers in either
// language agree on where every block lives and on every number.
//
// A layered session's F is block-diagonal: its blocks never need each other, so each
// replica can hold some of them as an ordinary layered session, and a step is the
// blocks' solves put together.
//
//   std::vector<FisherClient*> replicas = {&a, &b, &c};        // one per replica
//   auto sharded = ShardedLayeredSession::Create(replicas, "resnet", config);
//   // rows: a ScoreStreamer per shard, on (*sharded)->client(k) and shard_session(k),
//   // fed with the rows of the blocks (*sharded)->shard_of(block) == k
//   auto step = (*sharded)->Step(gradient, params);            // as FisherClient::Step
//
// Assignment (greedy longest-processing-time over BlockCost): blocks sorted by cost,
// largest first, stably; each goes to the shard with the smallest total so far (ties:
// the lowest index). Shard k is the layered session "{session_id}.{k}-of-{n}" on
// replica k, holding its blocks in their global order, with the session's options.
//
// A step asks every shard in parallel for its unscaled natural gradient (learning rate
// and KL budget 0, so eta 1) and combines: n in global order, g^T n the sum of the
// shards' natural_norm_sq, eta by the server's rule from that sum, update -eta n, and
// predicted KL eta^2 times the sum of the shards' predicted KL (F is block-diagonal
// across shards). The result equals the one-session step up to the order of the sums.
//
// Errors name the shard and its replica ("shard resnet.1-of-3 on replica host:port:
// ..."), with the shard's status code. Nothing is rolled back across replicas: when one
// shard fails a step, the others may have taken theirs.
#ifndef FISHERD_CLIENT_SHARDED_SESSION_H_
#define FISHERD_CLIENT_SHARDED_SESSION_H_

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "client/fisher_client.h"
#include "fisherd/v1/fisher.pb.h"

namespace fisherd::client {

// The balancing cost of a block, saturating at 2^64 - 1: KRONECKER a^3 + g^3 with
// a = in_features (+1 with bias) and g = out_features (two eigendecompositions, KAISA's
// rule); DENSE n^3; LOW_RANK n * max_rows^2; DIAGONAL n; any other kind 0.
uint64_t BlockCost(const v1::BlockConfig& block);

// The shard (0 .. shards - 1) of every block, in layout order (see the file comment).
// REQUIRES: shards >= 1.
std::vector<int> AssignBlocks(absl::Span<const v1::BlockConfig> blocks, int shards);

// "{session_id}.{k}-of-{shards}".
std::string ShardSessionId(absl::string_view session_id, int k, int shards);

class ShardedLayeredSession {
 public:
  // Creates the shard sessions: `config` is the whole layered session (its blocks in
  // global order and its options). INVALID_ARGUMENT before any call for no replicas,
  // fewer blocks than replicas, duplicate block names, or a session id whose shard ids
  // would exceed 63 characters; a shard's failure names the shard and its replica.
  // The replicas must outlive the session.
  static absl::StatusOr<std::unique_ptr<ShardedLayeredSession>> Create(
      std::vector<FisherClient*> replicas, absl::string_view session_id,
      const v1::SessionConfig& config);

  // Attaches to shard sessions another process created with the same layout and
  // replicas (in the same order): checks that every shard holds exactly its assigned
  // blocks and that all shards have the same options; FAILED_PRECONDITION naming the
  // shard and replica otherwise, NOT_FOUND naming them when a shard does not exist.
  static absl::StatusOr<std::unique_ptr<ShardedLayeredSession>> Attach(
      std::vector<FisherClient*> replicas, absl::string_view session_id,
      absl::Span<const v1::BlockConfig> blocks);

  int shard_count() const { return static_cast<int>(replicas_.size()); }
  uint64_t dim() const { return dim_; }
  // The shard holding `block`; -1 for a name not in the layout.
  int shard_of(absl::string_view block) const;
  FisherClient* client(int k) const { return replicas_[k]; }
  // Shard k's session name, "sessions/{session_id}.{k}-of-{n}".
  const std::string& shard_session(int k) const { return shard_names_[k]; }

  // The natural-gradient step of the whole layout (g of length dim(), global order),
  // shaped as FisherClient::Step answers it for one session: natural_gradient and
  // update in global order, eta, natural_norm_sq, predicted_kl, and the solver summary
  // of a layered session (method "layered", one summary per block in global order,
  // seconds those of the slowest shard). params.learning_rate and kl_budget are
  // applied here; the shards get 0 for both and the rest of params.
  absl::StatusOr<v1::NaturalGradientStepResponse> Step(absl::Span<const double> gradient,
                                                       const StepParams& params);

  // F v of the whole layout (undamped F, global order) and 1/2 v^T F v.
  absl::StatusOr<std::pair<std::vector<double>, double>> FisherVectorProduct(
      absl::Span<const double> vector);

  // Deletes every shard session (all are tried; the first failure is returned).
  absl::Status Delete();

 private:
  struct Slice {
    uint64_t offset = 0;  // in the global vector
    uint64_t size = 0;
  };

  ShardedLayeredSession(std::vector<FisherClient*> replicas, std::string session_id,
                        std::vector<v1::BlockConfig> blocks, std::vector<int> assignment);

  // Shard k's part of a global vector: its blocks' slices, concatenated in order.
  std::vector<double> Gather(absl::Span<const double> values, int k) const;
  // Writes shard k's vector back into its blocks' slices of `out`.
  void Scatter(absl::Span<const double> shard_values, int k, std::vector<double>* out) const;
  // The shard's error with the shard and its replica in front of the message.
  absl::Status ShardError(int k, const absl::Status& status) const;
  // Checks a global vector's length and finiteness, naming `what` and the index.
  absl::Status CheckVector(absl::Span<const double> values, absl::string_view what) const;

  std::vector<FisherClient*> replicas_;
  std::string session_id_;
  std::vector<v1::BlockConfig> blocks_;  // global layout order
  std::vector<int> assignment_;          // shard of blocks_[i]
  std::vector<Slice> slices_;            // slice of blocks_[i] in the global vector
  std::vector<std::string> shard_names_;
  std::vector<uint64_t> shard_dims_;  // parameters each shard holds
  uint64_t dim_ = 0;
};

}  // namespace fisherd::client

#endif  // FISHERD_CLIENT_SHARDED_SESSION_H_
