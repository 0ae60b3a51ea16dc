// Results of the numerical parts of a step, reported as data (Ceres style): a solve
// that fails numerically is a Status, a solve that succeeds carries its Summary.
#ifndef FISHERD_CORE_SOLVE_H_
#define FISHERD_CORE_SOLVE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "Eigen/Core"

namespace fisherd {

struct SolverSummary {
  std::string method;                 // "cholesky", "woodbury" or "diagonal"
  double residual = 0.0;              // ||F_lambda n - g|| / ||g||, measured
  double seconds = 0.0;               // wall time of factorization (if any) and solve
  bool factorization_cached = false;  // the factor of an earlier step was reused
  double damping = 0.0;               // lambda used
  // Kronecker blocks: "exact" or "factored"; empty when none took part.
  std::string kronecker_damping;
  // Kronecker blocks: steps since the oldest eigendecomposition used was computed.
  int64_t factor_age_steps = 0;
  // Layered sessions: one summary per block, in layout order, each naming its block.
  std::string block;
  std::vector<SolverSummary> blocks;

  // One line per field, for logs and the demo.
  std::string FullReport() const;
};

struct SolveResult {
  Eigen::VectorXd natural_gradient;  // n = (F + lambda I)^-1 g
  SolverSummary summary;
  // n^T F n with the undamped F, when the statistics compute it (Kronecker blocks, whose
  // damped metric may not be F + lambda I). Unset: the caller uses g^T n - lambda |n|^2.
  std::optional<double> curvature;
};

// Scalar description of the estimate F (not of M).
struct FisherSummary {
  int64_t dim = 0;
  double trace = 0.0;
  double frobenius_norm = 0.0;
  bool has_eigenvalues = false;
  double min_eigenvalue = 0.0;
  double max_eigenvalue = 0.0;
  double condition_number = 0.0;  // max / min, +inf when min <= 0

  // Sets the eigenvalue fields and the condition number they imply.
  void SetExtremeEigenvalues(double min, double max);
};

}  // namespace fisherd

#endif  // FISHERD_CORE_SOLVE_H_
