// Kronecker statistics: the K-FAC block F = G (x) A of one linear (or convolution)
// layer (fisher.proto, BLOCK_KIND_KRONECKER; Martens & Grosse 2015).
//
// Each factor is an uncentered DenseStatistics of its own rows: A of the activations
// a-bar = [a; 1] (in + bias values), G of the output gradients (out values), each with
// its own W. The block's parameters are the out x in weights row-major, then the out
// biases when bias; rearranged as V = [grad W | grad b] (out x (in + bias)), F is
// G (x) A in the row-major order of V, so F vec(V) = vec(G V A). G (x) A is never
// formed: a step goes through the factors' cached eigendecompositions in O(params * n)
// with four matrix products, and memory stays at both factors' sums and eigenvectors.
// With session.float32_products those four products run in float32 (sgemm, about twice
// dgemm's rate) on float32 copies of the eigenvectors; the division in the eigenbasis,
// the curvature and the factors' sums stay float64.
//
// Refreshes. When a solve decides that a factor's decomposition is due (see Solve), it
// refreshes it: the factor's current estimate is copied into the decomposition buffer
// and the refresh is recorded as an event (TakeRefreshes), which durable sessions log
// with the step. The eigensolve of the copy (dsyevd in place) is separate, and runs when
// a solve needs the decomposition: at once in a live session, but a replayed refresh
// (ReplayRefresh) only copies, so that replaying a long log costs no eigensolves but the
// last ones. Either way the eigenbasis is the same function of the same copy.
#ifndef FISHERD_CORE_KRONECKER_STATISTICS_H_
#define FISHERD_CORE_KRONECKER_STATISTICS_H_

#include <cstdint>
#include <vector>

#include "Eigen/Core"
#include "core/dense_statistics.h"
#include "core/statistics.h"

namespace fisherd {

class KroneckerStatistics final : public ScoreStatistics {
 public:
  // Uses session.kronecker_damping, session.factor_refresh_period and
  // session.float32_products; the session's decay reaches the block through Decay().
  // REQUIRES: block.kind == BlockKind::kKronecker with validated sizes,
  // session.factor_refresh_period >= 1.
  KroneckerStatistics(const BlockOptions& block, const SessionOptions& session);

  // out * (in + bias).
  int64_t dim() const override { return out_ * na_; }
  // Rows of both factors.
  uint64_t sample_count() const override;
  // W_A + W_G: the block's total weight, so that it is > 0 once either factor has
  // weight (CheckReady, not this, says whether both do).
  double weight_sum() const override;

  // Routes the batch to the factor named by batch.factor. REQUIRES: batch prepared by
  // PrepareBlockBatch for this block with factor kActivations (a 1 appended when bias)
  // or kOutputGradients.
  void Add(const PreparedBatch& batch) override;
  // Decays both factors (A and G, hence F and the cached eigenbases, are unchanged).
  void Decay(double rho) override;
  // Counts a step the session took: the clock of factor_refresh_period.
  void StepTaken() override { ++step_count_; }
  // OK when both factors have weight > 0; else FAILED_PRECONDITION naming the factor.
  absl::Status CheckReady(absl::string_view what) const override;

  // vec(G V A), undamped, with the factors as matrices (BLAS-3).
  Eigen::VectorXd Multiply(const Eigen::VectorXd& v) const override;
  // Exact: (G (x) A + lambda I)^-1 g. Factored: (G + sqrt(lambda)/pi I)^-1 V
  // (A + pi sqrt(lambda) I)^-1, pi = sqrt((tr A / (in + bias)) / (tr G / out)).
  // A factor is refreshed (see above) only when it has no decomposition, or it changed
  // and the decomposition is factor_refresh_period steps old; otherwise the step uses
  // the decomposition as it is (summary.factor_age_steps says how old). A pending
  // eigensolve runs here, and factorization_cached is false when one did (always after a
  // refresh). Sets curvature (n^T F n, undamped F of the factors used).
  // float32_products: n carries the products' float32 rounding, relative error about
  // (2 out + 2 (in + bias)) 2^-24 times the spread of the damped eigenvalues at worst
  // (tests/core/kronecker_statistics_test.cc bounds it so); summary.residual measures
  // the division in the eigenbasis only, as in float64, not that rounding.
  // FAILED_PRECONDITION when the damped metric is numerically singular, or factored
  // damping meets a factor of zero trace; INTERNAL if the eigensolver fails.
  absl::StatusOr<SolveResult> Solve(const Eigen::VectorXd& g, double damping) override;
  // trace = tr G tr A, |F|_F = |G|_F |A|_F, eigenvalue extremes from the factors'.
  absl::StatusOr<FisherSummary> Summarize(bool with_eigenvalues) const override;
  // Rows of G (x) A in the parameter order above, formed explicitly: dim() values per
  // row, so only for small blocks (tests; GetFisher streams the factors instead).
  void CopyEntries(int64_t begin, int64_t count, double* out) const override;
  int64_t EntriesPerRow() const override { return dim(); }

  // The factor's DenseStatistics (FactorDim rows); nullptr for Factor::kNone.
  const ScoreStatistics* FactorStatistics(Factor factor) const override;

