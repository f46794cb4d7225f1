// The gloo communicator's bootstrap store (tcp_store.h): a map behind a mutex, a thread per
// client connection, an eventfd that wakes every thread when the server stops.
#include "comm/tcp_store.h"

#include <arpa/inet.h>
#include <endian.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "comm/communicator.h"

namespace cserve::comm {
namespace {

using Clock = std::chrono::steady_clock;

enum Op : uint8_t { kSet = 1, kGet = 2 };
constexpr uint32_t kMaxLength = 64u << 20;  // a key or value; anything larger is a broken peer
constexpr auto kConnectRetry = std::chrono::milliseconds(50);

std::string errno_text(int err) { return std::strerror(err); }

void put_u32(std::string& out, uint32_t v) {
  v = htobe32(v);
  out.append(reinterpret_cast<const char*>(&v), 4);
}
void put_u64(std::string& out, uint64_t v) {
  v = htobe64(v);
  out.append(reinterpret_cast<const char*>(&v), 8);
}

// Writes all of `bytes`; false if the connection broke. MSG_NOSIGNAL: a closed peer is an error,
// never SIGPIPE.
bool write_all(int fd, const char* p, size_t n) {
  while (n > 0) {
    const ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

struct AddrInfo {
  addrinfo* list = nullptr;
  ~AddrInfo() {
    if (list) freeaddrinfo(list);
  }
};

// getaddrinfo for a TCP endpoint; InvalidArgument naming the address when it does not resolve.
AddrInfo resolve(const HostPort& where, bool passive) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = passive ? AI_PASSIVE : 0;
  AddrInfo ai;
  const int rv = getaddrinfo(where.host.c_str(), std::to_string(where.port).c_str(), &hints, &ai.list);
  if (rv != 0) throw InvalidArgument("store address " + where.str() + ": " + gai_strerror(rv));
  return ai;
}

}  // namespace

std::string HostPort::str() const {
  return host.find(':') != std::string::npos ? "[" + host + "]:" + std::to_string(port)
                                             : host + ":" + std::to_string(port);
}

HostPort parse_host_port(const std::string& address) {
  const size_t colon = address.rfind(':');
  auto bad = [&]() {
    return InvalidArgument("store address '" + address + "' is not host:port (e.g. 10.0.0.1:29500)");
  };
  if (colon == std::string::npos || colon == 0 || colon + 1 == address.size()) throw bad();
  HostPort hp;
  hp.host = address.substr(0, colon);
  if (hp.host.front() == '[') {
    if (hp.host.size() < 3 || hp.host.back() != ']') throw bad();
    hp.host = hp.host.substr(1, hp.host.size() - 2);
  } else if (hp.host.find(':') != std::string::npos) {
    throw bad();  // an IPv6 address needs its brackets
  }
  const std::string port = address.substr(colon + 1);
  if (port.size() > 5 || !std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; }))
    throw bad();
  hp.port = std::stoi(port);
  if (hp.port < 1 || hp.port > 65535) throw bad();
  return hp;
}

// --- server ----------------------------------------------------------------------------------

struct TcpStoreServer::Impl {
  int listen_fd = -1;
  int wake_fd = -1;  // eventfd: readable once the server stops
  std::mutex mu;
  std::condition_variable cv;
  std::map<std::string, std::string> kv;  // under mu
  bool stopping = false;                  // under mu
  std::vector<std::thread> connections;   // only the acceptor thread adds, before stop
  std::thread acceptor;

  // Waits until fd is readable; false when the server stops first.
  bool wait_readable(int fd) {
    pollfd fds[2] = {{fd, POLLIN, 0}, {wake_fd, POLLIN, 0}};
    for (;;) {
      const int rv = poll(fds, 2, -1);
      if (rv < 0 && errno == EINTR) continue;
      if (rv < 0 || (fds[1].revents & POLLIN)) return false;
      if (fds[0].revents) return true;
    }
  }

