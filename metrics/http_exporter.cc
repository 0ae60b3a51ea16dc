#include "metrics/http_exporter.h"

#include <sys/socket.h>

#include <chrono>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "httplib.h"
#include "metrics/exposition.h"

namespace fisherd::metrics {
namespace {

// Two threads: scrapes are rare and quick, and a second one lets a health-checking
// curl in while Prometheus scrapes. (cpp-httplib's default is at least eight.)
constexpr size_t kThreads = 2;
// A connection serves one request and is closed. Scrapes come seconds apart, so reusing
// connections would save nothing, while an idle kept-alive connection would hold a
// thread, and Stop, for its whole timeout.
constexpr size_t kRequestsPerConnection = 1;
// How long a client may take to send its request, or to read the answer.
constexpr time_t kReadTimeoutSeconds = 2;
constexpr time_t kWriteTimeoutSeconds = 5;

}  // namespace

MetricsHttpServer::MetricsHttpServer() : http_(std::make_unique<httplib::Server>()) {}

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(
    absl::string_view address, RenderFn render) {
  const size_t colon = address.rfind(':');
  int port = -1;
  if (colon == absl::string_view::npos || colon == 0 ||
      !absl::SimpleAtoi(address.substr(colon + 1), &port) || port < 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat(address, ": expected HOST:PORT with a port in [0, 65535]"));
  }
  std::string host(address.substr(0, colon));
  // getaddrinfo wants "::1", not the "[::1]" that makes HOST:PORT unambiguous.
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }

  std::unique_ptr<MetricsHttpServer> server(new MetricsHttpServer());
  httplib::Server& http = *server->http_;
  http.new_task_queue = [] { return new httplib::ThreadPool(kThreads); };
  http.set_keep_alive_max_count(kRequestsPerConnection);
  http.set_keep_alive_timeout(kReadTimeoutSeconds);
  http.set_read_timeout(kReadTimeoutSeconds);
  http.set_write_timeout(kWriteTimeoutSeconds);
  // cpp-httplib's default options add SO_REUSEPORT, which would let a second process
  // bind the same port and silently take half the scrapes; a busy port must be an error.
  http.set_socket_options([](socket_t sock) {
    const int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  });
  http.Get("/metrics",
           [render = std::move(render)](const httplib::Request&, httplib::Response& response) {
             response.set_content(render(), std::string(kTextContentType));
           });

  server->port_ =
      port == 0 ? http.bind_to_any_port(host) : (http.bind_to_port(host, port) ? port : -1);
  if (server->port_ <= 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", address, " (address in use, or not local?)"));
  }
  MetricsHttpServer* self = server.get();
  server->listener_ = std::thread([self] {
    self->http_->listen_after_bind();
    self->listener_done_.store(true);
  });
  // Stop() only reaches a server that is running: wait for the thread to get there, so
  // that a Stop right after Start cannot be missed.
  while (!http.is_running() && !server->listener_done_.load()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return server;
}

void MetricsHttpServer::Stop() {
  if (stopped_) return;
  stopped_ = true;
  http_->stop();
  if (listener_.joinable()) listener_.join();
}

MetricsHttpServer::~MetricsHttpServer() { Stop(); }

}  // namespace fisherd::metrics
