// Tests of tensor parallelism's device pieces: the backend ops that make the model's vocabulary
// shards device-neutral (on any backend, the CPU's included), and DeviceGroup, one rank of a
// device communicator on a backend of its own (rank processes meet in a shared-memory host
// group first), its collectives on host arrays (uploaded, run on the device, downloaded), also
// captured in a graph and replayed.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <unistd.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend/device_communicator.h"
#include "comm/communicator.h"
#include "core/dtype.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

using Array = nb::ndarray<float, nb::numpy, nb::c_contig, nb::device::cpu>;
using ArrayIn = nb::ndarray<const float, nb::c_contig, nb::device::cpu>;

Array new_array(size_t rows, size_t cols, const float* src) {
  float* data = new float[rows * cols + 1]();
  std::copy_n(src, rows * cols, data);
  nb::capsule owner(data, [](void* p) noexcept { delete[] static_cast<float*>(p); });
  size_t shape[2] = {rows, cols};
  return Array(data, 2, shape, owner);
}

// A [rows][cols] f32 host array in backend memory and back.
struct OnBackend {
  cserve::Backend& b;
  cserve::Buffer buf;
  OnBackend(cserve::Backend& backend, const float* host, size_t n) : b(backend), buf(backend.allocate(n * 4 + 4)) {
    if (n) b.upload(buf.data(), host, n * 4);
  }
  cserve::Tensor tensor(int64_t rows, int64_t cols) { return {buf.data(), cserve::DType::F32, {rows, cols}}; }
  std::vector<float> host(size_t n) {
    std::vector<float> out(n);
    if (n) b.download(out.data(), buf.data(), n * 4);
    return out;
  }
};

void check_2d(const ArrayIn& a, const char* what) {
  if (a.ndim() != 2) throw cserve::InvalidArgument(std::string(what) + " must be 2-D");
}

class DeviceGroup {
 public:
  DeviceGroup(const std::string& device, const std::string& name, int rank, int size, bool custom_all_reduce,
              double timeout_s)
      : host_(cserve::make_shm_communicator(name, rank, size, timeout_s)), backend_(cserve::make_backend(device, 1)) {
    cserve::DeviceCommunicatorOptions options;
    options.custom_all_reduce = custom_all_reduce;
    options.timeout_s = timeout_s;
    comm_ = cserve::make_device_communicator(*backend_, *host_, options);
  }

  // x summed over ranks, in `dtype` on the device (bfloat16 and float16 round the input first).
  std::vector<float> all_reduce(const std::vector<float>& x, const std::string& dtype) {
    const cserve::DType t = cserve::parse_dtype(dtype);
    std::vector<char> stored(x.size() * cserve::dtype_size(t) + 4);
    cserve::convert_from_f32(x.data(), stored.data(), t, x.size());
    cserve::Buffer buf = backend_->allocate(stored.size());
    backend_->upload(buf.data(), stored.data(), stored.size());
    {
      nb::gil_scoped_release unlocked;
      comm_->all_reduce(buf.data(), static_cast<int64_t>(x.size()), t);
      backend_->download(stored.data(), buf.data(), stored.size());
    }
    std::vector<float> out(x.size());
    cserve::convert_to_f32(stored.data(), t, out.data(), x.size());
    return out;
  }

  std::vector<float> all_gather(const std::vector<float>& x) {
    OnBackend in(*backend_, x.data(), x.size());
    std::vector<float> zeros(x.size() * static_cast<size_t>(comm_->size()));
    OnBackend out(*backend_, zeros.data(), zeros.size());
    nb::gil_scoped_release unlocked;
    comm_->all_gather(in.buf.data(), out.buf.data(), static_cast<int64_t>(x.size()), cserve::DType::F32);
    return out.host(zeros.size());
  }

  std::vector<float> broadcast(const std::vector<float>& x, int root) {
    OnBackend data(*backend_, x.data(), x.size());
    nb::gil_scoped_release unlocked;
    comm_->broadcast(data.buf.data(), x.size() * 4, root);
    return data.host(x.size());
  }

  void barrier() {
    nb::gil_scoped_release unlocked;
    comm_->barrier();
  }

