"""`cserve serve` argument parsing: vLLM's command line, built from the flag table in flags.py.

parse_serve_args(argv) runs vLLM's pipeline: `--config FILE.yaml` (the command line wins),
underscores or dashes in flag names, `-O3` / `-O 3`, JSON flags given whole or as
`--x.key v`, `--x.a.b v`, `--x.list+ v`, `--x.list+=v1,v2`, human sizes (1k=1000, 1K=1024),
grouped `--help=<group|flag|all>`; then checks values and what cserve supports.

Only the standard library here (yaml is imported when --config is used): help must be instant.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
import textwrap
from typing import Any, Optional

from cserve.cli.flags import (
    APPEND, BOOL, BOOL_ARG, BY_NAME, COMMON, FLAG, FLAGS, FLOAT, GROUPS, INT, JSON, JSON_LIST,
    JSON_OR_STR, LIST, LIST_FLOAT, LIST_INT, NO_EFFECT, ONLY, SIZE, SIZE_AUTO, STR_OR_TRUE, UNSUPPORTED, WORKER_BY_NAME,
    WORKER_DESCRIPTION, WORKER_FLAGS, WORKER_GROUP, Flag, support_text,
)

__all__ = ["ServeArgsError", "UnsupportedFlagError", "make_serve_parser", "parse_serve_args", "no_effect_notes",
           "engine_options", "backend_args", "dialect_of"]

PROG = "cserve serve"
_JSON_TIP = ("JSON flags take a whole object, --x '{\"a\": 1, \"b\": {\"c\": 2}}', or its keys, --x.a 1 "
             "--x.b.c 2; list items one by one: --x.items+ v1 --x.items+=v2,v3.")
_HELP_TIP = ("Use --help=all for every flag, --help=<group> for one group (e.g. --help=CacheConfig), "
             "--help=<flag> for one flag (e.g. --help=max-model-len).")


class ServeArgsError(ValueError):
    """A value the command line cannot take (out of range, unreadable --config)."""


class UnsupportedFlagError(ServeArgsError):
    """A flag value vLLM takes that cserve does not support yet; the message is one line."""


# --- value types -------------------------------------------------------------------------------

def human_readable_int(value: str) -> int:
    """vLLM's sizes: lowercase k/m/g/t are powers of 1000 (25.6k=25600), uppercase K/M/G/T of 1024."""
    value = value.strip()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmMgGtT])", value)
    if not match:
        return int(value)
    number, suffix = match.groups()
    if suffix.islower():
        return int(float(number) * 1000 ** ("kmgt".index(suffix) + 1))
    if "." in number:
        raise argparse.ArgumentTypeError(f"decimals are not allowed with binary suffixes like {suffix}; "
                                         f"did you mean {number}{suffix.lower()}?")
    return int(number) * 1024 ** ("KMGT".index(suffix) + 1)


def human_readable_int_or_auto(value: str) -> int:
    """human_readable_int, or -1 for `-1` and `auto` (automatic, as in vLLM)."""
    return -1 if value.strip() in ("-1", "auto", "AUTO", "Auto") else human_readable_int(value)


def _json_value(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        pass
    # The old key=value,key=value form (e.g. --limit-mm-per-prompt image=2,video=1).
    if re.fullmatch(r"\s*[\w.-]+=[^,=]*(,\s*[\w.-]+=[^,=]*)*\s*", value):
        return {k.strip(): _scalar(v.strip()) for k, v in (item.split("=") for item in value.split(","))}
    raise argparse.ArgumentTypeError(f"expected JSON, e.g. '{{\"key\": 1}}', got {value!r}")


def _json_list(value: str) -> list:
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, list):
        raise argparse.ArgumentTypeError(f"expected a JSON list, e.g. '[\"*\"]', got {value!r}")
    return parsed


