// Multinomial logistic regression on the digits, and its exact Fisher information.
//
// p(y = k | x) = softmax(W x)_k with W of kClasses x kFeatures; the parameter vector
// theta is W row-major, so theta[k * kFeatures + j] = W(k, j) and dim = 650. The loss is
// the mean negative log-likelihood over the training set.
#ifndef FISHERD_CLIENT_DEMO_SOFTMAX_MODEL_H_
#define FISHERD_CLIENT_DEMO_SOFTMAX_MODEL_H_

#include <vector>

#include "Eigen/Core"
#include "client/demo/digits.h"

namespace fisherd::demo {

inline constexpr int kDim = kClasses * kFeatures;

struct Evaluation {
  double loss = 0;                // mean -log p(y_i | x_i)
  double accuracy = 0;            // fraction of argmax_k p = y_i
  Eigen::VectorXd gradient;       // d loss / d theta, length kDim
  Eigen::MatrixXd probabilities;  // n x kClasses, p_ik
};

// REQUIRES: theta.size() == kDim.
Evaluation Evaluate(const Digits& data, const Eigen::VectorXd& theta);

// The Fisher of the mean log-likelihood is
//   F = 1/n sum_i (diag(p_i) - p_i p_i^T) (x) x_i x_i^T
//     = sum_i sum_k p_ik s_ik s_ik^T / sum_i sum_k p_ik,   s_ik = (e_k - p_i) (x) x_i,
// because sum_k p_k (e_k - p)(e_k - p)^T = diag(p) - p p^T and sum_k p_ik = 1. So
// streaming, for every sample i and every class k, the score s_ik of label k (the
// gradient of log p(k | x_i)) with weight p_ik gives fisherd's uncentered estimate
// M / W = F exactly: the expected Fisher, not the empirical one built from the data
// labels, and without the noise of sampling labels from the model.
//
// Appends those rows for samples [begin, end): (end - begin) * kClasses rows of kDim
// floats to *rows and their weights to *weights. Rows whose weight underflows to 0 in
// float32 carry nothing and are left out.
void AppendFisherRows(const Eigen::MatrixXd& features, const Eigen::MatrixXd& probabilities,
                      Eigen::Index begin, Eigen::Index end, std::vector<float>* rows,
                      std::vector<float>* weights);

// F v computed locally from the same formula (no rows materialized); the demo checks
// the server's FisherVectorProduct against it.
Eigen::VectorXd FisherTimes(const Eigen::MatrixXd& features, const Eigen::MatrixXd& probabilities,
                            const Eigen::VectorXd& v);

}  // namespace fisherd::demo

#endif  // FISHERD_CLIENT_DEMO_SOFTMAX_MODEL_H_
