// The network communicator: gloo's collectives over its TCP transport (third_party/gloo), for
// ranks on several hosts. Bootstrap: rank 0's process serves a key-value store (tcp_store.h);
// every rank creates a gloo TCP device listening on the address that routes to the store (or on
// GLOO_SOCKET_IFNAME's), publishes it there under `prefix` and connects a full mesh of pairs
// (gloo::rendezvous::Context::connectFullMesh). The store is not used afterwards.
//
// all_reduce is gloo's ring all-reduce, summing in f32 (bf16/f16 are widened into a scratch
// buffer and narrowed back). Each element of the result is summed by one rank and then copied to
// the others, so every rank gets bitwise the same result; with 2 ranks it is also the shm
// communicator's result (a + b == b + a), with more the order of the terms differs.
//
// Failure: any gloo error (a timeout, a peer's connection closing because its process exited,
// aborted or failed) fails the group: this rank closes all its connections, so its peers fail
// as well instead of waiting out their timeouts, and every later call throws CommTimeout.
// abort() does the same from any thread: closing the connections wakes the collective blocked
// in this process with an error.
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "comm/collective_checks.h"
#include "comm/communicator.h"
#include "comm/reduce_kernels.h"
#include "comm/tcp_store.h"
#include "gloo/allgather.h"
#include "gloo/allreduce.h"
#include "gloo/barrier.h"
#include "gloo/broadcast.h"
#include "gloo/rendezvous/context.h"
#include "gloo/rendezvous/prefix_store.h"
#include "gloo/transport/tcp/context.h"
#include "gloo/transport/tcp/device.h"

namespace cserve {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// An untimed broadcast waits this long: a year (longer overflows gloo's steady_clock deadlines).
constexpr milliseconds kUntimed = std::chrono::hours(24 * 365);

milliseconds to_ms(double seconds) {
  const double ms = std::min(seconds * 1e3, static_cast<double>(kUntimed.count()));
  return milliseconds(std::max<int64_t>(1, static_cast<int64_t>(ms)));
}

std::string seconds_text(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", s);
  return buf;
}

// gloo's rendezvous store over our TCP store client. Keys arrive as "<prefix>/<rank>" (gloo's
// PrefixStore in front); a key that does not appear in time is a rank that did not join.
class StoreAdapter final : public gloo::rendezvous::Store {
 public:
  StoreAdapter(std::shared_ptr<comm::TcpStoreClient> client, Clock::time_point deadline, double timeout_s)
      : client_(std::move(client)), deadline_(deadline), timeout_s_(timeout_s) {}

  void set(const std::string& key, const std::vector<char>& data) override {
    client_->set(key, std::string(data.begin(), data.end()));
  }
  std::vector<char> get(const std::string& key) override {
    auto v = client_->get(key, left());
    if (!v) missing(key);
    return std::vector<char>(v->begin(), v->end());
  }
  void wait(const std::vector<std::string>& keys) override { wait(keys, left()); }
  void wait(const std::vector<std::string>& keys, const milliseconds& timeout) override {
    for (const std::string& key : keys)
      if (!client_->get(key, std::min(timeout, left()))) missing(key);
  }

 private:
  milliseconds left() const {
    return std::max(milliseconds(0), std::chrono::duration_cast<milliseconds>(deadline_ - Clock::now()));
  }
  [[noreturn]] void missing(const std::string& key) const {
    const std::string rank = key.substr(key.rfind('/') + 1);
    throw CommTimeout("rank " + rank + " did not join the group within " + seconds_text(timeout_s_) + " s");
  }

  std::shared_ptr<comm::TcpStoreClient> client_;
  Clock::time_point deadline_;
  double timeout_s_;
};

// tcp::Context::signalException (fails every pair: closes its socket, wakes its waiters with an
// error) is protected; a pointer to it can be formed through a derived class.
struct TcpContextAccess : gloo::transport::tcp::Context {
  using SignalFn = void (gloo::transport::tcp::Context::*)(const std::string&);
  static SignalFn signal_exception() { return &TcpContextAccess::signalException; }
};

// The gloo context, with access to its transport context for closing every connection.
class GlooContext final : public gloo::rendezvous::Context {
 public:
  using gloo::rendezvous::Context::Context;

  void close_all(const std::string& why) {
    auto* tcp = dynamic_cast<gloo::transport::tcp::Context*>(transportContext_.get());
    if (tcp) (tcp->*TcpContextAccess::signal_exception())(why);
  }

