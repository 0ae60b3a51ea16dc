// A deliberately tiny command-line parser for fisherd: `--name=value` with hyphenated
// names (which absl flags cannot spell), `--help`, and a clear error for anything else.
//
// FlagSet is generic (string, integer and floating-point flags bound to variables, each
// with a range); ServerFlags declares fisherd's flags on it, so a new flag (--tls-cert
// and friends) is one line in DefineServerFlags.
#ifndef FISHERD_SERVER_FLAGS_H_
#define FISHERD_SERVER_FLAGS_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "server/fisher_server.h"

namespace fisherd::server {

class FlagSet {
 public:
  // Each Add binds `--name` to *target, whose current value is the default shown by
  // Help(). REQUIRES: target outlives the FlagSet; names are unique and have no '='.
  void AddString(std::string name, std::string* target, std::string help);
  void AddInt(std::string name, int64_t* target, int64_t min, int64_t max, std::string help);
  void AddDouble(std::string name, double* target, double min, double max, std::string help);
  // A check on the parsed value beyond its range (e.g. the shape of HOST:PORT).
  void AddStringCheck(const std::string& name,
                      std::function<absl::Status(absl::string_view)> check);

  // Parses argv-style arguments (without the program name). Sets *help when --help or
  // -h was given (then nothing else is checked). INVALID_ARGUMENT naming the argument
  // for an unknown flag, a positional argument, a missing value or a bad value.
  absl::Status Parse(const std::vector<std::string>& args, bool* help);

  // "Flags:" followed by one entry per flag: --name=DEFAULT and its help.
  std::string Help() const;

 private:
  struct Flag {
    std::string name;
    std::string help;
    std::string default_value;
    std::function<absl::Status(absl::string_view)> set;
  };
  Flag* Find(absl::string_view name);

  std::vector<Flag> flags_;  // in declaration order, which Help() keeps
};

// fisherd's flags, with the defaults the README documents.
struct ServerFlags {
  std::string listen = "127.0.0.1:50051";
  int64_t max_sessions = 64;
  int64_t max_dense_dim = 16384;
  int64_t memory_budget_mb = 16384;
  int64_t max_message_mb = 64;
  int64_t math_threads = 0;  // 0 is replaced by hardware_concurrency() in DefineServerFlags
  double drain_seconds = 10;
  std::string tls_cert;
  std::string tls_key;
  std::string tls_client_ca;
  std::string auth_token_file;
  std::string health_listen;
  std::string data_dir;
  double snapshot_interval_seconds = 300;
  int64_t snapshot_log_mb = 1024;

  ServerOptions ToServerOptions() const;
};

// Binds every field of *flags to `set`. REQUIRES: flags outlives set.
void DefineServerFlags(ServerFlags* flags, FlagSet* set);

// OK if `listen` is HOST:PORT with a port in [0, 65535]; INVALID_ARGUMENT otherwise.
absl::Status CheckListenAddress(absl::string_view listen);

}  // namespace fisherd::server

#endif  // FISHERD_SERVER_FLAGS_H_