  bool read_exact(int fd, void* out, size_t n) {
    char* p = static_cast<char*>(out);
    while (n > 0) {
      if (!wait_readable(fd)) return false;
      const ssize_t r = ::recv(fd, p, n, 0);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) return false;
      p += r;
      n -= static_cast<size_t>(r);
    }
    return true;
  }

  bool read_string(int fd, std::string& s) {
    uint32_t len;
    if (!read_exact(fd, &len, 4)) return false;
    len = be32toh(len);
    if (len > kMaxLength) return false;
    s.resize(len);
    return read_exact(fd, s.data(), len);
  }

  // One client: requests until it disconnects, sends garbage or the server stops.
  void serve(int fd) {
    for (;;) {
      uint8_t op;
      std::string key;
      if (!read_exact(fd, &op, 1) || !read_string(fd, key)) break;
      std::string reply;
      if (op == kSet) {
        std::string value;
        if (!read_string(fd, value)) break;
        {
          std::lock_guard<std::mutex> lock(mu);
          kv[key] = std::move(value);
        }
        cv.notify_all();
        reply.push_back(1);
      } else if (op == kGet) {
        uint64_t ms;
        if (!read_exact(fd, &ms, 8)) break;
        ms = std::min<uint64_t>(be64toh(ms), uint64_t{1} << 40);
        std::unique_lock<std::mutex> lock(mu);
        cv.wait_for(lock, std::chrono::milliseconds(ms), [&] { return stopping || kv.count(key) > 0; });
        auto it = kv.find(key);
        if (it == kv.end()) {
          reply.push_back(0);
        } else {
          reply.push_back(1);
          put_u32(reply, static_cast<uint32_t>(it->second.size()));
          reply += it->second;
        }
      } else {
        break;
      }
      if (!write_all(fd, reply.data(), reply.size())) break;
    }
    ::close(fd);
  }

  void accept_loop() {
    for (;;) {
      if (!wait_readable(listen_fd)) return;
      const int fd = ::accept(listen_fd, nullptr, nullptr);
      if (fd < 0) continue;  // EINTR, ECONNABORTED, EMFILE...: the client retries
      const int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      connections.emplace_back([this, fd] { serve(fd); });
    }
  }
};

TcpStoreServer::TcpStoreServer(const HostPort& where) : impl_(std::make_unique<Impl>()) {
  // The host's own addresses first; if it names no address of this machine (a name that
  // resolves elsewhere, a NAT address), every interface.
  AddrInfo own = resolve(where, false);
  int last_err = 0;
  std::vector<const addrinfo*> candidates;
  for (const addrinfo* a = own.list; a; a = a->ai_next) candidates.push_back(a);
  AddrInfo any;
  for (int pass = 0; pass < 2 && impl_->listen_fd < 0; ++pass) {
    if (pass == 1) {
      if (last_err != EADDRNOTAVAIL) break;
      any = resolve(HostPort{"", where.port}, true);
      candidates.clear();
      for (const addrinfo* a = any.list; a; a = a->ai_next) candidates.push_back(a);
    }
    for (const addrinfo* a : candidates) {
      const int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
      if (fd < 0) {
        last_err = errno;
        continue;
      }
      const int one = 1;
      setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
      if (::bind(fd, a->ai_addr, a->ai_addrlen) == 0 && ::listen(fd, 128) == 0) {
        impl_->listen_fd = fd;
        break;
      }
      last_err = errno;
      ::close(fd);
    }
  }
  if (impl_->listen_fd < 0)
    throw InvalidArgument("cannot serve the gloo store on " + where.str() + ": " + errno_text(last_err));
  impl_->wake_fd = eventfd(0, EFD_CLOEXEC);
  if (impl_->wake_fd < 0) {
    ::close(impl_->listen_fd);
    throw Error("eventfd: " + errno_text(errno));
  }
  impl_->acceptor = std::thread([impl = impl_.get()] { impl->accept_loop(); });
}

TcpStoreServer::~TcpStoreServer() {
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->stopping = true;
  }
  impl_->cv.notify_all();
  const uint64_t one = 1;
  (void)!::write(impl_->wake_fd, &one, sizeof one);
  impl_->acceptor.join();  // after this, nothing adds to connections
  for (std::thread& t : impl_->connections) t.join();
  ::close(impl_->listen_fd);
  ::close(impl_->wake_fd);
}

