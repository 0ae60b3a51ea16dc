#include "core/session.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "core/layered_statistics.h"

namespace fisherd {

double StepSize(const StepOptions& options, double natural_norm_sq) {
  const double fallback = options.learning_rate > 0.0 ? options.learning_rate : 1.0;
  if (options.kl_budget <= 0.0 || natural_norm_sq <= 0.0) return fallback;
  const double eta = std::sqrt(2.0 * options.kl_budget / natural_norm_sq);
  return options.learning_rate > 0.0 ? std::min(eta, options.learning_rate) : eta;
}

namespace {

absl::Status CheckVector(const Eigen::VectorXd& v, int64_t dim, const char* field) {
  if (v.size() != dim) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " has ", v.size(), " entries, the session's dim is ", dim));
  }
  for (Eigen::Index i = 0; i < v.size(); ++i) {
    if (!std::isfinite(v[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, "[", i, "] is ", v[i], "; values must be finite"));
    }
  }
  return absl::OkStatus();
}

// Every question about F needs some weight first: zero rows, or only zero weights,
// leave it undefined (ScoreStatistics::CheckReady names what is missing).
absl::Status CheckHasSamples(const ScoreStatistics& statistics, const char* what) {
  return statistics.CheckReady(what);
}

}  // namespace

Session::Session(const SessionOptions& options)
    : options_(options),
      layout_(options.blocks),
      statistics_entries_per_row_(
          options.layered() || options.representation == Representation::kDense ? options.dim : 1),
      statistics_(ScoreStatistics::Create(options)) {}

AddResult Session::AddScores(const std::string& worker_id, uint64_t sequence,
                             const PreparedBatch& batch) {
  // Without a log nothing can fail.
  return *AddScores(worker_id, sequence, batch, LogBatchFn());
}

absl::StatusOr<AddResult> Session::AddScores(const std::string& worker_id, uint64_t sequence,
                                             const PreparedBatch& batch, const LogBatchFn& log) {
  absl::MutexLock lock(&mu_);
  AddResult result;
  result.sequence = sequence;
  if (!worker_id.empty()) {
    auto it = worker_sequences_.find(worker_id);
    if (it != worker_sequences_.end() && sequence <= it->second) {
      result.duplicate = true;
      result.sequence = it->second;
      result.sample_count = statistics_->sample_count();
      result.lsn = last_lsn_;
      return result;
    }
  }
  // Logged before anything changes: a full log then leaves the session as it was.
  if (log) {
    absl::StatusOr<uint64_t> lsn = log();
    if (!lsn.ok()) return lsn.status();
    last_lsn_ = result.lsn = *lsn;
  }
  if (!worker_id.empty()) worker_sequences_[worker_id] = sequence;
  statistics_->Add(batch);
  result.sample_count = statistics_->sample_count();
  return result;
}

absl::StatusOr<StepResult> Session::Step(const Eigen::VectorXd& g, const StepOptions& options) {
  return Step(g, options, LogStepFn());
}

absl::StatusOr<StepResult> Session::Step(const Eigen::VectorXd& g, const StepOptions& options,
                                         const LogStepFn& log) {
  if (absl::Status status = options.Validate(); !status.ok()) return status;
  if (absl::Status status = CheckVector(g, options_.dim, "gradient"); !status.ok()) {
    return status;
  }
  const double damping = options.damping.value_or(options_.damping);

  absl::MutexLock lock(&mu_);
  if (absl::Status status = CheckHasSamples(*statistics_, "a step"); !status.ok()) return status;
  absl::StatusOr<SolveResult> solved = statistics_->Solve(g, damping);
  StepEffect effect;
  statistics_->TakeRefreshes(&effect.refreshes);
  if (!solved.ok()) {
    // A solve that failed in a later block may have refreshed an earlier one: state
    // that replay must reproduce.
    if (log && !effect.refreshes.empty()) {
      absl::StatusOr<uint64_t> lsn = log(effect);
      if (lsn.ok()) {
        last_lsn_ = *lsn;
      } else {
        for (const FactorRefresh& refresh : effect.refreshes) statistics_->ForgetRefresh(refresh);
      }
    }
    return solved.status();
  }

  StepResult result;
  result.natural_gradient = std::move(solved->natural_gradient);
  result.solver = std::move(solved->summary);
  const std::optional<double> curvature = solved->curvature;
  result.natural_norm_sq = g.dot(result.natural_gradient);
  result.eta = StepSize(options, result.natural_norm_sq);
  result.update = -result.eta * result.natural_gradient;
  // n^T F n = n^T F_lambda n - lambda |n|^2 = g^T n - lambda |n|^2: the undamped
  // quadratic form without another pass over F, unless the statistics measured it
  // (Kronecker blocks, whose damped metric need not be F + lambda I). Clamped at 0
  // against round-off.
  const double n_f_n = curvature.has_value() ? *curvature
                                             : result.natural_norm_sq -
                                                   damping * result.natural_gradient.squaredNorm();
  result.predicted_kl = 0.5 * result.eta * result.eta * std::max(0.0, n_f_n);

  effect.taken = true;
  if (!options.skip_decay && options_.decay < 1.0) effect.decay = options_.decay;
  if (log) {
    absl::StatusOr<uint64_t> lsn = log(effect);
    if (!lsn.ok()) {
      // Nothing of the step may stay that the log does not have.
      for (const FactorRefresh& refresh : effect.refreshes) statistics_->ForgetRefresh(refresh);
      return lsn.status();
    }
    last_lsn_ = result.lsn = *lsn;
  }
  statistics_->StepTaken();
  if (effect.decay < 1.0) statistics_->Decay(effect.decay);
  ++step_count_;
  return result;
}

