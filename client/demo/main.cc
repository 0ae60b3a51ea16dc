// fisherd-demo: natural gradient through fisherd vs tuned gradient descent, on softmax
// regression of the UCI handwritten digits (1797 images, 650 parameters).
//
// Pass criteria (exit 0): natural gradient reaches >= 95% training accuracy, and it
// reaches the loss it had at that point in at most 1/5 of the steps gradient descent
// needs for the same loss (met outright if gradient descent never gets there within its
// budget). Exit 1 when a criterion fails or the server fails, 2 for usage errors.
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <limits>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "client/cli_flags.h"
#include "client/connection_flags.h"
#include "client/demo/digits.h"
#include "client/demo/gradient_descent.h"
#include "client/demo/natural_gradient.h"
#include "client/demo/softmax_model.h"
#include "client/fisher_client.h"

#ifndef FISHERD_DEMO_DATA
#define FISHERD_DEMO_DATA "data/digits.csv.gz"
#endif

namespace fisherd::demo {
namespace {

constexpr char kDescription[] =
    "Trains softmax regression on the handwritten digits twice: natural gradient through a\n"
    "fisherd server, and tuned full-batch gradient descent in-process; prints a comparison.";

constexpr double kTargetAccuracy = 0.95;
constexpr int kRequiredSpeedup = 5;

int UsageError(absl::string_view message) {
  std::cerr << "fisherd-demo: " << message << "\n(run fisherd-demo --help for the flags)\n";
  return 2;
}

int Failed(const absl::Status& status) {
  std::cerr << "fisherd-demo: " << absl::StatusCodeToString(status.code()) << ": "
            << status.message() << "\n";
  return 1;
}

int Main(int argc, char** argv) {
  NgOptions ng;
  client::ConnectionFlags connection;
  std::string data_path = FISHERD_DEMO_DATA;
  int64_t max_steps = ng.max_steps;
  int64_t gd_max_steps = 2000;
  std::string session_flag;
  bool quiet = false;
  client::CliFlags flags("fisherd-demo", kDescription);
  flags.AddString("data", &data_path, "digits.csv.gz (default: the repository's copy)");
  flags.AddInt("max-steps", &max_steps, 1, 1 << 20, "natural-gradient steps");
  flags.AddInt("gd-max-steps", &gd_max_steps, 1, 1 << 30, "gradient-descent budget");
  constexpr double kAny = std::numeric_limits<double>::max();
  flags.AddDouble("kl-budget", &ng.kl_budget, 0, kAny,
                  "KL budget per natural-gradient step, nats (> 0)");
  flags.AddDouble("damping", &ng.damping, 0, kAny, "damping of F");
  flags.AddString("worker-id", &ng.worker_id, "worker id of the score stream");
  flags.AddString("session", &session_flag,
                  "session to create (default fisherd-demo-PID-MICROS, unique)");
  flags.AddBool("quiet", &quiet, "no progress lines, only the summary");
  client::DefineConnectionFlags(&connection, &flags);
  bool help = false;
  const absl::Status parsed = flags.Parse(argc, argv, &help);
  if (help) {
    std::cout << flags.Help();
    return 0;
  }
  if (!parsed.ok()) return UsageError(parsed.message());
  client::ClientOptions options;
  if (absl::Status s = client::ReadConnectionFlags(connection, &options); !s.ok()) {
    if (s.code() == absl::StatusCode::kInvalidArgument) return UsageError(s.message());
    return Failed(s);
  }
  const std::string target = options.target;
  if (!(ng.kl_budget > 0)) return UsageError("--kl-budget must be > 0");
  ng.max_steps = static_cast<int>(max_steps);
  // Unique per process so that concurrent demos against one server do not collide.
  ng.session_id = !session_flag.empty() ? session_flag
                                        : absl::StrFormat("fisherd-demo-%d-%d", getpid(),
                                                          absl::ToUnixMicros(absl::Now()));

  absl::StatusOr<Digits> data = LoadDigits(data_path);
  if (!data.ok()) return Failed(data.status());

  absl::StatusOr<std::unique_ptr<client::FisherClient>> fisher =
      client::FisherClient::Create(options);
  if (!fisher.ok()) {
    if (fisher.status().code() == absl::StatusCode::kInvalidArgument) {
      return UsageError(fisher.status().message());
    }
    return Failed(fisher.status());
  }
  // Waits briefly for a server that is still starting; fails clearly if there is none.
  absl::StatusOr<client::ServingStatus> health = (*fisher)->CheckHealth(absl::Seconds(5));
  if (!health.ok()) return Failed(health.status());
  if (*health != client::HealthCheckResponse::SERVING) {
    return Failed(absl::UnavailableError(absl::StrFormat(
        "server at %s is %s", target, client::HealthCheckResponse::ServingStatus_Name(*health))));
  }

  absl::PrintF("digits: %d images, %d classes, %d parameters; server %s\n",
               static_cast<int>(data->labels.size()), kClasses, kDim, target.c_str());
  absl::PrintF(
      "natural gradient: dense session %s, KL budget %g, damping %g, exact Fisher "
      "(%d weighted rows per image)\n",
      ng.session_id.c_str(), ng.kl_budget, ng.damping, kClasses);
  std::fflush(stdout);

  // 1. Natural gradient through the server.
  absl::StatusOr<NgRun> ng_run =
      RunNaturalGradient(fisher->get(), *data, ng, [&](const NgStepRecord& r) {
        if (quiet) return;
        absl::PrintF("[ng] step %3d  loss %.6f  acc %6.2f%%  eta %.3f  kl %.3f  %6.2fs\n", r.step,
                     r.loss, 100 * r.accuracy, r.eta, r.predicted_kl, r.seconds);
        std::fflush(stdout);
      });
  if (!ng_run.ok()) return Failed(ng_run.status());

  int ng_steps_to_target = -1;
  double target_loss = 0;
  for (const NgStepRecord& r : ng_run->trace) {
    if (r.accuracy >= kTargetAccuracy) {
      ng_steps_to_target = r.step;
      target_loss = r.loss;
      break;
    }
  }
  const NgStepRecord& ng_last = ng_run->trace.back();

  // 2. The baseline: tune the rate on short runs, then run its whole budget, noting when
  //    it first reaches the target loss.
  const std::vector<double> grid = {0.1, 0.3, 1.0, 3.0, 10.0};
  const int tune_steps = 100;
  const RateTuning tuning = TuneLearningRate(*data, grid, tune_steps);
  if (!quiet) {
    for (const GdRun& trial : tuning.trials) {
      absl::PrintF(
          "[gd] tuning: rate %-6g loss after %d steps %s\n", trial.learning_rate, tune_steps,
          trial.diverged ? std::string("diverged") : absl::StrFormat("%.6f", trial.final_loss));
    }
  }
  absl::PrintF("[gd] chosen learning rate %g (lowest loss after %d steps of %d rates tried)\n",
               tuning.best_rate, tune_steps, tuning.trials.size());
  const double gd_target = ng_steps_to_target >= 0 ? target_loss : 0.0;
  const int gd_budget = static_cast<int>(gd_max_steps);
  const GdRun gd = RunGradientDescent(
      *data, tuning.best_rate, gd_budget, gd_target, [&](int step, double loss, double accuracy) {
        if (quiet || step % 200 != 0) return;
        absl::PrintF("[gd] step %4d  loss %.6f  acc %6.2f%%\n", step, loss, 100 * accuracy);
        std::fflush(stdout);
      });

  // 3. Summary.
  auto steps_to = [](int steps) {
    return steps >= 0 ? absl::StrFormat("%d", steps) : std::string("not reached");
  };
  absl::PrintF("\nFisher check: server F g vs closed form, max relative error %.2e over %d steps\n",
               ng_run->max_fvp_relative_error, ng_last.step);
  absl::PrintF(
      "score stream: %d rows in %d batches (%d resent, %d duplicate acks, %d reconnects)\n",
      ng_run->rows_streamed, ng_run->streamer.batches_sent, ng_run->streamer.batches_resent,
      ng_run->streamer.duplicate_acks, ng_run->streamer.reconnects);
  if (ng_steps_to_target >= 0) {
    absl::PrintF(
        "target loss %.6f = natural gradient's loss when it first reached %.0f%% accuracy\n\n",
        target_loss, 100 * kTargetAccuracy);
  } else {
    absl::PrintF("natural gradient never reached %.0f%% accuracy\n\n", 100 * kTargetAccuracy);
  }
  absl::PrintF("%-26s %6s %12s %10s %10s %16s\n", "method", "steps", "final loss", "train acc",
               "wall time", "steps to target");
  absl::PrintF("%-26s %6d %12.6f %9.2f%% %9.2fs %16s\n", "natural gradient (fisherd)", ng_last.step,
               ng_last.loss, 100 * ng_last.accuracy, ng_run->seconds,
               steps_to(ng_steps_to_target).c_str());
  absl::PrintF("%-26s %6d %12.6f %9.2f%% %9.2fs %16s\n",
               absl::StrFormat("gradient descent (lr %g)", gd.learning_rate).c_str(), gd.steps,
               gd.final_loss, 100 * gd.final_accuracy, gd.seconds,
               steps_to(gd.steps_to_target).c_str());
  for (const NgStepRecord& r : ng_run->trace) {
    if (r.loss <= gd.final_loss) {
      absl::PrintF(
          "natural gradient was below gradient descent's final loss (%.6f after %d steps) "
          "after %d steps\n",
          gd.final_loss, gd.steps, r.step);
      break;
    }
  }
  absl::PrintF("\n");

  // 4. Verdict.
  bool pass = true;
  if (ng_steps_to_target < 0) {
    absl::PrintF("FAIL: natural gradient did not reach %.0f%% training accuracy in %d steps\n",
                 100 * kTargetAccuracy, ng_last.step);
    pass = false;
  } else if (gd.steps_to_target < 0) {
    absl::PrintF(
        "PASS: natural gradient reached %.2f%% accuracy; gradient descent did not reach "
        "loss %.6f within its budget of %d steps (criterion met)\n",
        100 * ng_last.accuracy, target_loss, gd_budget);
  } else if (kRequiredSpeedup * ng_steps_to_target <= gd.steps_to_target) {
    absl::PrintF(
        "PASS: natural gradient needed %d steps, gradient descent %d (%.1fx fewer; "
        "required >= %dx)\n",
        ng_steps_to_target, gd.steps_to_target,
        static_cast<double>(gd.steps_to_target) / std::max(ng_steps_to_target, 1),
        kRequiredSpeedup);
  } else {
    absl::PrintF(
        "FAIL: natural gradient needed %d steps, gradient descent %d (required >= %dx "
        "fewer)\n",
        ng_steps_to_target, gd.steps_to_target, kRequiredSpeedup);
    pass = false;
  }
  if (ng_run->max_fvp_relative_error > 1e-3) {
    absl::PrintF("FAIL: the server's Fisher differs from the closed form (relative error %.2e)\n",
                 ng_run->max_fvp_relative_error);
    pass = false;
  }
  return pass ? 0 : 1;
}

}  // namespace
}  // namespace fisherd::demo

int main(int argc, char** argv) { return fisherd::demo::Main(argc, argv); }
