// NCCL and the custom all-reduce behind one Communicator, on the CUDA backend's stream.
//
// Set-up goes through the host communicator of the same group, every step taken by every rank
// alike (a rank that cannot load NCCL or map a peer's memory says so, and all ranks decide
// together), so that no rank waits for a peer that already gave up.
// A dead or hung peer: a watchdog thread follows every eagerly queued collective with an event;
// one still pending after timeout_s, or an error NCCL reports, aborts the group (ncclCommAbort
// ends NCCL's kernels; the custom all-reduce's barriers give up on their own timeout or on the
// host's abort flag), so the stream drains and every later call throws CommTimeout.
#include "backend/cuda/cuda_communicator.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "backend/cuda/cuda_util.h"
#include "comm/collective_checks.h"
#include "comm/custom_all_reduce.h"
#include "comm/nccl_library.h"
#include "util/logging.h"

namespace cserve {

namespace {

using cuda_util::check;
using Clock = std::chrono::steady_clock;

// Above this, and with more than two ranks, the custom all-reduce takes its two-shot path.
constexpr int64_t kTwoShotMinBytes = int64_t{512} << 10;

cuda::ncclDataType_t nccl_type(DType d) {
  if (d == DType::F16) return cuda::ncclFloat16;
  if (d == DType::BF16) return cuda::ncclBfloat16;
  return cuda::ncclFloat32;
}

// Every rank's `bytes` bytes, in rank order, through the host communicator.
std::vector<std::vector<char>> exchange(Communicator& host, const void* mine, size_t bytes) {
  std::vector<std::vector<char>> all(static_cast<size_t>(host.size()), std::vector<char>(bytes));
  std::memcpy(all[static_cast<size_t>(host.rank())].data(), mine, bytes);
  for (int r = 0; r < host.size(); ++r) host.broadcast(all[static_cast<size_t>(r)].data(), bytes, r);
  return all;
}

// Whether every rank says yes.
bool all_agree(Communicator& host, bool mine) {
  const char c = mine ? 1 : 0;
  for (const auto& v : exchange(host, &c, 1))
    if (!v[0]) return false;
  return true;
}

class CudaCommunicator final : public Communicator {
 public:
  CudaCommunicator(CudaDeviceAccess& device, Communicator& host, const DeviceCommunicatorOptions& options)
      : device_(device), rank_(host.rank()), size_(host.size()), options_(options) {
    use_device();
    std::string load_error;
    try {
      nccl_ = &cuda::nccl_api();
    } catch (const std::exception& e) {
      load_error = e.what();
    }
    // The first meeting may wait for peers still starting their backends: untimed.
    char loaded = nccl_ ? 1 : 0;
    bool everyone = true;
    for (int r = 0; r < size_; ++r) {
      char c = loaded;
      host.broadcast(&c, 1, r, /*untimed=*/true);
      everyone = everyone && c;
    }
    if (!everyone) throw Error(load_error.empty() ? "another rank of the group could not load NCCL" : load_error);
    cuda::ncclUniqueId id{};
    if (rank_ == 0) nccl_->check(nccl_->get_unique_id(&id), "ncclGetUniqueId");
    host.broadcast(&id, sizeof id, 0);
    nccl_->check(nccl_->comm_init_rank(&comm_, size_, id, rank_), "ncclCommInitRank");
    void* status = nullptr;
    check(cudaHostAlloc(&status, sizeof(uint32_t), cudaHostAllocMapped), "cudaHostAlloc (status)");
    status_ = static_cast<volatile uint32_t*>(status);
    *status_ = 0;
    check(cudaMalloc(&barrier_word_, sizeof(float)), "cudaMalloc (barrier)");
    check(cudaMemset(barrier_word_, 0, sizeof(float)), "cudaMemset (barrier)");
    if (options_.custom_all_reduce && size_ <= cuda::kMaxRanks) set_up_custom_all_reduce(host);
    log_info("device communicator: rank " + std::to_string(rank_) + " of " + std::to_string(size_) + " on cuda:" +
             std::to_string(device_.ordinal()) + ", NCCL " + std::to_string(cuda::nccl_version()) +
             (custom_ ? ", custom all-reduce up to " + std::to_string(options_.custom_all_reduce_max_bytes) + " bytes"
                      : ", no custom all-reduce"));
    watchdog_ = std::thread([this] { watch(); });
  }

