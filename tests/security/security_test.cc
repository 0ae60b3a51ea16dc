// Transport security and the bearer token, end to end: the real fisherd binary started
// with --tls-cert/--tls-key, --tls-client-ca and --auth-token-file, reached through the
// C++ client library and fisherctl. Certificates are made at test time with openssl:
// a CA, a server certificate for localhost/127.0.0.1, a client certificate from the
// same CA, and a second ("rogue") CA with a client certificate of its own.
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "client/fisher_client.h"
#include "client/score_streamer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/auth.h"
#include "tests/e2e/process.h"
#include "tests/e2e/tcp_proxy.h"

namespace fisherd::testing {
namespace {

using client::ClientOptions;
using client::FisherClient;
using ::testing::HasSubstr;

constexpr char kToken[] = "s3cr3t-token-for-tests";

// A port that was free a moment ago (bound to port 0, then released).
int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof address;
  bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address);
  getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
  close(fd);
  return ntohs(address.sin_port);
}

std::string Join(const std::string& dir, const std::string& name) { return dir + "/" + name; }

void WriteFile(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

// Runs openssl; fails the current test with its output when it does not succeed.
void OpenSsl(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {"/usr/bin/openssl"};
  argv.insert(argv.end(), args.begin(), args.end());
  const CommandResult result = RunCommand(argv);
  ASSERT_EQ(result.exit_code, 0) << result.output;
}

class SecurityTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char pattern[] = "/tmp/fisherd-security-XXXXXX";
    dir_ = new std::string(mkdtemp(pattern));
    const std::string& d = *dir_;
    WriteFile(Join(d, "token"), std::string(kToken) + "\n");
    WriteFile(Join(d, "wrong-token"), "not-the-token\n");
    WriteFile(Join(d, "server.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n");
    WriteFile(Join(d, "client.ext"), "extendedKeyUsage=clientAuth\n");
    for (const std::string ca : {"ca", "rogue-ca"}) {
      OpenSsl({"req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
               "/CN=fisherd test " + ca, "-keyout", Join(d, ca + ".key"), "-out",
               Join(d, ca + ".pem")});
    }
    // Leaf certificates: name, signing CA, extensions.
    const std::vector<std::vector<std::string>> leaves = {
        {"server", "ca", "server.ext"},
        {"client", "ca", "client.ext"},
        {"rogue-client", "rogue-ca", "client.ext"}};
    for (const auto& leaf : leaves) {
      OpenSsl({"req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=" + leaf[0], "-keyout",
               Join(d, leaf[0] + ".key"), "-out", Join(d, leaf[0] + ".csr")});
      OpenSsl({"x509", "-req", "-in", Join(d, leaf[0] + ".csr"), "-CA", Join(d, leaf[1] + ".pem"),
               "-CAkey", Join(d, leaf[1] + ".key"), "-CAcreateserial", "-days", "2", "-extfile",
               Join(d, leaf[2]), "-out", Join(d, leaf[0] + ".pem")});
    }
  }

  static void TearDownTestSuite() {
    RunCommand({"/bin/rm", "-rf", *dir_});
    delete dir_;
  }

  static std::string Path(const std::string& name) { return Join(*dir_, name); }

  std::vector<std::string> TlsFlags() const {
    return {"--tls-cert=" + Path("server.pem"), "--tls-key=" + Path("server.key")};
  }

  static ClientOptions Options(const ServerProcess& server) {
    ClientOptions options;
    options.target = server.address();
    options.call_timeout = absl::Seconds(5);
    return options;
  }

  static ClientOptions TlsOptions(const ServerProcess& server) {
    ClientOptions options = Options(server);
    options.tls.enabled = true;
    options.tls.root_certs_file = Path("ca.pem");
    return options;
  }

  // A round trip that needs a working, authorized connection.
  static absl::Status CreateAndList(const ClientOptions& options, const std::string& id) {
    absl::StatusOr<std::unique_ptr<FisherClient>> client = FisherClient::Create(options);
    if (!client.ok()) return client.status();
    v1::SessionConfig config;
    config.set_dim(3);
    absl::StatusOr<v1::Session> created = (*client)->CreateSession(id, config);
    if (!created.ok()) return created.status();
    absl::StatusOr<std::vector<v1::Session>> listed = (*client)->ListSessions();
    return listed.status();
  }

  static std::string* dir_;
};

std::string* SecurityTest::dir_ = nullptr;

