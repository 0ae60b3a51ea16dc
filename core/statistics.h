// ScoreStatistics: the running sums W = sum w, m = sum w s and M = sum w s s^T of one
// session, in one representation, and the linear algebra on the estimate F they define.
//
// Not thread-safe: Session serializes every call under its mutex.
#ifndef FISHERD_CORE_STATISTICS_H_
#define FISHERD_CORE_STATISTICS_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "Eigen/Core"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/options.h"
#include "core/score_batch.h"
#include "core/solve.h"
#include "core/state_visitor.h"

namespace fisherd {

// A Kronecker factor whose eigendecomposition a solve refreshed: the one piece of a
// session's state that a step changes besides decay and the step count. Durable
// sessions log it with the step so that replay refreshes at the same point in the
// stream of batches (docs/design.md section 8). block is the block's index in a
// layered session's layout (-1 for a statistics that is itself the block).
struct FactorRefresh {
  int64_t block = -1;
  Factor factor = Factor::kNone;
};

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

  // --- durable sessions (docs/design.md section 8) ---

  // Saves or restores every value that defines the state (sums, decay scale, low-rank
  // windows in ring order, Kronecker factors with their versions, refresh clock and the
  // input of their last decomposition), in a fixed order; see core/state_visitor.h.
  // Restoring REQUIRES a freshly constructed object of the same options and leaves
  // caches invalid; on a mismatch (a size the options fix, or values the code could
  // not run on: a window position out of range, a count below zero, a clock behind a
  // decomposition) the visitor's status says what, and the object, partly restored,
  // must be discarded. Refreshes not yet taken (TakeRefreshes) are not state.
  virtual void VisitState(StateVisitor& visitor) = 0;

  // Appends the refreshes the solves since the last call made, in order, and forgets
  // them: also those of a solve that then failed (in a later block), since they
  // changed the state all the same. The default has none.
  virtual void TakeRefreshes(std::vector<FactorRefresh>* out) {}

  // Replays a logged refresh: the factor's current estimate becomes the input of its
  // decomposition, exactly as the solve did, with the eigensolve itself deferred to the
  // next solve that needs it (so replaying many refreshes costs copies, not
  // eigensolves). INVALID_ARGUMENT when this statistics has no such block or factor;
  // FAILED_PRECONDITION when the factor has no weighted rows (no solve could have
  // refreshed it, so the log does not belong to this state).
  virtual absl::Status ReplayRefresh(const FactorRefresh& refresh);

  // Undoes a refresh that could not be logged (a full disk): the factor then has no
  // decomposition, so the next solve refreshes it again and that refresh is logged. The
  // state a crash would recover (the older decomposition) and the one kept in memory
  // then agree again from that step on. Ignores refreshes it has no factor for.
  virtual void ForgetRefresh(const FactorRefresh& refresh) {}
};

// The statistics of one block of a layered session of `session`'s options (centered,
// float32_products, Kronecker damping and refresh period apply to it).
// REQUIRES: session.Validate().ok() and block is one of session.blocks.
std::unique_ptr<ScoreStatistics> CreateBlockStatistics(const BlockOptions& block,
                                                       const SessionOptions& session);

}  // namespace fisherd

#endif  // FISHERD_CORE_STATISTICS_H_