  // The peers whose connection is closed (they exited, aborted or failed).
  std::vector<int> closed_peers() {
    std::vector<int> out;
    for (int p = 0; p < size; ++p)
      if (p != rank && !getPair(p)->isConnected()) out.push_back(p);
    return out;
  }
};

// The device's address: GLOO_SOCKET_IFNAME's interface (the first of a comma-separated list, as
// torch), else the local address of our connection to the store (127.0.0.1 for a store on
// loopback; the interface that routes to rank 0 otherwise).
gloo::transport::tcp::attr device_attr(const comm::TcpStoreClient& client) {
  gloo::transport::tcp::attr attr;
  const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
  if (ifname && *ifname) {
    std::string first(ifname);
    first = first.substr(0, first.find(','));
    attr.iface = first;
  } else {
    attr.hostname = client.local_address();
  }
  return attr;
}

// A peer that closes its connection while this process writes must be an error, not SIGPIPE.
void ignore_sigpipe() {
  struct sigaction current;
  if (sigaction(SIGPIPE, nullptr, &current) == 0 && current.sa_handler == SIG_DFL) signal(SIGPIPE, SIG_IGN);
}

class GlooCommunicator final : public Communicator {
 public:
  GlooCommunicator(const std::string& store_address, const std::string& prefix, int rank, int size,
                   double timeout_s, bool host_store)
      : rank_(rank), size_(size), timeout_s_(timeout_s), timeout_(to_ms(timeout_s)) {
    if (size < 1 || rank < 0 || rank >= size)
      throw InvalidArgument("gloo communicator: rank " + std::to_string(rank) + " of " + std::to_string(size) +
                            " is not a rank of the group");
    if (!(timeout_s > 0)) throw InvalidArgument("gloo communicator: timeout_s must be > 0");
    if (prefix.empty()) throw InvalidArgument("gloo communicator: the group prefix must not be empty");
    const comm::HostPort where = comm::parse_host_port(store_address);
    where_ = where.str() + " '" + prefix + "'";
    ignore_sigpipe();
    const Clock::time_point deadline = Clock::now() + timeout_;
    if (rank == 0 && host_store) server_ = std::make_unique<comm::TcpStoreServer>(where);
    auto client = std::make_shared<comm::TcpStoreClient>(where, deadline);
    std::shared_ptr<gloo::transport::Device> device;
    try {
      device = gloo::transport::tcp::CreateDevice(device_attr(*client));
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      throw InvalidArgument(std::string("gloo communicator: no usable network address (GLOO_SOCKET_IFNAME?): ") +
                            e.what());
    }
    try {
      context_ = std::make_shared<GlooContext>(rank, size);
      context_->setTimeout(timeout_);
      auto store = std::make_shared<StoreAdapter>(client, deadline, timeout_s);
      context_->connectFullMesh(std::make_shared<gloo::rendezvous::PrefixStore>(prefix, store), device);
    } catch (const std::exception& e) {
      throw CommTimeout(std::string("joining the gloo group ") + where_ + " as rank " + std::to_string(rank) +
                        " of " + std::to_string(size) + ": " + e.what());
    }
    client->close();  // the bootstrap is over; gloo keeps the store but no longer uses it
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }

  void all_reduce(void* data, int64_t count, DType dtype) override {
    comm::check_reduce_dtype(dtype);
    check_args("all_reduce", data, count);
    if (count == 0) return;
    float* f32 = static_cast<float*>(data);
    if (dtype != DType::F32) {
      scratch_.resize(static_cast<size_t>(count));
      convert_to_f32(data, dtype, scratch_.data(), static_cast<size_t>(count));
      f32 = scratch_.data();
    }
    run("all_reduce", [&] {
      gloo::AllreduceOptions opts(context_);
      opts.setOutput(f32, static_cast<size_t>(count));
      opts.setReduceFunction([](void* out, const void* a, const void* b, size_t n) {
        const void* srcs[2] = {a, b};
        comm::sum_arrays(out, srcs, 2, static_cast<int64_t>(n), DType::F32);
      });
      opts.setTimeout(timeout_);
      gloo::allreduce(opts);
    });
    if (dtype != DType::F32) convert_from_f32(scratch_.data(), data, dtype, static_cast<size_t>(count));
  }

