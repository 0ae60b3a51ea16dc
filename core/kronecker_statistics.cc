#include "core/kronecker_statistics.h"

#include <lapacke.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <type_traits>

#include "absl/strings/str_cat.h"

namespace fisherd {
namespace {

using RowMajorD = PreparedBatch::RowMajorD;

// A factor is an uncentered dense estimate of its own rows (K-FAC's factors are second
// moments; centered Kronecker blocks are refused by SessionOptions::Validate).
SessionOptions FactorOptions(const BlockOptions& block, Factor factor,
                             const SessionOptions& session) {
  SessionOptions options;
  options.dim = block.FactorDim(factor);
  options.centered = false;
  options.float32_products = session.float32_products;
  return options;
}

}  // namespace

KroneckerStatistics::KroneckerStatistics(const BlockOptions& block, const SessionOptions& session)
    : in_(block.in_features),
      out_(block.out_features),
      na_(block.FactorDim(Factor::kActivations)),
      damping_kind_(session.kronecker_damping),
      refresh_period_(session.factor_refresh_period),
      float32_products_(session.float32_products),
      activations_(Factor::kActivations, FactorOptions(block, Factor::kActivations, session)),
      output_gradients_(Factor::kOutputGradients,
                        FactorOptions(block, Factor::kOutputGradients, session)) {}

uint64_t KroneckerStatistics::sample_count() const {
  return activations_.statistics.sample_count() + output_gradients_.statistics.sample_count();
}

double KroneckerStatistics::weight_sum() const {
  return activations_.statistics.weight_sum() + output_gradients_.statistics.weight_sum();
}

void KroneckerStatistics::Add(const PreparedBatch& batch) {
  FactorState& factor = batch.factor == Factor::kActivations ? activations_ : output_gradients_;
  factor.statistics.Add(batch);
  ++factor.version;
}

void KroneckerStatistics::Decay(double rho) {
  activations_.statistics.Decay(rho);
  output_gradients_.statistics.Decay(rho);
}

absl::Status KroneckerStatistics::CheckReady(absl::string_view what) const {
  // F = G (x) A needs both factors; naming the empty one tells the worker which rows
  // it forgot to send.
  for (const FactorState* factor : {&activations_, &output_gradients_}) {
    if (factor->statistics.CheckReady(what).ok()) continue;
    return absl::FailedPreconditionError(
        absl::StrCat("Kronecker factor ", factor->name, " has no weighted rows yet (",
                     factor->statistics.sample_count(), " rows, total weight 0): stream ",
                     factor->name, " rows before asking for ", what));
  }
  return absl::OkStatus();
}

const ScoreStatistics* KroneckerStatistics::FactorStatistics(Factor factor) const {
  if (factor == Factor::kNone) return nullptr;
  return &State(factor).statistics;
}

void KroneckerStatistics::MatrixIndex(int64_t parameter, int64_t* i, int64_t* j) const {
  const int64_t weights = out_ * in_;
  if (parameter < weights) {
    *i = parameter / in_;
    *j = parameter % in_;
  } else {
    *i = parameter - weights;
    *j = in_;
  }
}

template <typename Matrix>
void KroneckerStatistics::ToMatrixInto(const Eigen::VectorXd& parameters, Matrix* matrix) const {
  using Scalar = typename Matrix::Scalar;
  matrix->resize(out_, na_);
  matrix->leftCols(in_) =
      Eigen::Map<const RowMajorD>(parameters.data(), out_, in_).template cast<Scalar>();
  if (na_ > in_) matrix->col(in_) = parameters.tail(out_).template cast<Scalar>();
}

template <typename Matrix>
void KroneckerStatistics::ToParametersInto(const Matrix& matrix,
                                           Eigen::VectorXd* parameters) const {
  parameters->resize(dim());
  Eigen::Map<RowMajorD>(parameters->data(), out_, in_) =
      matrix.leftCols(in_).template cast<double>();
  if (na_ > in_) parameters->tail(out_) = matrix.col(in_).template cast<double>();
}

Eigen::MatrixXd KroneckerStatistics::ToMatrix(const Eigen::VectorXd& parameters) const {
  Eigen::MatrixXd matrix;
  ToMatrixInto(parameters, &matrix);
  return matrix;
}

Eigen::VectorXd KroneckerStatistics::ToParameters(const Eigen::MatrixXd& matrix) const {
  Eigen::VectorXd parameters;
  ToParametersInto(matrix, &parameters);
  return parameters;
}

Eigen::VectorXd KroneckerStatistics::Multiply(const Eigen::VectorXd& v) const {
  // One factor matrix alive at a time, so the transient copy is max(n)^2, not the sum.
  Eigen::MatrixXd matrix = ToMatrix(v);
  Eigen::MatrixXd product(out_, na_);
  {
    Eigen::MatrixXd g(out_, out_);
    output_gradients_.statistics.CopyEntries(0, out_, g.data());  // symmetric: either order
    product.noalias() = g * matrix;
  }
  {
    Eigen::MatrixXd a(na_, na_);
    activations_.statistics.CopyEntries(0, na_, a.data());
    matrix.noalias() = product * a;
  }
  return ToParameters(matrix);
}

void KroneckerStatistics::Refresh(FactorState& factor) {
  const int64_t n = factor.statistics.dim();
  // resize keeps the buffer when its size is unchanged: a refresh allocates nothing
  // beyond dsyevd's own workspace.
  factor.eigenvectors.resize(n, n);
  factor.eigenvalues.resize(n);
  factor.statistics.CopyEntries(0, n, factor.eigenvectors.data());
  factor.decomposed = true;
  factor.decomposed_version = factor.version;
  factor.decomposed_step = step_count_;
  factor.eigensolve_pending = true;
  factor.eigenvectors_f32_current = false;
}

absl::Status KroneckerStatistics::Eigensolve(FactorState& factor) {
  const int64_t n = factor.statistics.dim();
  factor.eigensolve_pending = false;
  factor.eigenvectors_f32_current = false;
  const lapack_int info = LAPACKE_dsyevd(LAPACK_COL_MAJOR, 'V', 'U', static_cast<lapack_int>(n),
                                         factor.eigenvectors.data(), static_cast<lapack_int>(n),
                                         factor.eigenvalues.data());
  if (info != 0) {
    // The copy is overwritten: without a decomposition the next solve refreshes.
    factor.decomposed = false;
    return absl::InternalError(absl::StrCat("eigenvalue solver dsyevd failed on Kronecker factor ",
                                            factor.name, ", info = ", info));
  }
  return absl::OkStatus();
}

void KroneckerStatistics::TakeRefreshes(std::vector<FactorRefresh>* out) {
  out->insert(out->end(), refreshes_.begin(), refreshes_.end());
  refreshes_.clear();
}

absl::Status KroneckerStatistics::ReplayRefresh(const FactorRefresh& refresh) {
  if (refresh.block != -1 ||
      (refresh.factor != Factor::kActivations && refresh.factor != Factor::kOutputGradients)) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot replay a refresh of factor ", FactorName(refresh.factor), " of block ",
                     refresh.block,
                     " in a Kronecker block: it has factors activations and "
                     "output_gradients, as block -1"));
  }
  FactorState& factor = State(refresh.factor);
  // A solve refreshes only once CheckReady passed; copying an estimate without weight
  // would divide by W = 0.
  if (absl::Status ready = factor.statistics.CheckReady("a factor refresh"); !ready.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot replay a refresh of Kronecker factor ", factor.name,
        ": it has no weighted rows, so no solve could have refreshed it (", ready.message(), ")"));
  }
  Refresh(factor);
  return absl::OkStatus();
}

