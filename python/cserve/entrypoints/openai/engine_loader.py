"""Loads the engine on a background thread as the very first step of `cserve serve`, so the
weights load while the server's Python modules import and the tokenizer loads (the engine
constructor releases the GIL). Imports nothing heavy itself."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future
from pathlib import Path


def start_engine_load(args) -> Future:
    """A future of (engine, engine config, seconds it took, its other tensor-parallel ranks or
    None); raises what loading raised."""
    from cserve.cli.args import engine_options
    from cserve.engine.tensor_parallel import start_engine
    from cserve.llm import _engine_config, check_executor_backend

    model = args.model
    if not Path(model).exists():
        raise FileNotFoundError(f"{model}: no such model directory or GGUF file")
    options = engine_options(args)
    options.pop("model", None)
    check_executor_backend(args.distributed_executor_backend,
                           options.get("tensor_parallel_size", 1) * options.get("pipeline_parallel_size", 1))
    config = _engine_config(model, options)
    config.num_threads = int(os.environ.get("CSERVE_NUM_THREADS", "0"))  # 0: every core (per rank)
    future: Future = Future()

    def load() -> None:
        t0 = time.perf_counter()
        bar = _progress_bar(config) if args.use_tqdm_on_load else None
        try:
            if args.data_parallel_size > 1:
                from cserve.engine.data_parallel import DataParallelEngine

                engine, ranks = DataParallelEngine(config, args.data_parallel_size, args.tokenizer or ""), None
            else:
                engine, ranks = start_engine(config)  # this thread runs rank 0's compute: pinned there
            future.set_result((engine, config, time.perf_counter() - t0, ranks))
        except BaseException as e:  # noqa: BLE001 - handed to whoever waits
            future.set_exception(e)
        finally:
            config.load_progress = None
            if bar is not None:
                bar.close()

    threading.Thread(target=load, name="cserve-load", daemon=True).start()
    return future


def _progress_bar(config):
    from tqdm import tqdm

    bar = tqdm(desc="Loading weights", unit="layer", dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    config.load_progress = progress
    return bar
