#include "core/solve.h"

#include <limits>

#include "absl/strings/str_format.h"

namespace fisherd {

std::string SolverSummary::FullReport() const {
  return absl::StrFormat(
      "method: %s\nresidual: %.3e\nseconds: %.6f\nfactorization_cached: %s\ndamping: %g\n", method,
      residual, seconds, factorization_cached ? "true" : "false", damping);
}

void FisherSummary::SetExtremeEigenvalues(double min, double max) {
  has_eigenvalues = true;
  min_eigenvalue = min;
  max_eigenvalue = max;
  condition_number = min > 0.0 ? max / min : std::numeric_limits<double>::infinity();
}

}  // namespace fisherd
