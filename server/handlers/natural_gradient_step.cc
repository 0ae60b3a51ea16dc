// NaturalGradientStep: n = (F + lambda I)^-1 g and the scaled update, computed by core;
// this handler checks the request's shape and translates.
#include <chrono>
#include <cmath>

#include "Eigen/Core"
#include "absl/strings/str_cat.h"
#include "server/conversions.h"
#include "server/handlers/handlers.h"

namespace fisherd::server {

grpc::ServerUnaryReactor* HandleNaturalGradientStep(const ServiceResources& resources,
                                                    grpc::CallbackServerContext* context,
                                                    const v1::NaturalGradientStepRequest* request,
                                                    v1::NaturalGradientStepResponse* response) {
  return RunUnaryOnPool(resources, context, [&resources, request, response]() -> absl::Status {
    absl::StatusOr<std::shared_ptr<Session>> session =
        resources.registry->Get(request->session(), "session");
    if (!session.ok()) return session.status();

    const int64_t dim = (*session)->options().dim;
    if (request->gradient_size() != dim) {
      return absl::InvalidArgumentError(absl::StrCat("gradient has ", request->gradient_size(),
                                                     " values, but session \"", request->session(),
                                                     "\" has dim ", dim));
    }
    for (int i = 0; i < request->gradient_size(); ++i) {
      if (!std::isfinite(request->gradient(i))) {
        return absl::InvalidArgumentError(absl::StrCat(
            "gradient[", i, "] is ", request->gradient(i), "; the gradient must be finite"));
      }
    }

    if (absl::Status status = ValidateStepAnswer(request->answer(), "answer"); !status.ok()) {
      return status;
    }
    StepOptions options;
    if (request->has_damping()) options.damping = request->damping();
    options.learning_rate = request->learning_rate();
    options.kl_budget = request->kl_budget();
    options.skip_decay = request->skip_decay();
    // Core validates too; checking here keeps the message about the request's fields.
    if (absl::Status status = options.Validate(); !status.ok()) return status;

    const Eigen::VectorXd gradient =
        Eigen::Map<const Eigen::VectorXd>(request->gradient().data(), dim);
    // FAILED_PRECONDITION (no samples yet, or F + lambda I singular) passes through.
    const auto start = std::chrono::steady_clock::now();
    absl::StatusOr<StepResult> result =
        (*session)->Step(gradient, options, StepLogger(resources, request->session(), **session));
    if (!result.ok()) return result.status();
    RecordStep(resources, result->solver, start);
    WaitDurable(resources, result->lsn);  // its decay is on disk before anyone sees it
    StepResultToProto(*result, request->answer(), response);
    return absl::OkStatus();
  });
}

}  // namespace fisherd::server
