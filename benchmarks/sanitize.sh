#!/usr/bin/env bash
# The C++ runtime under AddressSanitizer + UndefinedBehaviorSanitizer: build a sanitized copy of
# cserve._core (CMake option CSERVE_SANITIZE) and run the engine, scheduler, KV cache, sampler,
# loader and LLM tests against it. Any ASan or UBSan report stops the test process.
#
# From the repository root:   benchmarks/sanitize.sh [pytest args]   (default: the tests below)
#
# It never touches the normal install (.venv, build/<wheel_tag>). Everything lives in
# build/sanitize/:
#   cmake/  the sanitized build (RelWithDebInfo, CPU only: the CUDA backend is not built),
#   pkg/    python/cserve copied, plus the sanitized _core,
#   venv/   a venv that sees .venv's packages (torch, transformers, pytest) through a .pth file,
#           but not .venv's editable cserve: its import hook would win over PYTHONPATH,
#   pytest.log  the test output, sanitizer reports included.
# The first build takes several minutes; later runs rebuild incrementally.
#
# Python is not built with ASan, so the ASan and UBSan runtimes are preloaded (LD_PRELOAD).
# detect_leaks=0: at exit CPython, torch and the other extensions keep memory that LeakSanitizer
# reports as leaks; that is noise, not cserve. torch's CPU build runs fine under the preload.
# pytest runs with --capture=sys: the reports are written to file descriptor 2 by a process that
# then stops, and pytest's default (fd) capture would swallow them.
# Environment: PYTHON (.venv/bin/python), SANITIZE (address,undefined), CSERVE_BUILD_LOCK (a
# file: the build runs under `flock` on it), CMAKE_BUILD_PARALLEL_LEVEL (2).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
python="${PYTHON:-$root/.venv/bin/python}"
sanitize="${SANITIZE:-address,undefined}"
dir="$root/build/sanitize"
mkdir -p "$dir"

# 1. the sanitized _core
lock=()
[ -n "${CSERVE_BUILD_LOCK:-}" ] && lock=(flock "$CSERVE_BUILD_LOCK")
t0=$(date +%s)
"${lock[@]}" cmake -S . -B "$dir/cmake" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCSERVE_SANITIZE="$sanitize" -DCSERVE_CUDA=off -DCSERVE_BUILD_GRPC=OFF \
  -DPython_EXECUTABLE="$python" > "$dir/cmake.log" 2>&1 \
  || { tail -n 30 "$dir/cmake.log"; exit 1; }
"${lock[@]}" cmake --build "$dir/cmake" -j "${CMAKE_BUILD_PARALLEL_LEVEL:-2}" --target _core _core_stub \
  > "$dir/build.log" 2>&1 || { tail -n 60 "$dir/build.log"; exit 1; }
echo "sanitize: build $(( $(date +%s) - t0 )) s"

# 2. the package and the venv
rm -rf "$dir/pkg" && mkdir -p "$dir/pkg"
cp -r python/cserve "$dir/pkg/"
find "$dir/pkg" -name '*.so' -delete
cp "$dir"/cmake/_core*.so "$dir/pkg/cserve/"
venv="$dir/venv"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv --without-pip "$venv"
fi
site=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
vsite=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$site" > "$vsite/_cserve_base_venv.pth"

# 3. the tests
libs=()
for san in asan ubsan; do
  [[ $san == asan && $sanitize != *address* ]] && continue
  [[ $san == ubsan && $sanitize != *undefined* ]] && continue
  lib=$(${CXX:-g++} -print-file-name=lib$san.so)
  [ -e "$lib" ] || { echo "sanitize: lib$san.so not found"; exit 1; }
  libs+=("$lib")
done
export LD_PRELOAD="$(IFS=:; echo "${libs[*]}")${LD_PRELOAD:+:$LD_PRELOAD}"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
export PYTHONPATH="$dir/pkg:$root"
"$venv/bin/python" -c 'import cserve._core as c; print("sanitize: cserve._core from", c.__file__)'
[ $# -gt 0 ] || set -- tests/engine tests/sched tests/kv tests/sample tests/loader tests/test_llm.py \
  tests/test_llm_stop_strings.py
t0=$(date +%s)
status=0
"$venv/bin/python" -m pytest -v -p no:cacheprovider --capture=sys "$@" 2>&1 | tee "$dir/pytest.log" \
  || status=$?
if grep -q -E "ERROR: AddressSanitizer|runtime error:" "$dir/pytest.log"; then
  echo "sanitize: sanitizer report(s) in $dir/pytest.log:"
  grep -E "ERROR: AddressSanitizer|runtime error:|SUMMARY:" "$dir/pytest.log"
  status=1
fi
echo "sanitize: pytest rc $status, $(( $(date +%s) - t0 )) s"
exit $status
