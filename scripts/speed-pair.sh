#!/usr/bin/env bash
# memtrain against PyTorch in one run (docs/BENCHMARKS.md, "CPU step speed ... issue 26"):
# alternates scripts/torch_reference.py (fused SDPA, AdamW) and `memtrain bench` with the exact
# savers, ROUNDS times on the same geometry, and prints each program's median step per round,
# the median of those medians, their spread ((max - min) / median) and the ratios to PyTorch.
#
#   bash scripts/speed-pair.sh                     # small, batch 8, 3 rounds, fp32
#   ROUNDS=5 STEPS=8 bash scripts/speed-pair.sh
#   PRECISION=bf16 bash scripts/speed-pair.sh      # memtrain --precision bf16 against PyTorch
#                                                  # fp32 and torch.autocast(bfloat16)
#   BEFORE=/path/to/old/memtrain bash scripts/speed-pair.sh   # an older build in each round too
#
# Needs a release build (cargo build --release -p memtrain-cli), tinyshakespeare under
# ../shared/data (or DATA=path) and PyTorch (PYTHON=path; see scripts/torch_reference.py).
# Run nothing else meanwhile: the programs are compared on time.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/memtrain}
DATA=${DATA:-../shared/data/tinyshakespeare.txt}
PYTHON=${PYTHON:-$HOME/.cache/memtrain/torchenv/bin/python}
ROUNDS=${ROUNDS:-3}
STEPS=${STEPS:-6}
PRECISION=${PRECISION:-fp32}
POLICY=${POLICY:-act=inverted,norm=output,attn=memeff,linear=gemm}
SHAPE=(--preset "${PRESET:-small}" --batch "${BATCH:-8}")
case "$PRECISION" in
fp32 | bf16) ;;
*) echo "speed-pair: PRECISION=$PRECISION, expected fp32 or bf16" >&2; exit 1 ;;
esac
for f in "$BIN" "$DATA" ${BEFORE:+"$BEFORE"}; do
    [ -e "$f" ] || { echo "speed-pair: $f not found" >&2; exit 1; }
done
"$PYTHON" -c "import torch" 2>/dev/null || {
    echo "speed-pair: no PyTorch at $PYTHON (set PYTHON=...; see scripts/torch_reference.py)" >&2
    exit 1
}
OUT=target/speed-pair
mkdir -p "$OUT"

torch_run() { # precision round
    "$PYTHON" scripts/torch_reference.py "${SHAPE[@]}" --steps "$STEPS" --data "$DATA" \
        --precision "$1" > "$OUT/torch-$1-$2.txt"
    sed -n 's/^torch: median \([0-9.]*\) s.*/\1/p' "$OUT/torch-$1-$2.txt"
}
memtrain_run() { # binary name round [extra args]
    local bin=$1 name=$2 round=$3
    shift 3
    "$bin" bench "${SHAPE[@]}" --steps "$STEPS" --data "$DATA" --policies "$POLICY" "$@" \
        --json "$OUT/$name-$round.json" > "$OUT/$name-$round.txt" 2>/dev/null
    sed -n 's/.*"step_seconds_median": *\([0-9.e-]*\).*/\1/p' "$OUT/$name-$round.json" | head -1
}

declare -A times
names=()
add() { # name seconds
    [[ " ${names[*]} " == *" $1 "* ]] || names+=("$1")
    times[$1]="${times[$1]:-} $2"
}
for r in $(seq 1 "$ROUNDS"); do
    line="round $r:"
    t=$(torch_run fp32 "$r"); add torch-fp32 "$t"; line+=" torch-fp32 $t s"
    if [ "$PRECISION" = bf16 ]; then
        t=$(torch_run bf16 "$r"); add torch-bf16 "$t"; line+=", torch-bf16 $t s"
        m=$(memtrain_run "$BIN" memtrain-bf16 "$r" --precision bf16); add memtrain-bf16 "$m"
        line+=", memtrain-bf16 $m s"
    else
        m=$(memtrain_run "$BIN" memtrain-fp32 "$r"); add memtrain-fp32 "$m"
        line+=", memtrain-fp32 $m s"
    fi
    if [ -n "${BEFORE:-}" ]; then
        m=$(memtrain_run "$BEFORE" before-fp32 "$r"); add before-fp32 "$m"
        line+=", before-fp32 $m s"
    fi
    echo "$line"
done
args=()
for n in "${names[@]}"; do args+=("$n:${times[$n]}"); done
python3 - "${args[@]}" <<'EOF'
import statistics, sys
runs = {}
for arg in sys.argv[1:]:
    name, values = arg.split(":")
    runs[name] = [float(v) for v in values.split()]
medians = {}
for name, xs in runs.items():
    m = statistics.median(xs)
    medians[name] = m
    print(f"{name:<14} median {m:.4f} s, spread {100 * (max(xs) - min(xs)) / m:.1f}% over {len(xs)} runs")
for name, m in medians.items():
    if name.startswith("memtrain") or name.startswith("before"):
        for torch in ("torch-fp32", "torch-bf16"):
            if torch in medians:
                print(f"ratio {name} / {torch}: {m / medians[torch]:.3f}")
EOF
