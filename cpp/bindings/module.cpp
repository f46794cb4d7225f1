// nanobind module cserve._core: binding code only.
#include <nanobind/nanobind.h>

#include <cstring>
#include <nanobind/stl/function.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "backend/backend.h"
#include "comm/communicator.h"
#include "cserve/engine.h"
#include "grammar/compiled_grammar.h"

namespace nb = nanobind;
using namespace nb::literals;

void bind_testing(nb::module_& m);
void bind_gguf(nb::module_& m);
void bind_grammar(nb::module_& m);
void bind_comm(nb::module_& m);

namespace {

// Messages quote file contents, which need not be valid UTF-8: replace bad bytes
// rather than lose the message (it names the file and the tensor).
void set_error(PyObject* type, const char* what) {
  PyObject* msg = PyUnicode_DecodeUTF8(what, static_cast<Py_ssize_t>(std::strlen(what)), "replace");
  PyErr_SetObject(type, msg);
  Py_XDECREF(msg);
}

void register_errors(nb::module_& m) {
  // Lives as long as the module (never freed: the translator may run until interpreter exit).
  static PyObject* engine_dead = PyErr_NewException("cserve._core.EngineDeadError", PyExc_RuntimeError, nullptr);
  m.attr("EngineDeadError") = nb::borrow(engine_dead);
  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const cserve::EngineDead& e) {
      set_error(engine_dead, e.what());
    } catch (const cserve::CommTimeout& e) {
      set_error(PyExc_TimeoutError, e.what());
    } catch (const cserve::InvalidArgument& e) {
      set_error(PyExc_ValueError, e.what());
    } catch (const cserve::NotFound& e) {
      set_error(PyExc_FileNotFoundError, e.what());
    } catch (const cserve::NotSupported& e) {
      set_error(PyExc_NotImplementedError, e.what());
    } catch (const cserve::OutOfMemory& e) {
      set_error(PyExc_MemoryError, e.what());
    } catch (const cserve::Error& e) {
      set_error(PyExc_RuntimeError, e.what());
    }
  });
}