void KroneckerStatistics::ForgetRefresh(const FactorRefresh& refresh) {
  if (refresh.block != -1 ||
      (refresh.factor != Factor::kActivations && refresh.factor != Factor::kOutputGradients)) {
    return;
  }
  FactorState& factor = State(refresh.factor);
  factor.decomposed = false;
  factor.eigensolve_pending = false;
}

void KroneckerStatistics::VisitFactor(StateVisitor& visitor, FactorState& factor) {
  const int64_t n = factor.statistics.dim();
  factor.statistics.VisitState(visitor);
  visitor.Count("version", &factor.version);
  visitor.Flag("decomposed", &factor.decomposed);
  visitor.Count("decomposed_version", &factor.decomposed_version);
  visitor.Integer("decomposed_step", &factor.decomposed_step);
  visitor.Flag("eigensolve_pending", &factor.eigensolve_pending);
  if (visitor.loading()) {
    factor.eigenvectors_f32_current = false;
    if (!visitor.status().ok()) return;
    // A failed eigensolve leaves the version and step of the last refresh with
    // decomposed false, so these hold whether or not a decomposition exists.
    if (factor.decomposed_version > factor.version || factor.decomposed_step < 0 ||
        factor.decomposed_step > step_count_ || (factor.eigensolve_pending && !factor.decomposed)) {
      visitor.Fail(absl::DataLossError(absl::StrCat(
          "snapshot of Kronecker factor ", factor.name, " is inconsistent: decomposed ",
          factor.decomposed ? "true" : "false", " at version ", factor.decomposed_version, " (of ",
          factor.version, ") and step ", factor.decomposed_step, " (of ", step_count_,
          "), eigensolve pending ", factor.eigensolve_pending ? "true" : "false")));
      return;
    }
    if (factor.decomposed) {
      factor.eigenvectors.resize(n, n);
      factor.eigenvalues.resize(n);
    }
  }
  if (!factor.decomposed) return;
  if (factor.eigensolve_pending) {
    // dsyevd reads only the upper triangle of the copy; the lower is restored from it
    // so that the buffer is the original's to the bit.
    visitor.UpperTriangle("decomposition_input", &factor.eigenvectors);
    if (visitor.loading()) {
      factor.eigenvectors.triangularView<Eigen::StrictlyLower>() = factor.eigenvectors.transpose();
    }
  } else {
    VisitSizedMatrix(visitor, "eigenvectors", n, n, &factor.eigenvectors);
    VisitSizedVector(visitor, "eigenvalues", n, &factor.eigenvalues);
  }
}

