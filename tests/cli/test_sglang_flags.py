"""The SGLang dialect (`cserve serve --backend sglang`) and the worker flags: every SGLang flag of the
reference is known and parses with SGLang's names, aliases and defaults, lands on the vLLM dialect's
namespace, and cserve says what it does with it; backend_args redacts secrets."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cserve.cli.args import (
    ServeArgsError, UnsupportedFlagError, backend_args, dialect_of, engine_options, make_serve_parser,
    no_effect_notes, parse_serve_args,
)
from cserve.cli.flags import (
    BY_NAME, FLAG, FLOAT, INT, LIST, LIST_FLOAT, LIST_INT, NO_EFFECT, ONLY, SUPPORTED, UNSUPPORTED,
    WORKER_FLAGS,
)
from cserve.cli.sglang_args import make_sglang_parser, vllm_values
from cserve.cli.sglang_flags import SGLANG_BY_NAME, SGLANG_FLAGS, SGLANG_GROUPS, speculative_config_of

REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference"
MODEL = "some/model"


def sgl(*argv: str):
    return parse_serve_args(["--backend", "sglang", "--model-path", MODEL, *argv])


def refusal(*argv: str) -> str:
    with pytest.raises(UnsupportedFlagError) as info:
        sgl(*argv)
    return str(info.value)


# --- the reference (iChat's worker, appendix A) ------------------------------------------------------

def _reference_text() -> str:
    if not REFERENCE.is_dir():
        pytest.skip(f"{REFERENCE} is absent")
    return next(REFERENCE.glob("003_*.txt")).read_text(encoding="utf-8")


def _rows(section: str) -> list:
    """(name, alias or "", default text) of each table row of a section of the reference."""
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and re.fullmatch(r"--[a-z][a-z0-9-]*", cells[0].strip("`")):
            rows.append((cells[0].strip("`"), cells[1].strip("`"), cells[-1]))
    return rows


def _appendix_a() -> list:
    text = _reference_text()
    return _rows(text[text.index("附录A"):text.index("附录B")])


def test_every_appendix_a_flag_is_known():
    rows = _appendix_a()
    assert len(rows) == 168
    options = {opt for flag in SGLANG_FLAGS for opt in flag.option_strings}
    names = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9_-]*[a-z0-9]", "\n".join(f"{n} {a}" for n, a, _ in rows)))
    assert sorted(names - options) == []
    assert [(name, alias) for name, alias, _ in rows if alias and alias not in SGLANG_BY_NAME[name].aliases] == []
    # The table is the appendix, no more.
    assert sorted({f.name for f in SGLANG_FLAGS} - {name for name, _, _ in rows}) == []


# Where cserve's default differs from the appendix's text, and why.
_DEFAULT_EXCEPTIONS = {
    "--model-path": "required",
    "--device": "SGLang detects the device when unset (None); the appendix writes it auto",
    "--page-size": "SGLang picks the page size by attention backend when unset; cserve's block size then",
}


def _default_of(text: str):
    match = re.match(r"`([^`]*)`", text)
    if not match:
        return None  # "(必须)", "`None` (...)"
    raw = match.group(1)
    return {"None": None, "null": "null", "False": False, "True": True, '""': ""}.get(raw, raw)


@pytest.mark.parametrize("name", sorted(SGLANG_BY_NAME))
def test_defaults_are_sglangs(name):
    rows = {n: d for n, _, d in _appendix_a()}
    if name in _DEFAULT_EXCEPTIONS:
        return
    flag, expected = SGLANG_BY_NAME[name], _default_of(rows[name])
    if isinstance(expected, str) and flag.kind in (INT, FLOAT):
        expected = float(expected)
    assert flag.default == expected, (name, rows[name])


def test_worker_flags_are_the_references():
    text = _reference_text()
    rows = _rows(text[text.index("iChat 特定参数"):text.index("附录A")])
    assert [(name, alias) for name, alias, _ in rows] == [(f.name, f.aliases[0]) for f in WORKER_FLAGS[:4]]
    assert [f.default for f in WORKER_FLAGS[:4]] == ["vllm", None, 30.0, True]


# --- the table ------------------------------------------------------------------------------------------

def test_table_is_consistent():
    assert len(SGLANG_FLAGS) == 168
    options = [opt for flag in (*SGLANG_FLAGS, *WORKER_FLAGS) for opt in flag.option_strings]
    assert len(options) == len(set(options)), "an option string is declared twice"
    dests = [flag.dest for flag in (*SGLANG_FLAGS, *WORKER_FLAGS)]
    assert len(dests) == len(set(dests))
    for flag in SGLANG_FLAGS:
        assert flag.group in SGLANG_GROUPS, flag.name
        assert flag.help.endswith((".", ")")), flag.name
        assert (flag.support == NO_EFFECT) == bool(flag.reason), flag.name
        assert (flag.support == ONLY) == bool(flag.accepted), flag.name
        assert flag.kind != "bool", f"{flag.name}: SGLang's booleans are store_true flags"
        assert all(name in BY_NAME for name in flag.to), flag.name
        if flag.support == SUPPORTED:  # nothing is silently ignored: it lands on vLLM flags
            assert flag.to, flag.name
            # ... that cserve supports in the vLLM dialect too.
            assert all(BY_NAME[name].support != UNSUPPORTED for name in flag.to), flag.name
        if flag.support in (NO_EFFECT, UNSUPPORTED):
            assert not flag.to and flag.convert is None, flag.name


# --- every flag parses ---------------------------------------------------------------------------------------

def _sample(flag) -> tuple:
    """argv tokens giving the flag a non-default value, and the value the SGLang namespace should hold."""
    if flag.kind == FLAG:
        return [flag.name], True
    if flag.choices:
        value = next(c for c in flag.choices if c != flag.default)
    elif flag.kind == INT:
        value = (flag.default or 0) + 1
    elif flag.kind == FLOAT:
        value = flag.default / 2 if flag.default else 0.5
    else:
        value = {LIST: ["a", "b"], LIST_INT: ["1", "2"], LIST_FLOAT: ["0.5", "1"]}.get(flag.kind, "x")
    expected = {LIST_INT: [1, 2], LIST_FLOAT: [0.5, 1.0]}.get(flag.kind, value)
    tokens = value if isinstance(value, list) else [str(value)]
    return [flag.name, *tokens], expected


TABLE = [f for f in SGLANG_FLAGS
         if f.name not in ("--model-path", "--chat-template", "--reasoning-parser", "--tool-call-parser",
                           "--json-model-override-args")]


def test_json_model_override_args_is_hf_overrides():
    args = sgl("--json-model-override-args", '{"sliding_window": null, "text_config": {"head_dim": 8}}')
    assert args.hf_overrides == {"sliding_window": None, "text_config": {"head_dim": 8}}
    assert sgl().hf_overrides == {}
    assert refusal("--json-model-override-args", "[1]") == "--json-model-override-args must be a JSON object"


@pytest.mark.parametrize("flag", TABLE, ids=lambda f: f.name)
def test_every_flag_parses(flag):
    tokens, expected = _sample(flag)
    if flag.support == SUPPORTED:
        args = sgl(*tokens)
        assert getattr(args.sglang, flag.dest) == expected
        assert no_effect_notes(args) == []
        for dest, value in vllm_values(args.sglang).items():
            assert getattr(args, dest) == value
    elif flag.support == NO_EFFECT:
        args = sgl(*tokens)
        assert getattr(args.sglang, flag.dest) == expected
        assert no_effect_notes(args) == [f"{flag.name}: no effect ({flag.reason})"]
    elif flag.support == UNSUPPORTED:
        spelled = tokens[0] if flag.kind == FLAG else " ".join(tokens)
        assert refusal(*tokens) == f"{spelled} is not supported yet"
    else:
        for value in flag.accepted:
            if value is not None:
                assert getattr(sgl(flag.name, str(value)).sglang, flag.dest) == value
        refused = [c for c in flag.choices or () if c not in flag.accepted] or \
            [{INT: 2, FLOAT: 0.5}.get(flag.kind, "x")]
        assert refusal(flag.name, str(refused[0])) == f"{flag.name} {refused[0]} is not supported yet"


@pytest.mark.parametrize("flag", [f for f in SGLANG_FLAGS if f.aliases], ids=lambda f: f.name)
def test_aliases_mean_the_flag(flag):
    tokens, _ = _sample(flag) if flag.name != "--model-path" else ([flag.name, "m2"], "m2")
    for alias in flag.aliases:
        try:
            by_name = getattr(sgl(*tokens).sglang, flag.dest)
        except UnsupportedFlagError as e:
            assert refusal(alias, *tokens[1:]) == str(e)
        else:
            assert getattr(sgl(alias, *tokens[1:]).sglang, flag.dest) == by_name


# --- the namespace the server reads ------------------------------------------------------------------------------

def test_defaults_are_sglangs_on_the_vllm_namespace():
    args = sgl()
    assert args.backend == "sglang" and args.model == MODEL and args.model_tag is None and args.config is None
    assert (args.host, args.port) == ("127.0.0.1", 30000)
    assert args.enable_prefix_caching is True  # the radix cache is on by default in SGLang
    assert args.served_model_name is None and args.api_key is None and args.enable_log_requests is False
    assert args.uvicorn_log_level == "info" and args.log_level == "info"
    assert isinstance(args.seed, int) and args.seed == args.sglang.random_seed  # drawn, as SGLang does
    assert no_effect_notes(args) == []
    options = engine_options(args)
    assert options["model"] == MODEL and options["enable_prefix_caching"] is True and options["device"] == "auto"
    assert not {"max_model_len", "block_size", "max_num_seqs", "num_gpu_blocks_override",
                "gpu_memory_utilization", "max_num_batched_tokens"} & set(options)
    # Every attribute of the vLLM dialect's namespace is there.
    assert set(vars(parse_serve_args([MODEL]))) <= set(vars(args))


def test_a_broad_command_line():
    args = parse_serve_args([
        "--backend", "sglang", "--model", MODEL, "--tokenizer-path", "tok", "--host", "0.0.0.0", "--port", "30001",
        "--context-length", "4096", "--mem-fraction-static", "0.8", "--max-running-requests", "32",
        "--max-total-tokens", "100000", "--chunked-prefill-size", "2048", "--max-prefill-tokens", "8192",
        "--schedule-policy", "fcfs", "--page-size", "32", "--tp-size", "1", "--dp-size", "1", "--random-seed", "7",
        "--disable-radix-cache", "--enable-metrics", "--log-requests", "--log-requests-level", "2",
        "--api-key", "sk-1", "--served-model-name", "served", "--dtype", "bfloat16", "--kv-cache-dtype", "bf16",
        "--trust-remote-code", "--log-level", "warning", "--log-level-http", "info", "--revision", "main",
        "--download-dir", "/d", "--enable-cache-report", "--cuda-graph-max-bs", "64", "--cuda-graph-bs", "1", "2",
        "--disable-cuda-graph", "--skip-tokenizer-init", "--load-format", "safetensors", "--device", "cuda",
        "--base-gpu-id", "1",
    ])
    expected = {
        "model": MODEL, "tokenizer": "tok", "host": "0.0.0.0", "port": 30001, "max_model_len": 4096,
        "gpu_memory_utilization": 0.8, "max_num_seqs": 32, "num_gpu_blocks_override": 3125,
        "max_num_batched_tokens": 2048, "enable_chunked_prefill": True, "scheduling_policy": "fcfs",
        "block_size": 32, "tensor_parallel_size": 1, "data_parallel_size": 1, "seed": 7,
        "enable_prefix_caching": False, "enable_log_requests": True, "enable_log_outputs": True, "max_log_len": 2048,
        "api_key": "sk-1", "served_model_name": ["served"], "dtype": "bfloat16", "kv_cache_dtype": "bfloat16",
        "log_level": "warning", "uvicorn_log_level": "info", "revision": "main", "download_dir": "/d",
        "enable_prompt_tokens_details": True, "max_cudagraph_capture_size": 64, "cudagraph_capture_sizes": [1, 2],
        "enforce_eager": True, "skip_tokenizer_init": True, "load_format": "safetensors", "device": "cuda:1",
    }
    assert {key: getattr(args, key) for key in expected} == expected
    assert no_effect_notes(args) == [
        "--trust-remote-code: no effect (cserve never runs code from the checkpoint)",
        "--max-prefill-tokens: no effect (cserve's token budget of a step, prefills and decodes together, is "
        "--chunked-prefill-size)",
        "--enable-metrics: no effect (cserve always serves Prometheus metrics at /metrics)",
    ]
    options = engine_options(args)
    assert options["num_gpu_blocks_override"] == 3125 and options["block_size"] == 32


@pytest.mark.parametrize("argv, expected", [
    (["--chunked-prefill-size", "-1"], {"enable_chunked_prefill": False, "max_num_batched_tokens": None}),
    (["--chunked-prefill-size", "0"], {"enable_chunked_prefill": False}),
    (["--max-total-tokens", "1000"], {"num_gpu_blocks_override": 63}),  # 16-token blocks when unset
    (["--max-total-tokens", "1000", "--page-size", "1"], {"num_gpu_blocks_override": 1000, "block_size": 1}),
    (["--log-requests-level", "3"], {"enable_log_outputs": True, "max_log_len": None}),
    (["--log-requests-level", "1"], {"enable_log_outputs": False, "max_log_len": 0}),
    (["--log-level", "debug"], {"log_level": "debug", "uvicorn_log_level": "debug"}),
    (["--schedule-policy", "lpm"], {"scheduling_policy": "fcfs"}),
    (["--base-gpu-id", "2", "--device", "cpu"], {"device": "cpu"}),
    (["--kv-cache-dtype", "fp8_e4m3"], {"kv_cache_dtype": "fp8_e4m3"}),
])
def test_mappings(argv, expected):
    args = sgl(*argv)
    assert {key: getattr(args, key) for key in expected} == expected


def test_schedule_policies_served_as_fcfs_are_noted():
    assert no_effect_notes(sgl("--schedule-policy", "dfs-weight")) == [
        "--schedule-policy dfs-weight: served as fcfs: a prefix-cache-aware order like lpm"]


def test_chat_template(tmp_path):
    path = tmp_path / "t.jinja"
    path.write_text("{{ messages }}")
    assert sgl("--chat-template", str(path)).chat_template == str(path)
    assert sgl("--chat-template", "{{ messages }}").chat_template == "{{ messages }}"
    assert "built-in chat template names are not supported yet" in refusal("--chat-template", "chatml")
    (tmp_path / "t.json").write_text("{}")
    assert "JSON chat templates are not supported yet" in refusal("--chat-template", str(tmp_path / "t.json"))


@pytest.mark.parametrize("argv, message", [
    (["--schedule-policy", "random"], "--schedule-policy random is not supported yet"),
    (["--schedule-policy", "lof"], "--schedule-policy lof is not supported yet"),
    (["--page-size", "4"], "--page-size 4 is not supported yet"),
    (["--lora-paths", "a=b"], "--lora-paths a=b is not supported yet"),
])
def test_refusals_name_the_flag_and_value(argv, message):
    assert refusal(*argv) == message


@pytest.mark.parametrize("argv, config", [
    ([], None),
    (["--speculative-num-steps", "4"], None),  # no algorithm: no speculation, as SGLang
    (["--speculative-algorithm", "STANDALONE", "--speculative-draft-model-path", "/d.gguf"],
     {"method": "draft_model", "model": "/d.gguf", "num_speculative_tokens": 3}),  # SGLang's 3 steps, top-k 1
    (["--speculative-algorithm", "STANDALONE", "--speculative-draft-model-path", "/d", "--speculative-num-steps", "5",
      "--speculative-eagle-topk", "1", "--speculative-num-draft-tokens", "9"],
     {"method": "draft_model", "model": "/d", "num_speculative_tokens": 5}),  # top-k 1: draft tokens = steps + 1
    (["--speculative-algorithm", "STANDALONE", "--speculative-draft-model-path", "/d",
      "--speculative-num-draft-tokens", "3"], {"method": "draft_model", "model": "/d", "num_speculative_tokens": 2}),
    (["--speculative-algorithm", "NGRAM"],
     {"method": "ngram", "num_speculative_tokens": 11, "prompt_lookup_min": 1, "prompt_lookup_max": 12}),
    (["--speculative-algorithm", "NGRAM", "--speculative-num-draft-tokens", "6", "--speculative-num-steps", "2"],
     {"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_min": 1, "prompt_lookup_max": 12}),
])
def test_speculative_flags_make_the_speculative_config(argv, config):
    args = sgl(*argv)
    assert args.speculative_config == config
    fields = engine_options(args)
    assert fields.get("speculative_method", "") == ("" if config is None else config["method"])
    if config:
        assert fields["num_speculative_tokens"] == config["num_speculative_tokens"]


@pytest.mark.parametrize("algorithm, method", [("EAGLE", "eagle"), ("EAGLE3", "eagle3"), ("NEXTN", "mtp")])
def test_eagle_algorithms_map_to_vllms_methods(algorithm, method):
    ns = make_sglang_parser().parse_args(["--model-path", MODEL, "--speculative-algorithm", algorithm,
                                          "--speculative-draft-model-path", "/e", "--speculative-num-steps", "2"])
    assert speculative_config_of(ns) == {"method": method, "model": "/e", "num_speculative_tokens": 2}


@pytest.mark.parametrize("argv, message", [
    (["--speculative-algorithm", "NEXTN"], "--speculative-algorithm NEXTN: speculative decoding method 'mtp' is not "
                                           "supported yet"),
    (["--speculative-algorithm", "STANDALONE"], "--speculative-algorithm STANDALONE needs "
                                                "--speculative-draft-model-path"),
    (["--speculative-algorithm", "STANDALONE", "--speculative-draft-model-path", "/d", "--speculative-eagle-topk",
      "4"], "--speculative-eagle-topk 4 is not supported yet"),
    (["--speculative-accept-threshold-single", "0.9"],
     "--speculative-accept-threshold-single 0.9 is not supported yet"),
    (["--speculative-accept-threshold-acc", "0.5"], "--speculative-accept-threshold-acc 0.5 is not supported yet"),
    (["--speculative-algorithm", "NGRAM", "--speculative-num-draft-tokens", "1"],
     "--speculative-num-draft-tokens 1: must be >= 2"),
])
def test_speculative_refusals(argv, message):
    assert refusal(*argv).startswith(message)


def test_parallel_sizes_map_onto_the_vllm_flags():
    args = sgl("--tp-size", "2", "--pp-size", "3", "--dp-size", "4")
    assert (args.tensor_parallel_size, args.pipeline_parallel_size, args.data_parallel_size) == (2, 3, 4)


@pytest.mark.parametrize("argv, message", [
    (["--mem-fraction-static", "1.5"], "--mem-fraction-static must be in (0, 1], got 1.5"),
    (["--context-length", "0"], "--context-length must be >= 1, got 0"),
    (["--port", "70000"], "--port must be in [0, 65535], got 70000"),
    (["--max-running-requests", "0"], "--max-running-requests must be >= 1, got 0"),
    (["--heartbeat-interval", "0"], "--heartbeat-interval must be > 0, got 0.0"),
])
def test_bad_values(argv, message):
    with pytest.raises(ServeArgsError) as info:
        sgl(*argv)
    assert str(info.value) == message and not isinstance(info.value, UnsupportedFlagError)


def test_model_path_is_required(capsys):
    with pytest.raises(SystemExit) as info:
        parse_serve_args(["--backend", "sglang", "--port", "1"])
    assert info.value.code == 2 and "--model-path/--model" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [[MODEL], ["--max-model-len", "1k"], ["--max-num-seqs", "2"]])
def test_no_vllm_positional_or_flags_in_the_sglang_dialect(argv, capsys):
    with pytest.raises(SystemExit) as info:
        sgl(*argv)
    assert info.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err


# --- --backend anywhere, worker flags in both dialects --------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["--backend", "sglang", "--model-path", MODEL, "--port", "1"],
    ["--model-path", MODEL, "--backend", "sglang", "--port", "1"],
    ["--model-path", MODEL, "--port", "1", "--backend", "sglang"],
    ["--model-path", MODEL, "-be", "sglang", "--port", "1"],
    ["--backend=sglang", "--model-path", MODEL, "--port", "1"],
    ["--port", "1", "-be=sglang", "--model-path", MODEL],
    ["-be", "vllm", "--model-path", MODEL, "--port", "1", "--backend", "sglang"],
])
def test_backend_anywhere(argv):
    args = parse_serve_args(argv)
    assert args.backend == "sglang" and args.sglang.model_path == MODEL and args.port == 1


@pytest.mark.parametrize("argv", [[MODEL], [MODEL, "--backend", "vllm"], ["-be", "vllm", MODEL],
                                  ["--backend", "sglang", MODEL, "--backend", "vllm"]])
def test_vllm_is_the_default_dialect(argv):
    args = parse_serve_args(argv)
    assert args.backend == "vllm" and args.model == MODEL and args.port == 8000 and not hasattr(args, "sglang")


def test_dialect_of():
    assert dialect_of([]) == "vllm" and dialect_of(["-be", "x"]) == "x"
    assert dialect_of(["--", "--backend", "sglang"]) == "vllm"


def test_unknown_backend_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        parse_serve_args([MODEL, "--backend", "trt"])
    assert info.value.code == 2 and "--backend" in capsys.readouterr().err


def test_backend_in_a_config_file(tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text("backend: sglang\n")
    with pytest.raises(ServeArgsError, match="must be given on the command line"):
        parse_serve_args([MODEL, "--config", str(path)])
    path.write_text("gateway-address: http://gw:1\nheartbeat_interval: 5\nlog-streaming: false\n")
    args = parse_serve_args([MODEL, "--config", str(path)])
    assert (args.gateway_address, args.heartbeat_interval, args.log_streaming) == ("http://gw:1", 5.0, False)


@pytest.mark.parametrize("dialect", [[MODEL], ["--backend", "sglang", "--model-path", MODEL]], ids=["vllm", "sglang"])
def test_worker_flags_in_both_dialects(dialect):
    args = parse_serve_args(dialect)
    assert (args.gateway_address, args.heartbeat_interval, args.log_streaming) == (None, 30.0, True)
    assert (args.gateway_kind, args.worker_url) == ("auto", None)
    args = parse_serve_args([*dialect, "-ga", "gw.local:9000", "--hi", "2.5", "--no-log-streaming",
                             "--gateway-kind", "sglang-router", "--worker-url", "https://w:1"])
    assert (args.gateway_address, args.heartbeat_interval, args.log_streaming) == ("http://gw.local:9000", 2.5, False)
    assert (args.gateway_kind, args.worker_url) == ("sglang-router", "https://w:1")
    args = parse_serve_args([*dialect, "--gateway-address", "http://gw", "--heartbeat-interval", "10", "--ls"])
    assert (args.gateway_address, args.heartbeat_interval, args.log_streaming) == ("http://gw", 10.0, True)
    assert no_effect_notes(args) == []


@pytest.mark.parametrize("dialect", [[MODEL], ["--backend", "sglang", "--model-path", MODEL]], ids=["vllm", "sglang"])
def test_bad_worker_flag_values_exit_2(dialect, capsys):
    for argv in (["--gateway-kind", "nginx"], ["--hi", "soon"]):
        with pytest.raises(SystemExit) as info:
            parse_serve_args([*dialect, *argv])
        assert info.value.code == 2 and argv[0] in capsys.readouterr().err


# --- backend_args -------------------------------------------------------------------------------------------------

def test_backend_args_sglang():
    args = sgl("--api-key", "sk-secret", "--context-length", "256", "-ga", "http://gw", "--tp-size", "1")
    values = backend_args(args)
    assert set(values) == {f.dest for f in SGLANG_FLAGS}
    assert values["api_key"] == "***" and "sk-secret" not in json.dumps(values)
    assert values["model_path"] == MODEL and values["context_length"] == 256 and values["port"] == 30000
    assert values["tp_size"] == 1 and values["random_seed"] == args.seed and values["disable_radix_cache"] is False
    assert "gateway_address" not in values and "backend" not in values
    values["port"] = 1
    assert backend_args(args)["port"] == 30000  # a fresh copy


def test_backend_args_vllm():
    args = parse_serve_args([MODEL, "--api-key", "sk-secret", "--hf-token", "hf_x", "--max-model-len", "1k"])
    values = backend_args(args)
    assert values["api_key"] == "***" and values["hf_token"] == "***" and "secret" not in json.dumps(values)
    assert values["model"] == MODEL and values["max_model_len"] == 1000 and values["port"] == 8000
    assert set(values) == {f.dest for f in BY_NAME.values()}
    assert "gateway_address" not in values
    assert backend_args(parse_serve_args([MODEL, "--hf-token"]))["hf_token"] is True  # no secret in it
    assert backend_args(parse_serve_args([MODEL]))["api_key"] is None
    # A namespace built another way: computed from it.
    namespace = make_serve_parser().parse_args([MODEL, "--api-key", "k"])
    assert backend_args(namespace)["api_key"] == "***"


# --- help -------------------------------------------------------------------------------------------------------

def _help(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as info:
        parse_serve_args(list(argv))
    assert info.value.code == 0
    return capsys.readouterr().out


def test_help(capsys):
    out = _help(capsys, "--backend", "sglang", "--help")
    assert "--mem-fraction-static" in out and "--backend sglang --model-path MODEL" in out
    assert all(group in out for group in SGLANG_GROUPS) and "cserve worker flags" in out
    assert "--enable-two-batch-overlap" not in out and "--max-model-len" not in out
    out = _help(capsys, "-be", "sglang", "--help=MemoryAndScheduling")
    assert "--page-size" in out and "--port" not in out
    out = _help(capsys, "--help=all", "--backend", "sglang")
    assert all(flag.name in out for flag in (*SGLANG_FLAGS, *WORKER_FLAGS))
    out = _help(capsys, "--help")
    assert "cserve worker flags" in out and "--backend" in out
    out = _help(capsys, "--help=gateway")
    assert "--gateway-address" in out and "--gateway-kind" in out and "cserve worker flag" in out


def test_parsers_map_to_vllm_names():
    # SGLang's parser names land on the same parsers under vLLM's names; a tool parser alone turns
    # on tool_choice "auto", as in SGLang.
    args = sgl("--reasoning-parser", "deepseek-r1", "--tool-call-parser", "qwen25")
    assert (args.reasoning_parser, args.tool_call_parser, args.enable_auto_tool_choice) == ("deepseek_r1", "hermes", True)
    args = sgl()
    assert (args.reasoning_parser, args.tool_call_parser, args.enable_auto_tool_choice) == ("", None, False)
    from cserve.cli.sglang_flags import SGLANG_REASONING_PARSERS, SGLANG_TOOL_PARSERS
    from cserve.parsers.reasoning import get_reasoning_parser
    from cserve.parsers.tool import get_tool_parser

    for name in SGLANG_REASONING_PARSERS.values():
        get_reasoning_parser(name)
    for name in SGLANG_TOOL_PARSERS.values():
        get_tool_parser(name)
    assert refusal("--reasoning-parser", "kimi").startswith("--reasoning-parser kimi: not supported yet (supported: ")
    assert refusal("--tool-call-parser", "step3").startswith("--tool-call-parser step3: not supported yet")
    assert sgl("--tool-call-parser", "gpt-oss").tool_call_parser == "openai"
