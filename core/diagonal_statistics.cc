#include "core/diagonal_statistics.h"

#include <chrono>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"

namespace fisherd {
namespace {

// Below a decay factor of about 1e-150 (log(1e-150) = -345.4) the next Add of weighted
// rows folds it into the raw sums, so that exp(-log_scale_) stays below 1e150.
constexpr double kLogMinScale = -345.0;

}  // namespace

DiagonalStatistics::DiagonalStatistics(const SessionOptions& options)
    : dim_(options.dim),
      centered_(options.centered),
      squares_sum_(Eigen::VectorXd::Zero(options.dim)),
      mean_sum_(Eigen::VectorXd::Zero(options.dim)) {}

double DiagonalStatistics::weight_sum() const {
  // May underflow to 0 (the true W rounded) after thousands of decays without rows;
  // nothing that computes F reads it.
  return std::exp(log_scale_) * weight_sum_;
}

absl::Status DiagonalStatistics::CheckReady(absl::string_view what) const {
  // The raw weight: F = diag(M)_raw / W_raw is defined whatever the decay factor.
  if (weight_sum_ > 0.0) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat("the session has no weighted samples yet (", sample_count_,
                   " rows, total weight 0): stream scores before asking for ", what));
}

void DiagonalStatistics::Add(const PreparedBatch& batch) {
  // A batch of weight 0 adds exact zeros: it neither needs a fold nor may trigger one,
  // which would shrink the only weighted sums towards denormals for nothing.
  const bool weighted = batch.weight_sum > 0.0;
  if (weighted && log_scale_ < kLogMinScale) {
    // The old sums shrink to their true size against the rows about to arrive; below
    // about exp(-745) they become 0, the true relative size rounded.
    const double scale = std::exp(log_scale_);
    squares_sum_ *= scale;
    mean_sum_ *= scale;
    weight_sum_ *= scale;
    log_scale_ = 0.0;
  }
  const double inverse_scale = weighted ? std::exp(-log_scale_) : 1.0;  // <= 1e150
  squares_sum_ += inverse_scale * batch.weighted_squares;
  mean_sum_ += inverse_scale * batch.weighted_sum;
  weight_sum_ += inverse_scale * batch.weight_sum;
  sample_count_ += static_cast<uint64_t>(batch.rows);
}

void DiagonalStatistics::Decay(double rho) {
  // F = diag(M)_raw / W_raw does not depend on log_scale_: no sum changes.
  log_scale_ += std::log(rho);
}

void DiagonalStatistics::VisitState(StateVisitor& visitor) {
  visitor.Count("sample_count", &sample_count_);
  visitor.Scalar("weight_sum", &weight_sum_);
  visitor.Scalar("log_scale", &log_scale_);
  VisitSizedVector(visitor, "squares_sum", dim_, &squares_sum_);
  VisitSizedVector(visitor, "mean_sum", dim_, &mean_sum_);
}

Eigen::VectorXd DiagonalStatistics::Estimate(int64_t begin, int64_t count) const {
  Eigen::VectorXd estimate = squares_sum_.segment(begin, count) / weight_sum_;
  if (centered_) {
    estimate -= (mean_sum_.segment(begin, count) / weight_sum_).cwiseAbs2();
    estimate = estimate.cwiseMax(0.0);
  }
  return estimate;
}

Eigen::VectorXd DiagonalStatistics::Multiply(const Eigen::VectorXd& v) const {
  return Estimate().cwiseProduct(v);
}

absl::StatusOr<SolveResult> DiagonalStatistics::Solve(const Eigen::VectorXd& g, double damping) {
  const auto start = std::chrono::steady_clock::now();
  const Eigen::VectorXd damped = Estimate().array() + damping;
  // Same rule as the dense pivots: an entry this far below the largest is zero.
  const double tiny = static_cast<double>(dim_) * std::numeric_limits<double>::epsilon() *
                      std::max(damped.maxCoeff(), std::numeric_limits<double>::min());
  Eigen::Index smallest = 0;
  if (damped.minCoeff(&smallest) <= tiny) {
    return absl::FailedPreconditionError(absl::StrCat(
        "F + lambda I is singular: diagonal entry ", smallest, " is ", damped[smallest],
        " (lambda = ", damping, "); set a positive damping or stream more samples"));
  }
  SolveResult result;
  result.natural_gradient = g.cwiseQuotient(damped);
  result.summary.method = "diagonal";
  result.summary.damping = damping;
  const double g_norm = g.norm();
  result.summary.residual =
      g_norm > 0.0 ? (damped.cwiseProduct(result.natural_gradient) - g).norm() / g_norm : 0.0;
  result.summary.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

absl::StatusOr<FisherSummary> DiagonalStatistics::Summarize(bool with_eigenvalues) const {
  const Eigen::VectorXd estimate = Estimate();
  FisherSummary summary;
  summary.dim = dim_;
  summary.trace = estimate.sum();
  summary.frobenius_norm = estimate.norm();
  if (with_eigenvalues) {
    summary.SetExtremeEigenvalues(estimate.minCoeff(), estimate.maxCoeff());
  }
  return summary;
}

void DiagonalStatistics::CopyEntries(int64_t begin, int64_t count, double* out) const {
  // GetFisher copies a long diagonal block by block: compute only this block.
  Eigen::Map<Eigen::VectorXd>(out, count) = Estimate(begin, count);
}

}  // namespace fisherd
