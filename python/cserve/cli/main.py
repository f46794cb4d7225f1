"""The `cserve` command: `cserve serve [MODEL] [OPTIONS]` (the flags of `vllm serve`, or of SGLang's
launch_server with --backend sglang) and
`cserve bench serve|sweep|throughput|latency` (the flags of `vllm bench`)."""

from __future__ import annotations

import json
import logging
import logging.config
import sys
from typing import Optional

USAGE = """usage: cserve <command> [options]

commands:
  serve [MODEL] [OPTIONS] start the OpenAI-compatible server (the flags of `vllm serve`;
                          `cserve serve --help` lists them); MODEL is a directory, a .gguf
                          file or a Hugging Face repo id, cserve's default model when unset
  serve --backend sglang --model-path MODEL [OPTIONS]
                          the same server, with the flags of SGLang's launch_server
                          (`cserve serve --backend sglang --help`)
  bench serve|sweep|throughput|latency [OPTIONS]
                          benchmarks with the flags and output of `vllm bench` (`serve` and
                          `sweep` against any OpenAI-compatible server; `cserve bench --help`)

options:
  -h, --help              show this help
  -v, --version           show the version
"""

logger = logging.getLogger("cserve")


def setup_logging(args) -> None:
    if getattr(args, "log_config_file", None):
        with open(args.log_config_file) as f:
            logging.config.dictConfig(json.load(f))
        return
    # vLLM's line format: "INFO 11-28 18:00:00 [api_server.py:123] message".
    # SGLang's --log-level (the SGLang dialect); INFO otherwise.
    level = str(getattr(args, "log_level", None) or "info").upper()
    logging.basicConfig(level=getattr(logging, level, logging.DEBUG), format="%(levelname)s %(asctime)s [%(filename)s:%(lineno)d] %(message)s",
                        datefmt="%m-%d %H:%M:%S")


def resolve_model_args(args) -> None:
    """Replaces args.model and args.tokenizer by local paths (downloading what is missing); the API
    keeps answering to the model as the user named it, as vLLM does. Raises ModelSourceError."""
    from cserve.model_source import DEFAULT_MODEL, resolve_model, resolve_tokenizer

    name = args.model or DEFAULT_MODEL
    if args.served_model_name is None:
        args.served_model_name = [name]
    hub = {"download_dir": args.download_dir, "hf_token": args.hf_token}
    path = resolve_model(name, revision=args.revision, ignore_patterns=args.ignore_patterns, **hub)
    args.model = str(path)
    # As in vLLM, the tokenizer is the model's unless named, at --tokenizer-revision, else --revision.
    tokenizer_revision = args.tokenizer_revision or args.revision
    tokenizer = args.tokenizer
    if tokenizer is None and tokenizer_revision != args.revision and path.is_dir():
        tokenizer = name
    if tokenizer is not None:
        args.tokenizer = str(resolve_tokenizer(tokenizer, revision=tokenizer_revision, **hub))
    if args.model != name:
        logger.info("Model %s: %s", name, args.model)


def serve(argv: list[str]) -> int:
    from cserve.cli.args import UnsupportedFlagError, no_effect_notes, parse_serve_args

    try:
        args = parse_serve_args(argv)
        from cserve.entrypoints.openai.chat_parsing import check_parser_flags

        check_parser_flags(args)  # parser names and plugin files, before any loading
    except (UnsupportedFlagError, ValueError) as e:
        print(f"cserve serve: error: {e}", file=sys.stderr)
        return 2
    setup_logging(args)
    for note in no_effect_notes(args):
        logger.info(note)
    from cserve.model_source import ModelSourceError

    try:
        resolve_model_args(args)
    except ModelSourceError as e:
        logger.error("%s", e)
        return 1
    try:
        if args.headless:
            from cserve.engine.headless import run_headless
            from cserve.engine.tensor_parallel import MultiNode, run_node_ranks
            from cserve.entrypoints.openai.engine_loader import engine_config_from_args

            config = engine_config_from_args(args)
            nodes = MultiNode.from_args(args)
            return run_node_ranks(config, nodes) if nodes is not None else run_headless(args, config)
        from cserve.entrypoints.openai.api_servers import check_api_server_count, run_api_servers

        count = check_api_server_count(args)
        if count > 1:
            return run_api_servers(args, argv, count)
        from cserve.entrypoints.openai.engine_loader import start_engine_load

        pending = start_engine_load(args)  # the weights load while the server's modules import
        from cserve.entrypoints.openai.api_server import run_server

        return run_server(args, pending)
    except (FileNotFoundError, ValueError, NotImplementedError, RuntimeError) as e:
        logger.error("%s", e)
        return 1


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if argv else 2
    if argv[0] in ("-v", "--version"):
        from cserve import __version__

        print(__version__)
        return 0
    if argv[0] == "serve":
        return serve(argv[1:])
    if argv[0] == "bench":
        from cserve.bench.cli import main as bench

        return bench(argv[1:])
    print(f"cserve: unknown command {argv[0]!r}\n\n{USAGE}", file=sys.stderr, end="")
    return 2


if __name__ == "__main__":
    sys.exit(main())
