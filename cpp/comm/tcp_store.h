// The bootstrap key-value store of the gloo communicator (the role torch's TCPStore plays for
// ProcessGroupGloo, much smaller): rank 0's process serves it on a TCP port; every rank, rank 0
// included, is a client that publishes its gloo address under a key and waits for the others'.
// Only the rendezvous goes through it; the collectives' data runs on gloo's own connections.
//
// Wire format, integers in network byte order. A request: u8 op, u32 key length, key, then
//   Set: u32 value length, value             reply: u8 1
//   Get: u64 timeout in ms (0: do not wait)  reply: u8 found, then if found: u32 length, value
// A Get waits on the server until the key is set or its timeout passes. Set overwrites.
#pragma once
#include <chrono>
#include <memory>
#include <optional>
#include <string>

namespace cserve::comm {

struct HostPort {
  std::string host;
  int port = 0;
  std::string str() const;
};

// "host:port" or "[ipv6]:port"; InvalidArgument otherwise.
HostPort parse_host_port(const std::string& address);

// Serves the store on `where`'s port: bound to the host's own address when it is one of this
// machine's, else to every interface (as TCPStore); SO_REUSEADDR. A thread accepts clients and
// one thread serves each; the destructor stops and joins them all (waiting clients get "not
// found"). InvalidArgument when the port cannot be bound.
class TcpStoreServer {
 public:
  explicit TcpStoreServer(const HostPort& where);
  ~TcpStoreServer();
  TcpStoreServer(const TcpStoreServer&) = delete;
  TcpStoreServer& operator=(const TcpStoreServer&) = delete;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// One connection to a store. Connects with retries (the server may not be up yet) until
// `deadline`, else throws CommTimeout. Not thread-safe: one caller at a time.
class TcpStoreClient {
 public:
  using Clock = std::chrono::steady_clock;
  TcpStoreClient(const HostPort& where, Clock::time_point deadline);
  ~TcpStoreClient();
  TcpStoreClient(const TcpStoreClient&) = delete;
  TcpStoreClient& operator=(const TcpStoreClient&) = delete;

  void set(const std::string& key, const std::string& value);
  // The key's value once it is set, waiting up to `timeout`; nullopt if it was not set by then.
  std::optional<std::string> get(const std::string& key, std::chrono::milliseconds timeout);
  // The numeric address of this end of the connection: the local address that routes to the store.
  std::string local_address() const;
  void close();

 private:
  void send_all(const std::string& bytes);
  void recv_exact(void* out, size_t n, Clock::time_point deadline);

  HostPort where_;
  int fd_ = -1;
};

}  // namespace cserve::comm