void bind_config(nb::module_& m) {
  nb::class_<cserve::EngineConfig>(m, "EngineConfig")
      .def(nb::init<>())
      .def_rw("model", &cserve::EngineConfig::model)
      .def_rw("dtype", &cserve::EngineConfig::dtype)
      .def_rw("load_format", &cserve::EngineConfig::load_format)
      .def_rw("quantization", &cserve::EngineConfig::quantization)
      .def_rw("max_model_len", &cserve::EngineConfig::max_model_len)
      .def_rw("seed", &cserve::EngineConfig::seed)
      .def_rw("block_size", &cserve::EngineConfig::block_size)
      .def_rw("enable_prefix_caching", &cserve::EngineConfig::enable_prefix_caching)
      .def_rw("prefix_caching_hash_algo", &cserve::EngineConfig::prefix_caching_hash_algo)
      .def_rw("gpu_memory_utilization", &cserve::EngineConfig::gpu_memory_utilization)
      .def_rw("kv_cache_memory_bytes", &cserve::EngineConfig::kv_cache_memory_bytes)
      .def_rw("num_gpu_blocks_override", &cserve::EngineConfig::num_gpu_blocks_override)
      .def_rw("kv_cache_dtype", &cserve::EngineConfig::kv_cache_dtype)
      .def_rw("max_num_seqs", &cserve::EngineConfig::max_num_seqs)
      .def_rw("max_num_batched_tokens", &cserve::EngineConfig::max_num_batched_tokens)
      .def_rw("enable_chunked_prefill", &cserve::EngineConfig::enable_chunked_prefill)
      .def_rw("long_prefill_token_threshold", &cserve::EngineConfig::long_prefill_token_threshold)
      .def_rw("max_num_partial_prefills", &cserve::EngineConfig::max_num_partial_prefills)
      .def_rw("max_long_partial_prefills", &cserve::EngineConfig::max_long_partial_prefills)
      .def_rw("scheduling_policy", &cserve::EngineConfig::scheduling_policy)
      .def_rw("max_logprobs", &cserve::EngineConfig::max_logprobs)
      .def_rw("disable_sliding_window", &cserve::EngineConfig::disable_sliding_window)
      .def_rw("hf_overrides", &cserve::EngineConfig::hf_overrides)
      .def_rw("hf_config_path", &cserve::EngineConfig::hf_config_path)
      .def_rw("num_threads", &cserve::EngineConfig::num_threads)
      .def_rw("tensor_parallel_size", &cserve::EngineConfig::tensor_parallel_size)
      .def_rw("pipeline_parallel_size", &cserve::EngineConfig::pipeline_parallel_size)
      .def_rw("tensor_parallel_group", &cserve::EngineConfig::tensor_parallel_group)
      .def_rw("pipeline_micro_batches", &cserve::EngineConfig::pipeline_micro_batches)
      .def_rw("tensor_parallel_store", &cserve::EngineConfig::tensor_parallel_store)
      .def_rw("tensor_parallel_timeout", &cserve::EngineConfig::tensor_parallel_timeout)
      .def_rw("disable_custom_all_reduce", &cserve::EngineConfig::disable_custom_all_reduce)
      .def_rw("device", &cserve::EngineConfig::device)
      .def_rw("enforce_eager", &cserve::EngineConfig::enforce_eager)
      .def_rw("cudagraph_capture_sizes", &cserve::EngineConfig::cudagraph_capture_sizes)
      .def_rw("max_cudagraph_capture_size", &cserve::EngineConfig::max_cudagraph_capture_size)
      .def_rw("speculative_method", &cserve::EngineConfig::speculative_method)
      .def_rw("speculative_model", &cserve::EngineConfig::speculative_model)
      .def_rw("speculative_quantization", &cserve::EngineConfig::speculative_quantization)
      .def_rw("num_speculative_tokens", &cserve::EngineConfig::num_speculative_tokens)
      .def_rw("prompt_lookup_min", &cserve::EngineConfig::prompt_lookup_min)
      .def_rw("prompt_lookup_max", &cserve::EngineConfig::prompt_lookup_max)
      .def_rw("speculative_disable_by_batch_size", &cserve::EngineConfig::speculative_disable_by_batch_size)
      .def_rw("speculative_auto_disable", &cserve::EngineConfig::speculative_auto_disable)
      .def_rw("load_progress", &cserve::EngineConfig::load_progress, nb::arg("load_progress").none());

  nb::class_<cserve::ModelInfo>(m, "ModelInfo")
      .def_ro("architecture", &cserve::ModelInfo::architecture)
      .def_ro("vocab_size", &cserve::ModelInfo::vocab_size)
      .def_ro("max_model_len", &cserve::ModelInfo::max_model_len)
      .def_ro("eos_token_ids", &cserve::ModelInfo::eos_token_ids)
      .def_ro("bos_token_id", &cserve::ModelInfo::bos_token_id)
      .def_ro("dtype", &cserve::ModelInfo::dtype)
      .def_ro("backend", &cserve::ModelInfo::backend)
      .def_ro("num_cuda_graphs", &cserve::ModelInfo::num_cuda_graphs)
      .def_ro("num_kv_blocks", &cserve::ModelInfo::num_kv_blocks)
      .def_ro("block_size", &cserve::ModelInfo::block_size)
      .def_ro("kv_cache_tokens", &cserve::ModelInfo::kv_cache_tokens)
      .def_ro("max_concurrency", &cserve::ModelInfo::max_concurrency)
      .def_ro("max_num_seqs", &cserve::ModelInfo::max_num_seqs)
      .def_ro("speculative_method", &cserve::ModelInfo::speculative_method)
      .def_ro("num_speculative_tokens", &cserve::ModelInfo::num_speculative_tokens)
      .def_ro("load_seconds", &cserve::ModelInfo::load_seconds)
      .def_ro("kv_alloc_seconds", &cserve::ModelInfo::kv_alloc_seconds)
      .def_ro("warmup_seconds", &cserve::ModelInfo::warmup_seconds)
      .def_ro("weight_bytes", &cserve::ModelInfo::weight_bytes)
      .def_ro("kv_cache_bytes", &cserve::ModelInfo::kv_cache_bytes);

  nb::class_<cserve::SamplingParams>(m, "SamplingParams")
      .def(nb::init<>())
      .def_rw("n", &cserve::SamplingParams::n)
      .def_rw("temperature", &cserve::SamplingParams::temperature)
      .def_rw("top_p", &cserve::SamplingParams::top_p)
      .def_rw("top_k", &cserve::SamplingParams::top_k)
      .def_rw("min_p", &cserve::SamplingParams::min_p)
      .def_rw("presence_penalty", &cserve::SamplingParams::presence_penalty)
      .def_rw("frequency_penalty", &cserve::SamplingParams::frequency_penalty)
      .def_rw("repetition_penalty", &cserve::SamplingParams::repetition_penalty)
      .def_rw("seed", &cserve::SamplingParams::seed, nb::arg("seed").none())
      .def_rw("max_tokens", &cserve::SamplingParams::max_tokens)
      .def_rw("min_tokens", &cserve::SamplingParams::min_tokens)
      .def_rw("stop_token_ids", &cserve::SamplingParams::stop_token_ids)
      .def_rw("ignore_eos", &cserve::SamplingParams::ignore_eos)
      .def_rw("logprobs", &cserve::SamplingParams::logprobs, nb::arg("logprobs").none())
      .def_rw("prompt_logprobs", &cserve::SamplingParams::prompt_logprobs, nb::arg("prompt_logprobs").none())
      .def_rw("logit_bias", &cserve::SamplingParams::logit_bias)
      .def_rw("allowed_token_ids", &cserve::SamplingParams::allowed_token_ids)
      .def_rw("grammar", &cserve::SamplingParams::grammar, nb::arg("grammar").none())
      .def_rw("grammar_start_after", &cserve::SamplingParams::grammar_start_after);
}

