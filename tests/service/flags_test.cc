// fisherd's flags (server/flags.h on common/flag_set.h): defaults from ServerOptions,
// hyphenated names in both forms, help, and errors that name the flag and the value.
#include <string>
#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/flags.h"

namespace fisherd::server {
namespace {

using ::testing::HasSubstr;

absl::Status Parse(const std::vector<std::string>& args, ServerFlags* flags, bool* help) {
  FlagSet set;
  DefineServerFlags(flags, &set);
  return set.Parse(args, help);
}

TEST(FlagsTest, DefaultsAndValues) {
  ServerFlags flags;
  bool help = true;
  ASSERT_TRUE(Parse({}, &flags, &help).ok());
  EXPECT_FALSE(help);
  EXPECT_EQ(flags.listen, "127.0.0.1:50051");
  EXPECT_EQ(flags.max_sessions, 64);
  EXPECT_EQ(flags.max_dense_dim, 16384);
  EXPECT_EQ(flags.memory_budget_mb, 16384);
  EXPECT_EQ(flags.max_message_mb, 64);
  EXPECT_GE(flags.math_threads, 1);
  EXPECT_EQ(flags.drain_seconds, 10.0);
}

// Every flag, in both forms (`--name=VALUE` and `--name VALUE`), reaches ServerOptions.
TEST(FlagsTest, EveryFlagRoundTrips) {
  const std::vector<std::pair<std::string, std::string>> given = {
      {"listen", "0.0.0.0:7"},  {"max-sessions", "3"},
      {"max-dense-dim", "100"}, {"memory-budget-mb", "5"},
      {"max-message-mb", "8"},  {"math-threads", "3"},
      {"drain-seconds", "0.5"}, {"tls-cert", "c.pem"},
      {"tls-key", "k.pem"},     {"tls-client-ca", "ca.pem"},
      {"auth-token-file", "t"}, {"health-listen", "127.0.0.1:9"},
      {"data-dir", "d"},        {"snapshot-interval-seconds", "7.5"},
      {"snapshot-log-mb", "2"}, {"metrics-listen", "[::1]:9090"}};
  for (const bool joined : {true, false}) {
    std::vector<std::string> args;
    for (const auto& [name, value] : given) {
      if (joined) {
        args.push_back("--" + name + "=" + value);
      } else {
        args.insert(args.end(), {"--" + name, value});
      }
    }
    ServerFlags flags;
    bool help = true;
    ASSERT_TRUE(Parse(args, &flags, &help).ok());
    EXPECT_FALSE(help);
    const ServerOptions options = flags.ToServerOptions();
    EXPECT_EQ(options.listen, "0.0.0.0:7");
    EXPECT_EQ(options.limits.max_sessions, 3);
    EXPECT_EQ(options.limits.max_dense_dim, 100);
    EXPECT_EQ(options.limits.memory_budget_bytes, uint64_t{5} << 20);
    EXPECT_EQ(options.max_message_bytes, 8 << 20);
    EXPECT_EQ(options.math_threads, 3);
    EXPECT_EQ(flags.drain_seconds, 0.5);
    EXPECT_EQ(options.tls.cert_file, "c.pem");
    EXPECT_EQ(options.tls.key_file, "k.pem");
    EXPECT_EQ(options.tls.client_ca_file, "ca.pem");
    EXPECT_EQ(options.auth_token_file, "t");
    EXPECT_EQ(options.health_listen, "127.0.0.1:9");
    EXPECT_EQ(options.metrics_listen, "[::1]:9090");
    EXPECT_EQ(options.durability.data_dir, "d");
    EXPECT_EQ(options.durability.snapshot_interval, absl::Seconds(7.5));
    EXPECT_EQ(options.durability.snapshot_log_bytes, uint64_t{2} << 20);
  }
}

// The defaults are ServerOptions' (the one place they are written): parsing nothing
// gives back the options a default ServerOptions holds.
TEST(FlagsTest, DefaultsAreThoseOfServerOptions) {
  ServerFlags flags;
  bool help = false;
  ASSERT_TRUE(Parse({}, &flags, &help).ok());
  const ServerOptions defaults;
  const ServerOptions options = flags.ToServerOptions();
  EXPECT_EQ(options.listen, defaults.listen);
  EXPECT_EQ(options.limits.max_sessions, defaults.limits.max_sessions);
  EXPECT_EQ(options.limits.max_dense_dim, defaults.limits.max_dense_dim);
  EXPECT_EQ(options.limits.memory_budget_bytes, defaults.limits.memory_budget_bytes);
  EXPECT_EQ(options.max_message_bytes, defaults.max_message_bytes);
  EXPECT_EQ(options.tls.cert_file, defaults.tls.cert_file);
  EXPECT_EQ(options.auth_token_file, defaults.auth_token_file);
  EXPECT_EQ(options.health_listen, defaults.health_listen);
  EXPECT_EQ(options.metrics_listen, defaults.metrics_listen);
  EXPECT_EQ(options.durability.data_dir, defaults.durability.data_dir);
  EXPECT_EQ(options.durability.snapshot_interval, defaults.durability.snapshot_interval);
  EXPECT_EQ(options.durability.snapshot_log_bytes, defaults.durability.snapshot_log_bytes);
  // 0 (ServerOptions: the number of CPUs) is resolved for the flag's help.
  EXPECT_EQ(defaults.math_threads, 0);
  EXPECT_GE(options.math_threads, 1);
}

// Scripts prepend --listen=127.0.0.1:0 and may pass it again; the last one counts, and
// an empty --health-listen= means none.
TEST(FlagsTest, LastValueWinsAndEmptyValues) {
  ServerFlags flags;
  bool help = false;
  ASSERT_TRUE(
      Parse({"--listen=127.0.0.1:0", "--listen=0.0.0.0:5", "--health-listen="}, &flags, &help)
          .ok());
  EXPECT_EQ(flags.listen, "0.0.0.0:5");
  EXPECT_EQ(flags.health_listen, "");
}

TEST(FlagsTest, HelpListsEveryFlagWithItsDefault) {
  ServerFlags flags;
  FlagSet set;
  DefineServerFlags(&flags, &set);
  bool help = false;
  ASSERT_TRUE(set.Parse({"--max-sessions=oops", "--help"}, &help).ok());
  EXPECT_TRUE(help);
  const std::string text = set.Help();
  for (const char* entry :
       {"--listen=127.0.0.1:50051", "--max-sessions=64", "--max-dense-dim=16384",
        "--memory-budget-mb=16384", "--max-message-mb=64", "--math-threads=", "--drain-seconds=10",
        "--tls-cert=", "--tls-key=", "--tls-client-ca=", "--auth-token-file=", "--health-listen=",
        "--metrics-listen=", "--data-dir=", "--snapshot-interval-seconds=300",
        "--snapshot-log-mb=1024", "--help"}) {
    EXPECT_THAT(text, HasSubstr(entry));
  }
}

TEST(FlagsTest, ErrorsNameTheArgument) {
  struct Case {
    std::string arg;
    std::string mention;
  };
  for (const Case& c : std::vector<Case>{
           {"--no-such-flag=1", "unknown flag --no-such-flag"},
           {"--max_sessions=1", "unknown flag --max_sessions"},
           {"--max-sessions", "needs a value"},
           {"--max-sessions=ten", "--max-sessions=ten: not an integer"},
           {"--snapshot-log-mb=0", "--snapshot-log-mb=0: must be in"},
           {"--max-sessions=0", "--max-sessions=0: must be in [1, 1048576]"},
           {"--math-threads=-2", "--math-threads=-2: must be in"},
           {"--drain-seconds=nan", "--drain-seconds=nan: not a finite number"},
           {"--snapshot-interval-seconds=-1", "--snapshot-interval-seconds=-1: must be in"},
           {"--health-listen=nowhere", "--health-listen=nowhere: expected HOST:PORT"},
           {"--metrics-listen=nowhere", "--metrics-listen=nowhere: expected HOST:PORT"},
           {"--metrics-listen=127.0.0.1:65536", "--metrics-listen=127.0.0.1:65536: expected"},
           {"--listen=localhost", "--listen=localhost: expected HOST:PORT"},
           {"--listen=:80", "HOST:PORT"},
           {"--listen=host:70000", "HOST:PORT"},
           {"positional", "unexpected argument"},
       }) {
    ServerFlags flags;
    bool help = false;
    const absl::Status status = Parse({c.arg}, &flags, &help);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.arg;
    EXPECT_THAT(std::string(status.message()), HasSubstr(c.mention)) << c.arg;
  }
}

}  // namespace
}  // namespace fisherd::server