  // One all-reduce of len(inputs[0]) f32 values captured as a graph, then replayed once per input
  // (each uploaded into the captured buffer first): the sums, in order.
  std::vector<std::vector<float>> graph_all_reduce(const std::vector<std::vector<float>>& inputs) {
    if (inputs.empty()) return {};
    const size_t n = inputs[0].size();
    OnBackend data(*backend_, inputs[0].data(), n);
    auto forward = [&] { comm_->all_reduce(data.buf.data(), static_cast<int64_t>(n), cserve::DType::F32); };
    std::string why;
    std::vector<std::vector<float>> out;
    nb::gil_scoped_release unlocked;
    if (!backend_->capture_graph(1, forward, why)) throw cserve::Error("graph capture failed: " + why);
    for (const auto& x : inputs) {
      if (x.size() != n) throw cserve::InvalidArgument("graph_all_reduce: inputs of one size");
      backend_->upload(data.buf.data(), x.data(), n * 4);
      backend_->replay_graph(1, forward);
      out.push_back(data.host(n));
    }
    return out;
  }

  void abort(const std::string& reason) { comm_->abort(reason); }

 private:
  std::unique_ptr<cserve::Communicator> host_;
  std::unique_ptr<cserve::Backend> backend_;
  std::unique_ptr<cserve::Communicator> comm_;
};

}  // namespace

void bind_testing_device_comm(nb::module_& m) {
  m.def(
      "zero_rows_outside",
      [](const std::string& device, ArrayIn x, const std::vector<int32_t>& ids, int64_t begin, int64_t end) {
        check_2d(x, "x");
        const int64_t rows = static_cast<int64_t>(x.shape(0)), cols = static_cast<int64_t>(x.shape(1));
        if (static_cast<int64_t>(ids.size()) != rows) throw cserve::InvalidArgument("one id per row");
        auto backend = cserve::make_backend(device, 1);
        OnBackend data(*backend, x.data(), x.size());
        cserve::Tensor t = data.tensor(rows, cols);
        backend->zero_rows_outside(t, rows, cols, ids.data(), begin, end);
        return new_array(x.shape(0), x.shape(1), data.host(x.size()).data());
      },
      "device"_a, "x"_a, "ids"_a, "begin"_a, "end"_a,
      "Backend::zero_rows_outside on `device`: x with the rows whose id is outside [begin, end) zeroed.");
  m.def(
      "copy_rows_strided",
      [](const std::string& device, ArrayIn src, ArrayIn dst, int64_t rows, int64_t cols, int64_t dst_offset) {
        check_2d(src, "src");
        check_2d(dst, "dst");
        const int64_t ld_src = static_cast<int64_t>(src.shape(1)), ld_dst = static_cast<int64_t>(dst.shape(1));
        if (rows > static_cast<int64_t>(src.shape(0)) || rows > static_cast<int64_t>(dst.shape(0)) || cols > ld_src ||
            dst_offset < 0 || dst_offset + cols > ld_dst)
          throw cserve::InvalidArgument("copy_rows_strided: the block does not fit");
        auto backend = cserve::make_backend(device, 1);
        OnBackend s(*backend, src.data(), src.size()), d(*backend, dst.data(), dst.size());
        const cserve::Tensor st = s.tensor(rows, ld_src);
        cserve::Tensor dt{d.buf.as<float>() + dst_offset, cserve::DType::F32, {rows, ld_dst}};
        backend->copy_rows_strided(st, ld_src, dt, ld_dst, rows, cols);
        return new_array(dst.shape(0), dst.shape(1), d.host(dst.size()).data());
      },
      "device"_a, "src"_a, "dst"_a, "rows"_a, "cols"_a, "dst_offset"_a,
      "Backend::copy_rows_strided on `device`: dst with dst[r][dst_offset + c] = src[r][c] for r < rows, c < cols.");
  m.def(
      "make_device_communicator",
      [](const std::string& device) {
        auto backend = cserve::make_backend(device, 1);
        auto host = cserve::make_shm_communicator("cserve-devcomm-probe-" + std::to_string(getpid()), 0, 1, 5.0);
        cserve::make_device_communicator(*backend, *host);
      },
      "device"_a, "Makes a one-rank device communicator on `device` (raises what make_device_communicator says).");
  nb::class_<DeviceGroup>(m, "DeviceGroup")
      .def(nb::init<const std::string&, const std::string&, int, int, bool, double>(), "device"_a, "name"_a, "rank"_a,
           "size"_a, "custom_all_reduce"_a = true, "timeout_s"_a = 60.0, nb::call_guard<nb::gil_scoped_release>())
      .def("all_reduce", &DeviceGroup::all_reduce, "x"_a, "dtype"_a = "float32")
      .def("all_gather", &DeviceGroup::all_gather, "x"_a)
      .def("broadcast", &DeviceGroup::broadcast, "x"_a, "root"_a)
      .def("barrier", &DeviceGroup::barrier)
      .def("graph_all_reduce", &DeviceGroup::graph_all_reduce, "inputs"_a)
      .def("abort", &DeviceGroup::abort, "reason"_a);
}