def _json_or_str(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def _scalar(value: str) -> Any:
    """A dotted-key value: JSON if it parses, else a size like 80g, else the string."""
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        pass
    try:
        return human_readable_int(value)
    except (ValueError, argparse.ArgumentTypeError):
        return value


def _optional(convert):
    """vLLM's optional_type: "" and "None" give None."""
    def parse(value: str):
        return None if value in ("", "None") else convert(value)
    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def _parse_bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def _deep_merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        old = merged.get(key)
        merged[key] = _deep_merge(old, value) if isinstance(old, dict) and isinstance(value, dict) else value
    return merged


class _BoolAction(argparse.Action):
    """--x / --no-x (BOOL), or the old --x [true|false] (BOOL_ARG)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string and option_string.startswith("--no-"):
            setattr(namespace, self.dest, False)
        else:
            setattr(namespace, self.dest, _parse_bool(values) if isinstance(values, str) else True)


class _JsonAction(argparse.Action):
    """JSON objects merge into what came before (the config file, an earlier --x or --x.key)."""

    def __call__(self, parser, namespace, values, option_string=None):
        old = getattr(namespace, self.dest, None)
        if isinstance(old, dict) and isinstance(values, dict):
            values = _deep_merge(old, values)
        setattr(namespace, self.dest, values)


class _HelpAction(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        sys.stdout.write(_help_text(parser, values))
        parser.exit(0)


def _add_kwargs(flag: Flag) -> dict:
    kind = flag.kind
    if kind == FLAG:
        return {"action": "store_true"}
    if kind in (BOOL, BOOL_ARG):
        return {"action": _BoolAction, "nargs": "?" if kind == BOOL_ARG else 0, "metavar": "{true,false}"}
    if kind == JSON:
        convert = _optional(_json_value) if flag.default is None else _json_value
        return {"action": _JsonAction, "type": convert, "metavar": "JSON"}
    if kind == APPEND:
        return {"action": "append", "type": str}
    if kind == STR_OR_TRUE:
        return {"nargs": "?", "const": True, "type": str}
    convert = {INT: int, FLOAT: float, SIZE: human_readable_int, SIZE_AUTO: human_readable_int_or_auto,
               JSON_LIST: _json_list, JSON_OR_STR: _json_or_str, LIST_INT: int, LIST_FLOAT: float}.get(kind, str)
    kwargs: dict = {"type": _optional(convert) if flag.default is None else convert}
    if kind in (LIST, LIST_INT, LIST_FLOAT):
        kwargs["nargs"] = "+"
    if flag.choices is not None:
        kwargs["choices"] = flag.choices
    return kwargs


def _help_line(flag: Flag) -> str:
    default = "unset" if flag.default is None else json.dumps(flag.default)
    text = f"{flag.help} Default: {default}. cserve: {support_text(flag)}."
    return text.replace("%", "%%")


def build_parser(table: tuple, groups: dict, common: tuple, usage: str, description: str,
                 positional: bool) -> argparse.ArgumentParser:
    """A `cserve serve` parser for one dialect: its flag table (one argument group per entry of
    `groups`, the worker flags last), `common` for a plain --help."""
    parser = argparse.ArgumentParser(prog=PROG, usage=usage, add_help=False, description=description)
    parser.cserve_groups = {**groups, WORKER_GROUP: WORKER_DESCRIPTION}
    parser.cserve_common = common
    if positional:
        parser.add_argument("model_tag", nargs="?", default=None, metavar="MODEL",
                            help="The model to serve, as --model says (the positional wins); cserve's default "
                                 "model when neither is given.")
    parser.add_argument("-h", "--help", action=_HelpAction, nargs="?", default=argparse.SUPPRESS,
                        metavar="GROUP|FLAG|all", help=f"Show help and exit. {_HELP_TIP}")
    arg_groups = {name: parser.add_argument_group(name, text) for name, text in parser.cserve_groups.items()}
    for flag in (*table, *WORKER_FLAGS):
        arg_groups[flag.group].add_argument(*flag.option_strings, dest=flag.dest, default=copy.deepcopy(flag.default),
                                            help=_help_line(flag), **_add_kwargs(flag))
    return parser


def make_serve_parser() -> argparse.ArgumentParser:
    """The `cserve serve` parser of the vLLM dialect: MODEL positional, one argument group per vLLM group."""
    return build_parser(FLAGS, GROUPS, COMMON + ("--backend",), f"{PROG} [MODEL] [options]",
                        "Start the OpenAI-compatible server; the flags of `vllm serve` (--backend sglang: "
                        "SGLang's flags).", positional=True)


# --- help ----------------------------------------------------------------------------------------

def _actions_by_flag(parser: argparse.ArgumentParser) -> dict:
    return {action.option_strings[0]: action for action in parser._actions if action.option_strings}


def _section(parser, title: str, description: Optional[str], actions: list, tip: str = _JSON_TIP) -> str:
    formatter = parser._get_formatter()
    formatter.start_section(title)
    formatter.add_text(description)
    formatter.add_arguments(actions)
    formatter.end_section()
    formatter.add_text(tip)
    return formatter.format_help()


def _help_summary(parser) -> str:
    actions = _actions_by_flag(parser)
    indent = max(len(name) for name in parser.cserve_groups) + 4
    width = max(parser._get_formatter()._width, indent + 30)
    groups = "".join(textwrap.fill(description, width, initial_indent=f"  {name:<{indent - 2}}",
                                   subsequent_indent=" " * indent) + "\n"
                     for name, description in parser.cserve_groups.items())
    common = _section(parser, "Common flags", None, [actions[name] for name in parser.cserve_common], tip="")
    tip = textwrap.fill(_HELP_TIP, width)
    return f"{parser.format_usage()}\n{parser.description}\n\n{common}\nConfig groups:\n{groups}\n{tip}\n"


def _help_text(parser, keyword: Optional[str]) -> str:
    """vLLM's --help, --help=all, --help=<group>, --help=<flag or part of one>."""
    if not keyword:
        return _help_summary(parser)
    key = keyword.strip().lower().replace("_", "-")
    if key == "all":
        return parser.format_help() + "\n" + _JSON_TIP + "\n"
    for group in parser._action_groups:
        if group.title and group.title.lower() == key:
            return _section(parser, group.title, group.description, group._group_actions)
    bare = key.lstrip("-")
    exact = [a for a in parser._actions if f"--{bare}" in a.option_strings or f"-{bare}" in a.option_strings]
    matched = exact or [a for a in parser._actions if any(bare in opt.lower() for opt in a.option_strings)]
    if matched:
        return _section(parser, f"Flags matching '{keyword}'", None, matched)
    return f"No group or flag matches '{keyword}'. {_HELP_TIP}\n"


# --- the argv pipeline ---------------------------------------------------------------------------

def _option_flag(option: str) -> Optional[Flag]:
    flag = BY_NAME.get(option) or WORKER_BY_NAME.get(option)
    if flag is None and option.startswith("--no-"):
        flag = BY_NAME.get("--" + option[5:]) or WORKER_BY_NAME.get("--" + option[5:])
        flag = flag if flag is not None and flag.kind == BOOL else None
    return flag


def _config_args(path: str) -> list:
    """The YAML file as command-line arguments (vLLM's load_config_file)."""
    if not path.endswith((".yaml", ".yml")):
        raise ServeArgsError(f"--config {path}: the config file must be .yaml or .yml")
    import yaml

    try:
        with open(path) as f:
            config = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ServeArgsError(f"--config {path}: {e}") from e
    if not isinstance(config, dict):
        raise ServeArgsError(f"--config {path}: expected a mapping of flag names to values")
    args: list = []
    for key, value in config.items():
        option = "--" + str(key).replace("_", "-")
        if option == "--config":
            raise ServeArgsError(f"--config {path}: a config file cannot name another config file")
        flag = _option_flag(option)
        kind = flag.kind if flag else None
        if isinstance(value, bool) and kind == BOOL_ARG:
            args += [option, str(value).lower()]
        elif isinstance(value, bool) and kind in (BOOL, FLAG, STR_OR_TRUE):
            # vLLM drops a false store_true flag: false is its default. A true --hf-token is the bare flag.
            args += [option] if value else ["--no-" + option[2:]] if kind == BOOL else []
        elif kind == APPEND:
            for item in value if isinstance(value, list) else [value]:
                args += [option, str(item)]
        elif isinstance(value, list) and kind in (LIST, LIST_INT):
            args += [option, *map(str, value)] if value else []
        elif isinstance(value, (list, dict)):
            args += [option, json.dumps(value)]
        elif isinstance(value, bool):
            args.append(option)  # a flag that takes no true/false: argparse reports it
        else:
            args += [option, str(value)]
    return args


def _pull_config(argv: list) -> tuple:
    """Insert the --config file's arguments after MODEL and before the rest: the command line wins."""
    positions = [i for i, a in enumerate(argv) if a == "--config" or a.startswith("--config=")]
    if not positions:
        return argv, None
    if len(positions) > 1:
        raise ServeArgsError("--config was given more than once")
    i = positions[0]
    if argv[i] == "--config":
        if i + 1 >= len(argv):
            raise ServeArgsError("--config needs a file name")
        path, rest = argv[i + 1], argv[:i] + argv[i + 2:]
    else:
        path, rest = argv[i].split("=", 1)[1], argv[:i] + argv[i + 1:]
    head = 1 if rest and not rest[0].startswith("-") else 0
    return rest[:head] + _config_args(path) + rest[head:], path


_DOTTED = re.compile(r"(--?[A-Za-z][\w-]*)((?:\.[\w-]+)+)(\+?)")


def _nested_update(target: dict, update: dict) -> None:
    """vLLM's recursive_dict_update for dotted keys: lists given with + accumulate."""
    for key, value in update.items():
        old = target.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            _nested_update(old, value)
        elif isinstance(old, list) and isinstance(value, list):
            old.extend(value)
        else:
            target[key] = value


def _rewrite(argv: list) -> list:
    """Underscores to dashes in flag names, the -O forms, and dotted JSON keys folded into one JSON value."""
    out: list = []
    for i, arg in enumerate(argv):
        if arg.startswith("--") and not arg.startswith("--help"):
            key, eq, value = arg.partition("=")
            name, dot, rest = key.partition(".")
            out.append(name.replace("_", "-") + dot + rest + eq + value)
        elif arg.startswith(("-O.", "-O{")):
            # -O was vLLM's alias of --compilation-config before it became --optimization-level.
            out += ["-cc" + arg[2:]] if arg.startswith("-O.") else ["-cc", arg[2:]]
        elif arg == "-O" and i + 1 < len(argv) and argv[i + 1].startswith("{"):
            out.append("-cc")
        else:
            out.append(arg)

    dicts: dict = {}
    result: list = []
    skip = False
    for i, arg in enumerate(out):
        if skip:
            skip = False
            continue
        key, eq, value = arg.partition("=")
        match = _DOTTED.fullmatch(key) if arg.startswith("-") else None
        if not match:
            result.append(arg)
            continue
        if not eq:
            if i + 1 >= len(out):
                raise ServeArgsError(f"{arg} needs a value")
            value, skip = out[i + 1], True
        option, path, plus = match.groups()
        parsed = [str(v) for v in value.split(",")] if plus else _scalar(value)
        nested: Any = parsed
        for part in reversed(path[1:].split(".")):
            nested = {part: nested}
        _nested_update(dicts.setdefault(option, {}), nested)
    for option, value in dicts.items():
        result += [option, json.dumps(value)]
    return result


# --- after parsing ---------------------------------------------------------------------------------

def _is_default(flag: Flag, value: Any) -> bool:
    # An unset bool (None) and an explicit --no-x mean the same: the feature is off.
    if flag.kind == BOOL and flag.default is None:
        return value in (None, False)
    return value == flag.default


def _spelled(flag: Flag, value: Any) -> str:
    """The flag and value as a user would type them, for one-line messages."""
    if flag.kind in (FLAG, BOOL):
        return flag.name if value else "--no-" + flag.name[2:]
    if flag.kind == BOOL_ARG:
        return f"{flag.name} {str(value).lower()}"
    if isinstance(value, list) and flag.kind == APPEND:
        return " ".join(f"{flag.name} {item}" for item in value)
    if isinstance(value, list) and flag.kind in (LIST, LIST_INT, LIST_FLOAT):
        return " ".join([flag.name, *map(str, value)])
    if isinstance(value, (dict, list)):
        return f"{flag.name} {json.dumps(value)}"
    return f"{flag.name} {value}"


def check_values(args: argparse.Namespace, table: tuple) -> None:
    """The Range checks of a dialect's table and of the worker flags; URLs get http:// without a scheme."""
    for flag in (*table, *WORKER_FLAGS):
        value = getattr(args, flag.dest)
        if flag.check is None or value is None or (flag.kind == SIZE_AUTO and value == -1):
            continue
        if not flag.check(value):
            raise ServeArgsError(f"{flag.name} must be {flag.check}, got {value}")
    for dest in ("gateway_address", "worker_url"):
        value = getattr(args, dest)
        if value is not None and "://" not in value:
            setattr(args, dest, "http://" + value)


def _check_values(args: argparse.Namespace) -> None:
    check_values(args, FLAGS)
    from cserve.cli.speculative_config import speculative_fields

    try:
        speculative_fields(args.speculative_config)
    except NotImplementedError as e:
        raise UnsupportedFlagError(f"--speculative-config: {e}") from None
    except ValueError as e:
        raise ServeArgsError(f"--speculative-config: {e}") from None
    if args.max_long_partial_prefills > args.max_num_partial_prefills:
        raise ServeArgsError(f"--max-long-partial-prefills ({args.max_long_partial_prefills}) must be <= "
                             f"--max-num-partial-prefills ({args.max_num_partial_prefills})")


def check_support(args: argparse.Namespace, table: tuple) -> None:
    for flag in table:
        value = getattr(args, flag.dest)
        refused = (flag.support == UNSUPPORTED and not _is_default(flag, value)) or (
            flag.support == ONLY and value not in flag.accepted and not _is_default(flag, value))
        if refused:
            raise UnsupportedFlagError(f"{_spelled(flag, value)} is not supported yet")


def dialect_of(argv: list) -> str:
    """The value of the last --backend / -be in argv (anywhere in it), "vllm" when there is none.
    An unknown value is returned as it is: the vLLM parser then reports it."""
    backend = "vllm"
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg in ("--backend", "-be") and i + 1 < len(argv):
            backend = argv[i + 1]
        elif arg.startswith(("--backend=", "-be=")):
            backend = arg.split("=", 1)[1]
    return backend


def parse_serve_args(argv: list) -> argparse.Namespace:
    """Parse `cserve serve` arguments (argv without "serve") in the dialect --backend names: vLLM's
    (the default) or SGLang's (cserve.cli.sglang_args); either way the result is the namespace of the
    vLLM dialect, plus the worker flags and `backend_args`. Help exits 0 and argparse errors exit 2
    (SystemExit); a bad value raises ServeArgsError, a value cserve lacks UnsupportedFlagError."""
    argv = [str(a) for a in argv]
    if dialect_of(argv) == "sglang":
        from cserve.cli.sglang_args import parse_sglang_args

        return parse_sglang_args(argv)
    parser = make_serve_parser()
    argv, config_path = _pull_config(argv)
    args = parser.parse_args(_rewrite(argv))
    if args.backend != "vllm":
        raise ServeArgsError(f"--backend {args.backend} must be given on the command line, not in --config")
    args.config = config_path
    # As in `vllm serve`: the MODEL positional wins over --model. Neither: None, and `serve` uses the
    # default model (cserve.model_source, which this module must not import: --help stays instant).
    args.model = args.model_tag or args.model
    if args.disable_log_requests is False:
        args.enable_log_requests = True
    _check_values(args)
    check_support(args, FLAGS)
    args.backend_args = _effective_values(args, FLAGS)
    return args


_GRAPH_KEYS = ("cudagraph_capture_sizes", "max_cudagraph_capture_size", "cudagraph_mode")


def table_notes(values: argparse.Namespace, table: tuple) -> list:
    """One INFO line per flag of `table` set to a non-default value that means nothing on cserve, and per
    accepted value that cserve serves as another."""
    notes = []
    for flag in table:
        value = getattr(values, flag.dest)
        if flag.support == NO_EFFECT and not _is_default(flag, value):
            notes.append(f"{flag.name}: no effect ({flag.reason})")
        notes += [f"{flag.name} {value}: {why}" for noted, why in flag.value_notes if noted == value]
    return notes


def no_effect_notes(args: argparse.Namespace) -> list:
    """One INFO line per flag set to a non-default value that means nothing on cserve (in the dialect
    the command line used)."""
    if getattr(args, "backend", "vllm") == "sglang":
        from cserve.cli.sglang_flags import SGLANG_FLAGS

        return table_notes(args.sglang, SGLANG_FLAGS)
    notes = table_notes(args, FLAGS)
    cc = getattr(args, "compilation_config", None)
    ignored = sorted(k for k in cc if k not in _GRAPH_KEYS) if isinstance(cc, dict) else []
    if ignored:
        notes.append(f"--compilation-config: no effect for {', '.join(ignored)} (cserve does not use torch.compile; "
                     f"it reads {', '.join(_GRAPH_KEYS)})")
    return notes


def engine_options(args: argparse.Namespace) -> dict:
    """EngineConfig field values; unset ones (None, or max_model_len -1) are left to the C++ defaults."""
    options = {}
    for flag in FLAGS:
        value = getattr(args, flag.dest)
        if flag.config != "engine" or value is None or (flag.kind == SIZE_AUTO and value == -1):
            continue
        if flag.dest == "hf_overrides":  # a JSON object, to the engine as its text
            if not value:
                continue
            value = json.dumps(value)
        options[flag.dest] = value
    options.update(_graph_options(getattr(args, "compilation_config", None) or {}, options))
    from cserve.cli.speculative_config import speculative_fields

    options.update(speculative_fields(getattr(args, "speculative_config", None)))
    return options


def _graph_options(cc, options: dict) -> dict:
    """The CUDA graph settings of -cc/--compilation-config; the plain flags win where both are set."""
    if not isinstance(cc, dict):
        return {}
    out = {}
    if cc.get("cudagraph_capture_sizes") is not None and "cudagraph_capture_sizes" not in options:
        out["cudagraph_capture_sizes"] = [int(v) for v in cc["cudagraph_capture_sizes"]]
    if cc.get("max_cudagraph_capture_size") is not None and "max_cudagraph_capture_size" not in options:
        out["max_cudagraph_capture_size"] = int(cc["max_cudagraph_capture_size"])
    if str(cc.get("cudagraph_mode", "")).upper() == "NONE":
        out["enforce_eager"] = True
    return out



# --- backend_args ------------------------------------------------------------------------------------

# Flags whose values are secrets: their value is replaced by "***" in backend_args.
SECRET_DESTS = frozenset({"api_key", "hf_token", "ssl_keyfile_password", "admin_api_key"})
REDACTED = "***"


def _effective_values(values: argparse.Namespace, table: tuple) -> dict:
    """{dest: value} of every flag of a dialect's table, as parsed (JSON-ready), secrets redacted."""
    out = {}
    for flag in table:
        value = copy.deepcopy(getattr(values, flag.dest))
        if flag.dest in SECRET_DESTS and value not in (None, True, False, ""):
            value = [REDACTED] * len(value) if isinstance(value, list) else REDACTED
        out[flag.dest] = value
    return out


def backend_args(args: argparse.Namespace) -> dict:
    """The effective flag values of the dialect the command line used, for a gateway's registration
    (the gateway "receives and stores all backend_args").

    Keys are the dialect's own option names as its namespace spells them: for --backend vllm the dests
    of `vllm serve` (model, max_model_len, gpu_memory_utilization, ...); for --backend sglang the
    fields of SGLang's ServerArgs (model_path, context_length, mem_fraction_static, tp_size, ...). Every
    flag of that dialect's table is there, defaults included, with the values as parsed (before the
    model name is resolved to a local path; SGLang's --random-seed as drawn when unset). The worker
    flags (--backend, --gateway-address, ...) are not: they describe the worker, not the backend.
    Secrets (--api-key, --hf-token, SSL key passwords) read "***" where set. The values are plain JSON
    types; the dict is a fresh copy.
    """
    values = getattr(args, "backend_args", None)
    if values is None:  # a namespace that did not come from parse_serve_args
        if getattr(args, "backend", "vllm") == "sglang":
            from cserve.cli.sglang_flags import SGLANG_FLAGS

            values = _effective_values(args.sglang, SGLANG_FLAGS)
        else:
            values = _effective_values(args, FLAGS)
    return copy.deepcopy(values)
