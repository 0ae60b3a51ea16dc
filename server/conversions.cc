#include "server/conversions.h"

#include <cstdint>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace fisherd::server {

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
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "invalid config: representation has unknown value ",
          static_cast<int>(config.representation()),
          "; use REPRESENTATION_DENSE (1) or REPRESENTATION_DIAGONAL (2)"));
  }
  options.centered = config.centered();
  // The wire default 0 means "keep everything" (DESIGN.md section 3).
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
}

void StatsToProto(const SessionStatsSnapshot& stats, v1::SessionStats* out) {
  out->set_sample_count(stats.sample_count);
  out->set_weight_sum(stats.weight_sum);
  out->set_step_count(stats.step_count);
  auto* sequences = out->mutable_worker_sequences();
  sequences->clear();
  for (const auto& [worker, sequence] : stats.worker_sequences) (*sequences)[worker] = sequence;
}

void SessionToProto(const std::string& name, Session& session, v1::Session* out) {
  out->set_name(name);
  SessionOptionsToProto(session.options(), out->mutable_config());
  StatsToProto(session.Stats(), out->mutable_stats());
}

void SolverSummaryToProto(const SolverSummary& summary, v1::SolverSummary* out) {
  out->set_method(summary.method);
  out->set_iterations(summary.iterations < 0 ? 0 : static_cast<uint32_t>(summary.iterations));
  out->set_residual(summary.residual);
  out->set_seconds(summary.seconds);
  out->set_factorization_cached(summary.factorization_cached);
  out->set_damping(summary.damping);
}

void StepResultToProto(const StepResult& result, v1::NaturalGradientStepResponse* out) {
  out->mutable_natural_gradient()->Assign(
      result.natural_gradient.data(),
      result.natural_gradient.data() + result.natural_gradient.size());
  out->mutable_update()->Assign(result.update.data(),
                                result.update.data() + result.update.size());
  out->set_eta(result.eta);
  out->set_natural_norm_sq(result.natural_norm_sq);
  out->set_predicted_kl(result.predicted_kl);
  SolverSummaryToProto(result.solver, out->mutable_solver());
}

void FisherSummaryToProto(const FisherSummary& summary, const SessionOptions& options,
                          const SessionStatsSnapshot& stats, v1::FisherSummary* out) {
  out->set_dim(static_cast<uint64_t>(options.dim));
  out->set_representation(RepresentationToProto(options.representation));
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
