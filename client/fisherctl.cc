// fisherctl: operate a fisherd server from the shell (health probes, session admin,
// inspecting an estimate). Exit status: 0 success, 1 the server or the call failed
// (printed as "fisherctl: <CODE>: <message>"), 2 usage error.
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "client/cli_flags.h"
#include "client/connection_flags.h"
#include "client/describe.h"
#include "client/fisher_client.h"

namespace fisherd::client {
namespace {
namespace v1 = ::fisherd::v1;

constexpr char kUsage[] =
    R"(usage: fisherctl [--target=HOST:PORT] [--timeout-seconds=S] COMMAND [ARGS]

commands:
  health [--service=NAME]      print SERVING or NOT_SERVING; exit 0 iff SERVING.
                               Waits up to --timeout-seconds for the server to come up.
  create ID --dim=N [--representation=dense|diagonal] [--centered]
            [--decay=RHO] [--damping=LAMBDA]
                               create sessions/ID
  get NAME                     show a session (NAME: sessions/ID or ID)
  list                         list sessions
  delete NAME                  delete a session
  fisher NAME [--eigenvalues] [--matrix]
                               summary of the Fisher estimate; --matrix also prints it

flags:
  --timeout-seconds=S          deadline of the call (default 5 for health, 60 otherwise)
)";

// Exit codes.
constexpr int kOk = 0;
constexpr int kFailed = 1;
constexpr int kUsageError = 2;

int UsageError(absl::string_view message) {
  std::cerr << "fisherctl: " << message << "\n\n" << kUsage << kConnectionFlagsHelp;
  return kUsageError;
}

int Failed(const absl::Status& status) {
  std::cerr << "fisherctl: " << absl::StatusCodeToString(status.code()) << ": "
            << status.message() << "\n";
  return kFailed;
}

// A command after flags are read: a usage problem returns kUsageError before any RPC.
struct Command {
  std::vector<std::string> args;  // positional arguments after the command name
  CliFlags* flags;
  FisherClient* client = nullptr;
  absl::Duration timeout;
};

int RunHealth(Command& cmd) {
  const std::string service = cmd.flags->GetString("service", "");
  if (absl::Status s = cmd.flags->CheckNoUnknownFlags(); !s.ok()) return UsageError(s.message());
  if (!cmd.args.empty()) return UsageError("health takes no arguments");
  absl::StatusOr<ServingStatus> health = cmd.client->CheckHealth(cmd.timeout, service);
  if (!health.ok()) return Failed(health.status());
  std::cout << ServingStatusName(*health) << "\n";
  return *health == ServingStatus::kServing ? kOk : kFailed;
}

int RunCreate(Command& cmd) {
  CliFlags& f = *cmd.flags;
  absl::StatusOr<int64_t> dim = f.GetInt("dim", 0);
  const std::string representation = absl::AsciiStrToLower(f.GetString("representation", "dense"));
  absl::StatusOr<bool> centered = f.GetBool("centered", false);
  absl::StatusOr<double> decay = f.GetDouble("decay", 0.0);
  absl::StatusOr<double> damping = f.GetDouble("damping", 0.0);
  for (const absl::Status& s : {dim.status(), centered.status(), decay.status(), damping.status(),
                                f.CheckNoUnknownFlags()}) {
    if (!s.ok()) return UsageError(s.message());
  }
  if (cmd.args.size() != 1) return UsageError("create takes one session id");
  if (!f.Has("dim") || *dim < 1) return UsageError("create needs --dim=N with N >= 1");
  v1::SessionConfig config;
  config.set_dim(static_cast<uint64_t>(*dim));
  if (representation == "dense") {
    config.set_representation(v1::REPRESENTATION_DENSE);
  } else if (representation == "diagonal") {
    config.set_representation(v1::REPRESENTATION_DIAGONAL);
  } else {
    return UsageError("--representation must be dense or diagonal");
  }
  config.set_centered(*centered);
  // Range checks (decay in (0, 1], damping >= 0) are the server's: one source of truth.
  config.set_decay(*decay);
  config.set_damping(*damping);
  absl::StatusOr<v1::Session> session = cmd.client->CreateSession(cmd.args[0], config);
  if (!session.ok()) return Failed(session.status());
  std::cout << DescribeSession(*session);
  return kOk;
}

int RunGet(Command& cmd) {
  if (absl::Status s = cmd.flags->CheckNoUnknownFlags(); !s.ok()) return UsageError(s.message());
  if (cmd.args.size() != 1) return UsageError("get takes one session name");
  absl::StatusOr<v1::Session> session = cmd.client->GetSession(cmd.args[0]);
  if (!session.ok()) return Failed(session.status());
  std::cout << DescribeSession(*session);
  return kOk;
}

int RunList(Command& cmd) {
  if (absl::Status s = cmd.flags->CheckNoUnknownFlags(); !s.ok()) return UsageError(s.message());
  if (!cmd.args.empty()) return UsageError("list takes no arguments");
  absl::StatusOr<std::vector<v1::Session>> sessions = cmd.client->ListSessions();
  if (!sessions.ok()) return Failed(sessions.status());
  for (const v1::Session& session : *sessions) std::cout << DescribeSessionBrief(session) << "\n";
  std::cout << sessions->size() << (sessions->size() == 1 ? " session\n" : " sessions\n");
  return kOk;
}

int RunDelete(Command& cmd) {
  if (absl::Status s = cmd.flags->CheckNoUnknownFlags(); !s.ok()) return UsageError(s.message());
  if (cmd.args.size() != 1) return UsageError("delete takes one session name");
  if (absl::Status s = cmd.client->DeleteSession(cmd.args[0]); !s.ok()) return Failed(s);
  std::cout << "deleted " << SessionName(cmd.args[0]) << "\n";
  return kOk;
}

int RunFisher(Command& cmd) {
  absl::StatusOr<bool> eigenvalues = cmd.flags->GetBool("eigenvalues", false);
  absl::StatusOr<bool> matrix = cmd.flags->GetBool("matrix", false);
  for (const absl::Status& s :
       {eigenvalues.status(), matrix.status(), cmd.flags->CheckNoUnknownFlags()}) {
    if (!s.ok()) return UsageError(s.message());
  }
  if (cmd.args.size() != 1) return UsageError("fisher takes one session name");
  absl::StatusOr<FisherEstimate> fisher = cmd.client->GetFisher(cmd.args[0], *matrix, *eigenvalues);
  if (!fisher.ok()) return Failed(fisher.status());
  std::cout << DescribeFisherSummary(fisher->summary);
  if (*matrix) {
    const uint64_t dim = fisher->summary.dim();
    const bool diagonal = fisher->summary.representation() == v1::REPRESENTATION_DIAGONAL;
    std::cout << (diagonal ? "diagonal:\n" : "matrix:\n");
    // Dense: one matrix row per line. Diagonal: the diagonal on one line.
    for (uint64_t i = 0; i < fisher->values.size(); ++i) {
      std::cout << absl::StrFormat("%.8g", fisher->values[i])
                << ((i + 1) % dim == 0 ? "\n" : " ");
    }
  }
  return kOk;
}

int Main(int argc, char** argv) {
  absl::StatusOr<CliFlags> parsed = CliFlags::Parse(argc, argv);
  if (!parsed.ok()) return UsageError(parsed.status().message());
  CliFlags& flags = *parsed;
  const bool help_command = !flags.positional().empty() &&
                            (flags.positional()[0] == "help" || flags.positional()[0] == "-h");
  if (flags.Has("help") || help_command) {
    std::cout << kUsage << kConnectionFlagsHelp;
    return kOk;
  }
  if (flags.positional().empty()) return UsageError("missing command");
  const std::string name = flags.positional()[0];

  ClientOptions options;
  if (absl::Status s = ReadConnectionFlags(flags, &options); !s.ok()) {
    if (s.code() == absl::StatusCode::kInvalidArgument) return UsageError(s.message());
    return Failed(s);
  }
  absl::StatusOr<double> timeout_seconds =
      flags.GetDouble("timeout-seconds", name == "health" ? 5.0 : 60.0);
  if (!timeout_seconds.ok()) return UsageError(timeout_seconds.status().message());
  if (!(*timeout_seconds > 0)) return UsageError("--timeout-seconds must be > 0");
  options.call_timeout = absl::Seconds(*timeout_seconds);

  absl::StatusOr<std::unique_ptr<FisherClient>> client = FisherClient::Create(options);
  if (!client.ok()) {
    if (client.status().code() == absl::StatusCode::kInvalidArgument) {
      return UsageError(client.status().message());
    }
    return Failed(client.status());
  }

  Command cmd{std::vector<std::string>(flags.positional().begin() + 1, flags.positional().end()),
              &flags, client->get(), options.call_timeout};
  if (name == "health") return RunHealth(cmd);
  if (name == "create") return RunCreate(cmd);
  if (name == "get") return RunGet(cmd);
  if (name == "list") return RunList(cmd);
  if (name == "delete") return RunDelete(cmd);
  if (name == "fisher") return RunFisher(cmd);
  return UsageError(absl::StrCat("unknown command '", name, "'"));
}

}  // namespace
}  // namespace fisherd::client

int main(int argc, char** argv) { return fisherd::client::Main(argc, argv); }
