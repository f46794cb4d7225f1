// Collective operations among the ranks of one tensor-parallel group (DESIGN.md's comm layer).
// Every rank calls the same operations in the same order with the same sizes; each call returns
// when this rank's part is done. Data lives in memory this process can read and write (host
// memory for the CPU backend). Every rank gets bitwise the same all_reduce result.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "core/dtype.h"
#include "cserve/error.h"

namespace cserve {

// A peer did not arrive within the communicator's timeout: a rank died or hangs. The group
// cannot be used afterwards (every later call throws it again).
class CommTimeout : public Error {
 public:
  using Error::Error;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Whether the data pointers are a device backend's memory (backend/device_communicator.h),
  // with the work ordered on that backend's stream, rather than host memory.
  virtual bool device_memory() const { return false; }
  // In place: data[i] = the sum over ranks of data[i]; F32, BF16 or F16 (summed in f32).
  virtual void all_reduce(void* data, int64_t count, DType dtype) = 0;
  // out[r * count + i] = rank r's in[i]; out holds size() * count elements.
  virtual void all_gather(const void* in, void* out, int64_t count, DType dtype) = 0;
  // `bytes` bytes of root's data to every rank's data. untimed: no deadline on the waits (a peer
  // that exits, or an abort, still ends them): for ranks that idle until the next message, or
  // wait while a peer loads its weights.
  virtual void broadcast(void* data, size_t bytes, int root, bool untimed = false) = 0;
  virtual void barrier() = 0;
  // Gives up on the group; callable from any thread, also while another thread of this rank is
  // inside a collective. Every rank's current and later collectives throw CommTimeout (the
  // others' name the rank that aborted); `reason` is for this rank's own messages.
  virtual void abort(const std::string& reason) = 0;
};

// Ranks in processes (or threads) of one host, meeting in a POSIX shared-memory segment named
// `name` (unique per group; a leading '/' is optional). Rank 0 creates the segment (replacing a
// stale one of the same name) and waits until every rank has attached, then removes the name;
// the others attach, waiting for it up to timeout_s. Every wait of a collective is bounded by
// timeout_s too (CommTimeout naming the operation and the missing rank).
// buffer_bytes: each rank's staging buffer; larger messages go in chunks. 0: the environment
// variable CSERVE_SHM_COMM_BYTES, else 2 MiB. Rank 0's value is the group's. The segment holds
// 2 * size * buffer_bytes plus a few KiB.
std::unique_ptr<Communicator> make_shm_communicator(const std::string& name, int rank, int size,
                                                    double timeout_s = 60.0, size_t buffer_bytes = 0);

// Ranks on one or several hosts, over gloo's TCP transport (third_party/gloo). They meet through
// a bootstrap key-value store at store_address ("host:port"; "[v6addr]:port"): with host_store,
// rank 0 serves it there (SO_REUSEADDR) for as long as its communicator lives; the others connect
// to it, retrying up to timeout_s. `prefix` (unique per group) keeps groups apart, so several
// groups can meet through one store. One process serves a port once: a second group whose rank
// 0 is in the same process passes host_store = false to use the store another communicator of
// that process serves (the engine's -tp and -pp subgroups use its world group's), else pass
// another port. Each rank's gloo device listens on the interface GLOO_SOCKET_IFNAME names (the
// first of a comma-separated list, as torch), else on the local address that routes to the
// store (loopback for 127.0.0.1). Every wait of a collective is bounded by timeout_s
// (CommTimeout naming the operation); a peer process that exits or aborts closes its
// connections, which fails the collectives of the others at once. Every later call throws
// CommTimeout. Sets SIGPIPE to ignored if it has its default action (a peer gone while this
// process writes must be an error, not a signal).
std::unique_ptr<Communicator> make_gloo_communicator(const std::string& store_address, const std::string& prefix,
                                                     int rank, int size, double timeout_s = 60.0,
                                                     bool host_store = true);

}  // namespace cserve
