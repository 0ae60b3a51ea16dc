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
#include "core/options.h"
#include "core/score_batch.h"
#include "core/solve.h"

namespace fisherd {

class ScoreStatistics {
 public:
  // REQUIRES: options.Validate().ok().
  static std::unique_ptr<ScoreStatistics> Create(const SessionOptions& options);

  virtual ~ScoreStatistics() = default;

  virtual int64_t dim() const = 0;
  virtual uint64_t sample_count() const = 0;  // rows added, never decayed
  virtual double weight_sum() const = 0;      // W, decayed

  // Merges a batch. REQUIRES: batch prepared for this representation and dim.
  virtual void Add(const PreparedBatch& batch) = 0;

  // Multiplies W, m and M by rho. F is unchanged, so a cached factor stays valid.
  // REQUIRES: 0 < rho <= 1.
  virtual void Decay(double rho) = 0;

  // The estimate F exists only once some weight has arrived: every method below
  // REQUIRES: weight_sum() > 0 (Session checks it and answers FAILED_PRECONDITION).

  // F v, undamped. REQUIRES: v.size() == dim().
  virtual Eigen::VectorXd Multiply(const Eigen::VectorXd& v) const = 0;

  // n = (F + damping I)^-1 g. FAILED_PRECONDITION when F + damping I is not
  // numerically positive definite (the message suggests a positive damping).
  // Caches the factorization until the next Add or a different damping.
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
};

}  // namespace fisherd

#endif  // FISHERD_CORE_STATISTICS_H_
