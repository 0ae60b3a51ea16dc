#include "core/solve.h"

#include "absl/strings/str_format.h"

namespace fisherd {

std::string SolverSummary::FullReport() const {
  return absl::StrFormat(
      "method: %s\niterations: %d\nresidual: %.3e\nseconds: %.6f\n"
      "factorization_cached: %s\ndamping: %g\n",
      method, iterations, residual, seconds, factorization_cached ? "true" : "false",
      damping);
}

}  // namespace fisherd
