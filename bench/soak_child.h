// fisherd-soak's child mode: a client that streams score batches into a checked session
// until it is SIGKILLed by the parent (a worker that disappears mid-stream without
// closing anything), or, unkilled, for at most `max_seconds`.
//
//   fisherd-soak --child-stream=HOST:PORT --child-session=ID --child-worker=WORKER_ID
#ifndef FISHERD_BENCH_SOAK_CHILD_H_
#define FISHERD_BENCH_SOAK_CHILD_H_

#include <string>

namespace fisherd::soak {

// Returns the process exit code: 0 after max_seconds, 1 on an error.
int RunChildStream(const std::string& address, const std::string& session_id,
                   const std::string& worker_id, double max_seconds);

}  // namespace fisherd::soak

#endif  // FISHERD_BENCH_SOAK_CHILD_H_