void Session::set_incarnation(uint64_t lsn) {
  absl::MutexLock lock(&mu_);
  incarnation_ = lsn;
  last_lsn_ = std::max(last_lsn_, lsn);
}

uint64_t Session::last_lsn() {
  absl::MutexLock lock(&mu_);
  return last_lsn_;
}

void Session::SaveState(const std::function<void(const SessionCounters&, ScoreStatistics&)>& save) {
  absl::MutexLock lock(&mu_);
  SessionCounters counters;
  counters.lsn = last_lsn_;
  counters.step_count = step_count_;
  counters.worker_sequences = worker_sequences_;
  save(counters, *statistics_);
}

absl::Status Session::RestoreState(const SessionCounters& counters, StateVisitor& visitor) {
  absl::MutexLock lock(&mu_);
  statistics_->VisitState(visitor);
  if (absl::Status status = visitor.status(); !status.ok()) return status;
  last_lsn_ = counters.lsn;
  step_count_ = counters.step_count;
  worker_sequences_ = counters.worker_sequences;
  return absl::OkStatus();
}

absl::Status Session::ReplayBatch(const std::string& worker_id, uint64_t sequence,
                                  const PreparedBatch& batch, uint64_t lsn) {
  absl::MutexLock lock(&mu_);
  if (!worker_id.empty()) {
    auto it = worker_sequences_.find(worker_id);
    if (it != worker_sequences_.end() && sequence <= it->second) {
      return absl::DataLossError(absl::StrCat("the log holds batch ", sequence, " of worker \"",
                                              worker_id, "\" again after sequence ", it->second,
                                              " was applied"));
    }
    worker_sequences_[worker_id] = sequence;
  }
  statistics_->Add(batch);
  last_lsn_ = lsn;
  return absl::OkStatus();
}

absl::Status Session::ReplayStep(const StepEffect& effect, uint64_t lsn) {
  if (!(effect.decay > 0.0 && effect.decay <= 1.0)) {
    return absl::DataLossError(
        absl::StrCat("a logged step has decay ", effect.decay, " outside (0, 1]"));
  }
  absl::MutexLock lock(&mu_);
  for (const FactorRefresh& refresh : effect.refreshes) {
    if (absl::Status status = statistics_->ReplayRefresh(refresh); !status.ok()) return status;
  }
  if (effect.taken) {
    statistics_->StepTaken();
    if (effect.decay < 1.0) statistics_->Decay(effect.decay);
    ++step_count_;
  }
  last_lsn_ = lsn;
  return absl::OkStatus();
}

absl::StatusOr<FisherVectorProductResult> Session::FisherVectorProduct(const Eigen::VectorXd& v) {
  if (absl::Status status = CheckVector(v, options_.dim, "vector"); !status.ok()) {
    return status;
  }
  absl::MutexLock lock(&mu_);
  if (absl::Status status = CheckHasSamples(*statistics_, "a Fisher-vector product");
      !status.ok()) {
    return status;
  }
  FisherVectorProductResult result;
  result.product = statistics_->Multiply(v);
  result.quadratic_kl = 0.5 * v.dot(result.product);
  return result;
}

absl::StatusOr<FisherSummary> Session::Summarize(bool with_eigenvalues) {
  absl::MutexLock lock(&mu_);
  if (absl::Status status = CheckHasSamples(*statistics_, "the estimate"); !status.ok()) {
    return status;
  }
  return statistics_->Summarize(with_eigenvalues);
}

absl::Status Session::CopyEntries(int64_t begin, int64_t count, double* out) {
  if (begin < 0 || count < 0 || begin > options_.dim - count) {
    return absl::InvalidArgumentError(absl::StrCat("rows [", begin, ", ", begin + count,
                                                   ") are outside [0, ", options_.dim, ")"));
  }
  absl::MutexLock lock(&mu_);
  if (absl::Status status = CheckHasSamples(*statistics_, "the estimate"); !status.ok()) {
    return status;
  }
  statistics_->CopyEntries(begin, count, out);
  return absl::OkStatus();
}

uint64_t Session::SampleCount() {
  absl::MutexLock lock(&mu_);
  return statistics_->sample_count();
}

SessionStatsSnapshot Session::Stats() {
  absl::MutexLock lock(&mu_);
  return StatsLocked();
}

