#include "core/statistics.h"

#include "core/dense_statistics.h"
#include "core/diagonal_statistics.h"

namespace fisherd {

std::unique_ptr<ScoreStatistics> ScoreStatistics::Create(const SessionOptions& options) {
  if (options.representation == Representation::kDiagonal) {
    return std::make_unique<DiagonalStatistics>(options);
  }
  return std::make_unique<DenseStatistics>(options);
}

}  // namespace fisherd