  ~CudaCommunicator() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    wake_.notify_all();
    if (watchdog_.joinable()) watchdog_.join();
    cudaSetDevice(device_.ordinal());
    if (!failed()) cudaStreamSynchronize(device_.stream());
    if (!nccl_aborted_.exchange(true)) {
      if (failed())
        nccl_->comm_abort(comm_);
      else
        nccl_->comm_destroy(comm_);
    }
    for (int r = 0; r < size_; ++r)
      if (r != rank_ && custom_) {
        cudaIpcCloseMemHandle(peers_.buffers[r]);
        cudaIpcCloseMemHandle(peers_.flags[r]);
      }
    cudaFree(buffer_);
    cudaFree(flags_);
    cudaFree(counter_);
    cudaFree(barrier_word_);
    for (cudaEvent_t e : free_events_) cudaEventDestroy(e);
    for (const Pending& p : pending_) cudaEventDestroy(p.event);
    cudaFreeHost(const_cast<uint32_t*>(status_));
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  bool device_memory() const override { return true; }

  void all_reduce(void* data, int64_t count, DType dtype) override {
    comm::check_reduce_dtype(dtype);
    comm::check_buffer("all_reduce", data, count);
    ensure_usable();
    if (count == 0 || !device_.launches()) return;  // sizing and replay passes: the graph holds it
    use_device();
    const int64_t bytes = count * static_cast<int64_t>(dtype_size(dtype));
    if (custom_ && bytes <= options_.custom_all_reduce_max_bytes) {
      cuda::invokeCustomAllReduce(peers_, data, count, static_cast<int>(dtype), 0,
                                  size_ > 2 && bytes > kTwoShotMinBytes, device_.stream());
    } else {
      nccl_->check(nccl_->all_reduce(data, data, static_cast<size_t>(count), nccl_type(dtype), cuda::ncclSum, comm_,
                                     device_.stream()),
                   "ncclAllReduce");
    }
    queued("all_reduce");
  }

  void all_gather(const void* in, void* out, int64_t count, DType dtype) override {
    comm::check_buffer("all_gather", in, count);
    comm::check_buffer("all_gather", out, count);
    ensure_usable();
    if (count == 0 || !device_.launches()) return;
    use_device();
    nccl_->check(nccl_->all_gather(in, out, static_cast<size_t>(count) * dtype_size(dtype), cuda::ncclUint8, comm_,
                                   device_.stream()),
                 "ncclAllGather");
    queued("all_gather");
  }

  // untimed has no meaning here: the rank link that idles between steps stays on the host.
  void broadcast(void* data, size_t bytes, int root, bool) override {
    comm::check_root(root, size_);
    comm::check_buffer("broadcast", data, static_cast<int64_t>(bytes));
    ensure_usable();
    if (bytes == 0 || !device_.launches()) return;
    use_device();
    nccl_->check(nccl_->broadcast(data, data, bytes, cuda::ncclUint8, root, comm_, device_.stream()), "ncclBroadcast");
    queued("broadcast");
  }

