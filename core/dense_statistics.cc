#include "core/dense_statistics.h"

#include <cblas.h>
#include <lapacke.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"

namespace fisherd {
namespace {

// Below this, scale_ is folded into the stored sums so that 1 / scale_ (the alpha
// of later rank-k updates) never overflows however many decayed steps are taken.
constexpr double kMinScale = 1e-150;

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

DenseStatistics::DenseStatistics(const SessionOptions& options)
    : dim_(options.dim),
      centered_(options.centered),
      // Uninitialized on purpose: untouched pages of a large allocation are not
      // resident, so a session in its low-rank start costs only its rows.
      storage_(options.dim, options.dim),
      mean_sum_(Eigen::VectorXd::Zero(options.dim)),
      max_held_rows_(options.dim / kLowRankRowsPerDim),
      factor_diagonal_(Eigen::VectorXd::Zero(options.dim)) {}

void DenseStatistics::Add(const PreparedBatch& batch) {
  if (holding_rows() && held_count_ + batch.rows > max_held_rows_) Materialize();
  if (holding_rows()) {
    HoldRows(batch);
  } else if (batch.root_weighted_f32.size() > 0) {
    AddFloat32(batch);
  } else {
    // root_weighted is rows x dim row-major, which is R^T (dim x rows) column-major:
    // upper(storage) += (1 / scale_) R^T R in one rank-k update.
    cblas_dsyrk(CblasColMajor, CblasUpper, CblasNoTrans, static_cast<int>(dim_),
                static_cast<int>(batch.rows), 1.0 / scale_, batch.root_weighted.data(),
                static_cast<int>(dim_), 1.0, storage_.data(), static_cast<int>(dim_));
  }
  mean_sum_ += batch.weighted_sum;
  weight_sum_ += batch.weight_sum;
  sample_count_ += static_cast<uint64_t>(batch.rows);
  factor_valid_ = false;
}

void DenseStatistics::HoldRows(const PreparedBatch& batch) {
  if (held_rows_.rows() == 0) {
    held_rows_.resize(max_held_rows_, dim_);
    held_coefficients_.resize(max_held_rows_);
  }
  const double inverse_root_scale = 1.0 / std::sqrt(scale_);
  held_coefficients_.segment(held_count_, batch.rows) = batch.root_weights * inverse_root_scale;
  auto rows = held_rows_.middleRows(held_count_, batch.rows);
  if (batch.root_weighted_f32.size() > 0) {
    rows = batch.root_weighted_f32.cast<double>() * inverse_root_scale;
  } else {
    rows = batch.root_weighted * inverse_root_scale;
  }
  held_count_ += batch.rows;
}

void DenseStatistics::Materialize() {
  const int64_t n = dim_;
  for (int64_t j = 0; j < n; ++j) std::fill_n(storage_.data() + j * n, j + 1, 0.0);
  if (held_count_ > 0) {
    // held_rows_ is rows x dim row-major: R^T column-major with leading dimension dim.
    cblas_dsyrk(CblasColMajor, CblasUpper, CblasNoTrans, static_cast<int>(n),
                static_cast<int>(held_count_), 1.0, held_rows_.data(), static_cast<int>(n),
                1.0, storage_.data(), static_cast<int>(n));
  }
  held_rows_ = PreparedBatch::RowMajorD();
  held_coefficients_ = Eigen::VectorXd();
  held_count_ = 0;
  gram_factor_ = Eigen::MatrixXd();
  householder_ = Eigen::VectorXd();
  materialized_ = true;
  factor_valid_ = false;
}

void DenseStatistics::AddFloat32(const PreparedBatch& batch) {
  // R^T is dim x rows column-major with leading dimension dim. The upper triangle of
  // R^T R is formed one block column [j0, j0 + b) at a time into a float32 scratch of
  // (j0 + b) x b: rows [0, j0) by sgemm, the diagonal block by ssyrk. Each block is
  // then added, scaled by 1 / scale_, into the float64 sums, so the scratch stays
  // dim * kBlock floats instead of a second dim x dim matrix.
  constexpr int64_t kBlock = 256;
  const int n = static_cast<int>(dim_);
  const double alpha = 1.0 / scale_;
  if (static_cast<int64_t>(scratch_.size()) < dim_ * kBlock) {
    scratch_.resize(static_cast<size_t>(dim_ * std::min(dim_, kBlock)));
  }
  for (int64_t r0 = 0; r0 < batch.rows; r0 += kFloat32KernelRows) {
    const int k = static_cast<int>(std::min(kFloat32KernelRows, batch.rows - r0));
    const float* a = batch.root_weighted_f32.data() + r0 * dim_;
    for (int64_t j0 = 0; j0 < dim_; j0 += kBlock) {
      const int b = static_cast<int>(std::min(kBlock, dim_ - j0));
      const int m = static_cast<int>(j0) + b;
      float* c = scratch_.data();
      if (j0 > 0) {
        cblas_sgemm(CblasColMajor, CblasNoTrans, CblasTrans, static_cast<int>(j0), b, k, 1.0f,
                    a, n, a + j0, n, 0.0f, c, m);
      }
      cblas_ssyrk(CblasColMajor, CblasUpper, CblasNoTrans, b, k, 1.0f, a + j0, n, 0.0f,
                  c + j0, m);
      for (int jj = 0; jj < b; ++jj) {
        const int64_t col = j0 + jj;
        double* dst = storage_.data() + col * dim_;
        const float* src = c + static_cast<int64_t>(jj) * m;
        for (int64_t i = 0; i <= col; ++i) dst[i] += alpha * static_cast<double>(src[i]);
      }
    }
  }
}

void DenseStatistics::Decay(double rho) {
  // F = M / W is invariant under a common scaling, so the factor stays valid.
  weight_sum_ *= rho;
  mean_sum_ *= rho;
  scale_ *= rho;
  if (scale_ < kMinScale) {
    if (holding_rows()) {
      held_rows_.topRows(held_count_) *= std::sqrt(scale_);
      held_coefficients_.head(held_count_) *= std::sqrt(scale_);
    } else {
      storage_.triangularView<Eigen::Upper>() *= scale_;
    }
    scale_ = 1.0;
  }
}

Eigen::VectorXd DenseStatistics::DampedProduct(const Eigen::VectorXd& x,
                                               double damping) const {
  // One threaded dsymv over the upper triangle, scaled on the way: Eigen's own
  // selfadjoint product is single-threaded and took 3x the time of the two triangular
  // solves of a cached step (docs/performance.md).
  Eigen::VectorXd y(dim_);
  if (holding_rows()) {
    const auto rows = held_rows_.topRows(held_count_);
    y.noalias() = rows.transpose() * (RawToEstimate() * (rows * x));
  } else {
    const int n = static_cast<int>(dim_);
    cblas_dsymv(CblasColMajor, CblasUpper, n, RawToEstimate(), storage_.data(), n, x.data(), 1,
                0.0, y.data(), 1);
  }
  if (centered_) {
    const Eigen::VectorXd mean = Mean();
    y -= mean * mean.dot(x);
  }
  if (damping != 0.0) y += damping * x;
  return y;
}

Eigen::VectorXd DenseStatistics::Multiply(const Eigen::VectorXd& v) const {
  return DampedProduct(v, 0.0);
}

absl::Status DenseStatistics::Factor(double damping) {
  const int64_t n = dim_;
  const double c = RawToEstimate();
  const Eigen::VectorXd mean = centered_ ? Mean() : Eigen::VectorXd::Zero(n);
  const Eigen::VectorXd raw_diagonal = storage_.diagonal();

  // Strict lower triangle := F off the diagonal, read from the upper triangle in
  // square tiles so that the transposed reads stay in cache.
  constexpr int64_t kTile = 64;
  for (int64_t jb = 0; jb < n; jb += kTile) {
    const int64_t jend = std::min(n, jb + kTile);
    for (int64_t ib = jb; ib < n; ib += kTile) {
      const int64_t iend = std::min(n, ib + kTile);
      for (int64_t j = jb; j < jend; ++j) {
        for (int64_t i = std::max(ib, j + 1); i < iend; ++i) {
          storage_(i, j) = c * storage_(j, i) - mean[i] * mean[j];
        }
      }
    }
  }
  storage_.diagonal() =
      (c * raw_diagonal - mean.cwiseAbs2()).array() + damping;
  const double largest_pivot = storage_.diagonal().maxCoeff();

  const lapack_int info = LAPACKE_dpotrf(LAPACK_COL_MAJOR, 'L', static_cast<lapack_int>(n),
                                         storage_.data(), static_cast<lapack_int>(n));
  factor_diagonal_ = storage_.diagonal();
  storage_.diagonal() = raw_diagonal;  // restore the invariant: diagonal holds M / scale_

  // A positive semi-definite F (fewer samples than dim, a constant parameter) can pass
  // dpotrf on round-off; a pivot this small relative to the largest diagonal entry
  // means the solve would only amplify noise.
  const double tiny = static_cast<double>(n) * std::numeric_limits<double>::epsilon() *
                      std::max(largest_pivot, std::numeric_limits<double>::min());
  if (info != 0 || factor_diagonal_.cwiseAbs2().minCoeff() <= tiny) {
    factor_valid_ = false;
    return absl::FailedPreconditionError(absl::StrCat(
        "F + lambda I is singular or not numerically positive definite (lambda = ", damping,
        ", ", sample_count_, " samples for dim ", dim_,
        "); set a positive damping or stream more samples"));
  }
  factor_valid_ = true;
  factor_damping_ = damping;
  return absl::OkStatus();
}

absl::StatusOr<SolveResult> DenseStatistics::Solve(const Eigen::VectorXd& g, double damping) {
  const auto start = std::chrono::steady_clock::now();
  const bool low_rank = holding_rows();
  SolveResult result;
  result.summary.method = low_rank ? "woodbury" : "cholesky";
  result.summary.damping = damping;
  result.summary.factorization_cached = factor_valid_ && factor_damping_ == damping;
  if (!result.summary.factorization_cached) {
    const absl::Status status = low_rank ? FactorLowRank(damping) : Factor(damping);
    if (!status.ok()) return status;
  }
  result.natural_gradient = low_rank ? WoodburySolve(g) : CholeskySolve(g);
  const double g_norm = g.norm();
  result.summary.residual =
      g_norm > 0.0 ? (DampedProduct(result.natural_gradient, damping) - g).norm() / g_norm
                   : 0.0;
  result.summary.seconds = SecondsSince(start);
  return result;
}

Eigen::VectorXd DenseStatistics::CholeskySolve(const Eigen::VectorXd& g) {
  // Swap L's diagonal in for the two triangular solves, then back out.
  storage_.diagonal().swap(factor_diagonal_);
  Eigen::VectorXd x = g;
  const int n = static_cast<int>(dim_);
  cblas_dtrsv(CblasColMajor, CblasLower, CblasNoTrans, CblasNonUnit, n, storage_.data(), n,
              x.data(), 1);
  cblas_dtrsv(CblasColMajor, CblasLower, CblasTrans, CblasNonUnit, n, storage_.data(), n,
              x.data(), 1);
  storage_.diagonal().swap(factor_diagonal_);
  return x;
}

absl::StatusOr<FisherSummary> DenseStatistics::Summarize(bool with_eigenvalues) const {
  const double c = RawToEstimate();
  const Eigen::VectorXd mean = centered_ ? Mean() : Eigen::VectorXd::Zero(dim_);
  FisherSummary summary;
  summary.dim = dim_;
  double frobenius_sq = 0.0;
  if (holding_rows()) {
    // F = c R^T R - mu mu^T: trace(F) = c sum |r_i|^2 - |mu|^2 and
    // |F|_F^2 = c^2 |R R^T|_F^2 - 2 c |R mu|^2 + |mu|^4, all from rows x rows work.
    const auto rows = held_rows_.topRows(held_count_);
    const Eigen::MatrixXd gram = rows * rows.transpose();
    const double mean_sq = mean.squaredNorm();
    summary.trace = c * gram.trace() - mean_sq;
    frobenius_sq = c * c * gram.squaredNorm() - 2.0 * c * (rows * mean).squaredNorm() +
                   mean_sq * mean_sq;
    summary.frobenius_norm = std::sqrt(std::max(frobenius_sq, 0.0));
  }
  for (int64_t j = 0; j < dim_ && !holding_rows(); ++j) {
    for (int64_t i = 0; i < j; ++i) {
      const double f = c * storage_(i, j) - mean[i] * mean[j];
      frobenius_sq += 2.0 * f * f;
    }
    const double f = c * storage_(j, j) - mean[j] * mean[j];
    frobenius_sq += f * f;
    summary.trace += f;
  }
  if (!holding_rows()) summary.frobenius_norm = std::sqrt(frobenius_sq);

  if (with_eigenvalues) {
    Eigen::MatrixXd estimate(dim_, dim_);
    CopyEntries(0, dim_, estimate.data());  // symmetric, so row-major == column-major
    Eigen::VectorXd eigenvalues(dim_);
    const lapack_int info = LAPACKE_dsyevd(LAPACK_COL_MAJOR, 'N', 'U',
                                           static_cast<lapack_int>(dim_), estimate.data(),
                                           static_cast<lapack_int>(dim_), eigenvalues.data());
    if (info != 0) {
      return absl::InternalError(absl::StrCat("eigenvalue solver dsyevd failed, info = ", info));
    }
    summary.SetExtremeEigenvalues(eigenvalues.minCoeff(), eigenvalues.maxCoeff());
  }
  return summary;
}

void DenseStatistics::CopyEntries(int64_t begin, int64_t count, double* out) const {
  const double c = RawToEstimate();
  const Eigen::VectorXd mean = centered_ ? Mean() : Eigen::VectorXd::Zero(dim_);
  if (holding_rows()) {
    // Rows [begin, begin + count) of F, written row-major, are the columns of
    // c R^T R[:, begin:begin+count] - mu mu[begin:]^T (F is symmetric).
    Eigen::Map<Eigen::MatrixXd> block(out, dim_, count);
    const auto rows = held_rows_.topRows(held_count_);
    block.noalias() = c * (rows.transpose() * rows.middleCols(begin, count));
    if (centered_) block.noalias() -= mean * mean.segment(begin, count).transpose();
    return;
  }
  for (int64_t r = begin; r < begin + count; ++r) {
    double* row = out + (r - begin) * dim_;
    // Row r of the symmetric F is column r: stored entries (col, r) for col <= r,
    // then (r, col) for col > r.
    for (int64_t col = 0; col <= r; ++col) row[col] = c * storage_(col, r) - mean[r] * mean[col];
    for (int64_t col = r + 1; col < dim_; ++col) {
      row[col] = c * storage_(r, col) - mean[r] * mean[col];
    }
  }
}

// --- low-rank start ---------------------------------------------------------------

Eigen::VectorXd DenseStatistics::Reflect(const Eigen::VectorXd& x) const {
  const double uu = householder_.squaredNorm();
  if (uu == 0.0) return x;
  return x - householder_ * (2.0 * householder_.dot(x) / uu);
}

Eigen::VectorXd DenseStatistics::WoodburyRowsTimes(const Eigen::VectorXd& v) const {
  Eigen::VectorXd t = held_rows_.topRows(held_count_) * v;
  if (!centered_) return t;
  return Reflect(t).tail(held_count_ - 1);
}

Eigen::VectorXd DenseStatistics::WoodburyRowsTransposeTimes(const Eigen::VectorXd& y) const {
  const auto rows = held_rows_.topRows(held_count_);
  if (!centered_) return rows.transpose() * y;
  Eigen::VectorXd padded(held_count_);
  padded << 0.0, y;
  return rows.transpose() * Reflect(padded);
}

Eigen::VectorXd DenseStatistics::WoodburySolve(const Eigen::VectorXd& v) const {
  // (lambda I + c Q^T Q)^-1 v = (v - Q^T K^-1 Q v) / lambda, K = lambda/c I + Q Q^T = L L^T.
  Eigen::VectorXd t = WoodburyRowsTimes(v);
  const auto factor = gram_factor_.triangularView<Eigen::Lower>();
  factor.solveInPlace(t);
  factor.transpose().solveInPlace(t);
  return (v - WoodburyRowsTransposeTimes(t)) / factor_damping_;
}

absl::Status DenseStatistics::FactorLowRank(double damping) {
  factor_valid_ = false;
  // With no damping F_lambda = F has rank <= held rows < dim: singular by construction.
  if (damping <= 0.0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "F + lambda I is singular (lambda = 0 with ", sample_count_, " samples for dim ",
        dim_, ", so F has rank at most ", sample_count_,
        "); set a positive damping or stream more samples"));
  }
  const int64_t k = held_count_;
  const auto rows = held_rows_.topRows(k);
  // Lower triangle of R R^T (R^T is dim x k column-major), made symmetric.
  Eigen::MatrixXd gram(k, k);
  cblas_dsyrk(CblasColMajor, CblasLower, CblasTrans, static_cast<int>(k),
              static_cast<int>(dim_), 1.0, rows.data(), static_cast<int>(dim_), 0.0,
              gram.data(), static_cast<int>(k));
  gram.triangularView<Eigen::StrictlyUpper>() = gram.transpose();
  if (centered_) {
    // H b = -sign(b_0) |b| e_0 with u = b + sign(b_0) |b| e_0; Q = rows 1.. of H R, so
    // Q Q^T is the trailing block of H (R R^T) H.
    const auto b = held_coefficients_.head(k);
    householder_ = b;
    householder_[0] += std::copysign(b.norm(), b[0]);
    const double uu = householder_.squaredNorm();
    if (uu > 0.0) {
      const Eigen::VectorXd gu = gram * householder_;
      gram -= (2.0 / uu) * (gu * householder_.transpose() + householder_ * gu.transpose()) -
              (4.0 * householder_.dot(gu) / (uu * uu)) * householder_ * householder_.transpose();
    }
    gram = Eigen::MatrixXd(gram.bottomRightCorner(k - 1, k - 1));
  }
  gram_factor_ = std::move(gram);
  gram_factor_.diagonal().array() += damping / RawToEstimate();
  const lapack_int info = gram_factor_.rows() == 0
                              ? 0
                              : LAPACKE_dpotrf(LAPACK_COL_MAJOR, 'L',
                                               static_cast<lapack_int>(gram_factor_.rows()),
                                               gram_factor_.data(),
                                               static_cast<lapack_int>(gram_factor_.rows()));
  if (info != 0) {
    // K = lambda/c I + Q Q^T with lambda > 0 is positive definite; only overflow gets here.
    return absl::FailedPreconditionError(absl::StrCat(
        "F + lambda I is not numerically positive definite (lambda = ", damping, ", ",
        sample_count_, " samples for dim ", dim_, "); set a larger damping"));
  }
  factor_valid_ = true;
  factor_damping_ = damping;
  return absl::OkStatus();
}

}  // namespace fisherd
