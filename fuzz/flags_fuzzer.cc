// Command-line parsing: fisherd's FlagSet with its flags (server/flags.h), and the
// command-line tools' flag set with the connection flags and block specs (client/cli_flags.h,
// client/connection_flags.h), fed argv split from the fuzzer's bytes.
//
// Input: [mode u8][arguments separated by NUL bytes...]
//   mode % 3 == 0: fisherd's flags; 1: fisherctl-style flags; 2: a layout file's text.
// A --token-file value is redirected to a small file of this process (its first
// argument's bytes), so the fuzzer never makes the parser read a device or a large file.
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "client/cli_flags.h"
#include "client/connection_flags.h"
#include "fuzz/fuzz_util.h"
#include "server/flags.h"

namespace {

std::vector<std::string> SplitArgs(const std::string& bytes) {
  if (bytes.empty()) return {};
  return absl::StrSplit(bytes, absl::ByChar('\0'));
}

void ServerFlags(const std::vector<std::string>& args) {
  fisherd::server::ServerFlags flags;
  fisherd::server::FlagSet set;
  fisherd::server::DefineServerFlags(&flags, &set);
  bool help = false;
  const absl::Status status = set.Parse(args, &help);
  if (!status.ok()) {
    FUZZ_CHECK(status.code() == absl::StatusCode::kInvalidArgument);
    FUZZ_CHECK(!status.message().empty());
    return;
  }
  if (help) {
    FUZZ_CHECK(!set.Help().empty());
    return;
  }
  const fisherd::server::ServerOptions options = flags.ToServerOptions();
  FUZZ_CHECK(options.max_message_bytes > 0);
  FUZZ_CHECK(fisherd::server::CheckListenAddress(options.listen).ok());
}

void ClientFlags(std::vector<std::string> args) {
  const std::string token_file = fisherd::fuzz::ScratchDir() + "/token";
  fisherd::fuzz::WriteFileOrDie(token_file, args.empty() ? "" : args[0]);
  for (std::string& arg : args) {
    if (absl::StartsWith(arg, "--token-file=") && arg.size() > 13) {
      arg = "--token-file=" + token_file;
    }
  }
  // A command-line tool's flags as fisherctl declares them: the connection flags, flags
  // of every kind, a repeatable --block, a command with flags of its own, positionals.
  fisherd::client::CliFlags set("fisherctl");
  fisherd::client::ConnectionFlags connection;
  fisherd::client::DefineConnectionFlags(&connection, &set);
  std::string session, representation;
  int64_t dim = 7;
  double damping = 0.5;
  bool quiet = false;
  std::vector<std::string> blocks, positionals;
  set.AddString("session", &session, "a session");
  set.AddInt("dim", &dim, 1, int64_t{1} << 24, "a dim");
  set.AddDouble("damping", &damping, 0, 1e6, "a damping");
  set.AddBool("quiet", &quiet, "a switch");
  fisherd::client::CliFlags* create = set.AddCommand("create", "a command");
  create->AddString("representation", &representation, "a representation");
  create->AddRepeated("block", &blocks, "a block spec");
  create->AddPositionals("names", &positionals, "names");
  bool help = false;
  const absl::Status status = set.Parse(args, &help);
  if (help) {
    FUZZ_CHECK(!set.Help().empty());
    return;
  }
  if (!status.ok()) {
    FUZZ_CHECK(status.code() == absl::StatusCode::kInvalidArgument);
    FUZZ_CHECK(!status.message().empty());
    return;
  }
  FUZZ_CHECK(dim >= 1 && damping >= 0);
  for (const std::string& spec : blocks) fisherd::client::ParseBlockSpec(spec).IgnoreError();
  fisherd::client::ClientOptions options;
  fisherd::client::ReadConnectionFlags(connection, &options).IgnoreError();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fisherd::fuzz::ByteReader in(data, size);
  const uint8_t mode = in.U8();
  const std::string rest = in.Rest();
  switch (mode % 3) {
    case 0:
      ServerFlags(SplitArgs(rest));
      break;
    case 1:
      ClientFlags(SplitArgs(rest));
      break;
    case 2: {
      absl::StatusOr<std::vector<fisherd::v1::BlockConfig>> blocks =
          fisherd::client::ParseLayoutText(rest);
      if (blocks.ok()) FUZZ_CHECK(!blocks->empty());
      break;
    }
  }
  return 0;
}
