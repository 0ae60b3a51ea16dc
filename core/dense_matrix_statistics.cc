#include "core/dense_matrix_statistics.h"

#include <cblas.h>
#include <lapacke.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"

namespace fisherd {
namespace {

// Below a decay factor exp(log_scale) of about 1e-150 (log(1e-150) = -345.4), the next
// Add of weighted rows folds it into the raw sums, so that exp(-log_scale) (the alpha
// of its rank-k update) stays below 1e150 and never overflows.
constexpr double kLogMinScale = -345.0;

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

void DenseRunningSums::Visit(StateVisitor& visitor, int64_t dim) {
  visitor.Count("sample_count", &sample_count);
  visitor.Scalar("weight_sum", &weight_sum);
  visitor.Scalar("log_scale", &log_scale);
  VisitSizedVector(visitor, "mean_sum", dim, &mean_sum);
}

DenseRunningSums DenseRunningSums::Of(const LowRankStatistics& start) {
  DenseRunningSums sums;
  sums.sample_count = start.sample_count();
  const Eigen::VectorXd b = start.coefficients();
  sums.weight_sum = b.squaredNorm();
  sums.log_scale = start.log_scale();
  // Rows are b_i s_i: R^T b = sum b_i^2 s_i. A start that never took a row has no
  // storage yet (rows() is 0 x 0), so m_raw is sized from dim().
  // Summed row by row: a product through BLAS (EIGEN_USE_BLAS) would be handed the
  // window's storage with a leading dimension that dgemv rejects when one row is held.
  sums.mean_sum = Eigen::VectorXd::Zero(start.dim());
  const auto rows = start.rows();
  for (Eigen::Index i = 0; i < b.size(); ++i) sums.mean_sum += b[i] * rows.row(i).transpose();
  return sums;
}

DenseMatrixStatistics::DenseMatrixStatistics(int64_t dim, bool centered)
    : dim_(dim),
      centered_(centered),
      storage_(dim, dim),
      factor_diagonal_(Eigen::VectorXd::Zero(dim)) {
  sums_.mean_sum = Eigen::VectorXd::Zero(dim);
  // Only the upper triangle is M_raw; the lower one is written by Factor before use.
  for (int64_t j = 0; j < dim_; ++j) std::fill_n(storage_.data() + j * dim_, j + 1, 0.0);
}

DenseMatrixStatistics::DenseMatrixStatistics(const LowRankStatistics& start, bool centered)
    : DenseMatrixStatistics(start.dim(), centered) {
  sums_ = DenseRunningSums::Of(start);
  // M = scale R^T R with the start's scale, which is exp(sums_.log_scale): M_raw = R^T R.
  // The rows are row-major: R^T column-major with leading dimension outerStride().
  const auto rows = start.rows();
  if (rows.rows() > 0) {
    cblas_dsyrk(CblasColMajor, CblasUpper, CblasNoTrans, static_cast<int>(dim_),
                static_cast<int>(rows.rows()), 1.0, rows.data(),
                static_cast<int>(rows.outerStride()), 1.0, storage_.data(), static_cast<int>(dim_));
  }
}

void DenseMatrixStatistics::set_sums(DenseRunningSums sums) {
  sums_ = std::move(sums);
  factor_valid_ = false;
}

double DenseMatrixStatistics::weight_sum() const {
  // May underflow to 0 (the true W rounded) after thousands of decays without rows;
  // nothing that computes F reads it.
  return std::exp(sums_.log_scale) * sums_.weight_sum;
}

absl::Status DenseMatrixStatistics::CheckReady(absl::string_view what) const {
  // The raw weight: F = M_raw / W_raw is defined whatever the decay factor.
  if (sums_.weight_sum > 0.0) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat("the session has no weighted samples yet (", sums_.sample_count,
                   " rows, total weight 0): stream scores before asking for ", what));
}

void DenseMatrixStatistics::Add(const PreparedBatch& batch) {
  // A batch of weight 0 adds exact zeros (its rows are sqrt(0) s): it neither needs a
  // fold nor may trigger one, which would shrink the only weighted sums towards
  // denormals for nothing. Its zeros are added with factor 1.
  const bool weighted = batch.weight_sum > 0.0;
  if (weighted) FoldTinyScale();
  const double inverse_scale = weighted ? std::exp(-sums_.log_scale) : 1.0;  // <= 1e150
  if (batch.root_weighted_f32.size() > 0) {
    AddFloat32(batch, inverse_scale);
  } else {
    // root_weighted is rows x dim row-major, which is R^T (dim x rows) column-major:
    // upper(storage) += exp(-log_scale) R^T R in one rank-k update.
    cblas_dsyrk(CblasColMajor, CblasUpper, CblasNoTrans, static_cast<int>(dim_),
                static_cast<int>(batch.rows), inverse_scale, batch.root_weighted.data(),
                static_cast<int>(dim_), 1.0, storage_.data(), static_cast<int>(dim_));
  }
  sums_.mean_sum += inverse_scale * batch.weighted_sum;
  sums_.weight_sum += inverse_scale * batch.weight_sum;
  sums_.sample_count += static_cast<uint64_t>(batch.rows);
  factor_valid_ = false;
}

void DenseMatrixStatistics::AddFloat32(const PreparedBatch& batch, double alpha) {
  // R^T is dim x rows column-major with leading dimension dim. The upper triangle of
  // R^T R is formed one block column [j0, j0 + b) at a time into a float32 scratch of
  // (j0 + b) x b: rows [0, j0) by sgemm, the diagonal block by ssyrk. Each block is
  // then added, scaled by alpha, into the float64 sums, so the scratch stays
  // dim * kBlock floats instead of a second dim x dim matrix.
  constexpr int64_t kBlock = 256;
  const int n = static_cast<int>(dim_);
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
        cblas_sgemm(CblasColMajor, CblasNoTrans, CblasTrans, static_cast<int>(j0), b, k, 1.0f, a, n,
                    a + j0, n, 0.0f, c, m);
      }
      cblas_ssyrk(CblasColMajor, CblasUpper, CblasNoTrans, b, k, 1.0f, a + j0, n, 0.0f, c + j0, m);
      for (int jj = 0; jj < b; ++jj) {
        const int64_t col = j0 + jj;
        double* dst = storage_.data() + col * dim_;
        const float* src = c + static_cast<int64_t>(jj) * m;
        for (int64_t i = 0; i <= col; ++i) dst[i] += alpha * static_cast<double>(src[i]);
      }
    }
  }
}