// --- client ----------------------------------------------------------------------------------

TcpStoreClient::TcpStoreClient(const HostPort& where, Clock::time_point deadline) : where_(where) {
  std::string last_error = "not tried";
  for (;;) {
    AddrInfo ai = resolve(where, false);
    for (const addrinfo* a = ai.list; a && fd_ < 0; a = a->ai_next) {
      const int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
      if (fd < 0) {
        last_error = errno_text(errno);
        continue;
      }
      if (::connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
        fd_ = fd;
      } else {
        last_error = errno_text(errno);
        ::close(fd);
      }
    }
    if (fd_ >= 0) break;
    if (Clock::now() + kConnectRetry >= deadline)
      throw CommTimeout("could not reach the gloo store at " + where.str() + " (rank 0's process hosts it): " +
                        last_error);
    std::this_thread::sleep_for(kConnectRetry);
  }
  const int one = 1;
  setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

TcpStoreClient::~TcpStoreClient() { close(); }

void TcpStoreClient::close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

std::string TcpStoreClient::local_address() const {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (fd_ < 0 || getsockname(fd_, reinterpret_cast<sockaddr*>(&ss), &len) != 0)
    throw Error("gloo store: getsockname: " + errno_text(errno));
  char host[NI_MAXHOST];
  const int rv = getnameinfo(reinterpret_cast<sockaddr*>(&ss), len, host, sizeof host, nullptr, 0, NI_NUMERICHOST);
  if (rv != 0) throw Error(std::string("gloo store: getnameinfo: ") + gai_strerror(rv));
  return host;
}

void TcpStoreClient::send_all(const std::string& bytes) {
  if (fd_ < 0 || !write_all(fd_, bytes.data(), bytes.size()))
    throw CommTimeout("lost the connection to the gloo store at " + where_.str() + " (rank 0 exited?)");
}

void TcpStoreClient::recv_exact(void* out, size_t n, Clock::time_point deadline) {
  char* p = static_cast<char*>(out);
  while (n > 0) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) throw CommTimeout("the gloo store at " + where_.str() + " did not answer");
    pollfd pfd{fd_, POLLIN, 0};
    const int rv = poll(&pfd, 1, static_cast<int>(std::min<int64_t>(left, 1 << 30)));
    if (rv < 0 && errno == EINTR) continue;
    if (rv == 0) continue;
    const ssize_t r = rv > 0 ? ::recv(fd_, p, n, 0) : -1;
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0)
      throw CommTimeout("lost the connection to the gloo store at " + where_.str() + " (rank 0 exited?)");
    p += r;
    n -= static_cast<size_t>(r);
  }
}

void TcpStoreClient::set(const std::string& key, const std::string& value) {
  std::string req(1, static_cast<char>(kSet));
  put_u32(req, static_cast<uint32_t>(key.size()));
  req += key;
  put_u32(req, static_cast<uint32_t>(value.size()));
  req += value;
  send_all(req);
  uint8_t ok;
  recv_exact(&ok, 1, Clock::now() + std::chrono::seconds(60));
}

std::optional<std::string> TcpStoreClient::get(const std::string& key, std::chrono::milliseconds timeout) {
  timeout = std::max(timeout, std::chrono::milliseconds(0));
  std::string req(1, static_cast<char>(kGet));
  put_u32(req, static_cast<uint32_t>(key.size()));
  req += key;
  put_u64(req, static_cast<uint64_t>(timeout.count()));
  send_all(req);
  // The server answers once the key is there or the timeout has passed: allow it some slack.
  const Clock::time_point deadline = Clock::now() + timeout + std::chrono::seconds(30);
  uint8_t found;
  recv_exact(&found, 1, deadline);
  if (!found) return std::nullopt;
  uint32_t len;
  recv_exact(&len, 4, deadline);
  len = be32toh(len);
  if (len > kMaxLength) throw CommTimeout("the gloo store at " + where_.str() + " sent a malformed reply");
  std::string value(len, '\0');
  recv_exact(value.data(), len, deadline);
  return value;
}

}  // namespace cserve::comm
