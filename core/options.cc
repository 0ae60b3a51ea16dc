#include "core/options.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace fisherd {

const char* RepresentationName(Representation representation) {
  switch (representation) {
    case Representation::kDense:
      return "dense";
    case Representation::kDiagonal:
      return "diagonal";
  }
  return "unknown";
}

absl::Status SessionOptions::Validate() const {
  if (dim < 1) {
    return absl::InvalidArgumentError(absl::StrCat("dim must be >= 1, got ", dim));
  }
  if (!(decay > 0.0 && decay <= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("decay must be in (0, 1] (0 on the wire means 1), got ", decay));
  }
  if (!(damping >= 0.0) || !std::isfinite(damping)) {
    return absl::InvalidArgumentError(
        absl::StrCat("damping must be finite and >= 0, got ", damping));
  }
  return absl::OkStatus();
}

absl::Status StepOptions::Validate() const {
  if (damping.has_value() && (!(*damping >= 0.0) || !std::isfinite(*damping))) {
    return absl::InvalidArgumentError(
        absl::StrCat("damping must be finite and >= 0, got ", *damping));
  }
  if (!(learning_rate >= 0.0) || !std::isfinite(learning_rate)) {
    return absl::InvalidArgumentError(
        absl::StrCat("learning_rate must be finite and >= 0 (0 means unset), got ",
                     learning_rate));
  }
  if (!(kl_budget >= 0.0) || !std::isfinite(kl_budget)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "kl_budget must be finite and >= 0 (0 means unset), got ", kl_budget));
  }
  return absl::OkStatus();
}

uint64_t EstimateSessionBytes(const SessionOptions& options) {
  const uint64_t dim = options.dim < 0 ? 0 : static_cast<uint64_t>(options.dim);
  // A few O(dim) vectors (m, the factor's diagonal, scratch) beside the main storage.
  const uint64_t vectors = 8 * sizeof(double) * dim;
  if (options.representation == Representation::kDiagonal) return vectors;
  // Saturate instead of wrapping for absurd dims, so that limits still refuse them.
  if (dim > (uint64_t{1} << 28)) return UINT64_MAX;
  return dim * dim * sizeof(double) + vectors;
}

}  // namespace fisherd
