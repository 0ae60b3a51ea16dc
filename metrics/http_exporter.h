// MetricsHttpServer: GET /metrics over plain HTTP (cpp-httplib, Debian's
// libcpp-httplib-dev), for a Prometheus server to scrape. Every other path or method is
// 404. It serves on a small thread pool of its own, so a slow scraper never touches the
// threads that do the real work.
//
// A scraper that hangs up mid-response makes the write raise SIGPIPE: the process must
// ignore SIGPIPE (fisherd's main does), or that would kill it.
#ifndef FISHERD_METRICS_HTTP_EXPORTER_H_
#define FISHERD_METRICS_HTTP_EXPORTER_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace httplib {
class Server;
}  // namespace httplib

namespace fisherd::metrics {

class MetricsHttpServer {
 public:
  // Produces the body of one scrape (RenderText of a registry's Collect). Called on the
  // server's threads, possibly two at once.
  using RenderFn = std::function<std::string()>;

  // Binds `address` ("HOST:PORT"; port 0 picks a free one; an IPv6 host in brackets)
  // and starts serving. INVALID_ARGUMENT for an address of another form, UNAVAILABLE
  // when it cannot be bound (in use, or not an address of this machine).
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(absl::string_view address,
                                                                  RenderFn render);

  // Stop().
  ~MetricsHttpServer();

  MetricsHttpServer(const MetricsHttpServer&) = delete;
  MetricsHttpServer& operator=(const MetricsHttpServer&) = delete;

  // The port bound.
  int port() const { return port_; }

  // Closes the listening socket, lets the scrapes in flight finish (bounded by the
  // timeouts set in Start: a couple of seconds for a client that sends nothing) and
  // joins the threads. Idempotent.
  void Stop();

 private:
  MetricsHttpServer();

  std::unique_ptr<httplib::Server> http_;
  std::thread listener_;
  std::atomic<bool> listener_done_{false};
  int port_ = 0;
  bool stopped_ = false;
};

}  // namespace fisherd::metrics

#endif  // FISHERD_METRICS_HTTP_EXPORTER_H_
