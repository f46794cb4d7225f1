// cserve._cuda.IpcAllReduce: one rank of the custom all-reduce (cuda/comm), for tests and
// benchmarks: its registered buffer and flags, their CUDA IPC handles, the peers' opened, and an
// all-reduce of a host array (uploaded, reduced on the device, downloaded); also captured in a
// CUDA graph and replayed (with the device epoch counter), and with a barrier timeout.
#include <cuda_runtime.h>
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "arrays.h"
#include "comm/custom_all_reduce.h"
#include "core/dtype.h"

namespace nb = nanobind;
using namespace nb::literals;
namespace cc = cserve::cuda;

namespace {

namespace cb = cserve::cuda_bindings;

class IpcAllReduce {
 public:
  IpcAllReduce(int rank, int size, int64_t buffer_bytes, double timeout_s) {
    if (size < 1 || size > cc::kMaxRanks || rank < 0 || rank >= size)
      throw std::invalid_argument("IpcAllReduce: a group of 1 to 8 ranks");
    peers_.rank = rank;
    peers_.size = size;
    peers_.buffer_bytes = buffer_bytes;
    cb::ok(cudaMalloc(&buffer_, static_cast<size_t>(buffer_bytes)), "cudaMalloc buffer");
    cb::ok(cudaMalloc(&flags_, cc::kMaxRanks * sizeof(uint32_t)), "cudaMalloc flags");
    cb::ok(cudaMemset(flags_, 0, cc::kMaxRanks * sizeof(uint32_t)), "cudaMemset flags");
    peers_.buffers[rank] = buffer_;
    peers_.flags[rank] = static_cast<uint32_t*>(flags_);
    cb::ok(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    void* status = nullptr;
    cb::ok(cudaHostAlloc(&status, sizeof(uint32_t), cudaHostAllocMapped), "cudaHostAlloc status");
    status_ = static_cast<uint32_t*>(status);
    *status_ = 0;
    uint32_t* status_dev = nullptr;
    cb::ok(cudaHostGetDevicePointer(reinterpret_cast<void**>(&status_dev), status, 0), "cudaHostGetDevicePointer");
    peers_.status = status_dev;
    peers_.timeout_ns = static_cast<uint64_t>(timeout_s * 1e9);
  }
  ~IpcAllReduce() {
    for (int r = 0; r < peers_.size; ++r)
      if (r != peers_.rank) {
        if (peers_.buffers[r]) cudaIpcCloseMemHandle(peers_.buffers[r]);
        if (peers_.flags[r]) cudaIpcCloseMemHandle(peers_.flags[r]);
      }
    cudaStreamDestroy(stream_);
    if (counter_) cudaFree(counter_);
    cudaFreeHost(status_);
    cudaFree(buffer_);
    cudaFree(flags_);
  }

  // This rank's buffer and flags handles, 2 x sizeof(cudaIpcMemHandle_t) bytes.
  nb::bytes handles() const {
    cudaIpcMemHandle_t h[2];
    cb::ok(cudaIpcGetMemHandle(&h[0], buffer_), "cudaIpcGetMemHandle buffer");
    cb::ok(cudaIpcGetMemHandle(&h[1], flags_), "cudaIpcGetMemHandle flags");
    return nb::bytes(reinterpret_cast<const char*>(h), sizeof h);
  }

  // Every rank's handles, in rank order (this rank's included, ignored).
  void open(const std::vector<nb::bytes>& all) {
    if (static_cast<int>(all.size()) != peers_.size) throw std::invalid_argument("IpcAllReduce.open: one per rank");
    for (int r = 0; r < peers_.size; ++r) {
      if (r == peers_.rank) continue;
      if (all[r].size() != 2 * sizeof(cudaIpcMemHandle_t)) throw std::invalid_argument("IpcAllReduce.open: bad handle");
      cudaIpcMemHandle_t h[2];
      std::memcpy(h, all[r].c_str(), sizeof h);
      cb::ok(cudaIpcOpenMemHandle(&peers_.buffers[r], h[0], cudaIpcMemLazyEnablePeerAccess), "cudaIpcOpenMemHandle");
      void* f = nullptr;
      cb::ok(cudaIpcOpenMemHandle(&f, h[1], cudaIpcMemLazyEnablePeerAccess), "cudaIpcOpenMemHandle");
      peers_.flags[r] = static_cast<uint32_t*>(f);
    }
  }

  cb::Array all_reduce(cb::ArrayIn x, const std::string& dtype, bool two_shot) {
    const cserve::DType dt = cserve::parse_dtype(dtype);
    const size_t n = x.size(), bytes = n * cserve::dtype_size(dt);
    std::vector<char> staged(bytes);
    cserve::convert_from_f32(x.data(), staged.data(), dt, n);
    void* data = nullptr;
    cb::ok(cudaMalloc(&data, std::max<size_t>(bytes, 1)), "cudaMalloc data");
    cb::ok(cudaMemcpy(data, staged.data(), bytes, cudaMemcpyHostToDevice), "upload");
    {
      nb::gil_scoped_release unlocked;
      cc::invokeCustomAllReduce(peers_, data, static_cast<int64_t>(n), static_cast<int>(dt), epoch_, two_shot,
                                stream_);
      epoch_ += cc::custom_all_reduce_epochs(peers_, static_cast<int64_t>(n), static_cast<int>(dt), two_shot);
      cb::ok(cudaStreamSynchronize(stream_), "custom all-reduce");
    }
    cb::ok(cudaMemcpy(staged.data(), data, bytes, cudaMemcpyDeviceToHost), "download");
    cudaFree(data);
    float* out = new float[std::max<size_t>(n, 1)];
    cserve::convert_to_f32(staged.data(), dt, out, n);
    nb::capsule owner(out, [](void* p) noexcept { delete[] static_cast<float*>(p); });
    size_t shape[1] = {n};
    return cb::Array(out, 1, shape, owner);
  }

  // One all-reduce of len(inputs[0]) values captured in a graph with the device epoch counter,
  // replayed once per input (uploaded into the captured buffer first); between replays, when
  // `eager_between`, one eager all-reduce of the same input with the counter too (so graph and
  // eager calls interleave). Every result, in order (each replay's, then its eager call's).
  std::vector<cb::Array> graph_all_reduce(const std::vector<cb::ArrayIn>& inputs, bool two_shot, bool eager_between) {
    std::vector<cb::Array> out;
    if (inputs.empty()) return out;
    const size_t n = inputs[0].size(), bytes = n * sizeof(float);
    if (!counter_) {
      cb::ok(cudaMalloc(&counter_, sizeof(uint32_t)), "cudaMalloc counter");
      cb::ok(cudaMemset(counter_, 0, sizeof(uint32_t)), "cudaMemset counter");
      cb::ok(cudaDeviceSynchronize(), "counter");
    }
    cc::AllReducePeers p = peers_;
    p.counter = static_cast<uint32_t*>(counter_);
    void* data = nullptr;
    cb::ok(cudaMalloc(&data, std::max<size_t>(bytes, 4)), "cudaMalloc data");
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    cb::ok(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
    cc::invokeCustomAllReduce(p, data, static_cast<int64_t>(n), 0, 0, two_shot, stream_);
    cb::ok(cudaStreamEndCapture(stream_, &graph), "cudaStreamEndCapture");
    cb::ok(cudaGraphInstantiate(&exec, graph, 0), "cudaGraphInstantiate");
    cudaGraphDestroy(graph);
    auto result = [&] {
      float* host = new float[std::max<size_t>(n, 1)];
      cb::ok(cudaMemcpy(host, data, bytes, cudaMemcpyDeviceToHost), "download");
      nb::capsule owner(host, [](void* q) noexcept { delete[] static_cast<float*>(q); });
      size_t shape[1] = {n};
      out.push_back(cb::Array(host, 1, shape, owner));
    };
    for (const cb::ArrayIn& x : inputs) {
      if (x.size() != n) throw std::invalid_argument("graph_all_reduce: inputs of one size");
      cb::ok(cudaMemcpy(data, x.data(), bytes, cudaMemcpyHostToDevice), "upload");
      {
        nb::gil_scoped_release unlocked;
        cb::ok(cudaGraphLaunch(exec, stream_), "cudaGraphLaunch");
        cb::ok(cudaStreamSynchronize(stream_), "graph");
      }
      result();
      if (!eager_between) continue;
      cb::ok(cudaMemcpy(data, x.data(), bytes, cudaMemcpyHostToDevice), "upload");
      {
        nb::gil_scoped_release unlocked;
        cc::invokeCustomAllReduce(p, data, static_cast<int64_t>(n), 0, 0, two_shot, stream_);
        cb::ok(cudaStreamSynchronize(stream_), "eager");
      }
      result();
    }
    cudaGraphExecDestroy(exec);
    cudaFree(data);
    return out;
  }

  // Whether a barrier gave up waiting for a peer (timeout_s passed).
  bool timed_out() const { return *status_ == cc::kAllReduceTimedOut; }

 private:
  cc::AllReducePeers peers_;
  void* buffer_ = nullptr;
  void* flags_ = nullptr;
  cudaStream_t stream_ = nullptr;
  uint32_t epoch_ = 1;
  uint32_t* status_ = nullptr;  // host-mapped
  void* counter_ = nullptr;
};

}  // namespace

void bind_custom_all_reduce(nb::module_& m) {
  nb::class_<IpcAllReduce>(m, "IpcAllReduce")
      .def(nb::init<int, int, int64_t, double>(), "rank"_a, "size"_a, "buffer_bytes"_a = int64_t{8} << 20,
           "timeout_s"_a = 0.0)
      .def("handles", &IpcAllReduce::handles)
      .def("open", &IpcAllReduce::open, "handles"_a)
      .def("all_reduce", &IpcAllReduce::all_reduce, "x"_a, "dtype"_a = "float32", "two_shot"_a = false)
      .def("graph_all_reduce", &IpcAllReduce::graph_all_reduce, "inputs"_a, "two_shot"_a = false,
           "eager_between"_a = false)
      .def("timed_out", &IpcAllReduce::timed_out);
}
