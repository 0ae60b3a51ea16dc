// The UCI optical handwritten digits (data/README.md): 8x8 images, 16 grey levels.
#ifndef FISHERD_CLIENT_DEMO_DIGITS_H_
#define FISHERD_CLIENT_DEMO_DIGITS_H_

#include <string>
#include <vector>

#include "Eigen/Core"
#include "absl/status/statusor.h"

namespace fisherd::demo {

inline constexpr int kPixels = 64;
inline constexpr int kFeatures = kPixels + 1;  // pixels scaled to [0, 1], then a constant 1
inline constexpr int kClasses = 10;

struct Digits {
  Eigen::MatrixXd features;  // n x kFeatures; column kPixels is the bias feature 1
  std::vector<int> labels;   // n labels in [0, kClasses)
};

// Reads the gzip-compressed CSV: one image a line, 64 integers in [0, 16] then the
// label. INVALID_ARGUMENT naming the line for a malformed one, NOT_FOUND when the file
// cannot be opened.
absl::StatusOr<Digits> LoadDigits(const std::string& path);

}  // namespace fisherd::demo

#endif  // FISHERD_CLIENT_DEMO_DIGITS_H_
