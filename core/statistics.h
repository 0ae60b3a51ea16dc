// ScoreStatistics: the running sums W = sum w, m = sum w s and M = sum w s s^T of one
// session, in one representation, and the linear algebra on the estimate F they define.
//
// Not thread-safe: Session serializes every call under its mutex.
#ifndef FISHERD_CORE_STATISTICS_H_
#define FISHERD_CORE_STATISTICS_H_

#include <cstdint>
#include <memory>

#include "Eigen/Core"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/options.h"
#include "core/score_batch.h"
#include "core/solve.h"

namespace fisherd {

class ScoreStatistics {
 public:
  // The statistics of a whole session: dense, diagonal, or layered when
  // options.blocks is not empty. REQUIRES: options.Validate().ok().
  static std::unique_ptr<ScoreStatistics> Create(const SessionOptions& options);

  virtual ~ScoreStatistics() = default;

  virtual int64_t dim() const = 0;
  virtual uint64_t sample_count() const = 0;  // rows added, never decayed
  virtual double weight_sum() const = 0;      // W, decayed

  // Merges a batch. REQUIRES: batch prepared for this representation and dim.
  virtual void Add(const PreparedBatch& batch) = 0;

  // Called by Session once a step has succeeded (with or without decay), so that
  // statistics that count steps (a Kronecker block's refresh period) never count a
  // step that failed. The default does nothing.
  virtual void StepTaken() {}

  // Multiplies W, m and M by rho. F is unchanged, so a cached factor stays valid.
  // REQUIRES: 0 < rho <= 1.
  virtual void Decay(double rho) = 0;

  // The estimate F exists only once some weight has arrived. OK when it does, else
  // FAILED_PRECONDITION saying what is missing before `what` (e.g. "a step") can be
  // answered. Every method below REQUIRES: CheckReady(...).ok() (Session checks it).
  // The default checks weight_sum() > 0; blocks with several factors check each.
  virtual absl::Status CheckReady(absl::string_view what) const;

  // F v, undamped. REQUIRES: v.size() == dim().
  virtual Eigen::VectorXd Multiply(const Eigen::VectorXd& v) const = 0;

  // n = (F + damping I)^-1 g. FAILED_PRECONDITION when F + damping I is not
  // numerically positive definite (the message suggests a positive damping).
  // Caches the factorization until the next Add or a different damping.
  // SolveResult::curvature is n^T F n (undamped) when the statistics compute it; when
  // unset, F_lambda = F + lambda I and the caller takes g^T n - lambda |n|^2.
  // REQUIRES: g.size() == dim(), damping >= 0.
  virtual absl::StatusOr<SolveResult> Solve(const Eigen::VectorXd& g, double damping) = 0;

  // Trace, Frobenius norm and, when with_eigenvalues, the extreme eigenvalues of F.
  // INTERNAL if the eigenvalue solver fails.
  virtual absl::StatusOr<FisherSummary> Summarize(bool with_eigenvalues) const = 0;

  // Writes entries of F: dense, full rows [begin, begin + count) row-major into
  // out[count * dim]; diagonal, diag(F)[begin, begin + count) into out[count].
  // REQUIRES: 0 <= begin, begin + count <= dim().
  virtual void CopyEntries(int64_t begin, int64_t count, double* out) const = 0;

  // Values per row that CopyEntries writes: dim() for dense, 1 for diagonal.
  virtual int64_t EntriesPerRow() const = 0;

  // The statistics of one factor of a Kronecker block (an uncentered dense statistics
  // of FactorDim rows), for GetFisher and stats; nullptr for kinds without factors.
  virtual const ScoreStatistics* FactorStatistics(Factor /*factor*/) const { return nullptr; }
};

// The statistics of one block of a layered session of `session`'s options (centered,
// float32_products, Kronecker damping and refresh period apply to it).
// REQUIRES: session.Validate().ok() and block is one of session.blocks.
std::unique_ptr<ScoreStatistics> CreateBlockStatistics(const BlockOptions& block,
                                                       const SessionOptions& session);

}  // namespace fisherd

#endif  // FISHERD_CORE_STATISTICS_H_
