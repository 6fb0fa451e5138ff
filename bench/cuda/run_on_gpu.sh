#!/usr/bin/env bash
# attnkit's CUDA backend vs PyTorch SDPA on the GPU at hand (issue 6), in one command:
#
#   bench/cuda/run_on_gpu.sh [extra bench_vs_sdpa.py arguments]
#
# 1. builds bench/cuda/attnkit_torch_ops.cu into a shared library for sm_90 (H100/H200) with nvcc;
# 2. runs bench/cuda/bench_vs_sdpa.py with python3 (torch with CUDA), which checks every attnkit
#    output against SDPA before timing it and prints markdown tables for bench/RESULTS.md.
#
# Exits non-zero if the build, a check or a section fails. When $OUT is set, results.md,
# results.json, the full log (bench.log, build.log) and nvidia-smi's report are written there.
# Environment: NVCC (compiler, default: nvcc on PATH, else /usr/local/cuda/bin/nvcc), PYTHON
# (default python3), ATTNKIT_BENCH_BUILD_DIR (default build/cuda-bench), ATTNKIT_CUDA_ARCH
# (default 90: -gencode arch=compute_90,code=sm_90).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."

out="${OUT:-}"
build_dir="${ATTNKIT_BENCH_BUILD_DIR:-build/cuda-bench}"
arch="${ATTNKIT_CUDA_ARCH:-90}"
python="${PYTHON:-python3}"
log_dir="${out:-$build_dir}"
mkdir -p "$build_dir" "$log_dir"

nvcc="${NVCC:-}"
if [[ -z "$nvcc" ]]; then
  if command -v nvcc >/dev/null 2>&1; then
    nvcc="$(command -v nvcc)"
  elif [[ -x /usr/local/cuda/bin/nvcc ]]; then
    nvcc=/usr/local/cuda/bin/nvcc
  else
    echo "run_on_gpu.sh: nvcc not found (set NVCC=/path/to/nvcc)" >&2
    exit 1
  fi
fi

if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi >"$log_dir/nvidia-smi.txt" 2>&1 || true
  nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv || true
fi

library="$build_dir/attnkit_torch_ops.so"
build=("$nvcc" -std=c++20 -O3 -I include -gencode "arch=compute_${arch},code=sm_${arch}"
  -Xcompiler -fPIC -shared bench/cuda/attnkit_torch_ops.cu -o "$library")
echo "=== build ($("$nvcc" --version | tail -n 1))"
echo "${build[*]}"
start=$SECONDS
if ! "${build[@]}" >"$log_dir/build.log" 2>&1; then
  cat "$log_dir/build.log" >&2
  echo "run_on_gpu.sh: the build failed" >&2
  exit 1
fi
cat "$log_dir/build.log"
echo "built $library in $((SECONDS - start)) s"

echo "=== benchmark"
export PYTHONUNBUFFERED=1
export ATTNKIT_BUILD_COMMAND="${build[*]}"
export ATTNKIT_BENCH_COMMAND="bench/cuda/run_on_gpu.sh${*:+ $*}"
"$python" bench/cuda/bench_vs_sdpa.py --lib "$library" ${out:+--out "$out"} "$@" 2>&1 |
  tee "$log_dir/bench.log"
