#include "core/statistics.h"

#include "absl/strings/str_cat.h"

#include "core/dense_statistics.h"
#include "core/diagonal_statistics.h"
#include "core/kronecker_statistics.h"
#include "core/layered_statistics.h"
#include "core/low_rank_statistics.h"

namespace fisherd {

absl::Status ScoreStatistics::CheckReady(absl::string_view what) const {
  if (weight_sum() > 0.0) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat("the session has no weighted samples yet (", sample_count(),
                   " rows, total weight 0): stream scores before asking for ", what));
}

absl::Status ScoreStatistics::ReplayRefresh(const FactorRefresh& refresh) {
  // Only a Kronecker block has factors to refresh (and a layered session routes to
  // its blocks): a logged refresh for anything else means the log is not this session's.
  return absl::InvalidArgumentError(
      absl::StrCat("cannot replay a refresh of factor ", FactorName(refresh.factor), " (block ",
                   refresh.block, "): this statistics has no Kronecker factor to refresh"));
}

std::unique_ptr<ScoreStatistics> ScoreStatistics::Create(const SessionOptions& options) {
  if (options.layered()) return std::make_unique<LayeredStatistics>(options);
  if (options.representation == Representation::kDiagonal) {
    return std::make_unique<DiagonalStatistics>(options);
  }
  return std::make_unique<DenseStatistics>(options);
}

std::unique_ptr<ScoreStatistics> CreateBlockStatistics(const BlockOptions& block,
                                                       const SessionOptions& session) {
  // A block of kind k is a session of kind k over the block's own parameters. Only the
  // scalar options are copied: copying session.blocks for every block would make a
  // layout of B blocks cost O(B^2) to create.
  SessionOptions own;
  own.dim = block.dim;
  own.centered = session.centered;
  own.decay = session.decay;
  own.damping = session.damping;
  own.float32_products = session.float32_products;
  own.kronecker_damping = session.kronecker_damping;
  own.factor_refresh_period = session.factor_refresh_period;
  switch (block.kind) {
    case BlockKind::kDense:
      own.representation = Representation::kDense;
      return std::make_unique<DenseStatistics>(own);
    case BlockKind::kDiagonal:
      own.representation = Representation::kDiagonal;
      return std::make_unique<DiagonalStatistics>(own);
    case BlockKind::kLowRank:
      return std::make_unique<LowRankStatistics>(block, session);
    case BlockKind::kKronecker:
      return std::make_unique<KroneckerStatistics>(block, session);
  }
  return nullptr;
}

}  // namespace fisherd
