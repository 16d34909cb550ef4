#!/usr/bin/env bash
# The GPU check (issue 20) for a maintainer with one NVIDIA GPU and the CUDA toolkit: builds
# memtrain with --features cuda, runs the CubeCL kernel tests on CUDA (each op against the same
# op on the CPU backend, forward and every gradient; the device meter against the formulas),
# then benches the gpt2 preset at seq 1024, batch 8 on CUDA: plain burn, the exact savers, the
# savers with 2-bit GELU, and a plan for 1/8 of plain burn's activation bytes. Writes the GPU's
# name, the logs and the bench rows as JSON under $OUT (default target/gpu-check); record the
# tables in docs/BENCHMARKS.md with the GPU's name.
#
# Usage: bash scripts/gpu-check.sh        (about 8 minutes on 16 cores, most of it the build)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-target/gpu-check}"
mkdir -p "$out"
export CARGO_TERM_COLOR=never

echo "== GPU"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.csv"

echo "== build (--features cuda)"
cargo build --release -p memtrain-cli --features cuda
bin="${CARGO_TARGET_DIR:-target}/release/memtrain"

echo "== kernel tests on CUDA (tests/cube.rs)"
MEMTRAIN_TEST_DEVICE=cuda cargo test --release -p memtrain --features cuda --test cube \
    -- --test-threads=1 2>&1 | tee "$out/cube-tests.log"

echo "== bench: gpt2, seq 1024, batch 8"
common=(--device cuda --preset gpt2 --seq 1024 --batch 8 --steps 4)
"$bin" bench "${common[@]}" \
    --policies "act=exact;act=inverted,norm=output,attn=memeff;act=fewbit:2,norm=output,attn=memeff" \
    --json "$out/bench.json" 2>&1 | tee "$out/bench.log"

echo "== bench: a plan for 1/8 of plain burn's activation bytes"
"$bin" bench "${common[@]}" --budget 1/8 --json "$out/budget.json" 2>&1 | tee "$out/budget.log"

echo "== gpu check done: $out"
