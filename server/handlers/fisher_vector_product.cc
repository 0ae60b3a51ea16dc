// FisherVectorProduct: F v and 1/2 v^T F v (undamped), computed by core.
#include <cmath>

#include "Eigen/Core"
#include "absl/strings/str_cat.h"
#include "server/handlers/handlers.h"

namespace fisherd::server {

grpc::ServerUnaryReactor* HandleFisherVectorProduct(const ServiceResources& resources,
                                                    grpc::CallbackServerContext* context,
                                                    const v1::FisherVectorProductRequest* request,
                                                    v1::FisherVectorProductResponse* response) {
  return RunUnaryOnPool(resources, context, [&resources, request, response]() -> absl::Status {
    absl::StatusOr<std::shared_ptr<Session>> session =
        resources.registry->Get(request->session(), "session");
    if (!session.ok()) return session.status();

    const int64_t dim = (*session)->options().dim;
    if (request->vector_size() != dim) {
      return absl::InvalidArgumentError(absl::StrCat("vector has ", request->vector_size(),
                                                     " values, but session \"", request->session(),
                                                     "\" has dim ", dim));
    }
    for (int i = 0; i < request->vector_size(); ++i) {
      if (!std::isfinite(request->vector(i))) {
        return absl::InvalidArgumentError(
            absl::StrCat("vector[", i, "] is ", request->vector(i), "; the vector must be finite"));
      }
    }

    const Eigen::VectorXd v = Eigen::Map<const Eigen::VectorXd>(request->vector().data(), dim);
    absl::StatusOr<FisherVectorProductResult> result = (*session)->FisherVectorProduct(v);
    if (!result.ok()) return result.status();
    response->mutable_product()->Assign(result->product.data(),
                                        result->product.data() + result->product.size());
    response->set_quadratic_kl(result->quadratic_kl);
    WaitSessionDurable(resources, **session);
    return absl::OkStatus();
  });
}

}  // namespace fisherd::server
