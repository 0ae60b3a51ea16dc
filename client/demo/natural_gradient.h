// The natural-gradient run: the demo's worker loop against a fisherd server.
//
// Every step streams the exact Fisher at the current parameters (softmax_model.h) into
// one dense session, asks the server for a KL-budgeted natural-gradient step and
// applies it. For a GLM such as softmax regression this is a trust-region Newton
// method (docs/design.md: NG == Newton for GLMs), which is why it needs so few steps.
#ifndef FISHERD_CLIENT_DEMO_NATURAL_GRADIENT_H_
#define FISHERD_CLIENT_DEMO_NATURAL_GRADIENT_H_

#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/demo/digits.h"
#include "client/fisher_client.h"
#include "client/score_streamer.h"

namespace fisherd::demo {

struct NgOptions {
  // Created at the start, deleted at the end (also after a failure).
  std::string session_id = "fisherd-demo";
  std::string worker_id = "demo-worker";
  int max_steps = 12;
  // KL budget c of each step: eta = sqrt(2 c / g^T n), so one step moves the model's
  // predictive distribution by about c nats (quadratic KL), whatever the scaling of theta.
  double kl_budget = 0.5;
  // lambda: keeps F + lambda I well conditioned (the bias weights and the never-lit border
  // pixels give F exact zero directions).
  double damping = 1e-4;
  // Cap on eta (sent as learning_rate). 1 is Newton's full step: a KL budget larger than
  // the Newton step needs must not overshoot it.
  double max_eta = 1.0;
  // Session decay rho. Each step streams the complete Fisher at the current parameters,
  // so older statistics are only stale: a tiny rho leaves them a 1e-6 share after one
  // step, i.e. every step sees a fresh estimate, while one session and one score stream
  // (with sequence numbers continuing across steps) serve the whole run, as they would
  // for a long-lived worker. (rho must be in (0, 1]; with minibatch Fisher estimates one
  // would pick rho ~ 0.9 to average noise instead.)
  double decay = 1e-6;
  // Samples whose Fisher rows (kClasses each) are generated per Append call, bounding
  // the demo's own buffer to samples_per_append * kClasses * 650 floats.
  int samples_per_append = 256;
};

struct NgStepRecord {
  int step = 0;  // updates taken so far
  double loss = 0;
  double accuracy = 0;
  double eta = 0;  // of the step that led here (0 at step 0)
  double predicted_kl = 0;
  double seconds = 0;  // since the run started
};

struct NgRun {
  std::vector<NgStepRecord> trace;  // step 0 (initial point) .. steps
  double seconds = 0;
  uint64_t rows_streamed = 0;
  // Largest ||F g (server) - F g (local)|| / ||F g (local)|| over the steps: checks the
  // whole path (float32 encoding, accumulation, decay) against the closed form.
  double max_fvp_relative_error = 0;
  client::ScoreStreamerStats streamer;
};

using NgProgress = std::function<void(const NgStepRecord&)>;

absl::StatusOr<NgRun> RunNaturalGradient(client::FisherClient* client, const Digits& data,
                                         const NgOptions& options,
                                         const NgProgress& progress = nullptr);

}  // namespace fisherd::demo

#endif  // FISHERD_CLIENT_DEMO_NATURAL_GRADIENT_H_