void DenseMatrixStatistics::Decay(double rho) {
  // F = M_raw / W_raw does not depend on log_scale: no sum and no factor changes, so
  // nothing underflows however many decays a block takes without rows.
  sums_.log_scale += std::log(rho);
}

void DenseMatrixStatistics::FoldTinyScale() {
  if (sums_.log_scale >= kLogMinScale) return;
  // The old sums shrink to their true size against the rows about to arrive; below
  // about exp(-745) they become 0, the true relative size rounded.
  const double scale = std::exp(sums_.log_scale);
  storage_.triangularView<Eigen::Upper>() *= scale;
  sums_.mean_sum *= scale;
  sums_.weight_sum *= scale;
  sums_.log_scale = 0.0;
  factor_valid_ = false;  // the raw sums changed (Add invalidates anyway)
}

void DenseMatrixStatistics::VisitState(StateVisitor& visitor) {
  sums_.Visit(visitor, dim_);
  VisitMoment(visitor);
}

void DenseMatrixStatistics::VisitMoment(StateVisitor& visitor) {
  if (visitor.loading()) factor_valid_ = false;
  visitor.UpperTriangle("raw_second_moment", &storage_);
}

Eigen::VectorXd DenseMatrixStatistics::DampedProduct(const Eigen::VectorXd& x,
                                                     double damping) const {
  // One threaded dsymv over the upper triangle, scaled on the way: Eigen's own
  // selfadjoint product is single-threaded and took 3x the time of the two triangular
  // solves of a cached step (docs/performance.md).
  Eigen::VectorXd y(dim_);
  const int n = static_cast<int>(dim_);
  cblas_dsymv(CblasColMajor, CblasUpper, n, RawToEstimate(), storage_.data(), n, x.data(), 1, 0.0,
              y.data(), 1);
  if (centered_) {
    const Eigen::VectorXd mean = Mean();
    y -= mean * mean.dot(x);
  }
  if (damping != 0.0) y += damping * x;
  return y;
}

Eigen::VectorXd DenseMatrixStatistics::Multiply(const Eigen::VectorXd& v) const {
  return DampedProduct(v, 0.0);
}

