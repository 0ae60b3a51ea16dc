// The hand-written flag parser: defaults, hyphenated names, help, and clear errors.
#include <string>
#include <vector>

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

  ASSERT_TRUE(Parse({"--listen=0.0.0.0:0", "--max-sessions=3", "--max-dense-dim=100",
                     "--memory-budget-mb=5", "--max-message-mb=8", "--math-threads=3",
                     "--drain-seconds=0.5"},
                    &flags, &help)
                  .ok());
  EXPECT_EQ(flags.listen, "0.0.0.0:0");
  const ServerOptions options = flags.ToServerOptions();
  EXPECT_EQ(options.listen, "0.0.0.0:0");
  EXPECT_EQ(options.limits.max_sessions, 3);
  EXPECT_EQ(options.limits.max_dense_dim, 100);
  EXPECT_EQ(options.limits.memory_budget_bytes, uint64_t{5} << 20);
  EXPECT_EQ(options.max_message_bytes, 8 << 20);
  EXPECT_EQ(options.math_threads, 3);
  EXPECT_EQ(flags.drain_seconds, 0.5);
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
        "--memory-budget-mb=16384", "--max-message-mb=64", "--math-threads=",
        "--drain-seconds=10", "--help"}) {
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
           {"--max-sessions=ten", "not an integer"},
           {"--max-sessions=0", "must be in"},
           {"--math-threads=-2", "must be in"},
           {"--drain-seconds=nan", "not a finite number"},
           {"--listen=localhost", "HOST:PORT"},
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
