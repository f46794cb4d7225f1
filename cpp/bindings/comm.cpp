// cserve._core.comm: the shared-memory and gloo communicators over NumPy arrays, for tests and
// benchmarks.
// Every call releases the GIL, so ranks may be threads of one interpreter.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>

#include <memory>

#include "comm/communicator.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

using Array = nb::ndarray<nb::c_contig, nb::device::cpu>;
using ArrayIn = nb::ndarray<nb::ro, nb::c_contig, nb::device::cpu>;

// float32 and float16 arrays carry their type; bfloat16 travels as uint16 with dtype="bfloat16".
template <class A>
cserve::DType element_type(const A& a, const std::string& name) {
  const nb::dlpack::dtype t = a.dtype();
  if (!name.empty()) {
    const cserve::DType d = cserve::parse_dtype(name);
    if (t.bits != 8 * cserve::dtype_size(d) || t.lanes != 1)
      throw cserve::InvalidArgument("dtype '" + name + "' does not match the array's " + std::to_string(t.bits) +
                                    "-bit elements");
    return d;
  }
  if (t == nb::dtype<float>()) return cserve::DType::F32;
  if (t.code == static_cast<uint8_t>(nb::dlpack::dtype_code::Float) && t.bits == 16 && t.lanes == 1)
    return cserve::DType::F16;
  if (t.code == static_cast<uint8_t>(nb::dlpack::dtype_code::Bfloat) && t.bits == 16 && t.lanes == 1)
    return cserve::DType::BF16;
  throw cserve::InvalidArgument("expected a float32 or float16 array, or dtype='bfloat16' with a uint16 array");
}

// One rank of a group, whichever kind: the Python classes below differ only in how they join.
class PyCommunicator {
 public:
  explicit PyCommunicator(std::unique_ptr<cserve::Communicator> comm) : comm_(std::move(comm)) {}

  int rank() const { return comm_->rank(); }
  int size() const { return comm_->size(); }

  void all_reduce(Array a, const std::string& dtype) {
    const cserve::DType d = element_type(a, dtype);
    const int64_t count = static_cast<int64_t>(a.size());
    nb::gil_scoped_release release;
    comm_->all_reduce(a.data(), count, d);
  }

  void all_gather(ArrayIn in, Array out, const std::string& dtype) {
    const cserve::DType d = element_type(in, dtype);
    if (out.dtype() != in.dtype() || out.size() != in.size() * static_cast<size_t>(comm_->size()))
      throw cserve::InvalidArgument(
          "all_gather: the output must hold size() * input.size elements of the input's dtype");
    const int64_t count = static_cast<int64_t>(in.size());
    nb::gil_scoped_release release;
    comm_->all_gather(in.data(), out.data(), count, d);
  }

  void broadcast(Array a, int root, bool untimed) {
    const size_t bytes = a.nbytes();
    nb::gil_scoped_release release;
    comm_->broadcast(a.data(), bytes, root, untimed);
  }

  void barrier() {
    nb::gil_scoped_release release;
    comm_->barrier();
  }

  void abort(const std::string& reason) { comm_->abort(reason); }

 private:
  std::unique_ptr<cserve::Communicator> comm_;
};

struct PyShmCommunicator : PyCommunicator {
  PyShmCommunicator(const std::string& name, int rank, int size, double timeout_s, size_t buffer_bytes)
      : PyCommunicator(cserve::make_shm_communicator(name, rank, size, timeout_s, buffer_bytes)) {}
};

struct PyGlooCommunicator : PyCommunicator {
  PyGlooCommunicator(const std::string& store_address, const std::string& prefix, int rank, int size,
                     double timeout_s, bool host_store)
      : PyCommunicator(cserve::make_gloo_communicator(store_address, prefix, rank, size, timeout_s, host_store)) {}
};

}  // namespace

void bind_comm(nb::module_& m) {
  nb::module_ comm = m.def_submodule("comm", "Collectives among the ranks of a tensor-parallel group");
  nb::class_<PyCommunicator>(comm, "Communicator",
                             "One rank of a group. Every rank calls the same operations in the same order with "
                             "the same sizes; a peer that does not arrive within timeout_s raises TimeoutError.")
      .def_prop_ro("rank", &PyCommunicator::rank)
      .def_prop_ro("size", &PyCommunicator::size)
      .def("all_reduce", &PyCommunicator::all_reduce, "array"_a, "dtype"_a = "",
           "In place: the elementwise sum over ranks (float32, float16, or uint16 with dtype='bfloat16').")
      .def("all_gather", &PyCommunicator::all_gather, "input"_a, "output"_a, "dtype"_a = "",
           "output (size * input.size elements) = every rank's input, in rank order.")
      .def("broadcast", &PyCommunicator::broadcast, "array"_a, "root"_a, "untimed"_a = false,
           "The root's array bytes into every rank's array (untimed: no deadline; a peer's exit or an "
           "abort still ends it).")
      .def("barrier", &PyCommunicator::barrier)
      .def("abort", &PyCommunicator::abort, "reason"_a,
           "Gives up on the group (from any thread): every rank's collectives raise TimeoutError.");
  nb::class_<PyShmCommunicator, PyCommunicator>(comm, "ShmCommunicator",
                                                "One rank of a group meeting in POSIX shared memory named `name`.")
      .def(nb::init<const std::string&, int, int, double, size_t>(), "name"_a, "rank"_a, "size"_a,
           "timeout_s"_a = 60.0, "buffer_bytes"_a = 0, nb::call_guard<nb::gil_scoped_release>());
  nb::class_<PyGlooCommunicator, PyCommunicator>(
      comm, "GlooCommunicator",
      "One rank of a group over gloo's TCP transport, meeting through the store at store_address "
      "('host:port'), which rank 0 serves (host_store) under `prefix` (unique per group).")
      .def(nb::init<const std::string&, const std::string&, int, int, double, bool>(), "store_address"_a, "prefix"_a,
           "rank"_a, "size"_a, "timeout_s"_a = 60.0, "host_store"_a = true, nb::call_guard<nb::gil_scoped_release>());
}
