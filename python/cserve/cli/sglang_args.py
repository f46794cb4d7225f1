"""`cserve serve --backend sglang ...`: the command line read as SGLang's `launch_server` reads it
(the table in sglang_flags.py), turned into the namespace of the vLLM dialect that the server reads.

The namespace returned has every vLLM dest (their vLLM defaults where no SGLang flag sets them),
the worker flags, `backend` = "sglang", `sglang` (the SGLang namespace as parsed, e.g. for
/get_server_info), `log_level` (SGLang's --log-level) and `backend_args` (args.backend_args()).

Only the standard library here: help must be instant.
"""

from __future__ import annotations

import argparse
import random

from cserve.cli.args import (
    PROG, UnsupportedFlagError, _effective_values, build_parser, check_support, check_values, make_serve_parser,
)
from cserve.cli.flags import BY_NAME, ONLY, SUPPORTED, WORKER_FLAGS
from cserve.cli.sglang_flags import SGLANG_COMMON, SGLANG_FLAGS, SGLANG_GROUPS, SGLangValueError

__all__ = ["make_sglang_parser", "parse_sglang_args", "vllm_values"]


def make_sglang_parser() -> argparse.ArgumentParser:
    """The parser of the SGLang dialect: SGLang's flags (no MODEL positional), then the worker flags."""
    return build_parser(SGLANG_FLAGS, SGLANG_GROUPS, SGLANG_COMMON,
                        f"{PROG} --backend sglang --model-path MODEL [options]",
                        "Start the server with the flags of SGLang's launch_server (cserve is the engine).",
                        positional=False)


def vllm_values(ns: argparse.Namespace) -> dict:
    """{vLLM dest: value} for every honoured SGLang flag, through the table's `to` and `convert`."""
    out: dict = {}
    for flag in SGLANG_FLAGS:
        if flag.support not in (SUPPORTED, ONLY) or not flag.to:
            continue
        value = getattr(ns, flag.dest)
        if flag.convert is not None:
            try:
                out.update(flag.convert(value, ns))
            except SGLangValueError as e:
                raise UnsupportedFlagError(str(e)) from None
        else:
            (name,) = flag.to
            out[BY_NAME[name].dest] = value
    return out


def parse_sglang_args(argv: list) -> argparse.Namespace:
    """Parse `cserve serve` arguments in the SGLang dialect (argv may hold --backend sglang anywhere).
    Errors as parse_serve_args: SystemExit for help and argparse errors, ServeArgsError for a bad
    value, UnsupportedFlagError (one line) for a value cserve lacks."""
    parser = make_sglang_parser()
    ns = parser.parse_args(argv)
    if ns.model_path is None:
        parser.error("the following arguments are required: --model-path/--model")
    check_values(ns, SGLANG_FLAGS)
    check_support(ns, SGLANG_FLAGS)
    if ns.random_seed is None:  # as SGLang's ServerArgs does
        ns.random_seed = random.randint(0, 1 << 30)
    args = make_serve_parser().parse_args([])  # the vLLM dialect's defaults
    for flag in WORKER_FLAGS:
        setattr(args, flag.dest, getattr(ns, flag.dest))
    for dest, value in vllm_values(ns).items():
        setattr(args, dest, value)
    args.config = None
    args.sglang = ns
    args.backend_args = _effective_values(ns, SGLANG_FLAGS)
    return args
