"""Loads the engine on a background thread as the very first step of `cserve serve`, so the
weights load while the server's Python modules import and the tokenizer loads (the engine
constructor releases the GIL). Imports nothing heavy itself."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future
from pathlib import Path


def engine_config_from_args(args):
    """The EngineConfig of `cserve serve`'s flags; refuses bad parallel layouts first."""
    from cserve.cli.args import engine_options
    from cserve.engine.data_parallel_layout import layout_from_args
    from cserve.engine.tensor_parallel import MultiNode
    from cserve.llm import _engine_config, check_executor_backend

    model = args.model
    if not Path(model).exists():
        raise FileNotFoundError(f"{model}: no such model directory or GGUF file")
    options = engine_options(args)
    options.pop("model", None)
    check_executor_backend(args.distributed_executor_backend,
                           options.get("tensor_parallel_size", 1) * options.get("pipeline_parallel_size", 1))
    layout_from_args(args)  # refuses a bad data-parallel or multi-node layout before anything loads
    MultiNode.from_args(args)
    if args.data_parallel_backend == "ray" and args.data_parallel_size > 1:
        from cserve.engine.ray_executor import check_ray_data_parallel

        check_ray_data_parallel(args)
    config = _engine_config(model, options)
    config.num_threads = int(os.environ.get("CSERVE_NUM_THREADS", "0"))  # 0: every core (per rank)
    return config


def start_engine_load(args) -> Future:
    """A future of (engine, engine config, seconds it took, its other tensor-parallel ranks or
    None); raises what loading raised."""
    from cserve.engine.data_parallel_layout import layout_from_args
    from cserve.engine.tensor_parallel import MultiNode, start_engine

    config = engine_config_from_args(args)
    future: Future = Future()

    def load() -> None:
        t0 = time.perf_counter()
        bar = _progress_bar(config) if args.use_tqdm_on_load else None
        try:
            layout = layout_from_args(args)
            if layout.size > 1 and not (layout.hybrid and layout.local == 1):
                from cserve.engine.data_parallel import DataParallelEngine

                if args.data_parallel_backend == "ray":  # the replicas as Ray actors
                    from cserve.engine.ray_executor import RayDataParallelEngine as DataParallelEngine
                engine = DataParallelEngine(config, layout.size, args.tokenizer or "", local=layout.local,
                                            start_index=0 if layout.hybrid else layout.start,
                                            address=layout.address, placement=args.data_parallel_load_balance,
                                            first_label=layout.first_label)
                ranks = None
            elif args.distributed_executor_backend == "ray":  # ranks 1..N-1 as Ray actors
                from cserve.engine.ray_executor import start_engine_on_ray

                engine, ranks = start_engine_on_ray(config)
            else:  # this thread runs rank 0's compute: pinned there
                engine, ranks = start_engine(config, nodes=MultiNode.from_args(args))
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
