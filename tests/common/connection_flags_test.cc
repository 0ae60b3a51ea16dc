// The client tools' connection flags (client/connection_flags.h): every flag reaches
// ClientOptions, the defaults are ClientOptions', and errors name the flag.
#include "client/connection_flags.h"

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "common/defaults.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fisherd::client {
namespace {

using ::testing::HasSubstr;

// Parses `args` as a tool would and reads the options; the parse or the read status.
absl::Status ParseAndRead(const std::vector<std::string>& args, ClientOptions* options,
                          bool* help = nullptr) {
  ConnectionFlags flags;
  CliFlags set("tool");
  DefineConnectionFlags(&flags, &set);
  bool ignored = false;
  if (absl::Status s = set.Parse(args, help != nullptr ? help : &ignored); !s.ok()) return s;
  return ReadConnectionFlags(flags, options);
}

std::string TempFile(const std::string& name, const std::string& contents) {
  const std::string path = ::testing::TempDir() + "/" + name + "." + std::to_string(getpid());
  std::ofstream(path, std::ios::binary) << contents;
  return path;
}

TEST(ConnectionFlagsTest, DefaultsAreThoseOfClientOptions) {
  ClientOptions options;
  ASSERT_TRUE(ParseAndRead({}, &options).ok());
  const ClientOptions defaults;
  EXPECT_EQ(options.target, defaults.target);
  EXPECT_EQ(options.target, common::kDefaultAddress);
  EXPECT_FALSE(options.tls.enabled);
  EXPECT_TRUE(options.token.empty());
}

TEST(ConnectionFlagsTest, EveryFlagRoundTrips) {
  ClientOptions options;
  const absl::Status status =
      ParseAndRead({"--target", "h:1", "--tls-ca=ca.pem", "--tls-cert", "c.pem", "--tls-key=k.pem",
                    "--tls-server-name", "name", "--token=secret"},
                   &options);
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(options.target, "h:1");
  EXPECT_TRUE(options.tls.enabled);
  EXPECT_EQ(options.tls.root_certs_file, "ca.pem");
  EXPECT_EQ(options.tls.cert_chain_file, "c.pem");
  EXPECT_EQ(options.tls.private_key_file, "k.pem");
  EXPECT_EQ(options.tls.server_name_override, "name");
  EXPECT_EQ(options.token, "secret");

  ClientOptions bare;
  ASSERT_TRUE(ParseAndRead({"--tls"}, &bare).ok());
  EXPECT_TRUE(bare.tls.enabled);
  ClientOptions off;
  ASSERT_TRUE(ParseAndRead({"--tls=false"}, &off).ok());
  EXPECT_FALSE(off.tls.enabled);

  const std::string token_file = TempFile("token", "  from-file\n");
  ClientOptions from_file;
  ASSERT_TRUE(ParseAndRead({"--token-file", token_file}, &from_file).ok());
  EXPECT_EQ(from_file.token, "from-file");
  std::remove(token_file.c_str());
}

TEST(ConnectionFlagsTest, ErrorsNameTheFlag) {
  const std::string empty_file = TempFile("empty-token", "\n");
  struct Case {
    std::vector<std::string> args;
    absl::StatusCode code;
    std::string mention;
  };
  for (const Case& c : std::vector<Case>{
           {{"--bogus=1"}, absl::StatusCode::kInvalidArgument, "unknown flag --bogus"},
           {{"--target"}, absl::StatusCode::kInvalidArgument, "flag --target needs a value"},
           {{"--tls=maybe"}, absl::StatusCode::kInvalidArgument, "--tls=maybe: not true or false"},
           {{"--token="}, absl::StatusCode::kInvalidArgument, "--token is empty"},
           {{"--token-file="}, absl::StatusCode::kInvalidArgument, "--token-file is empty"},
           {{"--token=a", "--token-file=f"},
            absl::StatusCode::kInvalidArgument,
            "give --token or --token-file, not both"},
           {{"--tls-cert=c.pem"},
            absl::StatusCode::kInvalidArgument,
            "--tls-cert and --tls-key go together"},
           {{"--token-file=/nonexistent/token"},
            absl::StatusCode::kNotFound,
            "--token-file: cannot read /nonexistent/token"},
           {{"--token-file=" + empty_file}, absl::StatusCode::kInvalidArgument, "is empty"},
       }) {
    ClientOptions options;
    const absl::Status status = ParseAndRead(c.args, &options);
    EXPECT_EQ(status.code(), c.code) << c.args[0] << ": " << status;
    EXPECT_THAT(std::string(status.message()), HasSubstr(c.mention)) << c.args[0];
  }
  std::remove(empty_file.c_str());
}

TEST(ConnectionFlagsTest, HelpListsEveryFlag) {
  ConnectionFlags flags;
  CliFlags set("tool");
  DefineConnectionFlags(&flags, &set);
  bool help = false;
  ASSERT_TRUE(set.Parse({"--help"}, &help).ok());
  EXPECT_TRUE(help);
  const std::string text = set.Help();
  for (const char* entry : {"--target=127.0.0.1:50051", "--tls ", "--tls-ca=", "--tls-cert=",
                            "--tls-key=", "--tls-server-name=", "--token-file=", "--token="}) {
    EXPECT_THAT(text, HasSubstr(entry));
  }
}

}  // namespace
}  // namespace fisherd::client
