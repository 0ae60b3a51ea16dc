#include "client/describe.h"

#include <map>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace fisherd::client {
namespace v1 = ::fisherd::v1;

const char* RepresentationName(v1::Representation representation) {
  switch (representation) {
    case v1::REPRESENTATION_DIAGONAL:
      return "DIAGONAL";
    case v1::REPRESENTATION_LAYERED:
      return "LAYERED";
    default:
      return "DENSE";
  }
}

const char* BlockKindName(v1::BlockKind kind) {
  switch (kind) {
    case v1::BLOCK_KIND_DENSE:
      return "DENSE";
    case v1::BLOCK_KIND_DIAGONAL:
      return "DIAGONAL";
    case v1::BLOCK_KIND_KRONECKER:
      return "KRONECKER";
    case v1::BLOCK_KIND_LOW_RANK:
      return "LOW_RANK";
    default:
      return "UNSPECIFIED";
  }
}

const char* FactorName(v1::Factor factor) {
  switch (factor) {
    case v1::FACTOR_ACTIVATIONS:
      return "ACTIVATIONS";
    case v1::FACTOR_OUTPUT_GRADIENTS:
      return "OUTPUT_GRADIENTS";
    default:
      return "UNSPECIFIED";
  }
}

namespace {

// The SHAPE part of a block spec.
std::string BlockShape(const v1::BlockConfig& block) {
  switch (block.kind()) {
    case v1::BLOCK_KIND_KRONECKER:
      return absl::StrFormat("%dx%d%s", block.in_features(), block.out_features(),
                             block.bias() ? "+bias" : "");
    case v1::BLOCK_KIND_LOW_RANK:
      return absl::StrFormat("%d/%d", block.dim(), block.max_rows());
    default:
      return absl::StrCat(block.dim());
  }
}

}  // namespace

std::string FormatBlockSpec(const v1::BlockConfig& block) {
  return absl::StrCat(block.name(), ":", absl::AsciiStrToLower(BlockKindName(block.kind())), ":",
                      BlockShape(block));
}

uint64_t BlockParameterCount(const v1::BlockConfig& block) {
  switch (block.kind()) {
    case v1::BLOCK_KIND_KRONECKER:
      return block.out_features() * (block.in_features() + (block.bias() ? 1 : 0));
    case v1::BLOCK_KIND_DENSE:
    case v1::BLOCK_KIND_DIAGONAL:
    case v1::BLOCK_KIND_LOW_RANK:
      return block.dim();
    default:
      return 0;
  }
}

namespace {

const char* KroneckerDampingName(v1::KroneckerDamping damping) {
  return damping == v1::KRONECKER_DAMPING_FACTORED ? "FACTORED" : "EXACT";
}

// One block's line of DescribeSession. `stats` is null when the server sent none.
std::string DescribeBlock(const v1::BlockConfig& block, const v1::BlockStats* stats) {
  std::string out =
      absl::StrFormat("  %-24s %-9s %-18s %12d params", block.name(), BlockKindName(block.kind()),
                      BlockShape(block), BlockParameterCount(block));
  if (stats == nullptr) return absl::StrCat(out, "\n");
  if (block.kind() == v1::BLOCK_KIND_KRONECKER) {
    absl::StrAppendFormat(&out, "  A: %d rows W=%g  G: %d rows W=%g\n", stats->sample_count(),
                          stats->weight_sum(), stats->output_gradient_sample_count(),
                          stats->output_gradient_weight_sum());
  } else {
    absl::StrAppendFormat(&out, "  %d rows W=%g\n", stats->sample_count(), stats->weight_sum());
  }
  return out;
}

}  // namespace