TEST_F(SecurityTest, TlsServesTlsClientsAndRefusesPlaintext) {
  ServerProcess server(TlsFlags());
  ASSERT_FALSE(server.address().empty());
  EXPECT_TRUE(CreateAndList(TlsOptions(server), "tls").ok());

  // The server's certificate names localhost; with the override the name is checked.
  ClientOptions by_name = TlsOptions(server);
  by_name.tls.server_name_override = "localhost";
  EXPECT_TRUE(CreateAndList(by_name, "tls-by-name").ok());

  const absl::Status plaintext = CreateAndList(Options(server), "plain");
  EXPECT_EQ(plaintext.code(), absl::StatusCode::kUnavailable) << plaintext;

  // A client that trusts another CA refuses the server.
  ClientOptions wrong_ca = TlsOptions(server);
  wrong_ca.tls.root_certs_file = Path("rogue-ca.pem");
  EXPECT_EQ(CreateAndList(wrong_ca, "wrong-ca").code(), absl::StatusCode::kUnavailable);
  // And a name the certificate does not hold.
  ClientOptions wrong_name = TlsOptions(server);
  wrong_name.tls.server_name_override = "elsewhere.example";
  EXPECT_EQ(CreateAndList(wrong_name, "wrong-name").code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(server.Terminate(), 0);
}

TEST_F(SecurityTest, MutualTlsNeedsAClientCertificateFromTheClientCa) {
  std::vector<std::string> flags = TlsFlags();
  flags.push_back("--tls-client-ca=" + Path("ca.pem"));
  ServerProcess server(flags);
  ASSERT_FALSE(server.address().empty());

  ClientOptions good = TlsOptions(server);
  good.tls.cert_chain_file = Path("client.pem");
  good.tls.private_key_file = Path("client.key");
  EXPECT_TRUE(CreateAndList(good, "mtls").ok());

  const absl::Status no_cert = CreateAndList(TlsOptions(server), "no-cert");
  EXPECT_EQ(no_cert.code(), absl::StatusCode::kUnavailable) << no_cert;

  ClientOptions rogue = TlsOptions(server);
  rogue.tls.cert_chain_file = Path("rogue-client.pem");
  rogue.tls.private_key_file = Path("rogue-client.key");
  const absl::Status rogue_status = CreateAndList(rogue, "rogue");
  EXPECT_EQ(rogue_status.code(), absl::StatusCode::kUnavailable) << rogue_status;

  // Health is refused at the handshake too: no certificate, no connection.
  ClientOptions health_options = TlsOptions(server);
  absl::StatusOr<std::unique_ptr<FisherClient>> client = FisherClient::Create(health_options);
  ASSERT_TRUE(client.ok());
  EXPECT_FALSE((*client)->CheckHealth(absl::Seconds(2)).ok());

  // fisherctl with the same material.
  const std::string tls_flags_ca = "--tls-ca=" + Path("ca.pem");
  CommandResult ok =
      RunCommand({FisherctlPath(), "--target=" + server.address(), tls_flags_ca,
                  "--tls-cert=" + Path("client.pem"), "--tls-key=" + Path("client.key"), "list"});
  EXPECT_EQ(ok.exit_code, 0) << ok.output;
  EXPECT_THAT(ok.output, HasSubstr("sessions/mtls"));
  CommandResult refused = RunCommand({FisherctlPath(), "--target=" + server.address(), tls_flags_ca,
                                      "--timeout-seconds=3", "list"});
  EXPECT_EQ(refused.exit_code, 1) << refused.output;
  EXPECT_EQ(server.Terminate(), 0);
}

// A TLS handshake over a link with 250 ms one-way delay takes well over a second (TCP
// accept, then each TLS flight and the HTTP/2 preface each wait for the other side).
// The client must wait for it: it once capped every connection attempt at 100 ms
// (GRPC_ARG_MIN_RECONNECT_BACKOFF_MS is gRPC's minimum connect timeout), which failed
// every such connection with "handshaker shutdown", and mutual TLS under CI's load.
TEST_F(SecurityTest, MutualTlsConnectsOverASlowLink) {
  std::vector<std::string> flags = TlsFlags();
  flags.push_back("--tls-client-ca=" + Path("ca.pem"));
  ServerProcess server(flags);
  ASSERT_FALSE(server.address().empty());
  const int port = std::stoi(server.address().substr(server.address().rfind(':') + 1));
  TcpProxy slow_link(port, std::chrono::milliseconds(250));

  ClientOptions options = TlsOptions(server);
  options.target = slow_link.address();
  options.tls.cert_chain_file = Path("client.pem");
  options.tls.private_key_file = Path("client.key");
  options.call_timeout = absl::Seconds(30);
  EXPECT_TRUE(CreateAndList(options, "slow-link").ok());

  // fisherctl goes through the same channel setup.
  CommandResult listed =
      RunCommand({FisherctlPath(), "--target=" + slow_link.address(), "--tls-ca=" + Path("ca.pem"),
                  "--tls-cert=" + Path("client.pem"), "--tls-key=" + Path("client.key"), "list"});
  EXPECT_EQ(listed.exit_code, 0) << listed.output;
  EXPECT_THAT(listed.output, HasSubstr("sessions/slow-link"));
  EXPECT_EQ(server.Terminate(), 0);
}

TEST_F(SecurityTest, TokenOverPlaintext) {
  ServerProcess server({"--auth-token-file=" + Path("token"), "--drain-seconds=1"});
  ASSERT_FALSE(server.address().empty());

  ClientOptions options = Options(server);
  const absl::Status missing = CreateAndList(options, "no-token");
  EXPECT_EQ(missing.code(), absl::StatusCode::kUnauthenticated) << missing;
  EXPECT_THAT(missing.message(), HasSubstr("authorization: Bearer"));

  options.token = "not-the-token";
  const absl::Status wrong = CreateAndList(options, "wrong-token");
  EXPECT_EQ(wrong.code(), absl::StatusCode::kUnauthenticated) << wrong;
  EXPECT_THAT(wrong.message(), HasSubstr("invalid token"));

  options.token = kToken;
  EXPECT_TRUE(CreateAndList(options, "with-token").ok());

  // Nothing of the refused calls reached a handler: only the authorized session exists.
  absl::StatusOr<std::unique_ptr<FisherClient>> client = FisherClient::Create(options);
  ASSERT_TRUE(client.ok());
  absl::StatusOr<std::vector<v1::Session>> sessions = (*client)->ListSessions();
  ASSERT_TRUE(sessions.ok()) << sessions.status();
  ASSERT_EQ(sessions->size(), 1u);
  EXPECT_EQ((*sessions)[0].name(), "sessions/with-token");

  // Health needs no token, so probes work.
  ClientOptions anonymous = Options(server);
  absl::StatusOr<std::unique_ptr<FisherClient>> probe = FisherClient::Create(anonymous);
  ASSERT_TRUE(probe.ok());
  absl::StatusOr<client::ServingStatus> health = (*probe)->CheckHealth(absl::Seconds(5));
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(*health, client::HealthCheckResponse::SERVING);

  // The streaming RPCs are gated like the unary ones.
  absl::StatusOr<client::FisherEstimate> fisher = (*probe)->GetFisher("with-token", false, false);
  EXPECT_EQ(fisher.status().code(), absl::StatusCode::kUnauthenticated) << fisher.status();
  client::ScoreStreamerOptions stream;
  stream.session = "with-token";
  stream.worker_id = "w";
  stream.dim = 3;
  stream.starting_sequence = 1;
  stream.max_retries = 0;
  absl::StatusOr<std::unique_ptr<client::ScoreStreamer>> anonymous_streamer =
      client::ScoreStreamer::Create(probe->get(), stream);
  ASSERT_TRUE(anonymous_streamer.ok()) << anonymous_streamer.status();
  const std::vector<float> row = {1, 2, 3};
  absl::Status streamed = (*anonymous_streamer)->Append(row);
  if (streamed.ok()) streamed = (*anonymous_streamer)->Flush();
  EXPECT_EQ(streamed.code(), absl::StatusCode::kUnauthenticated) << streamed;

  absl::StatusOr<std::unique_ptr<client::ScoreStreamer>> streamer =
      client::ScoreStreamer::Create(client->get(), stream);
  ASSERT_TRUE(streamer.ok()) << streamer.status();
  ASSERT_TRUE((*streamer)->Append(row).ok());
  ASSERT_TRUE((*streamer)->Flush().ok());
  absl::StatusOr<v1::Session> session = (*client)->GetSession("with-token");
  ASSERT_TRUE(session.ok());
  EXPECT_EQ(session->stats().sample_count(), 1u);

  // fisherctl: --token-file and --token work, nothing or a wrong file does not.
  const std::string target = "--target=" + server.address();
  CommandResult with_file =
      RunCommand({FisherctlPath(), target, "--token-file=" + Path("token"), "list"});
  EXPECT_EQ(with_file.exit_code, 0) << with_file.output;
  CommandResult with_flag =
      RunCommand({FisherctlPath(), target, std::string("--token=") + kToken, "get", "with-token"});
  EXPECT_EQ(with_flag.exit_code, 0) << with_flag.output;
  CommandResult without = RunCommand({FisherctlPath(), target, "list"});
  EXPECT_EQ(without.exit_code, 1);
  EXPECT_THAT(without.output, HasSubstr("UNAUTHENTICATED"));
  CommandResult wrong_file =
      RunCommand({FisherctlPath(), target, "--token-file=" + Path("wrong-token"), "list"});
  EXPECT_EQ(wrong_file.exit_code, 1);
  EXPECT_THAT(wrong_file.output, HasSubstr("invalid token"));
  CommandResult health_cli = RunCommand({FisherctlPath(), target, "health"});
  EXPECT_EQ(health_cli.exit_code, 0) << health_cli.output;
  EXPECT_EQ(server.Terminate(), 0);
}

TEST_F(SecurityTest, MutualTlsAndTokenTogether) {
  std::vector<std::string> flags = TlsFlags();
  flags.push_back("--tls-client-ca=" + Path("ca.pem"));
  flags.push_back("--auth-token-file=" + Path("token"));
  ServerProcess server(flags);
  ASSERT_FALSE(server.address().empty());
  ClientOptions options = TlsOptions(server);
  options.tls.cert_chain_file = Path("client.pem");
  options.tls.private_key_file = Path("client.key");
  EXPECT_EQ(CreateAndList(options, "both").code(), absl::StatusCode::kUnauthenticated);
  options.token = kToken;
  EXPECT_TRUE(CreateAndList(options, "both").ok());
  EXPECT_EQ(server.Terminate(), 0);
}

TEST_F(SecurityTest, HealthListenerServesOnlyHealthInPlaintext) {
  const int health_port = FreePort();
  std::vector<std::string> flags = TlsFlags();
  flags.push_back("--tls-client-ca=" + Path("ca.pem"));
  flags.push_back("--health-listen=127.0.0.1:" + std::to_string(health_port));
  ServerProcess server(flags);
  ASSERT_FALSE(server.address().empty());
  ClientOptions options;
  options.target = "127.0.0.1:" + std::to_string(health_port);
  options.call_timeout = absl::Seconds(5);
  absl::StatusOr<std::unique_ptr<FisherClient>> client = FisherClient::Create(options);
  ASSERT_TRUE(client.ok());
  absl::StatusOr<client::ServingStatus> health = (*client)->CheckHealth(absl::Seconds(5));
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(*health, client::HealthCheckResponse::SERVING);
  // Only health: the service itself is not there.
  EXPECT_EQ((*client)->ListSessions().status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(server.Terminate(), 0);
}

TEST_F(SecurityTest, BadSecurityFlagsStopTheServerWithAMessage) {
  const std::vector<std::vector<std::string>> cases = {
      {"--tls-cert=" + Path("server.pem")},   // no key
      {"--tls-client-ca=" + Path("ca.pem")},  // no server certificate
      {"--tls-cert=" + Path("missing.pem"), "--tls-key=" + Path("server.key")},
      {"--tls-cert=" + Path("token"), "--tls-key=" + Path("server.key")},  // not PEM
      {"--auth-token-file=" + Path("missing-token")}};
  for (const auto& extra : cases) {
    std::vector<std::string> argv = {FisherdPath(), "--listen=127.0.0.1:0"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    const CommandResult result = RunCommand(argv);
    EXPECT_EQ(result.exit_code, 1) << extra[0] << "\n" << result.output;
    EXPECT_THAT(result.output, HasSubstr("fisherd: ")) << result.output;
  }
}

TEST(TokenCheck, ConstantTimeEquals) {
  EXPECT_TRUE(server::ConstantTimeEquals("abc", "abc"));
  EXPECT_TRUE(server::ConstantTimeEquals("", ""));
  EXPECT_FALSE(server::ConstantTimeEquals("abc", "abd"));
  EXPECT_FALSE(server::ConstantTimeEquals("abc", "abcd"));
  EXPECT_FALSE(server::ConstantTimeEquals("abcd", "abc"));
  EXPECT_FALSE(server::ConstantTimeEquals("", "a"));
}

}  // namespace
}  // namespace fisherd::testing
