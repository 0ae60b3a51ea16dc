#include "server/conversions.h"

#include <cstdint>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/float32_bytes.h"

namespace fisherd::server {

namespace {

absl::StatusOr<BlockOptions> BlockOptionsFromProto(int index, const v1::BlockConfig& config) {
  BlockOptions block;
  block.name = config.name();
  switch (static_cast<int>(config.kind())) {
    case v1::BLOCK_KIND_DENSE:
      block.kind = BlockKind::kDense;
      break;
    case v1::BLOCK_KIND_DIAGONAL:
      block.kind = BlockKind::kDiagonal;
      break;
    case v1::BLOCK_KIND_KRONECKER:
      block.kind = BlockKind::kKronecker;
      break;
    case v1::BLOCK_KIND_LOW_RANK:
      block.kind = BlockKind::kLowRank;
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "invalid config: blocks[", index, "] \"", absl::CHexEscape(config.name().substr(0, 128)),
          "\": kind has value ", static_cast<int>(config.kind()),
          "; use BLOCK_KIND_DENSE (1), BLOCK_KIND_DIAGONAL (2), BLOCK_KIND_KRONECKER (3) or "
          "BLOCK_KIND_LOW_RANK (4)"));
  }
  // Sizes beyond int64 become -1, which validation refuses with the block's name.
  auto size = [](uint64_t value) -> int64_t {
    return value > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())
               ? -1
               : static_cast<int64_t>(value);
  };
  block.dim = size(config.dim());
  block.in_features = size(config.in_features());
  block.out_features = size(config.out_features());
  block.bias = config.bias();
  block.max_rows = size(config.max_rows());
  return block;
}

}  // namespace

absl::StatusOr<Factor> FactorFromProto(int factor, const char* field) {
  switch (factor) {
    case v1::FACTOR_UNSPECIFIED:
      return Factor::kNone;
    case v1::FACTOR_ACTIVATIONS:
      return Factor::kActivations;
    case v1::FACTOR_OUTPUT_GRADIENTS:
      return Factor::kOutputGradients;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat(field, " has unknown value ", factor,
                       "; use FACTOR_ACTIVATIONS (1) or FACTOR_OUTPUT_GRADIENTS (2)"));
  }
}

v1::Factor FactorToProto(Factor factor) {
  switch (factor) {
    case Factor::kNone:
      return v1::FACTOR_UNSPECIFIED;
    case Factor::kActivations:
      return v1::FACTOR_ACTIVATIONS;
    case Factor::kOutputGradients:
      return v1::FACTOR_OUTPUT_GRADIENTS;
  }
  return v1::FACTOR_UNSPECIFIED;
}

v1::BlockKind BlockKindToProto(BlockKind kind) {
  switch (kind) {
    case BlockKind::kDense:
      return v1::BLOCK_KIND_DENSE;
    case BlockKind::kDiagonal:
      return v1::BLOCK_KIND_DIAGONAL;
    case BlockKind::kKronecker:
      return v1::BLOCK_KIND_KRONECKER;
    case BlockKind::kLowRank:
      return v1::BLOCK_KIND_LOW_RANK;
  }
  return v1::BLOCK_KIND_UNSPECIFIED;
}