absl::Status DenseMatrixStatistics::Factor(double damping) {
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
  storage_.diagonal() = (c * raw_diagonal - mean.cwiseAbs2()).array() + damping;
  const double largest_pivot = storage_.diagonal().maxCoeff();

  const lapack_int info = LAPACKE_dpotrf(LAPACK_COL_MAJOR, 'L', static_cast<lapack_int>(n),
                                         storage_.data(), static_cast<lapack_int>(n));
  factor_diagonal_ = storage_.diagonal();
  storage_.diagonal() = raw_diagonal;  // restore the invariant: diagonal holds M_raw

  // A positive semi-definite F (fewer samples than dim, a constant parameter) can pass
  // dpotrf on round-off; a pivot this small relative to the largest diagonal entry
  // means the solve would only amplify noise.
  const double tiny = static_cast<double>(n) * std::numeric_limits<double>::epsilon() *
                      std::max(largest_pivot, std::numeric_limits<double>::min());
  if (info != 0 || factor_diagonal_.cwiseAbs2().minCoeff() <= tiny) {
    factor_valid_ = false;
    return absl::FailedPreconditionError(absl::StrCat(
        "F + lambda I is singular or not numerically positive definite (lambda = ", damping, ", ",
        sums_.sample_count, " samples for dim ", dim_,
        "); set a positive damping or stream more samples"));
  }
  factor_valid_ = true;
  factor_damping_ = damping;
  return absl::OkStatus();
}

absl::StatusOr<SolveResult> DenseMatrixStatistics::Solve(const Eigen::VectorXd& g, double damping) {
  const auto start = std::chrono::steady_clock::now();
  SolveResult result;
  result.summary.method = "cholesky";
  result.summary.damping = damping;
  result.summary.factorization_cached = factor_valid_ && factor_damping_ == damping;
  if (!result.summary.factorization_cached) {
    if (absl::Status status = Factor(damping); !status.ok()) return status;
  }
  result.natural_gradient = CholeskySolve(g);
  const double g_norm = g.norm();
  result.summary.residual =
      g_norm > 0.0 ? (DampedProduct(result.natural_gradient, damping) - g).norm() / g_norm : 0.0;
  result.summary.seconds = SecondsSince(start);
  return result;
}

Eigen::VectorXd DenseMatrixStatistics::CholeskySolve(const Eigen::VectorXd& g) {
  // Swap L's diagonal in for the two triangular solves, then back out.
  storage_.diagonal().swap(factor_diagonal_);
  Eigen::VectorXd x = g;
  const int n = static_cast<int>(dim_);
  cblas_dtrsv(CblasColMajor, CblasLower, CblasNoTrans, CblasNonUnit, n, storage_.data(), n,
              x.data(), 1);
  cblas_dtrsv(CblasColMajor, CblasLower, CblasTrans, CblasNonUnit, n, storage_.data(), n, x.data(),
              1);
  storage_.diagonal().swap(factor_diagonal_);
  return x;
}

absl::StatusOr<FisherSummary> DenseMatrixStatistics::Summarize(bool with_eigenvalues) const {
  const double c = RawToEstimate();
  const Eigen::VectorXd mean = centered_ ? Mean() : Eigen::VectorXd::Zero(dim_);
  FisherSummary summary;
  summary.dim = dim_;
  double frobenius_sq = 0.0;
  for (int64_t j = 0; j < dim_; ++j) {
    for (int64_t i = 0; i < j; ++i) {
      const double f = c * storage_(i, j) - mean[i] * mean[j];
      frobenius_sq += 2.0 * f * f;
    }
    const double f = c * storage_(j, j) - mean[j] * mean[j];
    frobenius_sq += f * f;
    summary.trace += f;
  }
  summary.frobenius_norm = std::sqrt(frobenius_sq);

  if (with_eigenvalues) {
    Eigen::MatrixXd estimate(dim_, dim_);
    CopyEntries(0, dim_, estimate.data());  // symmetric, so row-major == column-major
    Eigen::VectorXd eigenvalues(dim_);
    const lapack_int info =
        LAPACKE_dsyevd(LAPACK_COL_MAJOR, 'N', 'U', static_cast<lapack_int>(dim_), estimate.data(),
                       static_cast<lapack_int>(dim_), eigenvalues.data());
    if (info != 0) {
      return absl::InternalError(absl::StrCat("eigenvalue solver dsyevd failed, info = ", info));
    }
    summary.SetExtremeEigenvalues(eigenvalues.minCoeff(), eigenvalues.maxCoeff());
  }
  return summary;
}

void DenseMatrixStatistics::CopyEntries(int64_t begin, int64_t count, double* out) const {
  const double c = RawToEstimate();
  const Eigen::VectorXd mean = centered_ ? Mean() : Eigen::VectorXd::Zero(dim_);
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

}  // namespace fisherd
