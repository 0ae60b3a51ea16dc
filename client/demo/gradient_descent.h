// The baseline: plain full-batch gradient descent, computed in-process.
#ifndef FISHERD_CLIENT_DEMO_GRADIENT_DESCENT_H_
#define FISHERD_CLIENT_DEMO_GRADIENT_DESCENT_H_

#include <functional>
#include <vector>

#include "client/demo/digits.h"

namespace fisherd::demo {

struct GdRun {
  double learning_rate = 0;
  int steps = 0;  // updates taken
  double final_loss = 0;
  double final_accuracy = 0;
  int steps_to_target = -1;  // first step whose loss <= target_loss; -1: not reached
  double seconds = 0;
  bool diverged = false;  // the loss became non-finite
};

// Called after every step with (step, loss, accuracy); may print progress.
using GdProgress = std::function<void(int step, double loss, double accuracy)>;

// theta_{t+1} = theta_t - learning_rate * grad loss(theta_t) from theta_0 = 0, for
// max_steps updates (fewer if the loss becomes non-finite), noting the first step whose
// loss is <= target_loss.
GdRun RunGradientDescent(const Digits& data, double learning_rate, int max_steps,
                         double target_loss, const GdProgress& progress = nullptr);

struct RateTuning {
  double best_rate = 0;       // lowest loss after the trial steps; diverged runs lose
  std::vector<GdRun> trials;  // one per grid entry, in grid order
};

// Runs `steps` updates with every rate in `grid` (REQUIRES: non-empty, ascending) and,
// while the best rate is the largest (or smallest) tried, extends the grid by factors
// of 3 in that direction (at most 6 times), so the chosen rate is never merely the edge
// of the grid. This is the tuning a fair baseline deserves: too small a rate crawls,
// too large a rate oscillates or diverges.
RateTuning TuneLearningRate(const Digits& data, const std::vector<double>& grid, int steps);

}  // namespace fisherd::demo

#endif  // FISHERD_CLIENT_DEMO_GRADIENT_DESCENT_H_
