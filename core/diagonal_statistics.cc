#include "core/diagonal_statistics.h"

#include <chrono>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"

namespace fisherd {

DiagonalStatistics::DiagonalStatistics(const SessionOptions& options)
    : dim_(options.dim),
      centered_(options.centered),
      squares_sum_(Eigen::VectorXd::Zero(options.dim)),
      mean_sum_(Eigen::VectorXd::Zero(options.dim)) {}

void DiagonalStatistics::Add(const PreparedBatch& batch) {
  squares_sum_ += batch.weighted_squares;
  mean_sum_ += batch.weighted_sum;
  weight_sum_ += batch.weight_sum;
  sample_count_ += static_cast<uint64_t>(batch.rows);
}

void DiagonalStatistics::Decay(double rho) {
  squares_sum_ *= rho;
  mean_sum_ *= rho;
  weight_sum_ *= rho;
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
