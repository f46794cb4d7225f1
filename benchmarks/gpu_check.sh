#!/usr/bin/env bash
# Every GPU check in one device call (see /work/.library/device/README.md): build the C++ core,
# the CUDA backend and the kernel test module with CMake (the GPU machine has cmake, ninja,
# nanobind, numpy, torch, transformers and pytest, but no registry), then
#   1. the CUDA kernel and backend tests (tests/cuda),
#   2. the model parity suite again on the GPU (CSERVE_TEST_DEVICE=cuda),
#   parallel: tensor parallelism on GPUs: NCCL as loaded from the wheel, the custom all-reduce in
#      CUDA graphs and its barrier timeout (one GPU is enough), the device communicator between
#      2 processes and -tp 2 against -tp 1 (these two skip with fewer than 2 GPUs),
#   3. kernel figures: copy bandwidth, cuBLASLt GEMMs of an 8B layer, decode attention
#      (benchmarks/gpu_kernels.py),
#   4. the Llama-3-8B-shaped benchmarks of issue 7 (--load-format dummy, bf16): one stream
#      (cserve bench latency) and 1000 requests of 200 in / 180 out (cserve bench throughput).
# From the repository root:   device run: bash benchmarks/gpu_check.sh
# Results land in $OUT: gpu.txt, build logs, junit XML, test logs, bench-*.txt/json.
# STAGES="tests parallel parity kernels bench" picks stages; BENCH_PROMPTS (1000) shrinks the throughput run;
# STAGE_TIMEOUT (300 s) bounds each stage, so one hang cannot take the whole device time.
set -uo pipefail
out="${OUT:-/tmp/cserve-gpu}"
mkdir -p "$out"
stages="${STAGES:-tests parallel parity kernels bench}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
build=/tmp/cserve-gpu-build
t0=$(date +%s)
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DPython_EXECUTABLE="$(command -v python3)" \
  -DCSERVE_BUILD_GRPC=OFF -DCSERVE_CUDA=on -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHS:-90a}" > "$out/cmake.log" 2>&1 \
  && ninja -C "$build" -j"$(nproc)" _core _cuda cserve_cuda > "$out/build.log" 2>&1 \
  || { echo "build failed (see build.log)"; tail -n 40 "$out/cmake.log" "$out/build.log"; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s" | tee "$out/times.txt"
pkg=/tmp/cserve-gpu-pkg
rm -rf "$pkg" && mkdir -p "$pkg"
cp -r python/cserve "$pkg/"
cp "$build"/_core*.so "$build"/_cuda*.so "$build"/libcserve_cuda.so "$pkg/cserve/"
export PYTHONPATH="$pkg:.:${PYTHONPATH:-}"
python3 -c "from cserve import _core; print('device auto ->', _core.resolve_device('auto'))" | tee -a "$out/gpu.txt"
status=0
stage() { [[ " $stages " == *" $1 "* ]]; }
timed() {  # name, command... (each stage stops after STAGE_TIMEOUT seconds, 300 by default)
  local name=$1; shift
  local s=$(date +%s)
  timeout "${STAGE_TIMEOUT:-300}" "$@" > "$out/$name.log" 2>&1; local rc=$?
  echo "$name: rc $rc, $(( $(date +%s) - s )) s" | tee -a "$out/times.txt"
  tail -5 "$out/$name.log"
  [[ $rc -eq 0 ]] || status=1
}
if stage tests; then
  timed tests python3 -m pytest -q -p no:cacheprovider tests/cuda tests/backend/test_device.py \
    --ignore-glob='tests/cuda/*_parallel*' --ignore-glob='tests/cuda/*communicator*' \
    --ignore-glob='tests/cuda/*nccl*' --ignore-glob='tests/cuda/*all_reduce_graph*' --junitxml="$out/cuda.xml"
  if [[ $status -ne 0 ]]; then  # triage: the backend tests again on the simplest attention kernel
    CSERVE_CUDA_SIMPLE_KERNELS=1 timed triage-simple-kernels python3 -m pytest -q -p no:cacheprovider \
      tests/cuda/test_backend.py --junitxml="$out/triage.xml"
  fi
fi
if stage parallel; then
  python3 -c "from cserve.cuda_libs import find_nccl; print('NCCL:', find_nccl() or 'not found (pip install nvidia-nccl-cu13)')" \
    | tee -a "$out/gpu.txt"
  timed parallel python3 -m pytest -q -p no:cacheprovider tests/cuda/test_nccl_library.py \
    tests/cuda/test_custom_all_reduce_graph.py tests/cuda/test_device_communicator.py \
    tests/cuda/test_tensor_parallel_cuda.py tests/backend/test_vocab_shard_ops.py -rs --junitxml="$out/parallel.xml"
fi
if stage parity; then
  CSERVE_TEST_DEVICE=cuda timed parity python3 -m pytest -q -p no:cacheprovider tests/model/test_parity.py \
    tests/model/test_dtypes.py --junitxml="$out/parity.xml"
fi
if stage kernels; then
  timed kernels python3 benchmarks/gpu_kernels.py --output-json "$out/kernels.json"
fi
if stage bench; then
  model=/tmp/llama3-8b-dummy
  mkdir -p "$model" && cp benchmarks/configs/llama3-8b.json "$model/config.json"
  common=(--model "$model" --load-format dummy --dtype bfloat16 --device cuda --kv-cache-memory-bytes 0
          --no-bandwidth-probe --disable-tqdm)
  timed bench-latency python3 benchmarks/latency.py "${common[@]}" --batch-size 1 --input-len 32 --output-len 128 \
    --num-iters-warmup 2 --num-iters 5 --output-json "$out/bench-latency.json"
  timed bench-throughput python3 benchmarks/throughput.py "${common[@]}" --num-prompts "${BENCH_PROMPTS:-1000}" \
    --input-len 200 --output-len 180 --max-num-seqs 256 --no-split --output-json "$out/bench-throughput.json"
fi
exit $status
