"""The `cserve serve` flag table and parser: every vLLM flag parses, and cserve says what it does with it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from cserve.cli import args as cli_args
from cserve.cli.args import (
    ServeArgsError, UnsupportedFlagError, engine_options, make_serve_parser, no_effect_notes, parse_serve_args,
)
from cserve.cli.flags import (
    APPEND, BOOL, BOOL_ARG, BY_NAME, FLAG, FLAGS, FLOAT, GROUPS, INT, JSON, JSON_LIST, LIST, LIST_INT,
    NO_EFFECT, ONLY, SIZE, SIZE_AUTO, SUPPORTED, UNSUPPORTED,
)
from cserve.cli.flags_doc import render_flags_markdown

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference"
MODEL = "some/model"
ENGINE_FIELDS = {
    "model", "dtype", "load_format", "quantization", "max_model_len", "seed", "block_size", "enable_prefix_caching",
    "prefix_caching_hash_algo", "gpu_memory_utilization", "kv_cache_memory_bytes", "num_gpu_blocks_override",
    "kv_cache_dtype", "max_num_seqs", "max_num_batched_tokens", "enable_chunked_prefill",
    "long_prefill_token_threshold", "max_num_partial_prefills", "max_long_partial_prefills", "scheduling_policy",
    "max_logprobs", "disable_sliding_window", "device", "enforce_eager", "cudagraph_capture_sizes",
    "max_cudagraph_capture_size", "tensor_parallel_size", "pipeline_parallel_size", "disable_custom_all_reduce",
    "hf_overrides", "hf_config_path",
}


def parse(*argv: str):
    return parse_serve_args([MODEL, *argv])


def refusal(*argv: str) -> str:
    with pytest.raises(UnsupportedFlagError) as info:
        parse(*argv)
    return str(info.value)


# --- the table -----------------------------------------------------------------------------------

def test_table_is_consistent():
    options = [opt for flag in FLAGS for opt in flag.option_strings]
    assert len(options) == len(set(options)), "an option string is declared twice"
    assert len({flag.dest for flag in FLAGS}) == len(FLAGS)
    for flag in FLAGS:
        assert flag.group in GROUPS, flag.name
        assert flag.support in (SUPPORTED, ONLY, NO_EFFECT, UNSUPPORTED), flag.name
        assert flag.config in ("engine", "server", "none"), flag.name
        assert flag.help.endswith((".", ")")), flag.name
        assert (flag.support == NO_EFFECT) == bool(flag.reason), flag.name
        assert (flag.support == ONLY) == bool(flag.accepted), flag.name
        # Nothing is silently ignored: a supported flag has a consumer.
        if flag.support == SUPPORTED and flag.name != "--config":
            assert flag.config != "none", flag.name
        if flag.config == "engine":
            assert flag.dest in ENGINE_FIELDS, flag.name
    assert {f.dest for f in FLAGS if f.config == "engine"} == ENGINE_FIELDS


def test_engine_fields_exist_in_the_core():
    core = pytest.importorskip("cserve._core")
    config = core.EngineConfig()
    options = engine_options(parse("--block-size", "32", "--max-model-len", "1k", "--max-num-seqs", "8",
                                   "--num-gpu-blocks-override", "64", "--kv-cache-memory-bytes", "1G",
                                   "--gpu-memory-utilization", "0.5",
                                   "--max-num-batched-tokens", "2k", "--no-enable-prefix-caching",
                                   "--enable-chunked-prefill", "--kv-cache-dtype", "bfloat16", "--seed", "3",
                                   "--cudagraph-capture-sizes", "1", "2", "4", "--max-cudagraph-capture-size", "16",
                                   "-q", "awq", "--hf-overrides", '{"sliding_window": null}',
                                   "--hf-config-path", "/some/config.json"))
    assert set(options) == ENGINE_FIELDS
    for name, value in options.items():
        setattr(config, name, value)
        assert getattr(config, name) == value, name


# --- every flag parses -------------------------------------------------------------------------------

def _sample(flag) -> tuple:
    """argv tokens giving the flag a non-default value, and the value the namespace should then hold."""
    kind, default = flag.kind, flag.default
    if kind == FLAG:
        return [flag.name], True
    if kind == BOOL:
        return ([f"--no-{flag.name[2:]}"], False) if default else ([flag.name], True)
    if kind == BOOL_ARG:
        return ([flag.name, "false"], False) if default else ([flag.name, "true"], True)
    if flag.choices:
        value = next(c for c in flag.choices if c != default)
    elif kind == INT:
        value = (default or 0) + 1
    elif kind == FLOAT:
        value = default / 2 if default else 0.5
    else:
        value = {SIZE: "2k", SIZE_AUTO: "2k", JSON: '{"a": 1}', JSON_LIST: '["a"]', LIST: ["a", "b"],
                 LIST_INT: ["1", "2"], APPEND: ["a"]}.get(kind, "x")
    expected = {SIZE: 2000, SIZE_AUTO: 2000, JSON: {"a": 1}, JSON_LIST: ["a"], LIST_INT: [1, 2]}.get(kind, value)
    tokens = value if isinstance(value, list) else [str(value)]
    return [flag.name, *tokens], expected


def _message(flag, tokens: list) -> str:
    spelled = tokens[0] if flag.kind in (FLAG, BOOL) else " ".join(tokens)
    return f"{spelled} is not supported yet"


# (--speculative-config checks its keys: tests/engine/test_speculative.py.)
TABLE = [f for f in FLAGS if f.name not in ("--model", "--config", "--max-long-partial-prefills",
                                            "--speculative-config")]


@pytest.mark.parametrize("flag", TABLE, ids=lambda f: f.name)
def test_every_flag_parses(flag):
    tokens, expected = _sample(flag)
    if flag.support == SUPPORTED:
        args = parse(*tokens)
        assert getattr(args, flag.dest) == expected
        if flag.name == "--compilation-config":  # only its CUDA graph keys mean something
            assert [n.split(" (")[0] for n in no_effect_notes(args)] == ["--compilation-config: no effect for a"]
        else:
            assert no_effect_notes(args) == []
    elif flag.support == NO_EFFECT:
        args = parse(*tokens)
        assert getattr(args, flag.dest) == expected
        assert no_effect_notes(args) == [f"{flag.name}: no effect ({flag.reason})"]
    elif flag.support == UNSUPPORTED:
        message = refusal(*tokens)
        assert message == _message(flag, tokens) and "\n" not in message
    else:
        for value in flag.accepted:
            if value is not None:
                assert getattr(parse(flag.name, str(value)), flag.dest) == value
        refused = [c for c in flag.choices or () if c not in flag.accepted] or [2 if flag.kind == INT else "x"]
        assert refusal(flag.name, str(refused[0])) == f"{flag.name} {refused[0]} is not supported yet"


@pytest.mark.parametrize("flag", [f for f in FLAGS if f.aliases], ids=lambda f: f.name)
def test_aliases_mean_the_flag(flag):
    tokens, _ = _sample(flag)
    if flag.kind == BOOL:
        tokens = [flag.name]
    for alias in flag.aliases:
        try:
            by_name = getattr(parse(*tokens), flag.dest)
        except UnsupportedFlagError as e:
            assert refusal(alias, *tokens[1:]) == str(e)
        else:
            assert getattr(parse(alias, *tokens[1:]), flag.dest) == by_name


def test_defaults():
    args = parse()
    assert args.model == MODEL and args.model_tag == MODEL and args.config is None
    assert args.served_model_name is None and args.allowed_origins == ["*"] and args.port == 8000
    assert args.host is None and args.api_key is None and args.uds is None and args.ssl_keyfile is None
    assert args.override_generation_config == {} and args.default_chat_template_kwargs is None
    assert args.h11_max_incomplete_event_size == 4194304 and args.enable_log_requests is False
    assert no_effect_notes(args) == []
    options = engine_options(args)
    assert options["model"] == MODEL and options["dtype"] == "auto"
    # Unset values are left to the C++ defaults.
    assert not {"max_model_len", "block_size", "max_num_seqs", "enable_prefix_caching"} & set(options)


def test_defaults_are_fresh_each_parse():
    parse().allowed_origins.append("x")
    parse().override_generation_config["x"] = 1
    assert parse().allowed_origins == ["*"] and parse().override_generation_config == {}


def test_served_model_name_takes_several():
    assert parse("--served-model-name", "a", "b").served_model_name == ["a", "b"]


def test_disable_log_requests_is_the_inverse():
    assert parse("--no-disable-log-requests").enable_log_requests is True
    assert parse("--disable-log-requests").enable_log_requests is False


def test_no_effect_notes():
    args = parse("--enforce-eager", "--swap-space", "8", "--trust-remote-code", "--download-dir", "/d")
    assert no_effect_notes(args) == [
        "--trust-remote-code: no effect (cserve never runs code from the checkpoint)",
        "--swap-space: no effect (preempted requests are recomputed, never swapped)",
    ]


def test_engine_options():
    options = engine_options(parse("--block-size", "32", "--max-num-seqs", "8", "--no-enable-prefix-caching",
                                   "--dtype", "half", "--max-model-len", "-1"))
    assert options["block_size"] == 32 and options["max_num_seqs"] == 8 and options["dtype"] == "half"
    assert options["enable_prefix_caching"] is False and "max_model_len" not in options


# --- reference documents -------------------------------------------------------------------------------

def _reference(prefix: str) -> str:
    if not REFERENCE.is_dir():
        pytest.skip(f"{REFERENCE} is absent")
    return next(REFERENCE.glob(f"{prefix}_*.txt")).read_text(encoding="utf-8")


_ANY_FLAG = r"(?<![\w-])--[a-z][a-z0-9_-]*[a-z0-9]"


def _referenced_flags(prefix: str) -> set:
    text = _reference(prefix)
    if prefix == "000":
        return set(re.findall(r"`(--[a-z][a-z0-9-]*)`", text))
    if prefix == "002":
        usage = "".join(re.findall(r"usage: vllm serve(.*?)```", text, re.S))
        headings = " ".join(re.findall(r"^\*\*(--.*?)\*\*", text, re.M))
        return set(re.findall(_ANY_FLAG, usage + " " + headings))
    if prefix == "003":
        # Appendix B lists vLLM's flags (A is SGLang's); two of its names were never vLLM flags.
        appendix = text[text.index("附录B"):]
        return set(re.findall(_ANY_FLAG, appendix)) - {"--reorder-layers", "--speculative-disable-by-sequence_length"}
    return set(re.findall(_ANY_FLAG, text))


@pytest.mark.parametrize("prefix", ["000", "001", "002", "003", "004"])
def test_reference_flags_are_in_the_table(prefix):
    names = _referenced_flags(prefix)
    assert len(names) > 10
    options = {opt for flag in FLAGS for opt in flag.option_strings}
    assert sorted(names - options) == []


def test_reference_aliases_are_in_the_table():
    pairs = re.findall(r"^\| `(--[a-z0-9-]+)`, `(-[A-Za-z]+)` \|", _reference("000"), re.M)
    assert len(pairs) > 10
    assert [(name, alias) for name, alias in pairs if alias not in BY_NAME[name].aliases] == []


# --- syntax ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, expected", [
    (["--override-generation-config", '{"temperature": 0.5}'], {"temperature": 0.5}),
    (["--override-generation-config.temperature", "0.5", "--override-generation-config.top_k", "20"],
     {"temperature": 0.5, "top_k": 20}),
    (["--override-generation-config.temperature=0.5"], {"temperature": 0.5}),
    (["--override_generation_config.a.b", "true"], {"a": {"b": True}}),
    (["--override-generation-config.stop+", "a", "--override-generation-config.stop+=b,c"], {"stop": ["a", "b", "c"]}),
    (["--override-generation-config", '{"a": 1}', "--override-generation-config.b", "2"], {"a": 1, "b": 2}),
    (["--override-generation-config.n", "80g"], {"n": 80_000_000_000}),
    (["--override-generation-config.s", "word"], {"s": "word"}),
])
def test_json_flags(argv, expected):
    assert parse(*argv).override_generation_config == expected


@pytest.mark.parametrize("argv", [["-cc.mode=3"], ["-cc", '{"mode": 3}'], ["--compilation-config.mode", "3"],
                                  ["--compilation-config={\"mode\": 3}"], ["-O.mode=3"], ["-O", '{"mode": 3}']])
def test_compilation_config_forms(argv):
    args = parse(*argv)
    assert args.compilation_config == {"mode": 3}
    assert no_effect_notes(args) == ["--compilation-config: no effect for mode (cserve does not use torch.compile; "
                                     "it reads cudagraph_capture_sizes, max_cudagraph_capture_size, cudagraph_mode)"]


@pytest.mark.parametrize("argv, expected", [
    (["-cc", '{"cudagraph_capture_sizes": [1, 2, 8]}'], {"cudagraph_capture_sizes": [1, 2, 8]}),
    (["-cc.max_cudagraph_capture_size=64"], {"max_cudagraph_capture_size": 64}),
    (["-cc.cudagraph_mode=NONE"], {"enforce_eager": True}),
    (["-cc.max_cudagraph_capture_size=64", "--max-cudagraph-capture-size", "32"], {"max_cudagraph_capture_size": 32}),
    (["--cudagraph-capture-sizes", "1", "4", "--enforce-eager"],
     {"cudagraph_capture_sizes": [1, 4], "enforce_eager": True}),
])
def test_cuda_graph_settings(argv, expected):
    args = parse(*argv)
    options = engine_options(args)
    for key, value in expected.items():
        assert options[key] == value
    assert not any(n.startswith("--compilation-config") for n in no_effect_notes(args))


@pytest.mark.parametrize("argv, level", [(["-O3"], 3), (["-O", "3"], 3), (["-O=1"], 1), (["-O0"], 0),
                                         (["--optimization-level", "3"], 3), (["-O2"], 2), ([], 2)])
def test_optimization_level(argv, level):
    args = parse(*argv)
    assert args.optimization_level == level
    assert bool(no_effect_notes(args)) == (level != 2)


@pytest.mark.parametrize("text, value", [("1k", 1000), ("1K", 1024), ("25.6k", 25600), ("32K", 32768),
                                         ("1m", 10**6), ("2M", 2 * 2**20), ("4096", 4096), ("-1", -1),
                                         ("auto", -1)])
def test_sizes(text, value):
    assert parse("--max-model-len", text).max_model_len == value
    if value > 0:
        assert parse("--max-num-batched-tokens", text).max_num_batched_tokens == value


def test_size_errors(capsys):
    with pytest.raises(SystemExit) as info:
        parse("--max-model-len", "1.5K")
    assert info.value.code == 2 and "1.5k" in capsys.readouterr().err
    with pytest.raises(ServeArgsError, match="--max-num-batched-tokens must be >= 1, got -1"):
        parse("--max-num-batched-tokens", "-1")


def test_underscores_in_names():
    args = parse("--max_model_len", "1k", "--gpu_memory_utilization=0.5")
    assert args.max_model_len == 1000 and args.gpu_memory_utilization == 0.5


def test_config_file(tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text("model: from-config\nmax_model_len: 4K\nport: 9000\nenable-prefix-caching: false\n"
                    "served-model-name: [a, b]\nallowed_origins: ['http://x']\n"
                    "override-generation-config: {temperature: 0.5}\ntrust-remote-code: true\n"
                    "disable-log-stats: false\n")
    args = parse_serve_args(["--config", str(path), "--port", "9001", "--override-generation-config.top_p", "0.9"])
    assert args.config == str(path) and args.model == "from-config"
    assert args.port == 9001 and args.max_model_len == 4096 and args.enable_prefix_caching is False
    assert args.served_model_name == ["a", "b"] and args.allowed_origins == ["http://x"]
    assert args.override_generation_config == {"temperature": 0.5, "top_p": 0.9}
    assert args.disable_log_stats is False
    assert no_effect_notes(args) == ["--trust-remote-code: no effect (cserve never runs code from the checkpoint)"]
    # MODEL on the command line wins over the file's.
    assert parse_serve_args(["m", f"--config={path}"]).model == "m"
    path.write_text("middleware: [m1, m2]\n")
    assert refusal("--config", str(path)) == "--middleware m1 --middleware m2 is not supported yet"


def test_config_file_errors(tmp_path, capsys):
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("no-such-flag: 1\n")
    with pytest.raises(SystemExit) as info:
        parse("--config", str(unknown))
    assert info.value.code == 2 and "--no-such-flag" in capsys.readouterr().err
    with pytest.raises(ServeArgsError, match="yaml"):
        parse("--config", str(tmp_path / "serve.json"))
    with pytest.raises(ServeArgsError, match="missing.yaml"):
        parse("--config", str(tmp_path / "missing.yaml"))


# --- help ----------------------------------------------------------------------------------------------

def _help(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as info:
        parse_serve_args(list(argv))
    assert info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--help"], ["-h"], [MODEL, "--help"]])
def test_help_summary(capsys, argv):
    out = _help(capsys, *argv)
    assert "Common flags" in out and "--max-model-len" in out and "--help=<group>" in out
    assert all(group in out for group in GROUPS)
    assert "--mamba-cache-mode" not in out


@pytest.mark.parametrize("keyword", ["CacheConfig", "cacheconfig", "CACHECONFIG"])
def test_help_group(capsys, keyword):
    out = _help(capsys, f"--help={keyword}")
    assert "--block-size" in out and "--mamba-cache-mode" in out and "--port" not in out
    assert "only auto, bfloat16, float16, float32" in out


@pytest.mark.parametrize("keyword", ["max-model-len", "--max-model-len", "max_model_len"])
def test_help_flag(capsys, keyword):
    out = _help(capsys, f"--help={keyword}")
    assert "--max-model-len" in out and "--block-size" not in out and "25.6k" in out


def test_help_all_and_unknown(capsys):
    out = _help(capsys, "--help=all")
    assert all(flag.name in out for flag in FLAGS)
    assert "No group or flag matches 'zzz'" in _help(capsys, "--help=zzz")


# --- model, errors --------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, model", [(["m"], "m"), (["--model", "m"], "m"), (["--model=m"], "m"),
                                         (["m", "--model", "other"], "m"), (["--port", "1", "m"], "m")])
def test_model_positional_or_flag(argv, model):
    assert parse_serve_args(argv).model == model


def test_model_is_optional():
    # Neither MODEL nor --model: `cserve serve` serves its default model (cserve.model_source).
    from cserve.model_source import DEFAULT_MODEL

    assert parse_serve_args(["--port", "8001"]).model is None
    assert DEFAULT_MODEL in BY_NAME["--model"].help


@pytest.mark.parametrize("flag", ["--revision", "--tokenizer-revision", "--hf-token", "--download-dir",
                                  "--ignore-patterns", "--tokenizer"])
def test_model_source_flags_are_supported(flag):
    assert BY_NAME[flag].support == SUPPORTED and BY_NAME[flag].config == "server"


def test_hf_token_is_a_string_or_true(tmp_path):
    # vLLM: `--hf-token` alone means "the stored token" (True), `--hf-token T` the token T.
    assert parse().hf_token is None
    assert parse("--hf-token").hf_token is True
    assert parse("--hf-token", "hf_abc").hf_token == "hf_abc"
    assert parse("--hf-token=hf_abc", "--port", "1").hf_token == "hf_abc"
    path = tmp_path / "serve.yaml"
    for text, value in [("hf_token: true\n", True), ("hf_token: false\n", None), ("hf-token: hf_x\n", "hf_x")]:
        path.write_text(text)
        assert parse("--config", str(path)).hf_token == value, text


def test_unknown_flag_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        parse("--no-such-flag")
    assert info.value.code == 2
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--gpu-memory-utilization", "2"], "--gpu-memory-utilization must be in (0, 1], got 2.0"),
    (["--gpu-memory-utilization", "0"], "--gpu-memory-utilization must be in (0, 1], got 0.0"),
    (["--port", "70000"], "--port must be in [0, 65535], got 70000"),
    (["--max-num-seqs", "0"], "--max-num-seqs must be >= 1, got 0"),
    (["--max-model-len", "0"], "--max-model-len must be >= 1, got 0"),
    (["--max-long-partial-prefills", "2"], "--max-long-partial-prefills (2) must be <= --max-num-partial-prefills (1)"),
])
def test_bad_values(argv, message):
    with pytest.raises(ServeArgsError) as info:
        parse(*argv)
    assert str(info.value) == message and not isinstance(info.value, UnsupportedFlagError)


def test_partial_prefills_together():
    args = parse("--max-long-partial-prefills", "2", "--max-num-partial-prefills", "3")
    assert (args.max_long_partial_prefills, args.max_num_partial_prefills) == (2, 3)


@pytest.mark.parametrize("argv", [["--block-size", "3"], ["--dtype", "int8"], ["--allowed-origins", "*"],
                                  ["--port", "x"], ["--hf-overrides", "{bad"], ["-O", "7"]])
def test_malformed_values_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        parse(*argv)
    assert info.value.code == 2 and argv[0] in capsys.readouterr().err


def test_refusals_name_the_flag_and_value():
    assert refusal("--distributed-executor-backend", "external_launcher") == \
        "--distributed-executor-backend external_launcher is not supported yet"
    assert refusal("--config-format", "mistral") == "--config-format mistral is not supported yet"
    assert refusal("--load-format", "tensorizer") == "--load-format tensorizer is not supported yet"
    assert refusal("--limit-mm-per-prompt", "image=2") == '--limit-mm-per-prompt {"image": 2} is not supported yet'


# --- docs and imports --------------------------------------------------------------------------------------

def test_docs_are_generated_from_the_table():
    assert (ROOT / "docs" / "flags.md").read_text() == render_flags_markdown(), (
        "docs/flags.md is stale: run `python -m cserve.cli.flags_doc > docs/flags.md`")


def test_cli_modules_import_only_the_standard_library():
    # `cserve serve --help` must not wait for numpy, torch, fastapi or the C++ core.
    allowed = {"__future__", "argparse", "collections", "copy", "dataclasses", "json", "os", "random", "re", "sys",
               "textwrap", "typing", "cserve"}
    for module in ("args", "flags", "flags_doc", "sglang_flags", "sglang_args"):
        tree = ast.parse((Path(cli_args.__file__).parent / f"{module}.py").read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                root = name.split(".")[0]
                lazy_yaml = root == "yaml" and node not in tree.body
                assert root in allowed or lazy_yaml, f"{module}.py imports {name}"
                assert root != "cserve" or name.startswith("cserve.cli"), f"{module}.py imports {name}"


def test_make_serve_parser():
    parser = make_serve_parser()
    assert parser.prog == "cserve serve"
    assert parser.parse_args(["m", "-tp", "1"]).tensor_parallel_size == 1


def test_device_takes_a_gpu_index():
    assert parse("--device", "cuda:1").device == "cuda:1"
    assert parse("--device", "cpu").device == "cpu"
    with pytest.raises(SystemExit):
        parse("--device", "cuda:x")
