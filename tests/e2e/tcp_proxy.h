// A loopback TCP proxy that a test can cut: every connection accepted on its port is
// relayed to the target, and Cut() closes all of them at once, as a network failure
// would, while the proxy keeps accepting new connections. With a delay it also plays a
// slow link: each chunk read is held that long before it is forwarded (one thread relays
// both directions of a connection, so chunks queue behind each other; a handshake's
// flights each arrive `delay` late, which is what the tests need).
#ifndef FISHERD_TESTS_E2E_TCP_PROXY_H_
#define FISHERD_TESTS_E2E_TCP_PROXY_H_

#include <atomic>
#include <chrono>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace fisherd::testing {

class TcpProxy {
 public:
  // REQUIRES: target_port is a listening loopback port.
  explicit TcpProxy(int target_port,
                    std::chrono::milliseconds delay = std::chrono::milliseconds(0));
  ~TcpProxy();

  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  // Closes every relayed connection now.
  void Cut();

 private:
  void AcceptLoop();
  void Relay(int client_fd, int server_fd);

  int listen_fd_ = -1;
  int port_ = 0;
  const int target_port_;
  const std::chrono::milliseconds delay_;
  std::atomic<bool> stopping_{false};
  std::mutex mu_;
  std::vector<int> open_fds_;         // guarded by mu_
  std::vector<std::thread> threads_;  // guarded by mu_
  std::thread acceptor_;
};

}  // namespace fisherd::testing

#endif  // FISHERD_TESTS_E2E_TCP_PROXY_H_
