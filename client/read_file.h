// The whole contents of a file, for PEM files and fisherctl's layout files.
#ifndef FISHERD_CLIENT_READ_FILE_H_
#define FISHERD_CLIENT_READ_FILE_H_

#include <string>

#include "absl/status/statusor.h"

namespace fisherd::client {

// NOT_FOUND naming the path and the system's reason when it cannot be read.
absl::StatusOr<std::string> ReadWholeFile(const std::string& path);

}  // namespace fisherd::client

#endif  // FISHERD_CLIENT_READ_FILE_H_
