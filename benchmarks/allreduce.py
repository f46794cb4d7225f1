"""All-reduce latency and bandwidth on the CPU: cserve's shared-memory communicator and its gloo
communicator (gloo's TCP transport, for ranks on several hosts; here over loopback) beside
torch.distributed's gloo backend, measured in the same run by the same rank processes.

    python benchmarks/allreduce.py                     # 2 ranks, 4 KiB .. 64 MiB, float32 and bfloat16
    python benchmarks/allreduce.py --ranks 4 --dtypes float32 --sizes 4K 1M 64M --no-gloo --no-cserve-gloo

Each rank is a process (spawned), pinned to its own core when there are enough (--no-pin
leaves them free). For every message size and dtype both implementations run the same number
of in-place all-reduces on the same buffer after a warm-up; the time is rank 0's wall time per
call. Bandwidth is algorithm bandwidth (message bytes / time per call, as nccl-tests' algbw).
The first line is the machine's single-thread copy bandwidth (bytes read + written), the ceiling
a shared-memory all-reduce is built from.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import socket
import subprocess
import tempfile
import time
import uuid

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
DEFAULT_SIZES = ["4K", "16K", "64K", "256K", "1M", "4M", "16M", "64M"]


def parse_size(text: str) -> int:
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    return int(float(text[:-1]) * units[text[-1]]) if text and text[-1] in units else int(text)


def size_label(n: int) -> str:
    for unit, scale in (("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} B"


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown CPU"


def copy_bandwidth() -> float:
    import numpy as np

    src = np.random.default_rng(0).random(2**24, dtype=np.float32)  # 64 MiB
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.nbytes / best / 1e9


def iterations_for(seconds_per_call: float, target: float) -> int:
    return max(5, min(20000, int(target / max(seconds_per_call, 1e-7))))


def rank_main(rank: int, size: int, args, store_path: str, shm_name: str, gloo_address: str, queue) -> None:
    import numpy as np

    if args.pin and os.cpu_count() and os.cpu_count() >= size:
        os.sched_setaffinity(0, {rank})
    from cserve._core import comm

    c = comm.ShmCommunicator(shm_name, rank, size, 120.0, args.buffer_bytes)
    ours_gloo = comm.GlooCommunicator(gloo_address, shm_name, rank, size, 120.0) if args.cserve_gloo else None
    dist = None
    if args.gloo:
        import torch
        import torch.distributed as dist

        torch.set_num_threads(1)
        dist.init_process_group("gloo", store=dist.FileStore(store_path, size), rank=rank, world_size=size)

    def agree(value: float) -> float:
        """Rank 0's value on every rank (iteration counts must match)."""
        box = np.array([value], np.float32)
        c.broadcast(box, 0)
        return float(box[0])

    def timed(call, iterations: int) -> float:
        c.barrier()
        t = time.perf_counter()
        for _ in range(iterations):
            call()
        return (time.perf_counter() - t) / iterations

    def run(call) -> float:
        for _ in range(3):
            call()
        probe = agree(timed(call, 3))
        return timed(call, iterations_for(probe, args.seconds))

    rows = []
    for dtype in args.dtypes:
        for nbytes in args.sizes:
            n = nbytes // DTYPE_BYTES[dtype]
            values = np.random.default_rng(rank).standard_normal(n).astype(np.float32)
            if dtype == "float32":
                ours = values
            elif dtype == "float16":
                ours = values.astype(np.float16)
            else:
                ours = (values.view(np.uint32) >> 16).astype(np.uint16)
            ours_dtype = "bfloat16" if dtype == "bfloat16" else ""
            row = {"dtype": dtype, "bytes": nbytes, "cserve": run(lambda: c.all_reduce(ours, ours_dtype))}
            if ours_gloo is not None:
                row["cserve_gloo"] = run(lambda: ours_gloo.all_reduce(ours, ours_dtype))
            if dist is not None:
                import torch

                tensor = torch.from_numpy(values).to(getattr(torch, dtype))
                row["gloo"] = run(lambda: dist.all_reduce(tensor))
            rows.append(row)
    if dist is not None:
        dist.destroy_process_group()
    if rank == 0:
        queue.put(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--sizes", nargs="+", default=DEFAULT_SIZES, help="message sizes in bytes (4K, 1M, ...)")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=sorted(DTYPE_BYTES))
    parser.add_argument("--seconds", type=float, default=0.3, help="time per measurement (default 0.3)")
    parser.add_argument("--buffer-bytes", type=int, default=0,
                        help="cserve's staging buffer per rank (default: CSERVE_SHM_COMM_BYTES or 2 MiB)")
    parser.add_argument("--no-gloo", dest="gloo", action="store_false", help="skip torch.distributed gloo")
    parser.add_argument("--no-cserve-gloo", dest="cserve_gloo", action="store_false",
                        help="skip cserve's gloo communicator")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin rank r to core r")
    args = parser.parse_args()
    args.sizes = [parse_size(s) for s in args.sizes]

    print(f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs; {args.ranks} ranks as processes"
          f"{', pinned one per core' if args.pin and (os.cpu_count() or 0) >= args.ranks else ''}")
    print(f"single-thread copy bandwidth (read + write): {copy_bandwidth():.1f} GB/s")
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "gloo_store")
        shm_name = f"cserve-bench-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            gloo_address = f"127.0.0.1:{s.getsockname()[1]}"
        procs = [ctx.Process(target=rank_main, args=(r, args.ranks, args, store, shm_name, gloo_address, queue))
                 for r in range(args.ranks)]
        for p in procs:
            p.start()
        rows = queue.get()
        for p in procs:
            p.join()
    if any(p.exitcode for p in procs):
        raise SystemExit("a rank failed")

    header = "| dtype | size | cserve shm µs | cserve GB/s |"
    rule = "|---|---:|---:|---:|"
    if args.cserve_gloo:
        header += " cserve gloo µs | cserve gloo GB/s |"
        rule += "---:|---:|"
    if args.gloo:
        header += " gloo µs | gloo GB/s | speed-up |"
        rule += "---:|---:|---:|"
    print(header)
    print(rule)
    for row in rows:
        ours = row["cserve"]
        line = f"| {row['dtype']} | {size_label(row['bytes'])} | {ours * 1e6:.1f} | {row['bytes'] / ours / 1e9:.2f} |"
        if "cserve_gloo" in row:
            line += f" {row['cserve_gloo'] * 1e6:.1f} | {row['bytes'] / row['cserve_gloo'] / 1e9:.2f} |"
        if "gloo" in row:
            line += f" {row['gloo'] * 1e6:.1f} | {row['bytes'] / row['gloo'] / 1e9:.2f} | {row['gloo'] / ours:.1f}x |"
        print(line)


if __name__ == "__main__":
    main()
