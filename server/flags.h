// fisherd's command line: its flags declared on the shared FlagSet (common/flag_set.h,
// CLI11), with the defaults of ServerOptions, so a new flag (--tls-cert and friends) is
// one line in DefineServerFlags.
#ifndef FISHERD_SERVER_FLAGS_H_
#define FISHERD_SERVER_FLAGS_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "common/flag_set.h"
#include "server/fisher_server.h"

namespace fisherd::server {

using FlagSet = ::fisherd::common::FlagSet;

// fisherd's flags. Their defaults are not written here: a default-constructed
// ServerFlags holds those of ServerOptions (server/fisher_server.h and the structs it
// holds), in the flags' units, so the two cannot disagree. drain_seconds, which
// ServerOptions does not hold, is the one default of this file.
struct ServerFlags {
  ServerFlags() : ServerFlags(ServerOptions()) {}
  explicit ServerFlags(const ServerOptions& defaults);

  std::string listen;
  int64_t max_sessions;
  int64_t max_dense_dim;
  int64_t memory_budget_mb;
  int64_t max_message_mb;
  int64_t math_threads;  // 0 is replaced by hardware_concurrency() in DefineServerFlags
  double drain_seconds = 10;
  std::string tls_cert;
  std::string tls_key;
  std::string tls_client_ca;
  std::string auth_token_file;
  std::string health_listen;
  std::string replica_name;
  std::string metrics_listen;
  std::string data_dir;
  double snapshot_interval_seconds;
  int64_t snapshot_log_mb;

  ServerOptions ToServerOptions() const;
};

// Binds every field of *flags to `set`; a flag given twice keeps its last value.
// REQUIRES: flags outlives set.
void DefineServerFlags(ServerFlags* flags, FlagSet* set);

// OK if `listen` is HOST:PORT with a port in [0, 65535]; INVALID_ARGUMENT otherwise.
absl::Status CheckListenAddress(absl::string_view listen);

}  // namespace fisherd::server

#endif  // FISHERD_SERVER_FLAGS_H_