void KroneckerStatistics::VisitState(StateVisitor& visitor) {
  visitor.Integer("step_count", &step_count_);
  if (visitor.loading()) {
    if (!visitor.status().ok()) return;
    if (step_count_ < 0) {
      visitor.Fail(absl::DataLossError(
          absl::StrCat("snapshot of a Kronecker block has step_count ", step_count_, " < 0")));
      return;
    }
    refreshes_.clear();
  }
  for (FactorState* factor : {&activations_, &output_gradients_}) {
    visitor.Enter(factor->name);
    VisitFactor(visitor, *factor);
    visitor.Leave();
  }
}

template <typename Matrix, typename Divide>
void KroneckerStatistics::SolveInEigenbases(const Eigen::VectorXd& g, const Matrix& u_a,
                                            const Matrix& u_g, Matrix& matrix, Matrix& half,
                                            const Divide& divide,
                                            Eigen::VectorXd* natural_gradient) const {
  // Two out x na buffers: V, then V' = U_G^T V U_A in place, N' = V' ./ D in place,
  // n = U_G N' U_A^T. Each product is one gemm (EIGEN_USE_BLAS: dgemm or sgemm).
  // The scratch matrices are kept between steps (resize keeps a buffer of the same
  // size), so a step touches no freshly mapped pages. In float64 without bias, V is the
  // parameter vector itself viewed as out x in row-major: no copy in or out.
  constexpr bool kFloat64 = std::is_same_v<typename Matrix::Scalar, double>;
  const bool in_place = kFloat64 && na_ == in_;
  half.resize(out_, na_);
  if constexpr (kFloat64) {
    if (in_place)
      half.noalias() = u_g.transpose() * Eigen::Map<const RowMajorD>(g.data(), out_, in_);
  }
  if (!in_place) {
    ToMatrixInto(g, &matrix);
    half.noalias() = u_g.transpose() * matrix;
  }
  matrix.noalias() = half * u_a;
  divide(matrix);
  half.noalias() = u_g * matrix;
  if constexpr (kFloat64) {
    if (in_place) {
      natural_gradient->resize(dim());
      Eigen::Map<RowMajorD>(natural_gradient->data(), out_, in_).noalias() = half * u_a.transpose();
      return;
    }
  }
  matrix.noalias() = half * u_a.transpose();
  ToParametersInto(matrix, natural_gradient);
}

