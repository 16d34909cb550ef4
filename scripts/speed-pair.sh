#!/usr/bin/env bash
# memtrain against PyTorch in one run (docs/BENCHMARKS.md, "CPU step speed ... issue 26"):
# alternates scripts/torch_reference.py (fused SDPA, AdamW) and `memtrain bench` with the exact
# savers, ROUNDS times on the same geometry, and prints each run's median step, the median of
# the medians, their spread ((max - min) / median) and the ratio memtrain / PyTorch.
#
#   bash scripts/speed-pair.sh                    # small, batch 8, 3 rounds, fp32
#   ROUNDS=5 STEPS=8 bash scripts/speed-pair.sh
#   PRECISION=bf16 bash scripts/speed-pair.sh     # both sides in bf16 (memtrain --precision bf16,
#                                                 # PyTorch torch.autocast)
#
# Needs a release build (cargo build --release -p memtrain-cli), tinyshakespeare under
# ../shared/data (or DATA=path) and PyTorch (PYTHON=path; see scripts/torch_reference.py).
# Run nothing else meanwhile: the two are compared on time.
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
for f in "$BIN" "$DATA"; do
    [ -e "$f" ] || { echo "speed-pair: $f not found" >&2; exit 1; }
done
"$PYTHON" -c "import torch" 2>/dev/null || {
    echo "speed-pair: no PyTorch at $PYTHON (set PYTHON=...; see scripts/torch_reference.py)" >&2
    exit 1
}
OUT=target/speed-pair
mkdir -p "$OUT"
extra=()
[ "$PRECISION" = fp32 ] || extra=(--precision "$PRECISION")
torch_times=()
ours_times=()
for r in $(seq 1 "$ROUNDS"); do
    "$PYTHON" scripts/torch_reference.py "${SHAPE[@]}" --steps "$STEPS" --data "$DATA" \
        --precision "$PRECISION" > "$OUT/torch-$r.txt"
    t=$(sed -n 's/^torch: median \([0-9.]*\) s.*/\1/p' "$OUT/torch-$r.txt")
    "$BIN" bench "${SHAPE[@]}" --steps "$STEPS" --data "$DATA" --policies "$POLICY" "${extra[@]}" \
        --json "$OUT/memtrain-$r.json" > "$OUT/memtrain-$r.txt" 2>/dev/null
    m=$(sed -n 's/.*"step_seconds_median": *\([0-9.e-]*\).*/\1/p' "$OUT/memtrain-$r.json" | head -1)
    echo "round $r: torch $t s, memtrain $m s"
    torch_times+=("$t")
    ours_times+=("$m")
done
python3 - "${torch_times[*]}" "${ours_times[*]}" "$PRECISION" <<'EOF'
import statistics, sys
torch = [float(x) for x in sys.argv[1].split()]
ours = [float(x) for x in sys.argv[2].split()]
def summary(xs):
    m = statistics.median(xs)
    return m, (max(xs) - min(xs)) / m
(tm, ts), (om, os_) = summary(torch), summary(ours)
print(f"torch    ({sys.argv[3]}): median {tm:.4f} s, spread {100 * ts:.1f}% over {len(torch)} runs")
print(f"memtrain ({sys.argv[3]}): median {om:.4f} s, spread {100 * os_:.1f}% over {len(ours)} runs")
print(f"ratio memtrain / torch: {om / tm:.3f}")
EOF
