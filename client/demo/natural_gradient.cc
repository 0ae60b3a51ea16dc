#include "client/demo/natural_gradient.h"

#include <algorithm>
#include <memory>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "client/demo/softmax_model.h"

namespace fisherd::demo {
namespace v1 = ::fisherd::v1;
namespace {

// Streams the Fisher rows of every sample at the current probabilities and waits until
// the server has applied all of them.
absl::Status StreamFisher(client::ScoreStreamer* streamer, const Digits& data,
                          const Eigen::MatrixXd& probabilities, int samples_per_append,
                          uint64_t* rows_streamed) {
  std::vector<float> rows;
  std::vector<float> weights;
  const Eigen::Index n = data.features.rows();
  for (Eigen::Index begin = 0; begin < n; begin += samples_per_append) {
    const Eigen::Index end = std::min<Eigen::Index>(n, begin + samples_per_append);
    rows.clear();
    weights.clear();
    AppendFisherRows(data.features, probabilities, begin, end, &rows, &weights);
    if (weights.empty()) continue;
    if (absl::Status s = streamer->Append(rows, weights); !s.ok()) return s;
    *rows_streamed += weights.size();
  }
  return streamer->Flush();
}

absl::StatusOr<NgRun> Run(client::FisherClient* client, const Digits& data,
                          const NgOptions& options, const NgProgress& progress) {
  const absl::Time start = absl::Now();
  client::ScoreStreamerOptions stream_options;
  stream_options.session = options.session_id;
  stream_options.worker_id = options.worker_id;
  stream_options.dim = kDim;
  absl::StatusOr<std::unique_ptr<client::ScoreStreamer>> streamer =
      client::ScoreStreamer::Create(client, stream_options);
  if (!streamer.ok()) return streamer.status();

  client::StepParams params;
  params.damping = options.damping;
  params.kl_budget = options.kl_budget;
  params.learning_rate = options.max_eta;
  params.answer = v1::STEP_ANSWER_UPDATE;  // the demo applies the update alone

  NgRun run;
  Eigen::VectorXd theta = Eigen::VectorXd::Zero(kDim);
  Evaluation e = Evaluate(data, theta);
  NgStepRecord record;
  for (int step = 0;; ++step) {
    record.step = step;
    record.loss = e.loss;
    record.accuracy = e.accuracy;
    record.seconds = absl::ToDoubleSeconds(absl::Now() - start);
    run.trace.push_back(record);
    if (progress) progress(record);
    if (step == options.max_steps) break;

    if (absl::Status s = StreamFisher(streamer->get(), data, e.probabilities,
                                      options.samples_per_append, &run.rows_streamed);
        !s.ok()) {
      return s;
    }
    // Before the step (which decays the statistics): the server's F g must match the
    // closed form, up to float32 rounding of the streamed rows.
    absl::StatusOr<v1::FisherVectorProductResponse> fvp =
        client->FisherVectorProduct(options.session_id, e.gradient);
    if (!fvp.ok()) return fvp.status();
    const Eigen::VectorXd local = FisherTimes(data.features, e.probabilities, e.gradient);
    if (fvp->product_size() != kDim) {
      return absl::DataLossError(absl::StrFormat("FisherVectorProduct returned %d values, want %d",
                                                 fvp->product_size(), kDim));
    }
    const Eigen::VectorXd remote = Eigen::Map<const Eigen::VectorXd>(fvp->product().data(), kDim);
    run.max_fvp_relative_error = std::max(run.max_fvp_relative_error,
                                          (remote - local).norm() / std::max(local.norm(), 1e-300));

    absl::StatusOr<v1::NaturalGradientStepResponse> response =
        client->Step(options.session_id, e.gradient, params);
    if (!response.ok()) return response.status();
    if (response->update_size() != kDim) {
      return absl::DataLossError(absl::StrFormat("NaturalGradientStep returned %d values, want %d",
                                                 response->update_size(), kDim));
    }
    theta += Eigen::Map<const Eigen::VectorXd>(response->update().data(), kDim);
    record.eta = response->eta();
    record.predicted_kl = response->predicted_kl();
    e = Evaluate(data, theta);
  }
  if (absl::Status s = (*streamer)->Close(); !s.ok()) return s;
  run.streamer = (*streamer)->stats();
  run.seconds = absl::ToDoubleSeconds(absl::Now() - start);
  return run;
}

}  // namespace

absl::StatusOr<NgRun> RunNaturalGradient(client::FisherClient* client, const Digits& data,
                                         const NgOptions& options, const NgProgress& progress) {
  v1::SessionConfig config;
  config.set_dim(kDim);
  config.set_representation(v1::REPRESENTATION_DENSE);
  config.set_decay(options.decay);
  config.set_damping(options.damping);
  absl::StatusOr<v1::Session> session = client->CreateSession(options.session_id, config);
  if (!session.ok()) return session.status();
  absl::StatusOr<NgRun> run = Run(client, data, options, progress);
  // The session is the demo's scratch space; leave the server as it was found.
  absl::Status deleted = client->DeleteSession(options.session_id);
  if (run.ok() && !deleted.ok()) return deleted;
  return run;
}

}  // namespace fisherd::demo