SessionStatsSnapshot Session::StatsLocked() {
  SessionStatsSnapshot snapshot;
  snapshot.sample_count = statistics_->sample_count();
  snapshot.weight_sum = statistics_->weight_sum();
  snapshot.step_count = step_count_;
  snapshot.worker_sequences = worker_sequences_;
  if (options_.layered()) {
    const auto& layered = static_cast<const LayeredStatistics&>(*statistics_);
    snapshot.blocks.reserve(layout_.size());
    for (int64_t i = 0; i < layout_.size(); ++i) {
      const ScoreStatistics& block = layered.block(i);
      BlockStatsSnapshot stats;
      stats.name = layout_.block(i).name;
      const ScoreStatistics* activations = block.FactorStatistics(Factor::kActivations);
      const ScoreStatistics* gradients = block.FactorStatistics(Factor::kOutputGradients);
      const ScoreStatistics& first = activations != nullptr ? *activations : block;
      stats.sample_count = first.sample_count();
      stats.weight_sum = first.weight_sum();
      if (gradients != nullptr) {
        stats.output_gradient_sample_count = gradients->sample_count();
        stats.output_gradient_weight_sum = gradients->weight_sum();
      }
      snapshot.blocks.push_back(std::move(stats));
    }
  }
  return snapshot;
}

absl::Status Session::CheckPart(const EstimatePart& part) const {
  if (part.block < 0) {
    if (part.factor != Factor::kNone) {
      return absl::InvalidArgumentError(
          absl::StrCat("factor ", FactorName(part.factor), " needs a block"));
    }
    return absl::OkStatus();
  }
  if (layout_.empty()) {
    return absl::InvalidArgumentError("the session has no blocks; leave block empty");
  }
  if (part.block >= layout_.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "block index ", part.block, " is outside the session's ", layout_.size(), " blocks"));
  }
  const BlockOptions& block = layout_.block(part.block);
  const bool kronecker = block.kind == BlockKind::kKronecker;
  if (!kronecker && part.factor != Factor::kNone) {
    return absl::InvalidArgumentError(
        absl::StrCat("block \"", block.name, "\" (", BlockKindName(block.kind),
                     ") has no factors: leave factor FACTOR_UNSPECIFIED"));
  }
  return absl::OkStatus();
}

int64_t Session::PartRows(const EstimatePart& part) const {
  if (part.block < 0) return options_.dim;
  const BlockOptions& block = layout_.block(part.block);
  return part.factor == Factor::kNone ? block.ParameterCount() : block.FactorDim(part.factor);
}

int64_t Session::PartEntriesPerRow(const EstimatePart& part) const {
  if (part.block < 0) return statistics_entries_per_row_;
  const BlockOptions& block = layout_.block(part.block);
  return block.kind == BlockKind::kDiagonal ? 1 : PartRows(part);
}

const ScoreStatistics& Session::Part(const EstimatePart& part) const {
  if (part.block < 0) return *statistics_;
  const ScoreStatistics& block =
      static_cast<const LayeredStatistics&>(*statistics_).block(part.block);
  return part.factor == Factor::kNone ? block : *block.FactorStatistics(part.factor);
}

absl::StatusOr<PartReading> Session::ReadPart(const EstimatePart& part, bool with_eigenvalues,
                                              bool with_entries) {
  if (absl::Status status = CheckPart(part); !status.ok()) return status;
  PartReading reading;
  // Allocated outside the lock: ingestion waits only for the copy itself.
  if (with_entries) {
    reading.entries.resize(static_cast<size_t>(PartRows(part) * PartEntriesPerRow(part)));
  }
  absl::MutexLock lock(&mu_);
  const ScoreStatistics& statistics = Part(part);
  if (absl::Status status = CheckHasSamples(statistics, "the estimate"); !status.ok()) {
    return status;
  }
  absl::StatusOr<FisherSummary> summary = statistics.Summarize(with_eigenvalues);
  if (!summary.ok()) return summary.status();
  reading.summary = *std::move(summary);
  reading.stats = StatsLocked();
  if (with_entries) statistics.CopyEntries(0, PartRows(part), reading.entries.data());
  return reading;
}

absl::Status Session::CopyPartEntries(const EstimatePart& part, int64_t begin, int64_t count,
                                      double* out) {
  if (absl::Status status = CheckPart(part); !status.ok()) return status;
  const int64_t rows = PartRows(part);
  if (begin < 0 || count < 0 || begin > rows - count) {
    return absl::InvalidArgumentError(
        absl::StrCat("rows [", begin, ", ", begin + count, ") are outside [0, ", rows, ")"));
  }
  absl::MutexLock lock(&mu_);
  const ScoreStatistics& statistics = Part(part);
  if (absl::Status status = CheckHasSamples(statistics, "the estimate"); !status.ok()) {
    return status;
  }
  statistics.CopyEntries(begin, count, out);
  return absl::OkStatus();
}

}  // namespace fisherd