absl::StatusOr<SolveResult> KroneckerStatistics::Solve(const Eigen::VectorXd& g, double damping) {
  const auto start = std::chrono::steady_clock::now();
  // step_count_ is the index of this step: it moves only in StepTaken, so a step that
  // fails (here or in another block of the session) does not age the decompositions.
  SolveResult result;
  result.summary.method = "kronecker";
  result.summary.kronecker_damping = KroneckerDampingName(damping_kind_);
  result.summary.damping = damping;
  result.summary.factorization_cached = true;
  for (FactorState* factor : {&activations_, &output_gradients_}) {
    const bool changed = factor->decomposed_version != factor->version;
    // Period 1 refreshes whenever the factor changed, even between two Solves of one
    // step (the step index moves only when the session takes a step).
    if (!factor->decomposed ||
        (changed &&
         (refresh_period_ <= 1 || step_count_ - factor->decomposed_step >= refresh_period_))) {
      Refresh(*factor);
      refreshes_.push_back(FactorRefresh{-1, factor->factor});
    }
    // Pending after the refresh just made, or after a replayed or restored one.
    if (factor->eigensolve_pending) {
      if (absl::Status status = Eigensolve(*factor); !status.ok()) return status;
      result.summary.factorization_cached = false;
    }
  }
  for (const FactorState* factor : {&activations_, &output_gradients_}) {
    if (factor->decomposed_version != factor->version) {
      result.summary.factor_age_steps =
          std::max(result.summary.factor_age_steps, step_count_ - factor->decomposed_step);
    }
  }
  const Eigen::VectorXd& s_a = activations_.eigenvalues;
  const Eigen::VectorXd& s_g = output_gradients_.eigenvalues;

  // Both dampings are diagonal in the product eigenbasis, with denominators
  // D_ij = (s_G,i + shift_g)(s_A,j + shift_a) + shift.
  double shift_g = 0.0, shift_a = 0.0, shift = damping;
  if (damping_kind_ == KroneckerDamping::kFactored && damping > 0.0) {
    // Traces of the factors the step uses (a stale decomposition keeps its own).
    const double trace_a = s_a.sum(), trace_g = s_g.sum();
    if (!(trace_a > 0.0) || !(trace_g > 0.0)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "factored Kronecker damping needs both factors' traces > 0, but tr A = ", trace_a,
          " and tr G = ", trace_g, " (pi = sqrt((tr A / ", na_, ") / (tr G / ", out_,
          ")) is undefined); stream nonzero rows or use exact damping"));
    }
    const double pi =
        std::sqrt((trace_a / static_cast<double>(na_)) / (trace_g / static_cast<double>(out_)));
    const double root = std::sqrt(damping);
    shift_g = root / pi;
    shift_a = pi * root;
    shift = 0.0;
  }
  const auto denominator = [&](int64_t i, int64_t j) {
    return (s_g[i] + shift_g) * (s_a[j] + shift_a) + shift;
  };
  double smallest = std::numeric_limits<double>::infinity();
  double largest = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < na_; ++j) {
    for (int64_t i = 0; i < out_; ++i) {
      smallest = std::min(smallest, denominator(i, j));
      largest = std::max(largest, denominator(i, j));
    }
  }
  // The dense rule for pivots: a denominator this far below the largest is zero, and
  // dividing by it would only amplify round-off (or a slightly negative eigenvalue).
  const double tiny = static_cast<double>(dim()) * std::numeric_limits<double>::epsilon() *
                      std::max(largest, std::numeric_limits<double>::min());
  if (smallest <= tiny) {
    return absl::FailedPreconditionError(absl::StrCat(
        "F + lambda I is singular for this block (", KroneckerDampingName(damping_kind_),
        " Kronecker damping, lambda = ", damping, "; ", activations_.statistics.sample_count(),
        " activation rows for A of ", na_, " rows, ", output_gradients_.statistics.sample_count(),
        " output-gradient rows for G of ", out_,
        " rows); set a positive damping or stream more samples"));
  }

  // The residual is measured in the eigenbases: U_G and U_A are orthogonal, so
  // ||D .* N' - V'||_F = ||F_lambda n - g|| up to the eigendecomposition's own error
  // (U orthogonal and A = U diag(s) U^T to round-off), without a product by F.
  // The curvature n^T F n (undamped) is sum N'_ij^2 s_G,i s_A,j in the same basis.
  // Both are summed in float64 whatever the products' type.
  double residual_sq = 0.0, curvature = 0.0;
  const auto divide = [&](auto& rotated_matrix) {
    using Scalar = typename std::decay_t<decltype(rotated_matrix)>::Scalar;
    for (int64_t j = 0; j < na_; ++j) {
      for (int64_t i = 0; i < out_; ++i) {
        const double d = denominator(i, j);
        const double rotated = rotated_matrix(i, j);
        const double solved = rotated / d;
        residual_sq += (d * solved - rotated) * (d * solved - rotated);
        curvature += solved * solved * s_g[i] * s_a[j];
        rotated_matrix(i, j) = static_cast<Scalar>(solved);
      }
    }
  };
  const double g_norm = g.norm();
  if (float32_products_) {
    for (FactorState* factor : {&activations_, &output_gradients_}) {
      if (!factor->eigenvectors_f32_current) {
        factor->eigenvectors_f32 = factor->eigenvectors.cast<float>();
        factor->eigenvectors_f32_current = true;
      }
    }
    SolveInEigenbases(g, activations_.eigenvectors_f32, output_gradients_.eigenvectors_f32,
                      step_matrix_f32_, step_half_f32_, divide, &result.natural_gradient);
  } else {
    SolveInEigenbases(g, activations_.eigenvectors, output_gradients_.eigenvectors, step_matrix_,
                      step_half_, divide, &result.natural_gradient);
  }
  result.curvature = curvature;
  result.summary.residual = g_norm > 0.0 ? std::sqrt(residual_sq) / g_norm : 0.0;
  result.summary.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