absl::StatusOr<SessionOptions> SessionOptionsFromProto(const v1::SessionConfig& config) {
  SessionOptions options;
  if (config.dim() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid config: dim ", config.dim(), " is too large"));
  }
  options.dim = static_cast<int64_t>(config.dim());
  // Proto3 enums are open: a newer client may send a value this server has never heard
  // of, which must be refused rather than silently treated as dense.
  switch (static_cast<int>(config.representation())) {
    case v1::REPRESENTATION_UNSPECIFIED:
    case v1::REPRESENTATION_DENSE:
      options.representation = Representation::kDense;
      break;
    case v1::REPRESENTATION_DIAGONAL:
      options.representation = Representation::kDiagonal;
      break;
    case v1::REPRESENTATION_LAYERED:
      if (config.blocks_size() == 0) {
        return absl::InvalidArgumentError(
            "invalid config: representation is REPRESENTATION_LAYERED but blocks is empty; "
            "give the blocks");
      }
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("invalid config: representation has unknown value ",
                       static_cast<int>(config.representation()),
                       "; use REPRESENTATION_DENSE (1), REPRESENTATION_DIAGONAL (2) or "
                       "REPRESENTATION_LAYERED (3) with blocks"));
  }
  if (config.blocks_size() > 0) {
    const int representation = static_cast<int>(config.representation());
    if (representation != v1::REPRESENTATION_UNSPECIFIED &&
        representation != v1::REPRESENTATION_LAYERED) {
      return absl::InvalidArgumentError(
          absl::StrCat("invalid config: blocks are given, so representation must be "
                       "REPRESENTATION_LAYERED or unspecified, not ",
                       v1::Representation_Name(config.representation())));
    }
    if (config.blocks_size() > kMaxBlocks) {
      return absl::InvalidArgumentError(absl::StrCat("invalid config: blocks has ",
                                                     config.blocks_size(), " entries; at most ",
                                                     kMaxBlocks, " are allowed"));
    }
    options.blocks.reserve(config.blocks_size());
    for (int i = 0; i < config.blocks_size(); ++i) {
      absl::StatusOr<BlockOptions> block = BlockOptionsFromProto(i, config.blocks(i));
      if (!block.ok()) return block.status();
      options.blocks.push_back(*std::move(block));
    }
    absl::StatusOr<int64_t> total = LayeredDim(options.blocks);
    if (!total.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("invalid config: ", total.status().message()));
    }
    if (config.dim() == 0) {
      options.dim = *total;
    } else if (options.dim != *total) {
      return absl::InvalidArgumentError(
          absl::StrCat("invalid config: dim is ", config.dim(), " but the blocks hold ", *total,
                       " parameters; set dim to their total or leave it 0"));
    }
  }
  switch (static_cast<int>(config.kronecker_damping())) {
    case v1::KRONECKER_DAMPING_UNSPECIFIED:
    case v1::KRONECKER_DAMPING_EXACT:
      options.kronecker_damping = KroneckerDamping::kExact;
      break;
    case v1::KRONECKER_DAMPING_FACTORED:
      options.kronecker_damping = KroneckerDamping::kFactored;
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("invalid config: kronecker_damping has unknown value ",
                       static_cast<int>(config.kronecker_damping()),
                       "; use KRONECKER_DAMPING_EXACT (1) or KRONECKER_DAMPING_FACTORED (2)"));
  }
  options.factor_refresh_period =
      config.factor_refresh_period() == 0 ? 1 : config.factor_refresh_period();
  options.centered = config.centered();
  // The wire default 0 means "keep everything" (docs/design.md section 3).
  options.decay = config.decay() == 0.0 ? 1.0 : config.decay();
  options.damping = config.damping();
  options.float32_products = config.float32_products();
  if (absl::Status status = options.Validate(); !status.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("invalid config: ", status.message()));
  }
  return options;
}

v1::Representation RepresentationToProto(Representation representation) {
  switch (representation) {
    case Representation::kDense:
      return v1::REPRESENTATION_DENSE;
    case Representation::kDiagonal:
      return v1::REPRESENTATION_DIAGONAL;
  }
  return v1::REPRESENTATION_UNSPECIFIED;
}

void SessionOptionsToProto(const SessionOptions& options, v1::SessionConfig* config) {
  config->set_dim(static_cast<uint64_t>(options.dim));
  config->set_representation(RepresentationToProto(options.representation));
  config->set_centered(options.centered);
  config->set_decay(options.decay);
  config->set_damping(options.damping);
  config->set_float32_products(options.float32_products);
  config->clear_blocks();
  if (options.layered()) config->set_representation(v1::REPRESENTATION_LAYERED);
  for (const BlockOptions& block : options.blocks) {
    v1::BlockConfig* out = config->add_blocks();
    out->set_name(block.name);
    out->set_kind(BlockKindToProto(block.kind));
    out->set_dim(static_cast<uint64_t>(block.dim));
    out->set_in_features(static_cast<uint64_t>(block.in_features));
    out->set_out_features(static_cast<uint64_t>(block.out_features));
    out->set_bias(block.bias);
    out->set_max_rows(static_cast<uint64_t>(block.max_rows));
  }
  config->set_kronecker_damping(options.kronecker_damping == KroneckerDamping::kFactored
                                    ? v1::KRONECKER_DAMPING_FACTORED
                                    : v1::KRONECKER_DAMPING_EXACT);
  config->set_factor_refresh_period(static_cast<uint32_t>(options.factor_refresh_period));
}

void StatsToProto(const SessionStatsSnapshot& stats, v1::SessionStats* out) {
  out->set_sample_count(stats.sample_count);
  out->set_weight_sum(stats.weight_sum);
  out->set_step_count(stats.step_count);
  auto* sequences = out->mutable_worker_sequences();
  sequences->clear();
  for (const auto& [worker, sequence] : stats.worker_sequences) (*sequences)[worker] = sequence;
  out->clear_blocks();
  for (const BlockStatsSnapshot& block : stats.blocks) {
    v1::BlockStats* b = out->add_blocks();
    b->set_name(block.name);
    b->set_sample_count(block.sample_count);
    b->set_weight_sum(block.weight_sum);
    b->set_output_gradient_sample_count(block.output_gradient_sample_count);
    b->set_output_gradient_weight_sum(block.output_gradient_weight_sum);
  }
}

