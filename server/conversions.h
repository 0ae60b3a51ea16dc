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

// SessionConfig -> SessionOptions with the wire defaults applied: decay 0 means 1,
// REPRESENTATION_UNSPECIFIED means dense (layered when blocks are given), dim 0 with
// blocks means their total, factor_refresh_period 0 means 1. INVALID_ARGUMENT for an
// enum value this server does not know, a dim beyond int64, a representation that
// contradicts the blocks, or anything SessionOptions::Validate refuses (dim 0, decay
// outside (0, 1], negative or non-finite damping, a bad block, naming it).
// On success the result satisfies SessionOptions::Validate().
absl::StatusOr<SessionOptions> SessionOptionsFromProto(const v1::SessionConfig& config);

// The effective configuration, as a client should read it back: decay as used (1 when
// 0 was sent), representation DENSE rather than UNSPECIFIED (LAYERED with blocks), dim
// and factor_refresh_period as used.
void SessionOptionsToProto(const SessionOptions& options, v1::SessionConfig* config);

v1::Representation RepresentationToProto(Representation representation);

void StatsToProto(const SessionStatsSnapshot& stats, v1::SessionStats* out);

// Fills name, config and stats. Stats() takes the session lock.
void SessionToProto(const std::string& name, Session& session, v1::Session* out);

void SolverSummaryToProto(const SolverSummary& summary, v1::SolverSummary* out);

// OK for the StepAnswer values this server knows; INVALID_ARGUMENT naming `field` and the
// value otherwise (checked before the step, so an unknown answer changes nothing).
absl::Status ValidateStepAnswer(int answer, absl::string_view field);
// The scalars and solver summary, and the vectors `answer` asks for (all of [0, dim)).
// REQUIRES: ValidateStepAnswer(answer) is OK.
void StepResultToProto(const StepResult& result, v1::StepAnswer answer,
                       v1::NaturalGradientStepResponse* out);
// The vectors `answer` asks for over [begin, end) into a streamed chunk.
void StepChunkToProto(const StepResult& result, v1::StepAnswer answer, int64_t begin, int64_t end,
                      v1::StreamNaturalGradientStepResponse* out);

// Combines the scalar description of F with the session's shape and counters. With a
// part (a block, or a factor of one), dim is the part's and block, factor and
// block_kind name it.
void FisherSummaryToProto(const FisherSummary& summary, const SessionOptions& options,
                          const SessionStatsSnapshot& stats, v1::FisherSummary* out);
void FisherSummaryToProto(const FisherSummary& summary, const Session& session,
                          const EstimatePart& part, const SessionStatsSnapshot& stats,
                          v1::FisherSummary* out);

// The wire Factor as core's; INVALID_ARGUMENT naming `field` for an unknown value.
absl::StatusOr<Factor> FactorFromProto(int factor, const char* field);
v1::Factor FactorToProto(Factor factor);
v1::BlockKind BlockKindToProto(BlockKind kind);

}  // namespace fisherd::server

#endif  // FISHERD_SERVER_CONVERSIONS_H_
