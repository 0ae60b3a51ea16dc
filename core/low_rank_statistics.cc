#include "core/low_rank_statistics.h"

#include <cblas.h>
#include <lapacke.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"

namespace fisherd {
namespace {

// Below a scale of about 1e-150 (log(1e-150) = -345.4) it is folded into the rows at
// the next Add of weighted rows, so that the 1 / sqrt(scale) new rows are multiplied by
// stays below 1e75 and never overflows. The same bound as DenseStatistics', whose
// low-rank start must fold at the same Adds (core/dense_statistics.cc, Materialize).
constexpr double kLogMinScale = -345.0;

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

LowRankStatistics::LowRankStatistics(const BlockOptions& block, const SessionOptions& session)
    : LowRankStatistics(block.dim, block.max_rows, session.centered) {}

LowRankStatistics::LowRankStatistics(int64_t dim, int64_t capacity, bool centered)
    : dim_(dim), capacity_(capacity), centered_(centered) {}

double LowRankStatistics::scale() const {
  // May underflow to 0 (the true scale rounded) after thousands of decays without rows.
  return std::exp(log_scale_);
}

void LowRankStatistics::Decay(double rho) { log_scale_ += std::log(rho); }

absl::Status LowRankStatistics::CheckReady(absl::string_view what) const {
  // The raw weight: F = c R^T R (c = 1 / |b|^2) is defined whatever the scale.
  if (coefficient_norm_sq_ > 0.0) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat("the session has no weighted samples yet (", sample_count_,
                   " rows, total weight 0): stream scores before asking for ", what));
}

void LowRankStatistics::Add(const PreparedBatch& batch) {
  if (rows_.rows() == 0) {
    rows_.resize(capacity_, dim_);
    coefficients_.resize(capacity_);
  }
  // Rows of weight 0 are exact zeros (sqrt(0) s): they take their place in the window
  // with factor 1 and neither need a fold nor trigger one, which would shrink the only
  // weighted rows towards denormals for nothing.
  const bool weighted = batch.weight_sum > 0.0;
  if (weighted && log_scale_ < kLogMinScale) {
    // Rows held shrink to their true relative size against the rows about to arrive
    // (exp of half the log: sqrt(scale) underflows later than scale would).
    const double root = std::exp(0.5 * log_scale_);
    rows_.topRows(count_) *= root;
    coefficients_.head(count_) *= root;
    log_scale_ = 0.0;
  }
  const double inverse_root_scale = weighted ? std::exp(-0.5 * log_scale_) : 1.0;
  const bool f32 = batch.root_weighted_f32.size() > 0;
  // Rows of the batch that would be overwritten within the same batch are skipped.
  int64_t i = std::max<int64_t>(0, batch.rows - capacity_);
  while (i < batch.rows) {
    const int64_t n = std::min(batch.rows - i, capacity_ - next_);
    auto out = rows_.middleRows(next_, n);
    if (f32) {
      out = batch.root_weighted_f32.middleRows(i, n).cast<double>() * inverse_root_scale;
    } else {
      out = batch.root_weighted.middleRows(i, n) * inverse_root_scale;
    }
    coefficients_.segment(next_, n) = batch.root_weights.segment(i, n) * inverse_root_scale;
    i += n;
    next_ = (next_ + n) % capacity_;
    count_ = std::min(capacity_, count_ + n);
  }
  coefficient_norm_sq_ = coefficients_.head(count_).squaredNorm();
  sample_count_ += static_cast<uint64_t>(batch.rows);
  factor_valid_ = false;
}

void LowRankStatistics::VisitState(StateVisitor& visitor) {
  visitor.Count("sample_count", &sample_count_);
  visitor.Scalar("log_scale", &log_scale_);
  visitor.Integer("row_count", &count_);
  visitor.Integer("next_row", &next_);
  if (visitor.loading()) {
    if (!visitor.status().ok()) return;
    // Add indexes the rows by these two: out of range they would write outside them.
    const bool valid_count =
        count_ >= 0 && count_ <= capacity_ && static_cast<uint64_t>(count_) <= sample_count_;
    const bool valid_next =
        next_ >= 0 && next_ < capacity_ && (count_ == capacity_ || next_ == count_);
    if (!valid_count || !valid_next) {
      visitor.Fail(absl::DataLossError(absl::StrCat(
          "snapshot of a low-rank window is inconsistent: row_count ", count_, ", next_row ", next_,
          " and sample_count ", sample_count_, " for a window of ", capacity_,
          " rows (expected 0 <= row_count <= min(capacity, sample_count), 0 <= next_row < "
          "capacity, and next_row == row_count until the window is full)")));
      return;
    }
  }
  // The Matrix and Vector a visitor takes are column-major and exactly sized: the rows
  // go through a copy.
  Eigen::MatrixXd rows(count_, dim_);
  Eigen::VectorXd coefficients(count_);
  if (!visitor.loading() && count_ > 0) {
    rows = rows_.topRows(count_);
    coefficients = coefficients_.head(count_);
  }
  VisitSizedMatrix(visitor, "rows", count_, dim_, &rows);
  VisitSizedVector(visitor, "coefficients", count_, &coefficients);
  if (!visitor.loading() || !visitor.status().ok()) return;
  if (count_ > 0) {
    rows_.resize(capacity_, dim_);  // the first Add's allocation, uninitialized likewise
    coefficients_.resize(capacity_);
    rows_.topRows(count_) = rows;
    coefficients_.head(count_) = coefficients;
    coefficient_norm_sq_ = coefficients_.head(count_).squaredNorm();  // as Add computes it
  } else {
    coefficient_norm_sq_ = 0.0;
  }
  factor_valid_ = false;
}

Eigen::VectorXd LowRankStatistics::HouseholderVector() const {
  if (!centered_ || count_ == 0) return Eigen::VectorXd();
  Eigen::VectorXd u = coefficients_.head(count_);
  u[0] += std::copysign(std::sqrt(coefficient_norm_sq_), u[0]);
  return u;
}

Eigen::MatrixXd LowRankStatistics::ToQ(const Eigen::VectorXd& u, Eigen::MatrixXd t) const {
  if (!centered_) return t;
  const double uu = u.squaredNorm();
  if (uu > 0.0) t.noalias() -= u * ((2.0 / uu) * (u.transpose() * t));
  return t.bottomRows(count_ - 1);
}

Eigen::MatrixXd LowRankStatistics::FromQ(const Eigen::VectorXd& u, const Eigen::MatrixXd& y) const {
  if (!centered_) return y;
  Eigen::MatrixXd padded(count_, y.cols());
  padded.row(0).setZero();
  padded.bottomRows(count_ - 1) = y;
  const double uu = u.squaredNorm();
  if (uu > 0.0) padded.noalias() -= u * ((2.0 / uu) * (u.transpose() * padded));
  return padded;
}

Eigen::MatrixXd LowRankStatistics::WoodburyGram(const Eigen::VectorXd& u) const {
  const int64_t k = count_;
  // Lower triangle of R R^T (R^T is dim x k column-major), made symmetric.
  Eigen::MatrixXd gram(k, k);
  cblas_dsyrk(CblasColMajor, CblasLower, CblasTrans, static_cast<int>(k), static_cast<int>(dim_),
              1.0, rows_.data(), static_cast<int>(dim_), 0.0, gram.data(), static_cast<int>(k));
  gram.triangularView<Eigen::StrictlyUpper>() = gram.transpose();
  if (!centered_) return gram;
  // Q Q^T is the trailing block of H (R R^T) H, reflected one side at a time.
  const Eigen::MatrixXd half = ToQ(u, std::move(gram)).transpose();
  return ToQ(u, half);
}

Eigen::VectorXd LowRankStatistics::DampedProduct(const Eigen::VectorXd& x, double damping) const {
  const Eigen::VectorXd u = HouseholderVector();
  const auto rows = rows_.topRows(count_);
  Eigen::VectorXd y = rows.transpose() * FromQ(u, ToQ(u, rows * x));
  y *= RawToEstimate();
  if (damping != 0.0) y += damping * x;
  return y;
}

Eigen::VectorXd LowRankStatistics::Multiply(const Eigen::VectorXd& v) const {
  return DampedProduct(v, 0.0);
}

absl::Status LowRankStatistics::Factor(double damping) {
  factor_valid_ = false;
  if (damping <= 0.0) {
    const int64_t rank = centered_ ? count_ - 1 : count_;
    if (rank < dim_) {
      return absl::FailedPreconditionError(
          absl::StrCat("F + lambda I is singular (lambda = 0 with ", count_, " rows held for dim ",
                       dim_, ", so F has rank at most ", rank, "); set a positive damping",
                       count_ < capacity_ ? " or stream more samples" : ""));
    }
    return absl::FailedPreconditionError(absl::StrCat(
        "lambda = 0 is not supported by the Woodbury step of a low-rank estimate (", count_,
        " rows held for dim ", dim_, "): the identity divides by lambda; set a positive damping"));
  }
  gram_factor_ = WoodburyGram(HouseholderVector());
  gram_factor_.diagonal().array() += damping / RawToEstimate();
  const lapack_int n = static_cast<lapack_int>(gram_factor_.rows());
  const lapack_int info =
      n == 0 ? 0 : LAPACKE_dpotrf(LAPACK_COL_MAJOR, 'L', n, gram_factor_.data(), n);
  if (info != 0) {
    // K = lambda |b|^2 I + Q Q^T with lambda > 0 is positive definite; only overflow
    // gets here.
    return absl::FailedPreconditionError(
        absl::StrCat("F + lambda I is not numerically positive definite (lambda = ", damping, ", ",
                     count_, " rows held for dim ", dim_, "); set a larger damping"));
  }
  factor_valid_ = true;
  factor_damping_ = damping;
  return absl::OkStatus();
}

Eigen::VectorXd LowRankStatistics::WoodburySolve(const Eigen::VectorXd& v) const {
  // (lambda I + c Q^T Q)^-1 v = (v - Q^T K^-1 Q v) / lambda, K = lambda/c I + Q Q^T = L L^T.
  const Eigen::VectorXd u = HouseholderVector();
  const auto rows = rows_.topRows(count_);
  Eigen::MatrixXd t = ToQ(u, rows * v);
  const auto factor = gram_factor_.triangularView<Eigen::Lower>();
  factor.solveInPlace(t);
  factor.transpose().solveInPlace(t);
  return (v - rows.transpose() * FromQ(u, t)) / factor_damping_;
}

absl::StatusOr<SolveResult> LowRankStatistics::Solve(const Eigen::VectorXd& g, double damping) {
  const auto start = std::chrono::steady_clock::now();
  SolveResult result;
  result.summary.method = "woodbury";
  result.summary.damping = damping;
  result.summary.factorization_cached = factor_valid_ && factor_damping_ == damping;
  if (!result.summary.factorization_cached) {
    if (absl::Status status = Factor(damping); !status.ok()) return status;
  }
  result.natural_gradient = WoodburySolve(g);
  const double g_norm = g.norm();
  result.summary.residual =
      g_norm > 0.0 ? (DampedProduct(result.natural_gradient, damping) - g).norm() / g_norm : 0.0;
  result.summary.seconds = SecondsSince(start);
  return result;
}

absl::StatusOr<FisherSummary> LowRankStatistics::Summarize(bool with_eigenvalues) const {
  const double c = RawToEstimate();
  const Eigen::MatrixXd gram = WoodburyGram(HouseholderVector());
  FisherSummary summary;
  summary.dim = dim_;
  // F = c Q^T Q: trace(F) = c trace(Q Q^T) and |F|_F = c |Q Q^T|_F.
  summary.trace = c * gram.trace();
  summary.frobenius_norm = c * gram.norm();
  if (!with_eigenvalues) return summary;

  const int64_t k = gram.rows();
  // The nonzero eigenvalues of c Q^T Q and c Q Q^T agree: decompose the smaller.
  const int64_t n = std::min(k, dim_);
  Eigen::MatrixXd matrix(n, n);
  if (k <= dim_) {
    matrix = c * gram;
  } else {
    CopyEntries(0, dim_, matrix.data());  // symmetric, so row-major == column-major
  }
  Eigen::VectorXd eigenvalues(n);
  if (n > 0) {
    const lapack_int info =
        LAPACKE_dsyevd(LAPACK_COL_MAJOR, 'N', 'L', static_cast<lapack_int>(n), matrix.data(),
                       static_cast<lapack_int>(n), eigenvalues.data());
    if (info != 0) {
      return absl::InternalError(absl::StrCat("eigenvalue solver dsyevd failed, info = ", info));
    }
  }
  // k' < dim: the other dim - k' eigenvalues are exactly 0.
  const bool has_zeros = n < dim_;
  const double min = n == 0 ? 0.0 : eigenvalues.minCoeff();
  const double max = n == 0 ? 0.0 : eigenvalues.maxCoeff();
  summary.SetExtremeEigenvalues(has_zeros ? std::min(min, 0.0) : min,
                                has_zeros ? std::max(max, 0.0) : max);
  return summary;
}

void LowRankStatistics::CopyEntries(int64_t begin, int64_t count, double* out) const {
  // Rows [begin, begin + count) of F, written row-major, are its columns (F is
  // symmetric): c Q^T Q[:, begin:begin+count] = c R^T FromQ(ToQ(R[:, begin:...])).
  const Eigen::VectorXd u = HouseholderVector();
  const auto rows = rows_.topRows(count_);
  Eigen::Map<Eigen::MatrixXd> block(out, dim_, count);
  block.noalias() = rows.transpose() * FromQ(u, ToQ(u, rows.middleCols(begin, count)));
  block *= RawToEstimate();
}

}  // namespace fisherd
