// Human-readable, multi-line descriptions of service messages (fisherctl's output,
// and handy in worker logs). Not a stable format: parse the protos, not this text.
#ifndef FISHERD_CLIENT_DESCRIBE_H_
#define FISHERD_CLIENT_DESCRIBE_H_

#include <string>

#include "fisherd/v1/fisher.pb.h"

namespace fisherd::client {

// "DENSE", "DIAGONAL" ("DENSE" for UNSPECIFIED, as the server treats it).
const char* RepresentationName(fisherd::v1::Representation representation);

// Name, configuration, statistics and per-worker sequences, one item a line.
std::string DescribeSession(const fisherd::v1::Session& session);

// One line: name, dim, representation, samples, steps.
std::string DescribeSessionBrief(const fisherd::v1::Session& session);

// Dim, representation, counts, trace, norms and (when present) eigenvalues.
std::string DescribeFisherSummary(const fisherd::v1::FisherSummary& summary);

}  // namespace fisherd::client

#endif  // FISHERD_CLIENT_DESCRIBE_H_
