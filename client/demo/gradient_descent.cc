#include "client/demo/gradient_descent.h"

#include <cmath>
#include <limits>

#include "absl/time/clock.h"
#include "client/demo/softmax_model.h"

namespace fisherd::demo {

GdRun RunGradientDescent(const Digits& data, double learning_rate, int max_steps,
                         double target_loss, const GdProgress& progress) {
  const absl::Time start = absl::Now();
  GdRun run;
  run.learning_rate = learning_rate;
  Eigen::VectorXd theta = Eigen::VectorXd::Zero(kDim);
  Evaluation e = Evaluate(data, theta);
  for (int step = 0;; ++step) {
    run.steps = step;
    run.final_loss = e.loss;
    run.final_accuracy = e.accuracy;
    if (!std::isfinite(e.loss)) {
      run.diverged = true;
      break;
    }
    if (run.steps_to_target < 0 && e.loss <= target_loss) run.steps_to_target = step;
    if (step == max_steps) break;
    theta -= learning_rate * e.gradient;
    e = Evaluate(data, theta);
    if (progress) progress(step + 1, e.loss, e.accuracy);
  }
  run.seconds = absl::ToDoubleSeconds(absl::Now() - start);
  return run;
}

RateTuning TuneLearningRate(const Digits& data, const std::vector<double>& grid, int steps) {
  RateTuning tuning;
  double best_loss = std::numeric_limits<double>::infinity();
  auto trial = [&](double rate) {
    tuning.trials.push_back(
        RunGradientDescent(data, rate, steps, -std::numeric_limits<double>::infinity()));
    const GdRun& run = tuning.trials.back();
    if (!run.diverged && run.final_loss < best_loss) {
      best_loss = run.final_loss;
      tuning.best_rate = rate;
    }
  };
  for (double rate : grid) trial(rate);
  constexpr int kMaxExtensions = 6;
  double high = grid.back();
  for (int i = 0; i < kMaxExtensions && tuning.best_rate == high; ++i) trial(high *= 3);
  double low = grid.front();
  for (int i = 0; i < kMaxExtensions && tuning.best_rate == low; ++i) trial(low /= 3);
  if (!std::isfinite(best_loss)) tuning.best_rate = grid.front();
  return tuning;
}

}  // namespace fisherd::demo