std::string DescribeSession(const v1::Session& session) {
  const v1::SessionConfig& c = session.config();
  const v1::SessionStats& s = session.stats();
  const bool layered = c.blocks_size() > 0;
  // decay 0 is the proto default and means "keep everything" (rho = 1).
  const double decay = c.decay() == 0 ? 1.0 : c.decay();
  std::string out = absl::StrFormat(
      "name:           %s\n"
      "dim:            %d\n"
      "representation: %s\n"
      "centered:       %s\n"
      "decay:          %g\n"
      "damping:        %g\n"
      "products:       %s\n",
      session.name(), c.dim(),
      RepresentationName(layered ? v1::REPRESENTATION_LAYERED : c.representation()),
      c.centered() ? "true" : "false", decay, c.damping(),
      c.float32_products() ? "float32 (float32_products)" : "float64");
  if (layered) {
    // factor_refresh_period 0 means 1 (recompute whenever a factor changed).
    absl::StrAppendFormat(&out, "kronecker:      %s damping, factors refreshed every %d step(s)\n",
                          KroneckerDampingName(c.kronecker_damping()),
                          c.factor_refresh_period() == 0 ? 1 : c.factor_refresh_period());
  }
  absl::StrAppendFormat(&out,
                        "sample_count:   %d\n"
                        "weight_sum:     %g\n"
                        "step_count:     %d\n",
                        s.sample_count(), s.weight_sum(), s.step_count());
  if (layered) {
    // Stats come in layout order; matched by name so that a server sending them
    // otherwise (or not at all) is still shown right.
    std::map<std::string, const v1::BlockStats*> stats;
    for (const v1::BlockStats& b : s.blocks()) stats.emplace(b.name(), &b);
    absl::StrAppendFormat(&out, "blocks:         %d (name kind shape parameters rows W)\n",
                          c.blocks_size());
    for (const v1::BlockConfig& block : c.blocks()) {
      auto it = stats.find(block.name());
      absl::StrAppend(&out, DescribeBlock(block, it == stats.end() ? nullptr : it->second));
    }
  }
  if (s.worker_sequences().empty()) {
    absl::StrAppend(&out, "workers:        none\n");
  } else {
    // The protobuf map has no order; print sorted so the output is stable.
    std::map<std::string, uint64_t> sorted(s.worker_sequences().begin(),
                                           s.worker_sequences().end());
    absl::StrAppend(&out, "workers:        (last applied sequence)\n");
    for (const auto& [worker, sequence] : sorted) {
      absl::StrAppendFormat(&out, "  %-20s %d\n", worker, sequence);
    }
  }
  return out;
}

std::string DescribeSessionBrief(const v1::Session& session) {
  const int blocks = session.config().blocks_size();
  const std::string representation = blocks > 0
                                         ? absl::StrFormat("LAYERED(%d)", blocks)
                                         : RepresentationName(session.config().representation());
  return absl::StrFormat("%-32s dim=%-6d %-8s samples=%-10d steps=%d", session.name(),
                         session.config().dim(), representation, session.stats().sample_count(),
                         session.stats().step_count());
}

std::string DescribeFisherSummary(const v1::FisherSummary& summary) {
  std::string out;
  if (!summary.block().empty()) {
    absl::StrAppendFormat(&out, "block:          %s (%s)\n", summary.block(),
                          BlockKindName(summary.block_kind()));
    if (summary.factor() != v1::FACTOR_UNSPECIFIED) {
      absl::StrAppendFormat(&out, "factor:         %s\n", FactorName(summary.factor()));
    }
  }
  absl::StrAppendFormat(&out,
                        "dim:            %d\n"
                        "representation: %s\n"
                        "centered:       %s\n"
                        "sample_count:   %d\n"
                        "weight_sum:     %g\n"
                        "trace:          %.10g\n"
                        "frobenius_norm: %.10g\n",
                        summary.dim(), RepresentationName(summary.representation()),
                        summary.centered() ? "true" : "false", summary.sample_count(),
                        summary.weight_sum(), summary.trace(), summary.frobenius_norm());
  if (summary.has_eigenvalues()) {
    absl::StrAppendFormat(&out,
                          "min_eigenvalue: %.10g\n"
                          "max_eigenvalue: %.10g\n"
                          "condition:      %.6g\n",
                          summary.min_eigenvalue(), summary.max_eigenvalue(),
                          summary.condition_number());
  }
  return out;
}

}  // namespace fisherd::client
