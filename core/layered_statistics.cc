#include "core/layered_statistics.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"

namespace fisherd {
namespace {

// "block \"fc1\" (kronecker)": the prefix of every message about one block.
std::string DescribeBlock(const BlockOptions& block) {
  return absl::StrCat("block \"", block.name, "\" (", BlockKindName(block.kind), ")");
}

absl::Status InBlock(const BlockOptions& block, const absl::Status& status) {
  return absl::Status(status.code(), absl::StrCat(DescribeBlock(block), ": ", status.message()));
}

}  // namespace

LayeredStatistics::LayeredStatistics(const SessionOptions& options) : layout_(options.blocks) {
  blocks_.reserve(options.blocks.size());
  for (const BlockOptions& block : options.blocks) {
    blocks_.push_back(CreateBlockStatistics(block, options));
  }
}

uint64_t LayeredStatistics::sample_count() const {
  uint64_t total = 0;
  for (const auto& block : blocks_) total += block->sample_count();
  return total;
}

double LayeredStatistics::weight_sum() const {
  double total = 0.0;
  for (const auto& block : blocks_) total += block->weight_sum();
  return total;
}

void LayeredStatistics::Add(const PreparedBatch& batch) { blocks_[batch.block]->Add(batch); }

void LayeredStatistics::StepTaken() {
  for (auto& block : blocks_) block->StepTaken();
}

void LayeredStatistics::Decay(double rho) {
  for (auto& block : blocks_) block->Decay(rho);
}

absl::Status LayeredStatistics::CheckReady(absl::string_view what) const {
  for (int64_t i = 0; i < layout_.size(); ++i) {
    if (absl::Status status = blocks_[i]->CheckReady(what); !status.ok()) {
      return InBlock(layout_.block(i), status);
    }
  }
  return absl::OkStatus();
}

Eigen::VectorXd LayeredStatistics::Multiply(const Eigen::VectorXd& v) const {
  Eigen::VectorXd product(dim());
  for (int64_t i = 0; i < layout_.size(); ++i) {
    product.segment(layout_.offset(i), layout_.parameters(i)) =
        blocks_[i]->Multiply(v.segment(layout_.offset(i), layout_.parameters(i)));
  }
  return product;
}

absl::StatusOr<SolveResult> LayeredStatistics::Solve(const Eigen::VectorXd& g, double damping) {
  const auto start = std::chrono::steady_clock::now();
  SolveResult result;
  result.natural_gradient.resize(dim());
  SolverSummary& summary = result.summary;
  summary.method = "layered";
  summary.damping = damping;
  summary.factorization_cached = true;
  summary.blocks.reserve(blocks_.size());
  double residual_sq = 0.0;  // |F_lambda n - g|^2, summed over blocks
  double curvature = 0.0;    // n^T F n
  for (int64_t i = 0; i < layout_.size(); ++i) {
    const int64_t offset = layout_.offset(i), size = layout_.parameters(i);
    const Eigen::VectorXd g_block = g.segment(offset, size);
    absl::StatusOr<SolveResult> solved = blocks_[i]->Solve(g_block, damping);
    if (!solved.ok()) return InBlock(layout_.block(i), solved.status());
    const Eigen::VectorXd& n = solved->natural_gradient;
    result.natural_gradient.segment(offset, size) = n;
    // Without a block's own figure, its damped metric is F + lambda I (docs/design.md 1).
    curvature += solved->curvature.has_value()
                     ? *solved->curvature
                     : std::max(0.0, g_block.dot(n) - damping * n.squaredNorm());
    const double g_norm = g_block.norm();
    residual_sq += std::pow(solved->summary.residual * g_norm, 2);
    SolverSummary& block_summary = solved->summary;
    block_summary.block = layout_.block(i).name;
    // A diagonal block has nothing to factor, so it never makes the step uncached.
    if (block_summary.method != "diagonal") {
      summary.factorization_cached =
          summary.factorization_cached && block_summary.factorization_cached;
    }
    summary.factor_age_steps = std::max(summary.factor_age_steps, block_summary.factor_age_steps);
    if (!block_summary.kronecker_damping.empty()) {
      summary.kronecker_damping = block_summary.kronecker_damping;
    }
    summary.blocks.push_back(std::move(block_summary));
  }
  const double g_norm = g.norm();
  summary.residual = g_norm > 0.0 ? std::sqrt(residual_sq) / g_norm : 0.0;
  result.curvature = curvature;
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

absl::StatusOr<FisherSummary> LayeredStatistics::Summarize(bool with_eigenvalues) const {
  FisherSummary summary;
  summary.dim = dim();
  double frobenius_sq = 0.0;
  double min_eigenvalue = std::numeric_limits<double>::infinity();
  double max_eigenvalue = -std::numeric_limits<double>::infinity();
  for (int64_t i = 0; i < layout_.size(); ++i) {
    absl::StatusOr<FisherSummary> block = blocks_[i]->Summarize(with_eigenvalues);
    if (!block.ok()) return InBlock(layout_.block(i), block.status());
    summary.trace += block->trace;
    frobenius_sq += block->frobenius_norm * block->frobenius_norm;
    if (with_eigenvalues) {
      min_eigenvalue = std::min(min_eigenvalue, block->min_eigenvalue);
      max_eigenvalue = std::max(max_eigenvalue, block->max_eigenvalue);
    }
  }
  summary.frobenius_norm = std::sqrt(frobenius_sq);
  if (with_eigenvalues) summary.SetExtremeEigenvalues(min_eigenvalue, max_eigenvalue);
  return summary;
}

void LayeredStatistics::CopyEntries(int64_t begin, int64_t count, double* out) const {
  const int64_t n = dim();
  std::fill_n(out, count * n, 0.0);
  for (int64_t r = begin; r < begin + count; ++r) {
    const int64_t b = layout_.BlockAt(r);
    const int64_t offset = layout_.offset(b);
    double* row = out + (r - begin) * n;
    const ScoreStatistics& block = *blocks_[b];
    if (block.EntriesPerRow() == 1) {  // a diagonal block: its one entry per row
      block.CopyEntries(r - offset, 1, row + r);
    } else {
      block.CopyEntries(r - offset, 1, row + offset);
    }
  }
}

void LayeredStatistics::VisitState(StateVisitor& visitor) {
  for (int64_t i = 0; i < layout_.size(); ++i) {
    visitor.Enter(layout_.block(i).name);
    blocks_[i]->VisitState(visitor);
    visitor.Leave();
  }
}

void LayeredStatistics::TakeRefreshes(std::vector<FactorRefresh>* out) {
  std::vector<FactorRefresh> block_refreshes;
  for (int64_t i = 0; i < layout_.size(); ++i) {
    block_refreshes.clear();
    blocks_[i]->TakeRefreshes(&block_refreshes);
    for (FactorRefresh& refresh : block_refreshes) {
      refresh.block = i;
      out->push_back(refresh);
    }
  }
}

void LayeredStatistics::ForgetRefresh(const FactorRefresh& refresh) {
  if (refresh.block < 0 || refresh.block >= layout_.size()) return;
  blocks_[refresh.block]->ForgetRefresh({-1, refresh.factor});
}

absl::Status LayeredStatistics::ReplayRefresh(const FactorRefresh& refresh) {
  if (refresh.block < 0 || refresh.block >= layout_.size()) {
    return absl::InvalidArgumentError(absl::StrCat("cannot replay a refresh of block ",
                                                   refresh.block, ": the session has ",
                                                   layout_.size(), " blocks"));
  }
  const BlockOptions& block = layout_.block(refresh.block);
  if (block.kind != BlockKind::kKronecker) {
    return absl::InvalidArgumentError(absl::StrCat("cannot replay a refresh of block ",
                                                   refresh.block, ": ", DescribeBlock(block),
                                                   " has no Kronecker factors"));
  }
  // The block sees the refresh as its own (block -1).
  if (absl::Status status = blocks_[refresh.block]->ReplayRefresh({-1, refresh.factor});
      !status.ok()) {
    return absl::Status(status.code(), absl::StrCat("block ", refresh.block, ", ",
                                                    DescribeBlock(block), ": ", status.message()));
  }
  return absl::OkStatus();
}

}  // namespace fisherd
