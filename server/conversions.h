// Translation between the fisherd.v1 messages and core's structs. Pure functions: no
// locks, no registry, no gRPC; the only place that knows both vocabularies.
#ifndef FISHERD_SERVER_CONVERSIONS_H_
#define FISHERD_SERVER_CONVERSIONS_H_

#include <string>

#include "absl/status/statusor.h"
#include "core/options.h"
#include "core/session.h"
#include "core/solve.h"
#include "fisherd/v1/fisher.pb.h"

namespace fisherd::server {

// SessionConfig -> SessionOptions with the wire defaults applied: decay 0 means 1 and
// REPRESENTATION_UNSPECIFIED means dense. INVALID_ARGUMENT for an enum value this
// server does not know, a dim beyond int64, or anything SessionOptions::Validate
// refuses (dim 0, decay outside (0, 1], negative or non-finite damping).
// On success the result satisfies SessionOptions::Validate().
absl::StatusOr<SessionOptions> SessionOptionsFromProto(const v1::SessionConfig& config);

// The effective configuration, as a client should read it back: decay as used (1 when
// 0 was sent) and representation DENSE rather than UNSPECIFIED.
void SessionOptionsToProto(const SessionOptions& options, v1::SessionConfig* config);

v1::Representation RepresentationToProto(Representation representation);

void StatsToProto(const SessionStatsSnapshot& stats, v1::SessionStats* out);

// Fills name, config and stats. Stats() takes the session lock.
void SessionToProto(const std::string& name, Session& session, v1::Session* out);

void SolverSummaryToProto(const SolverSummary& summary, v1::SolverSummary* out);

void StepResultToProto(const StepResult& result, v1::NaturalGradientStepResponse* out);

// Combines the scalar description of F with the session's shape and counters.
void FisherSummaryToProto(const FisherSummary& summary, const SessionOptions& options,
                          const SessionStatsSnapshot& stats, v1::FisherSummary* out);

}  // namespace fisherd::server

#endif  // FISHERD_SERVER_CONVERSIONS_H_
