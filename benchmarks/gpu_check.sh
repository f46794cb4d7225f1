#!/usr/bin/env bash
# The GPU checks in one device call (see /work/.library/device/README.md): build the C++
# core and the CUDA kernels with CMake (the GPU machine has cmake, ninja, nanobind, numpy and
# pytest but no registry), then run the CUDA kernel tests. From the repository root:
#   device run: bash benchmarks/gpu_check.sh
# Results land in $OUT (junit XML and the log) when run by the device tool.
set -euo pipefail
out="${OUT:-/tmp/cserve-gpu}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
build=/tmp/cserve-gpu-build
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DPython_EXECUTABLE="$(command -v python3)" \
  -DCSERVE_BUILD_GRPC=OFF -DCSERVE_CUDA=on -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHS:-90a}" > "$out/cmake.log"
ninja -C "$build" -j"$(nproc)" _core _cuda > "$out/build.log"
pkg=/tmp/cserve-gpu-pkg
rm -rf "$pkg" && mkdir -p "$pkg"
cp -r python/cserve "$pkg/"
cp "$build"/_core*.so "$build"/_cuda*.so "$pkg/cserve/"
PYTHONPATH="$pkg:." python3 -m pytest -q -p no:cacheprovider tests/cuda --junitxml="$out/cuda.xml" 2>&1 | tee "$out/tests.log"