void SessionToProto(const std::string& name, Session& session, v1::Session* out) {
  out->set_name(name);
  SessionOptionsToProto(session.options(), out->mutable_config());
  StatsToProto(session.Stats(), out->mutable_stats());
}

void SolverSummaryToProto(const SolverSummary& summary, v1::SolverSummary* out) {
  out->set_method(summary.method);
  out->set_residual(summary.residual);
  out->set_seconds(summary.seconds);
  out->set_factorization_cached(summary.factorization_cached);
  out->set_damping(summary.damping);
  out->set_kronecker_damping(summary.kronecker_damping);
  out->set_factor_age_steps(
      summary.factor_age_steps < 0 ? 0 : static_cast<uint64_t>(summary.factor_age_steps));
  out->set_block(summary.block);
  out->clear_blocks();
  for (const SolverSummary& block : summary.blocks) SolverSummaryToProto(block, out->add_blocks());
}

absl::Status ValidateStepAnswer(int answer, absl::string_view field) {
  if (v1::StepAnswer_IsValid(answer)) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      field, " is ", answer,
      ", not a StepAnswer (STEP_ANSWER_FULL 0, STEP_ANSWER_UPDATE 1, STEP_ANSWER_UPDATE_F32 2)"));
}

namespace {

template <typename Message>
void VectorsToProto(const StepResult& result, v1::StepAnswer answer, int64_t begin, int64_t end,
                    Message* out) {
  if (answer == v1::STEP_ANSWER_FULL) {
    out->mutable_natural_gradient()->Assign(result.natural_gradient.data() + begin,
                                            result.natural_gradient.data() + end);
  }
  if (answer == v1::STEP_ANSWER_UPDATE_F32) {
    common::AppendAsFloat32(
        absl::MakeConstSpan(result.update.data() + begin, static_cast<size_t>(end - begin)),
        out->mutable_update_f32());
  } else {
    out->mutable_update()->Assign(result.update.data() + begin, result.update.data() + end);
  }
}

}  // namespace

void StepChunkToProto(const StepResult& result, v1::StepAnswer answer, int64_t begin, int64_t end,
                      v1::StreamNaturalGradientStepResponse* out) {
  VectorsToProto(result, answer, begin, end, out);
}

void StepResultToProto(const StepResult& result, v1::StepAnswer answer,
                       v1::NaturalGradientStepResponse* out) {
  VectorsToProto(result, answer, 0, result.update.size(), out);
  out->set_eta(result.eta);
  out->set_natural_norm_sq(result.natural_norm_sq);
  out->set_predicted_kl(result.predicted_kl);
  SolverSummaryToProto(result.solver, out->mutable_solver());
}

void FisherSummaryToProto(const FisherSummary& summary, const Session& session,
                          const EstimatePart& part, const SessionStatsSnapshot& stats,
                          v1::FisherSummary* out) {
  FisherSummaryToProto(summary, session.options(), stats, out);
  if (part.block < 0) return;
  const BlockOptions& block = session.layout().block(part.block);
  out->set_dim(static_cast<uint64_t>(session.PartRows(part)));
  out->set_block(block.name);
  out->set_factor(FactorToProto(part.factor));
  out->set_block_kind(BlockKindToProto(block.kind));
  // The counters of the part: the block's rows and W (or its factor's).
  const BlockStatsSnapshot& counts = stats.blocks[part.block];
  const bool gradients = part.factor == Factor::kOutputGradients;
  out->set_sample_count(gradients ? counts.output_gradient_sample_count : counts.sample_count);
  out->set_weight_sum(gradients ? counts.output_gradient_weight_sum : counts.weight_sum);
}

void FisherSummaryToProto(const FisherSummary& summary, const SessionOptions& options,
                          const SessionStatsSnapshot& stats, v1::FisherSummary* out) {
  out->set_dim(static_cast<uint64_t>(options.dim));
  out->set_representation(options.layered() ? v1::REPRESENTATION_LAYERED
                                            : RepresentationToProto(options.representation));
  out->set_centered(options.centered);
  out->set_sample_count(stats.sample_count);
  out->set_weight_sum(stats.weight_sum);
  out->set_trace(summary.trace);
  out->set_frobenius_norm(summary.frobenius_norm);
  out->set_has_eigenvalues(summary.has_eigenvalues);
  if (summary.has_eigenvalues) {
    out->set_min_eigenvalue(summary.min_eigenvalue);
    out->set_max_eigenvalue(summary.max_eigenvalue);
    out->set_condition_number(summary.condition_number);
  }
}

}  // namespace fisherd::server