absl::StatusOr<FisherSummary> KroneckerStatistics::Summarize(bool with_eigenvalues) const {
  const absl::StatusOr<FisherSummary> a = activations_.statistics.Summarize(with_eigenvalues);
  if (!a.ok()) return a.status();
  const absl::StatusOr<FisherSummary> g = output_gradients_.statistics.Summarize(with_eigenvalues);
  if (!g.ok()) return g.status();
  FisherSummary summary;
  summary.dim = dim();
  summary.trace = g->trace * a->trace;
  summary.frobenius_norm = g->frobenius_norm * a->frobenius_norm;
  if (with_eigenvalues) {
    // The eigenvalues of G (x) A are the products s_G,i s_A,j; over two intervals the
    // extremes of a product lie among the four products of endpoints (whatever the
    // signs a round-off eigenvalue below zero may have).
    const double products[] = {
        g->min_eigenvalue * a->min_eigenvalue, g->min_eigenvalue * a->max_eigenvalue,
        g->max_eigenvalue * a->min_eigenvalue, g->max_eigenvalue * a->max_eigenvalue};
    summary.SetExtremeEigenvalues(*std::min_element(std::begin(products), std::end(products)),
                                  *std::max_element(std::begin(products), std::end(products)));
  }
  return summary;
}

void KroneckerStatistics::CopyEntries(int64_t begin, int64_t count, double* out) const {
  // Row (i, j) of G (x) A is G(i, :) (x) A(j, :), each entry placed at its parameter.
  Eigen::VectorXd g_row(out_), a_row(na_);
  for (int64_t r = begin; r < begin + count; ++r) {
    int64_t i = 0, j = 0;
    MatrixIndex(r, &i, &j);
    output_gradients_.statistics.CopyEntries(i, 1, g_row.data());
    activations_.statistics.CopyEntries(j, 1, a_row.data());
    double* row = out + (r - begin) * dim();
    for (int64_t k = 0; k < out_; ++k) {
      for (int64_t l = 0; l < na_; ++l) row[ParameterIndex(k, l)] = g_row[k] * a_row[l];
    }
  }
}

}  // namespace fisherd
