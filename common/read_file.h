// Reading a whole file (PEM files, token files, fisherctl's layout files): the one
// reader the server and the clients share.
#ifndef FISHERD_COMMON_READ_FILE_H_
#define FISHERD_COMMON_READ_FILE_H_

#include <string>

#include "absl/status/statusor.h"

namespace fisherd::common {

// The whole file, bytes as they are. PERMISSION_DENIED when access is refused,
// NOT_FOUND otherwise; either message is "cannot read PATH: <the system's reason>".
absl::StatusOr<std::string> ReadFileToString(const std::string& path);

}  // namespace fisherd::common

#endif  // FISHERD_COMMON_READ_FILE_H_