  // Returns when every rank has queued its work up to here and that work is done (eagerly).
  void barrier() override {
    ensure_usable();
    if (!device_.launches()) return;
    use_device();
    nccl_->check(nccl_->all_reduce(barrier_word_, barrier_word_, 1, cuda::ncclFloat32, cuda::ncclSum, comm_,
                                   device_.stream()),
                 "ncclAllReduce (barrier)");
    if (device_.capturing()) return;
    cudaEvent_t e = take_event();
    check(cudaEventRecord(e, device_.stream()), "cudaEventRecord (barrier)");
    const Clock::time_point deadline = Clock::now() + timeout();
    cudaError_t s;
    while ((s = cudaEventQuery(e)) == cudaErrorNotReady) {
      if (failed() || Clock::now() > deadline) break;
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    give_back_event(e);
    if (s == cudaErrorNotReady && !failed()) abort("barrier: a peer did not arrive within " + seconds() + " s");
    ensure_usable();
    check(s, "barrier");
  }

  void abort(const std::string& reason) override {
    reason_.set(reason);
    if (*status_ == 0) *status_ = cuda::kAllReduceAborted;  // the custom all-reduce's barriers stop waiting
    std::lock_guard<std::mutex> lock(nccl_mu_);  // not while the watchdog asks the comm for errors
    if (!nccl_aborted_.exchange(true)) nccl_->comm_abort(comm_);  // ends NCCL's kernels
  }

 private:
  struct Pending {
    cudaEvent_t event;
    Clock::time_point deadline;
    const char* op;
  };

  void use_device() { check(cudaSetDevice(device_.ordinal()), "cudaSetDevice"); }
  std::chrono::milliseconds timeout() const {
    return std::chrono::milliseconds(static_cast<int64_t>(options_.timeout_s * 1000.0));
  }
  std::string seconds() const { return std::to_string(static_cast<int64_t>(options_.timeout_s)); }
  bool failed() const { return reason_.claimed(); }

  void ensure_usable() {
    if (*status_ == cuda::kAllReduceTimedOut && !failed())
      abort("custom all-reduce: a peer did not arrive within " + seconds() + " s");
    if (failed()) throw CommTimeout(reason_.what());
  }

  void set_up_custom_all_reduce(Communicator& host) {
    // Every pair of the group's GPUs must reach each other's memory (one GPU shared by several
    // ranks reaches its own).
    const int mine = device_.ordinal();
    const auto ordinals = exchange(host, &mine, sizeof mine);
    bool reachable = true;
    for (int a = 0; a < size_; ++a)
      for (int b = 0; b < size_; ++b) {
        int oa = 0, ob = 0, can = 0;
        std::memcpy(&oa, ordinals[static_cast<size_t>(a)].data(), sizeof oa);
        std::memcpy(&ob, ordinals[static_cast<size_t>(b)].data(), sizeof ob);
        if (oa != ob && (cudaDeviceCanAccessPeer(&can, oa, ob) != cudaSuccess || !can)) reachable = false;
      }
    cudaGetLastError();
    if (!all_agree(host, reachable)) {
      log_info("custom all-reduce: off (not every pair of GPUs can reach each other's memory); NCCL for all");
      return;
    }
    const size_t bytes = static_cast<size_t>(options_.custom_all_reduce_max_bytes);
    cudaIpcMemHandle_t handles[2] = {};
    const bool made = cudaMalloc(&buffer_, bytes) == cudaSuccess &&
                      cudaMalloc(&flags_, cuda::kMaxRanks * sizeof(uint32_t)) == cudaSuccess &&
                      cudaMemset(flags_, 0, cuda::kMaxRanks * sizeof(uint32_t)) == cudaSuccess &&
                      cudaMalloc(&counter_, sizeof(uint32_t)) == cudaSuccess &&
                      cudaMemset(counter_, 0, sizeof(uint32_t)) == cudaSuccess &&
                      cudaIpcGetMemHandle(&handles[0], buffer_) == cudaSuccess &&
                      cudaIpcGetMemHandle(&handles[1], flags_) == cudaSuccess &&
                      cudaDeviceSynchronize() == cudaSuccess;  // zeroed before a peer writes a flag
    cudaGetLastError();
    if (!all_agree(host, made)) {
      log_warning("custom all-reduce: off (a rank could not register its buffers for CUDA IPC); NCCL for all");
      return;
    }
    const auto all = exchange(host, handles, sizeof handles);
    bool opened = true;
    for (int r = 0; r < size_ && opened; ++r) {
      if (r == rank_) continue;
      cudaIpcMemHandle_t h[2];
      std::memcpy(h, all[static_cast<size_t>(r)].data(), sizeof h);
      void* flags = nullptr;
      opened = cudaIpcOpenMemHandle(&peers_.buffers[r], h[0], cudaIpcMemLazyEnablePeerAccess) == cudaSuccess &&
               cudaIpcOpenMemHandle(&flags, h[1], cudaIpcMemLazyEnablePeerAccess) == cudaSuccess;
      peers_.flags[r] = static_cast<uint32_t*>(flags);
    }
    cudaGetLastError();
    if (!all_agree(host, opened)) {
      for (int r = 0; r < size_; ++r) {
        if (r == rank_) continue;
        if (peers_.buffers[r]) cudaIpcCloseMemHandle(peers_.buffers[r]);
        if (peers_.flags[r]) cudaIpcCloseMemHandle(peers_.flags[r]);
        peers_.buffers[r] = nullptr;
        peers_.flags[r] = nullptr;
      }
      log_warning("custom all-reduce: off (a rank could not map a peer's buffers); NCCL for all");
      return;
    }
    peers_.rank = rank_;
    peers_.size = size_;
    peers_.buffers[rank_] = buffer_;
    peers_.flags[rank_] = static_cast<uint32_t*>(flags_);
    peers_.buffer_bytes = static_cast<int64_t>(bytes);
    peers_.counter = static_cast<uint32_t*>(counter_);
    uint32_t* status_dev = nullptr;
    check(cudaHostGetDevicePointer(reinterpret_cast<void**>(&status_dev), const_cast<uint32_t*>(status_), 0),
          "cudaHostGetDevicePointer");
    peers_.status = status_dev;
    peers_.timeout_ns = static_cast<uint64_t>(options_.timeout_s * 1e9);
    custom_ = true;
  }

  cudaEvent_t take_event() {
    std::lock_guard<std::mutex> lock(mu_);
    if (!free_events_.empty()) {
      cudaEvent_t e = free_events_.back();
      free_events_.pop_back();
      return e;
    }
    cudaEvent_t e = nullptr;
    check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate");
    return e;
  }
  void give_back_event(cudaEvent_t e) {
    std::lock_guard<std::mutex> lock(mu_);
    free_events_.push_back(e);
  }

  // An eagerly queued collective, for the watchdog to follow (inside a capture there is nothing
  // to follow yet: the graph's launches are the caller's).
  void queued(const char* op) {
    if (device_.capturing()) return;
    cudaEvent_t e = take_event();
    check(cudaEventRecord(e, device_.stream()), "cudaEventRecord");
    std::lock_guard<std::mutex> lock(mu_);
    pending_.push_back({e, Clock::now() + timeout(), op});
  }

  void watch() {
    cudaSetDevice(device_.ordinal());
    std::unique_lock<std::mutex> lock(mu_);
    while (!stopping_) {
      wake_.wait_for(lock, std::chrono::milliseconds(20));
      while (!pending_.empty() && cudaEventQuery(pending_.front().event) != cudaErrorNotReady) {
        free_events_.push_back(pending_.front().event);
        pending_.pop_front();
      }
      if (failed()) continue;
      std::string why;
      cuda::ncclResult_t async = cuda::ncclSuccess;
      if (!pending_.empty() && Clock::now() > pending_.front().deadline)
        why = std::string(pending_.front().op) + " did not finish within " + seconds() + " s: a rank died or hangs";
      else if (*status_ == cuda::kAllReduceTimedOut)
        why = "custom all-reduce: a peer did not arrive within " + seconds() + " s";
      else if (nccl_error(async))
        why = std::string("NCCL: ") + nccl_->get_error_string(async);
      if (!why.empty()) {
        lock.unlock();
        log(LogLevel::Error, "device communicator, rank " + std::to_string(rank_) + ": " + why + "; aborting the group");
        abort(why);
        lock.lock();
      }
    }
  }

  // An error NCCL found in the background (a peer gone, a network failure); false once aborted.
  bool nccl_error(cuda::ncclResult_t& async) {
    std::lock_guard<std::mutex> lock(nccl_mu_);
    if (nccl_aborted_) return false;
    return nccl_->comm_get_async_error(comm_, &async) == cuda::ncclSuccess && async != cuda::ncclSuccess &&
           async != cuda::ncclInProgress;
  }

  CudaDeviceAccess& device_;
  const int rank_, size_;
  const DeviceCommunicatorOptions options_;
  const cuda::NcclApi* nccl_ = nullptr;
  cuda::ncclComm_t comm_ = nullptr;
  std::atomic<bool> nccl_aborted_{false};
  std::mutex nccl_mu_;
  comm::AbortReason reason_;
  volatile uint32_t* status_ = nullptr;  // host-mapped: the custom all-reduce's abort / timeout word
  void* barrier_word_ = nullptr;
  bool custom_ = false;
  cuda::AllReducePeers peers_;
  void* buffer_ = nullptr;
  void* flags_ = nullptr;
  void* counter_ = nullptr;
  std::mutex mu_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::deque<Pending> pending_;
  std::vector<cudaEvent_t> free_events_;
  std::thread watchdog_;
};

}  // namespace

std::unique_ptr<Communicator> new_cuda_communicator(CudaDeviceAccess& device, Communicator& host,
                                                    const DeviceCommunicatorOptions& options) {
  if (host.size() < 1) throw InvalidArgument("device communicator: an empty group");
  if (options.custom_all_reduce_max_bytes <= 0 || options.timeout_s <= 0)
    throw InvalidArgument("device communicator: custom_all_reduce_max_bytes and timeout_s must be positive");
  return std::make_unique<CudaCommunicator>(device, host, options);
}

}  // namespace cserve