  // step_count, then per factor, in the scopes "activations" and "output_gradients":
  // its DenseStatistics' state, version, whether a decomposition exists, the version and
  // step it was taken at, whether its eigensolve is pending, and then either the pending
  // copy of the estimate (upper triangle) or the eigenvectors and eigenvalues. So a
  // restored block makes the same refresh decisions and solves with the same bases.
  // The step's scratch and refreshes not yet taken are not state. Loading rejects
  // versions and steps from the future (decomposed_version > version, decomposed_step
  // outside [0, step_count]) and a pending eigensolve without a decomposition.
  void VisitState(StateVisitor& visitor) override;
  // The refreshes Solve made since the last call (block -1), in order.
  void TakeRefreshes(std::vector<FactorRefresh>* out) override;
  // Refreshes refresh.factor as a solve would, now (its current estimate, this step),
  // deferring the eigensolve and recording no event. INVALID_ARGUMENT unless
  // refresh.block is -1 and refresh.factor one of the two factors; FAILED_PRECONDITION
  // when that factor has no weighted rows (no solve could have refreshed it: the log
  // does not belong to this state).
  absl::Status ReplayRefresh(const FactorRefresh& refresh) override;
  void ForgetRefresh(const FactorRefresh& refresh) override;

 private:
  // One factor: its running sums, how often it changed, and its eigendecomposition.
  struct FactorState {
    FactorState(Factor factor, const SessionOptions& options)
        : factor(factor), name(FactorName(factor)), statistics(options) {}
    const Factor factor;
    const char* const name;  // FactorName
    DenseStatistics statistics;
    uint64_t version = 0;  // Adds so far; Decay leaves the estimate alone
    // A refresh happened (and no eigensolve failed since): the decomposition below is
    // of the estimate at version decomposed_version and step decomposed_step.
    bool decomposed = false;
    uint64_t decomposed_version = 0;
    int64_t decomposed_step = 0;
    // true: eigenvectors holds the estimate's copy, not yet decomposed.
    bool eigensolve_pending = false;
    Eigen::MatrixXd eigenvectors;  // U (n x n), or the estimate's copy dsyevd overwrites
    Eigen::VectorXd eigenvalues;   // s, ascending (n; undefined while pending)
    // float32_products: U rounded to float32, made by the first solve that needs it
    // after eigenvectors changed (a refresh, an eigensolve, a restore). Not state: it is
    // a function of eigenvectors.
    Eigen::MatrixXf eigenvectors_f32;
    bool eigenvectors_f32_current = false;
  };

  const FactorState& State(Factor factor) const {
    return factor == Factor::kActivations ? activations_ : output_gradients_;
  }
  FactorState& State(Factor factor) {
    return factor == Factor::kActivations ? activations_ : output_gradients_;
  }
  // Copies the factor's current estimate into its decomposition buffer, stamps it with
  // the factor's version and this step, and marks the eigensolve pending.
  void Refresh(FactorState& factor);
  // Eigendecomposes a pending copy in place. On failure (INTERNAL) the factor has no
  // decomposition, so the next solve refreshes it again.
  absl::Status Eigensolve(FactorState& factor);
  void VisitFactor(StateVisitor& visitor, FactorState& factor);
  // V' := U_G^T V U_A, V' := V' ./ D (divide, which also sums the residual and the
  // curvature), n := U_G V' U_A^T, in the scalar type of the eigenvectors and scratch
  // given (float64, or float32 with float32_products).
  template <typename Matrix, typename Divide>
  void SolveInEigenbases(const Eigen::VectorXd& g, const Matrix& u_a, const Matrix& u_g,
                         Matrix& matrix, Matrix& half, const Divide& divide,
                         Eigen::VectorXd* natural_gradient) const;
  // Parameters <-> V (out x na); the Into forms in V's scalar type (float32 rounds the
  // parameters on the way in) and into buffers kept between steps.
  Eigen::MatrixXd ToMatrix(const Eigen::VectorXd& parameters) const;
  Eigen::VectorXd ToParameters(const Eigen::MatrixXd& matrix) const;
  template <typename Matrix>
  void ToMatrixInto(const Eigen::VectorXd& parameters, Matrix* matrix) const;
  template <typename Matrix>
  void ToParametersInto(const Matrix& matrix, Eigen::VectorXd* parameters) const;
  // The parameter of V's entry (i, j), and back.
  int64_t ParameterIndex(int64_t i, int64_t j) const {
    return j < in_ ? i * in_ + j : out_ * in_ + i;
  }
  void MatrixIndex(int64_t parameter, int64_t* i, int64_t* j) const;

  const int64_t in_;   // in_features
  const int64_t out_;  // out_features
  const int64_t na_;   // in + bias: A's rows and V's columns
  const KroneckerDamping damping_kind_;
  const int64_t refresh_period_;
  const bool float32_products_;
  FactorState activations_;               // A, na x na
  FactorState output_gradients_;          // G, out x out
  int64_t step_count_ = 0;                // steps the session took (StepTaken)
  std::vector<FactorRefresh> refreshes_;  // made by Solve, until TakeRefreshes
  // Solve's two out x na scratch matrices, kept between steps (EstimateBlockBytes
  // counts them): a step then touches no freshly mapped pages.
  Eigen::MatrixXd step_matrix_;
  Eigen::MatrixXd step_half_;
  // Their float32 counterparts (float32_products; then the two above stay empty).
  Eigen::MatrixXf step_matrix_f32_;
  Eigen::MatrixXf step_half_f32_;
};

}  // namespace fisherd

#endif  // FISHERD_CORE_KRONECKER_STATISTICS_H_