  void all_gather(const void* in, void* out, int64_t count, DType dtype) override {
    check_args("all_gather", in, count);
    check_args("all_gather", out, count);
    if (count == 0) return;
    const size_t bytes = static_cast<size_t>(count) * dtype_size(dtype);
    uint8_t* o = static_cast<uint8_t*>(out);
    run("all_gather", [&] {
      gloo::AllgatherOptions opts(context_);
      // In place when the input already is this rank's slot of the output.
      if (in != o + static_cast<size_t>(rank_) * bytes)
        opts.setInput(static_cast<uint8_t*>(const_cast<void*>(in)), bytes);
      opts.setOutput(o, bytes * static_cast<size_t>(size_));
      opts.setTimeout(timeout_);
      gloo::allgather(opts);
    });
  }

  void broadcast(void* data, size_t bytes, int root, bool untimed) override {
    comm::check_root(root, size_);
    check_args("broadcast", data, static_cast<int64_t>(bytes));
    if (bytes == 0) return;
    run("broadcast", [&] {
      gloo::BroadcastOptions opts(context_);
      opts.setOutput(static_cast<uint8_t*>(data), bytes);
      opts.setRoot(root);
      opts.setTimeout(untimed ? kUntimed : timeout_);
      gloo::broadcast(opts);
    });
  }

  void barrier() override {
    check_usable("barrier");
    run("barrier", [&] {
      gloo::BarrierOptions opts(context_);
      opts.setTimeout(timeout_);
      gloo::barrier(opts);
    });
  }

  void abort(const std::string& reason) override {
    abort_reason_.set(reason);
    context_->close_all("cserve: rank " + std::to_string(rank_) + " aborted the group");
  }

 private:
  void check_args(const char* op, const void* p, int64_t count) {
    comm::check_buffer(op, p, count);
    check_usable(op);
  }

  void check_usable(const char* op) {
    if (abort_reason_.claimed() && failure_.empty()) fail(op, abort_reason_.what());
    if (!failure_.empty())
      throw CommTimeout(std::string(op) + ": the group failed earlier and cannot be used: " + failure_);
  }

  // Runs one gloo collective; any gloo error fails the group.
  template <class F>
  void run(const char* op, F&& f) {
    try {
      f();
    } catch (const std::exception& e) {
      std::string what;
      const std::string gloo_what = e.what();
      if (abort_reason_.claimed()) {
        what = abort_reason_.what();
      } else if (gloo_what.find("Timed out waiting") != std::string::npos) {
        what = "a peer did not arrive within " + seconds_text(timeout_s_) + " s";
      } else {
        const std::vector<int> lost = context_->closed_peers();
        if (lost.empty()) {
          what = "the connection to a peer failed";
        } else {
          what = "lost ";
          for (size_t i = 0; i < lost.size(); ++i)
            what += (i ? (i + 1 == lost.size() ? " and rank " : ", rank ") : "rank ") + std::to_string(lost[i]);
          what += " (its connection closed: the process exited, aborted or failed)";
        }
      }
      fail(op, what + "; gloo: " + gloo_what);
    }
  }

  // Fails the group: closes every connection (the peers fail too) and throws.
  [[noreturn]] void fail(const char* op, const std::string& what) {
    context_->close_all("cserve: rank " + std::to_string(rank_) + " failed the group");
    failure_ = what + " (gloo group " + where_ + ", rank " + std::to_string(rank_) + " of " +
               std::to_string(size_) + ")";
    throw CommTimeout(std::string(op) + ": " + failure_);
  }

  int rank_;
  int size_;
  double timeout_s_;
  milliseconds timeout_;
  std::string where_;  // "host:port 'prefix'", for messages
  // Rank 0 with host_store: the bootstrap store, served while this communicator lives (declared
  // before the context, so destroyed after it).
  std::unique_ptr<comm::TcpStoreServer> server_;
  std::shared_ptr<GlooContext> context_;
  std::vector<float> scratch_;  // bf16/f16 all_reduce in f32
  std::string failure_;         // why the group failed; empty while it works (the collective's thread)
  comm::AbortReason abort_reason_;  // abort() may come from another thread
};

}  // namespace

std::unique_ptr<Communicator> make_gloo_communicator(const std::string& store_address, const std::string& prefix,
                                                     int rank, int size, double timeout_s, bool host_store) {
  return std::make_unique<GlooCommunicator>(store_address, prefix, rank, size, timeout_s, host_store);
}

}  // namespace cserve
