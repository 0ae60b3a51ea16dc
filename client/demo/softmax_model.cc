#include "client/demo/softmax_model.h"

#include <cmath>

namespace fisherd::demo {
namespace {

using RowMajorWeights = Eigen::Matrix<double, kClasses, kFeatures, Eigen::RowMajor>;

Eigen::Map<const RowMajorWeights> AsWeights(const Eigen::VectorXd& theta) {
  return Eigen::Map<const RowMajorWeights>(theta.data());
}

}  // namespace

Evaluation Evaluate(const Digits& data, const Eigen::VectorXd& theta) {
  const Eigen::MatrixXd& x = data.features;
  const Eigen::Index n = x.rows();
  Evaluation e;
  // Logits n x kClasses; subtract each row's max before exp so nothing overflows.
  Eigen::MatrixXd logits = x * AsWeights(theta).transpose();
  e.probabilities.resize(n, kClasses);
  double nll = 0;
  int correct = 0;
  for (Eigen::Index i = 0; i < n; ++i) {
    Eigen::Index argmax;
    const double max = logits.row(i).maxCoeff(&argmax);
    const Eigen::RowVectorXd shifted = logits.row(i).array() - max;
    const double log_sum = std::log(shifted.array().exp().sum());
    e.probabilities.row(i) = (shifted.array() - log_sum).exp();
    nll -= shifted(data.labels[i]) - log_sum;
    correct += argmax == data.labels[i];
  }
  e.loss = nll / n;
  e.accuracy = static_cast<double>(correct) / n;
  // d loss / d W = 1/n (P - Y)^T X, flattened row-major like theta.
  Eigen::MatrixXd residual = e.probabilities;
  for (Eigen::Index i = 0; i < n; ++i) residual(i, data.labels[i]) -= 1.0;
  RowMajorWeights grad = residual.transpose() * x / static_cast<double>(n);
  e.gradient = Eigen::Map<const Eigen::VectorXd>(grad.data(), kDim);
  return e;
}

void AppendFisherRows(const Eigen::MatrixXd& features, const Eigen::MatrixXd& probabilities,
                      Eigen::Index begin, Eigen::Index end, std::vector<float>* rows,
                      std::vector<float>* weights) {
  for (Eigen::Index i = begin; i < end; ++i) {
    const Eigen::RowVectorXf x = features.row(i).cast<float>();
    for (int k = 0; k < kClasses; ++k) {
      const float weight = static_cast<float>(probabilities(i, k));
      if (weight == 0.0f) continue;
      weights->push_back(weight);
      // Row s_ik = (e_k - p_i) (x) x_i: block c holds (delta_ck - p_ic) x_i.
      const size_t start = rows->size();
      rows->resize(start + kDim);
      float* out = rows->data() + start;
      for (int c = 0; c < kClasses; ++c) {
        const float coefficient = static_cast<float>((c == k ? 1.0 : 0.0) - probabilities(i, c));
        Eigen::Map<Eigen::RowVectorXf>(out + c * kFeatures, kFeatures) = coefficient * x;
      }
    }
  }
}

Eigen::VectorXd FisherTimes(const Eigen::MatrixXd& features, const Eigen::MatrixXd& probabilities,
                            const Eigen::VectorXd& v) {
  // With V = v as kClasses x kFeatures and u_i = V x_i:
  //   F v = 1/n sum_i ((diag(p_i) - p_i p_i^T) u_i) x_i^T, i.e. A^T X / n with
  //   A = P .* U - P .* rowsum(P .* U), U = X V^T.
  const Eigen::MatrixXd u = features * AsWeights(v).transpose();
  const Eigen::MatrixXd pu = probabilities.cwiseProduct(u);
  const Eigen::VectorXd dot = pu.rowwise().sum();
  const Eigen::MatrixXd a = pu - probabilities.cwiseProduct(dot.replicate(1, kClasses));
  RowMajorWeights product = a.transpose() * features / static_cast<double>(features.rows());
  return Eigen::Map<const Eigen::VectorXd>(product.data(), kDim);
}

}  // namespace fisherd::demo
