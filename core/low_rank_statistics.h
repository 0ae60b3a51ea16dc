// Low-rank statistics: the score rows themselves instead of M, and exact steps by the
// Woodbury identity. Two users share this one implementation:
//  - a LOW_RANK block of a layered session keeps the latest max_rows rows (a sliding
//    window: once full, each new row overwrites the oldest);
//  - a dense estimate's low-rank start (core/dense_statistics.h) holds its first
//    dim / kLowRankRowsPerDim rows here and never lets the window fill past them: the
//    batch that would overflow it goes to a DenseMatrixStatistics that takes the rows
//    over (rows(), coefficients(), log_scale()).
//
// Representation. Row i of R is b_i s_i with b_i = sqrt(w_i / scale at its arrival), and
// one scalar scale = exp(log_scale_), kept in the log domain, so that for the rows held
//   W = scale |b|^2,   m = scale R^T b,   M = scale R^T R.
// W and m are read off the rows held, never kept as running sums: a row that leaves the
// window takes its weight with it. Decay adds log(rho) to log_scale_ alone, and
// F = M / W (= c R^T R with c = 1 / |b|^2) does not depend on it, so decay never touches
// the rows or a cached factor, and nothing underflows however many decays arrive without
// rows. A scale below about 1e-150 is folded into the rows (times sqrt(scale), which may
// round them to 0: they are then negligible next to the new rows) by the next Add of
// weighted rows, before 1 / sqrt(scale) could overflow (Add refactors anyway).
//
// Steps. With F = c Q^T Q for k' rows Q (below), the Woodbury identity
//   (lambda I + c Q^T Q)^-1 = (I - Q^T (lambda / c I + Q Q^T)^-1 Q) / lambda
// needs one Cholesky of the k' x k' matrix K = lambda |b|^2 I + Q Q^T: O(k'^2 dim). Q is R
// uncentered. Centered, the mean c R^T b is a combination of the same rows, so
// F = c R^T (I - c b b^T) R where I - c b b^T is the projector off b (c |b|^2 = 1). The
// Householder reflection H with H b = -sign(b_0) |b| e_0 turns it into I - e_0 e_0^T, so
// Q is H R less its first row (k' = k - 1). (A rank-one downdate by the mean would
// cancel catastrophically: the mean lies in the span of the rows.) F v, entries of F and
// the trace and Frobenius norm come from the same Q, without forming F.
//
// Not thread-safe: Session serializes every call under its mutex.
#ifndef FISHERD_CORE_LOW_RANK_STATISTICS_H_
#define FISHERD_CORE_LOW_RANK_STATISTICS_H_

#include <cstdint>

#include "Eigen/Core"
#include "core/statistics.h"

namespace fisherd {

class LowRankStatistics final : public ScoreStatistics {
 public:
  // A LOW_RANK block: the latest block.max_rows rows of block.dim values, centered as
  // the session is. REQUIRES: block.dim >= 1, block.max_rows >= 1.
  LowRankStatistics(const BlockOptions& block, const SessionOptions& session);
  // Up to `capacity` rows of `dim` values (the window's size). REQUIRES: dim >= 1,
  // capacity >= 1.
  LowRankStatistics(int64_t dim, int64_t capacity, bool centered);

  LowRankStatistics(const LowRankStatistics&) = delete;
  LowRankStatistics& operator=(const LowRankStatistics&) = delete;

  int64_t dim() const override { return dim_; }
  // Every row ever added, those that have left the window included; never decayed.
  uint64_t sample_count() const override { return sample_count_; }
  // W of the rows held, decayed: scale() |b|^2. After thousands of decays without rows
  // this underflows to 0 (the true W rounded) while F is still defined; CheckReady
  // therefore tests |b|^2, not this.
  double weight_sum() const override { return scale() * coefficient_norm_sq_; }

  // Appends the batch's rows, overwriting the oldest once capacity() rows are held; of a
  // batch longer than capacity() only its last capacity() rows are kept. Reads only
  // root_weighted (or root_weighted_f32) and root_weights.
  // REQUIRES: a dense batch (PreparedBatch::root_weights set) of dim() columns.
  void Add(const PreparedBatch& batch) override;
  // Multiplies the scale (adds log(rho) to its log): W, m and M of the rows held shrink
  // by rho, F and a cached factor are unchanged (to the bit). REQUIRES: 0 < rho <= 1.
  void Decay(double rho) override;
  // OK once the rows held have weight (|b|^2 > 0), however far the scale has decayed.
  absl::Status CheckReady(absl::string_view what) const override;

