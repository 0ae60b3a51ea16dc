// Results of the numerical parts of a step, reported as data (Ceres style): a solve
// that fails numerically is a Status, a solve that succeeds carries its Summary.
#ifndef FISHERD_CORE_SOLVE_H_
#define FISHERD_CORE_SOLVE_H_

#include <cstdint>
#include <string>

#include "Eigen/Core"

namespace fisherd {

struct SolverSummary {
  std::string method;                // "cholesky", "woodbury" or "diagonal"
  int iterations = 0;                // 0 for direct methods
  double residual = 0.0;             // ||F_lambda n - g|| / ||g||, measured
  double seconds = 0.0;              // wall time of factorization (if any) and solve
  bool factorization_cached = false;  // the factor of an earlier step was reused
  double damping = 0.0;              // lambda used

  // One line per field, for logs and the demo.
  std::string FullReport() const;
};

struct SolveResult {
  Eigen::VectorXd natural_gradient;  // n = (F + lambda I)^-1 g
  SolverSummary summary;
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
