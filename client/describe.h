// Human-readable, multi-line descriptions of service messages (fisherctl's output,
// and handy in worker logs). Not a stable format: parse the protos, not this text.
#ifndef FISHERD_CLIENT_DESCRIBE_H_
#define FISHERD_CLIENT_DESCRIBE_H_

#include <string>

#include "fisherd/v1/fisher.pb.h"

namespace fisherd::client {

// "DENSE", "DIAGONAL", "LAYERED" ("DENSE" for UNSPECIFIED, as the server treats it).
const char* RepresentationName(fisherd::v1::Representation representation);

// "DENSE", "DIAGONAL", "KRONECKER", "LOW_RANK"; "UNSPECIFIED" otherwise.
const char* BlockKindName(fisherd::v1::BlockKind kind);

// "ACTIVATIONS", "OUTPUT_GRADIENTS"; "UNSPECIFIED" otherwise.
const char* FactorName(fisherd::v1::Factor factor);

// A block in fisherctl's --block form, NAME:KIND:SHAPE (client/cli_flags.h parses it):
// "fc1:kronecker:784x1000+bias", "bn1:diagonal:64", "emb:low_rank:5000/16",
// "head:dense:100".
std::string FormatBlockSpec(const fisherd::v1::BlockConfig& block);

// Parameters of a block: dim, or out_features * (in_features + bias) for a Kronecker
// block (0 for an unknown kind).
uint64_t BlockParameterCount(const fisherd::v1::BlockConfig& block);

// Name, configuration, statistics and per-worker sequences, one item a line. A layered
// session adds its Kronecker settings and one line per block: its spec, parameters,
// and the rows and W applied (both factors' for a Kronecker block).
std::string DescribeSession(const fisherd::v1::Session& session);

// One line: name, dim, representation (and block count), samples, steps.
std::string DescribeSessionBrief(const fisherd::v1::Session& session);

// Dim, representation, counts, trace, norms and (when present) eigenvalues; the block,
// its kind and the factor when the summary describes one.
std::string DescribeFisherSummary(const fisherd::v1::FisherSummary& summary);

}  // namespace fisherd::client

#endif  // FISHERD_CLIENT_DESCRIBE_H_