void bind_engine(nb::module_& m) {
  nb::class_<cserve::PositionLogprobs>(m, "PositionLogprobs")
      .def_ro("token_ids", &cserve::PositionLogprobs::token_ids)
      .def_ro("logprobs", &cserve::PositionLogprobs::logprobs)
      .def_ro("ranks", &cserve::PositionLogprobs::ranks);

  nb::class_<cserve::RequestOutput>(m, "RequestOutput")
      .def_ro("request_id", &cserve::RequestOutput::request_id)
      .def_ro("index", &cserve::RequestOutput::index)
      .def_ro("new_token_ids", &cserve::RequestOutput::new_token_ids)
      .def_ro("new_logprobs", &cserve::RequestOutput::new_logprobs)
      .def_ro("prompt_logprobs", &cserve::RequestOutput::prompt_logprobs)
      .def_ro("has_prompt_logprobs", &cserve::RequestOutput::has_prompt_logprobs)
      .def_prop_ro("finish_reason", [](const cserve::RequestOutput& o) -> std::optional<std::string> {
        if (!o.finished()) return std::nullopt;
        return std::string(cserve::finish_reason_name(o.finish_reason));
      })
      .def_prop_ro("finished", &cserve::RequestOutput::finished)
      .def_ro("stop_token_id", &cserve::RequestOutput::stop_token_id)
      .def_ro("num_prompt_tokens", &cserve::RequestOutput::num_prompt_tokens)
      .def_ro("num_cached_tokens", &cserve::RequestOutput::num_cached_tokens)
      .def_ro("scheduled_time", &cserve::RequestOutput::scheduled_time)
      .def_ro("time", &cserve::RequestOutput::time)
      .def_ro("error", &cserve::RequestOutput::error);

  nb::class_<cserve::EngineStats>(m, "EngineStats")
      .def_ro("num_running", &cserve::EngineStats::num_running)
      .def_ro("num_waiting", &cserve::EngineStats::num_waiting)
      .def_ro("kv_cache_usage", &cserve::EngineStats::kv_cache_usage)
      .def_ro("prefix_cache_queries", &cserve::EngineStats::prefix_cache_queries)
      .def_ro("prefix_cache_hits", &cserve::EngineStats::prefix_cache_hits)
      .def_ro("prompt_tokens", &cserve::EngineStats::prompt_tokens)
      .def_ro("generation_tokens", &cserve::EngineStats::generation_tokens)
      .def_ro("num_preemptions", &cserve::EngineStats::num_preemptions)
      .def_ro("num_steps", &cserve::EngineStats::num_steps)
      .def_ro("num_free_blocks", &cserve::EngineStats::num_free_blocks)
      .def_ro("steps_by_tokens_log2", &cserve::EngineStats::steps_by_tokens_log2)
      .def_ro("scheduled_tokens", &cserve::EngineStats::scheduled_tokens)
      .def_ro("spec_decode_num_drafts", &cserve::EngineStats::spec_decode_num_drafts)
      .def_ro("spec_decode_num_draft_tokens", &cserve::EngineStats::spec_decode_num_draft_tokens)
      .def_ro("spec_decode_num_accepted_tokens", &cserve::EngineStats::spec_decode_num_accepted_tokens)
      .def_ro("spec_decode_num_accepted_tokens_per_pos", &cserve::EngineStats::spec_decode_num_accepted_tokens_per_pos);

  nb::class_<cserve::Engine>(m, "Engine")
      .def(nb::init<const cserve::EngineConfig&>(), "config"_a, nb::call_guard<nb::gil_scoped_release>())
      .def("add_request", &cserve::Engine::add_request, "request_id"_a, "prompt_token_ids"_a, "params"_a,
           "priority"_a = 0, "cache_salt"_a = "")
      .def("abort", &cserve::Engine::abort, "request_id"_a)
      .def("step", &cserve::Engine::step, nb::call_guard<nb::gil_scoped_release>())
      .def("has_unfinished_requests", &cserve::Engine::has_unfinished_requests)
      .def("start_loop", &cserve::Engine::start_loop)
      .def("stop_loop", &cserve::Engine::stop_loop, nb::call_guard<nb::gil_scoped_release>())
      .def("output_fd", &cserve::Engine::output_fd)
      .def("drain_outputs", &cserve::Engine::drain_outputs)
      .def("stats", &cserve::Engine::stats)
      .def("is_dead", &cserve::Engine::is_dead)
      .def("dead_reason", &cserve::Engine::dead_reason)
      .def("kill", &cserve::Engine::kill, "reason"_a, nb::call_guard<nb::gil_scoped_release>())
      .def("shutdown", &cserve::Engine::shutdown, nb::call_guard<nb::gil_scoped_release>())
      .def("model_info", &cserve::Engine::model_info, nb::rv_policy::reference_internal)
      .def("reset_prefix_cache", &cserve::Engine::reset_prefix_cache);
}

}  // namespace

NB_MODULE(_core, m) {
  m.doc() = "cserve's C++ runtime";
  register_errors(m);
  bind_grammar(m);  // before SamplingParams, whose grammar field holds a CompiledGrammar
  bind_config(m);
  bind_engine(m);
  bind_gguf(m);
  bind_comm(m);
  m.def(
      "resolve_device",
      [](const std::string& device) {
        std::string reason;
        std::string resolved = cserve::resolve_device(device, &reason);
        return std::make_pair(resolved, reason);
      },
      "device"_a,
      "The device an engine asking for `device` gets (auto, cpu, cuda, cuda:N), and why auto fell back "
      "to the CPU; raises when a CUDA device was asked for and cannot be had.");
  m.def("run_tensor_parallel_rank", &cserve::run_tensor_parallel_rank, "config"_a, "rank"_a,
        nb::call_guard<nb::gil_scoped_release>(),
        "Runs rank `rank` (1..tensor_parallel_size-1) of the tensor-parallel engine started with `config` until "
        "that engine stops; raises when rank 0 goes silent.");
  nb::module_ testing = m.def_submodule("testing", "Internals exposed for tests");
  bind_testing(testing);
}
