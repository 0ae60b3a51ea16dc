// Options for a fisherd session and for one natural-gradient step, in the manner of
// Ceres Solver: plain structs with documented in-class defaults and a Validate() that
// names the offending field. Nothing here allocates or touches statistics.
#ifndef FISHERD_CORE_OPTIONS_H_
#define FISHERD_CORE_OPTIONS_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"

namespace fisherd {

enum class Representation {
  kDense,     // full dim x dim matrix M = sum w s s^T; O(dim^2) memory
  kDiagonal,  // diag(M) only; O(dim) memory
};

const char* RepresentationName(Representation representation);

struct SessionOptions {
  // Length of every score and gradient. REQUIRES: >= 1.
  int64_t dim = 0;

  Representation representation = Representation::kDense;

  // false: F = M / W, i.e. E[s s^T] (the Fisher at the model).
  // true:  F = M / W - (m / W)(m / W)^T, i.e. Cov[s].
  bool centered = false;

  // rho in (0, 1]: after each step taken without skip_decay, W, m and M are
  // multiplied by rho. 1 keeps the whole history.
  double decay = 1.0;

  // Default damping lambda >= 0 for steps: the solve uses F + lambda I.
  double damping = 0.0;

  // Dense only. false: batch products in float64, exact up to summation round-off.
  // true: large batches use the float32 kernel (DenseKernel::kAuto in
  // core/score_batch.h), about 2x faster, ~1e-7 relative error in F.
  bool float32_products = false;

  // OK, or INVALID_ARGUMENT naming the first bad field.
  absl::Status Validate() const;
};

struct StepOptions {
  // Overrides SessionOptions::damping when set. REQUIRES: >= 0.
  std::optional<double> damping;

  // eta = learning_rate when kl_budget is 0; a cap on eta when kl_budget > 0.
  // 0 means unset. When both are unset, eta = 1.
  double learning_rate = 0.0;

  // KL budget c: eta = sqrt(2c / g^T n) so that 1/2 (eta n)^T F_lambda (eta n) = c.
  // 0 means unset.
  double kl_budget = 0.0;

  // true: leave the statistics undecayed after this step.
  bool skip_decay = false;

  absl::Status Validate() const;
};

// Estimated resident bytes of a session's statistics, for limits checked before
// allocating. Dense: one dim x dim double matrix plus O(dim) vectors.
uint64_t EstimateSessionBytes(const SessionOptions& options);

}  // namespace fisherd

#endif  // FISHERD_CORE_OPTIONS_H_
