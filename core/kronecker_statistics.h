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
#ifndef FISHERD_CORE_KRONECKER_STATISTICS_H_
#define FISHERD_CORE_KRONECKER_STATISTICS_H_

#include <cstdint>

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
  // A factor's eigendecomposition is recomputed only when none exists, or the factor
  // changed and the decomposition is factor_refresh_period steps old; otherwise the
  // step uses it as it is (summary.factor_age_steps says how old). Sets curvature
  // (n^T F n, undamped F of the factors used). FAILED_PRECONDITION when the damped
  // metric is numerically singular, or factored damping meets a factor of zero trace;
  // INTERNAL if the eigensolver fails.
  absl::StatusOr<SolveResult> Solve(const Eigen::VectorXd& g, double damping) override;
  // trace = tr G tr A, |F|_F = |G|_F |A|_F, eigenvalue extremes from the factors'.
  absl::StatusOr<FisherSummary> Summarize(bool with_eigenvalues) const override;
  // Rows of G (x) A in the parameter order above, formed explicitly: dim() values per
  // row, so only for small blocks (tests; GetFisher streams the factors instead).
  void CopyEntries(int64_t begin, int64_t count, double* out) const override;
  int64_t EntriesPerRow() const override { return dim(); }

  // The factor's DenseStatistics (FactorDim rows); nullptr for Factor::kNone.
  const ScoreStatistics* FactorStatistics(Factor factor) const override;

 private:
  // One factor: its running sums, how often it changed, and its eigendecomposition.
  struct FactorState {
    FactorState(const char* name, const SessionOptions& options)
        : name(name), statistics(options) {}
    const char* name;           // FactorName
    DenseStatistics statistics;
    uint64_t version = 0;       // Adds so far; Decay leaves the estimate alone
    bool decomposed = false;
    uint64_t decomposed_version = 0;
    int64_t decomposed_step = 0;
    Eigen::MatrixXd eigenvectors;  // U (n x n), the estimate's copy dsyevd overwrote
    Eigen::VectorXd eigenvalues;   // s, ascending
  };

  const FactorState& State(Factor factor) const {
    return factor == Factor::kActivations ? activations_ : output_gradients_;
  }
  // Eigendecomposes the factor's current estimate into its eigenvectors' buffer.
  absl::Status Decompose(FactorState& factor);
  // Parameters <-> V (out x na).
  Eigen::MatrixXd ToMatrix(const Eigen::VectorXd& parameters) const;
  Eigen::VectorXd ToParameters(const Eigen::MatrixXd& matrix) const;
  void ToMatrixInto(const Eigen::VectorXd& parameters, Eigen::MatrixXd* matrix) const;
  void ToParametersInto(const Eigen::MatrixXd& matrix, Eigen::VectorXd* parameters) const;
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
  FactorState activations_;       // A, na x na
  FactorState output_gradients_;  // G, out x out
  int64_t step_count_ = 0;        // steps the session took (StepTaken)
  // Solve's two out x na scratch matrices, kept between steps (EstimateBlockBytes
  // counts them): a step then touches no freshly mapped pages.
  Eigen::MatrixXd step_matrix_;
  Eigen::MatrixXd step_half_;
};

}  // namespace fisherd

#endif  // FISHERD_CORE_KRONECKER_STATISTICS_H_
