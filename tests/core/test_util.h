// Helpers shared by the core tests: building batches from float rows and the
// closed-form matrices the oracles use.
#ifndef FISHERD_TESTS_CORE_TEST_UTIL_H_
#define FISHERD_TESTS_CORE_TEST_UTIL_H_

#include <random>
#include <string>
#include <vector>

#include "Eigen/Core"
#include "core/score_batch.h"
#include "core/session.h"

namespace fisherd::testing {

using RowMatrixF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

inline PreparedBatch Prepare(const RowMatrixF& rows, Representation representation,
                             const std::vector<float>& weights = {}) {
  ScoreBatchView view;
  view.rows = rows.rows();
  view.dim = rows.cols();
  view.scores = rows.data();
  view.weights = weights.empty() ? nullptr : weights.data();
  return PrepareBatch(view, representation);
}

// A random lower-triangular L with float32-representable entries and a dominant
// diagonal. Streaming the columns of L as rows (FactorRows) gives
// F = L L^T / dim exactly up to float64 round-off: the docs/design.md oracle of a known SPD
// matrix streamed as the rows of its Cholesky factor (the 1/sqrt(n) scaling is folded
// into the oracle, since sqrt(n) L would not be exact in float32).
inline Eigen::MatrixXd RandomFloatCholeskyFactor(int dim, std::mt19937_64& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Eigen::MatrixXd factor = Eigen::MatrixXd::Zero(dim, dim);
  for (int j = 0; j < dim; ++j) {
    factor(j, j) = 1.0f + 0.5f * std::abs(normal(rng));
    for (int i = j + 1; i < dim; ++i) factor(i, j) = 0.3f * normal(rng);
  }
  return factor;
}

inline RowMatrixF FactorRows(const Eigen::MatrixXd& factor) {
  return factor.transpose().cast<float>();
}

// Exact F for a stream of float rows with weights (empty: all 1), computed directly.
inline Eigen::MatrixXd ReferenceFisher(const RowMatrixF& rows, const std::vector<float>& weights,
                                       bool centered) {
  Eigen::MatrixXd m = Eigen::MatrixXd::Zero(rows.cols(), rows.cols());
  Eigen::VectorXd mean = Eigen::VectorXd::Zero(rows.cols());
  double w_sum = 0.0;
  for (Eigen::Index i = 0; i < rows.rows(); ++i) {
    const double w = weights.empty() ? 1.0 : weights[i];
    const Eigen::VectorXd s = rows.row(i).transpose().cast<double>();
    m += w * s * s.transpose();
    mean += w * s;
    w_sum += w;
  }
  m /= w_sum;
  mean /= w_sum;
  if (centered) m -= mean * mean.transpose();
  return m;
}

inline Eigen::MatrixXd DenseEstimate(Session& session) {
  const int64_t dim = session.options().dim;
  Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> f(dim, dim);
  if (!session.CopyEntries(0, dim, f.data()).ok()) return Eigen::MatrixXd();
  return f;
}

inline double RelativeError(const Eigen::MatrixXd& actual, const Eigen::MatrixXd& expected) {
  return (actual - expected).norm() / expected.norm();
}

// Random float rows, off-center so that centered and uncentered estimates differ.
inline RowMatrixF RandomRows(int64_t rows, int64_t width, std::mt19937_64& rng) {
  std::normal_distribution<float> normal;
  RowMatrixF out(rows, width);
  for (float& x : out.reshaped()) x = normal(rng) + 0.25f;
  return out;
}

// Random weights in [0.5, 2).
inline std::vector<float> RandomWeights(int64_t rows, std::mt19937_64& rng) {
  std::uniform_real_distribution<float> uniform(0.5f, 2.0f);
  std::vector<float> weights(rows);
  for (float& w : weights) w = uniform(rng);
  return weights;
}

// A block of a layered session's options, and a Kronecker one.
inline BlockOptions Block(const std::string& name, BlockKind kind, int64_t dim) {
  BlockOptions block;
  block.name = name;
  block.kind = kind;
  block.dim = dim;
  return block;
}

inline BlockOptions Kronecker(const std::string& name, int64_t in, int64_t out, bool bias) {
  BlockOptions block;
  block.name = name;
  block.kind = BlockKind::kKronecker;
  block.in_features = in;
  block.out_features = out;
  block.bias = bias;
  return block;
}

}  // namespace fisherd::testing

#endif  // FISHERD_TESTS_CORE_TEST_UTIL_H_