  Eigen::VectorXd Multiply(const Eigen::VectorXd& v) const override;
  // Exact, method "woodbury". Needs damping > 0 always: the identity divides by lambda.
  // With fewer than dim rows F is singular anyway; with dim or more it may not be, but
  // a window's rank changes as rows slide, so lambda = 0 is refused the same way
  // (FAILED_PRECONDITION suggesting a positive damping) rather than answered sometimes.
  absl::StatusOr<SolveResult> Solve(const Eigen::VectorXd& g, double damping) override;
  // Trace and Frobenius norm from the k' x k' Gram matrix c Q Q^T. Eigenvalues: F's
  // nonzero ones are those of c Q Q^T, so the smaller of c Q Q^T and F = c Q^T Q is
  // decomposed; with k' < dim the rest are exactly 0, so min_eigenvalue is 0 (or the
  // Gram matrix's round-off below it) and the condition number +inf.
  absl::StatusOr<FisherSummary> Summarize(bool with_eigenvalues) const override;
  // Full rows of F, c Q^T Q[:, begin:begin+count], in O(k count dim).
  void CopyEntries(int64_t begin, int64_t count, double* out) const override;
  int64_t EntriesPerRow() const override { return dim_; }
  // sample_count, log_scale, the window's row count and write position, then the rows
  // held (row_count() x dim()) and their coefficients b, in slot order: the ring as it
  // is, so that answers sum in the same order and later Adds overwrite the same slots.
  // |b|^2 is recomputed from b exactly as Add computes it; the Gram factor is a cache.
  // Loading rejects a row count above capacity(), a write position outside the window
  // or, before the window is full, anywhere but at its end (the window fills from slot
  // 0 and wraps only once full), and more rows held than ever added.
  void VisitState(StateVisitor& visitor) override;

  int64_t capacity() const { return capacity_; }
  // Rows held: min(rows added, capacity()).
  int64_t row_count() const { return count_; }
  // The rows held, R (row_count() x dim(), in no particular order), and the scale with
  // M = scale() R^T R: what a dense statistics needs to take the estimate over (one
  // dsyrk). scale() may be far below 1 after many decays without an Add, down to 0 once
  // it underflows; log_scale() is its logarithm, which never does.
  Eigen::Ref<const PreparedBatch::RowMajorD> rows() const { return rows_.topRows(count_); }
  // Their coefficients b (row i is b_i s_i), in the same order: W = scale() |b|^2 and
  // m = scale() R^T b.
  Eigen::Ref<const Eigen::VectorXd> coefficients() const { return coefficients_.head(count_); }
  double scale() const;
  double log_scale() const { return log_scale_; }

 private:
  // F = RawToEstimate() R^T R - (centered term); c = 1 / |b|^2.
  double RawToEstimate() const { return 1.0 / coefficient_norm_sq_; }
  // Centered: the Householder vector u = b + sign(b_0) |b| e_0 of H; empty uncentered.
  Eigen::VectorXd HouseholderVector() const;
  // Between the k rows of R and the k' rows of Q, column by column: Q x = ToQ(R x) and
  // Q^T y = R^T FromQ(y). ToQ(t) is t, or H t less its first row; FromQ(y) is y, or
  // H [0; y]. `u` is HouseholderVector().
  Eigen::MatrixXd ToQ(const Eigen::VectorXd& u, Eigen::MatrixXd t) const;
  Eigen::MatrixXd FromQ(const Eigen::VectorXd& u, const Eigen::MatrixXd& y) const;
  // Q Q^T, k' x k', both triangles.
  Eigen::MatrixXd WoodburyGram(const Eigen::VectorXd& u) const;
  // F x + damping x, without forming F.
  Eigen::VectorXd DampedProduct(const Eigen::VectorXd& x, double damping) const;
  // Factors K = lambda |b|^2 I + Q Q^T into gram_factor_ (lower).
  absl::Status Factor(double damping);
  // F_lambda^-1 v with the cached factor.
  Eigen::VectorXd WoodburySolve(const Eigen::VectorXd& v) const;

  const int64_t dim_;
  const int64_t capacity_;
  const bool centered_;

  // capacity_ x dim_ and capacity_, allocated uninitialized on the first Add (pages
  // never written are not resident). The rows held are always the first count_: the
  // window fills from 0 and wraps only once full.
  PreparedBatch::RowMajorD rows_;
  Eigen::VectorXd coefficients_;      // b
  double coefficient_norm_sq_ = 0.0;  // |b|^2 of the rows held
  int64_t count_ = 0;
  int64_t next_ = 0;        // where the next row goes (the oldest row once full)
  double log_scale_ = 0.0;  // log(scale), <= 0
  uint64_t sample_count_ = 0;

  // Cholesky factor of K for factor_damping_, valid until the next Add.
  bool factor_valid_ = false;
  double factor_damping_ = 0.0;
  Eigen::MatrixXd gram_factor_;
};

}  // namespace fisherd

#endif  // FISHERD_CORE_LOW_RANK_STATISTICS_H_
