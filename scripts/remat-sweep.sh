#!/usr/bin/env bash
# The rematerialization measurements of docs/BENCHMARKS.md ("Operator-level remat ... issue 23"):
# the savers with per-stage updates at 40 MiB and below, plain burn's operations at 1/4, and
# the planner's time prediction over five repetitions of 1/2, 1/4, 1/8 and 1/16 (each run
# measures the plan next to its keep-everything schedule, alternately, for the ratio's error).
#
#   bash scripts/remat-sweep.sh [bench] [plain] [predict] [capacity]   # default: all four
#
# Needs a release build (cargo build --release -p memtrain-cli) and tinyshakespeare under
# ../shared/data (or DATA=path). Writes its logs under target/remat-sweep/. About 40 minutes
# on a 2-core machine for all four; run nothing else meanwhile (times are compared).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/memtrain}
DATA=${DATA:-../shared/data/tinyshakespeare.txt}
OUT=target/remat-sweep
mkdir -p "$OUT"
if [ ! -f "$DATA" ]; then
    echo "remat-sweep: $DATA not found (set DATA=...)" >&2
    exit 1
fi
SAVERS="act=inverted,norm=output,attn=memeff,linear=gemm"
COMMON=(--preset small --batch 8 --data "$DATA")
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(bench plain predict capacity)
for part in "${parts[@]}"; do
    case "$part" in
    bench)
        # plain burn's 551.5 MiB of activations: 1/16 is 34.5 MiB.
        "$BIN" bench "${COMMON[@]}" --steps 6 --json "$OUT/bench.json" --policies \
            "$SAVERS;$SAVERS,update=per-stage;$SAVERS,remat=budget:40MiB,update=per-stage;$SAVERS,remat=budget:34.5MiB,update=per-stage" \
            2>/dev/null | tee "$OUT/bench.txt"
        # 1/32 (17.2 MiB): the error names the smallest budget.
        "$BIN" plan "${COMMON[@]}" --policy "$SAVERS,update=per-stage" --budget 17.2MiB 2>&1 |
            grep -i error | tee "$OUT/thirty-second.txt" || true
        ;;
    plain)
        # burn's own operations, 1/4 of their 551.5 MiB.
        "$BIN" plan "${COMMON[@]}" --policy "act=exact,norm=exact,attn=exact" --budget 137.9MiB \
            --measure 4 2>/dev/null | tee "$OUT/plain-quarter.txt"
        "$BIN" plan "${COMMON[@]}" --policy "act=exact,norm=exact,attn=exact,update=per-stage" \
            --budget 137.9MiB --measure 4 2>/dev/null | tee "$OUT/plain-quarter-per-stage.txt"
        ;;
    predict)
        for rep in 1 2 3 4 5; do
            for b in 1/2 1/4 1/8 1/16; do
                f="$OUT/predict-${b/\//of}-$rep.txt"
                "$BIN" plan "${COMMON[@]}" --budget "$b" --measure 3 > "$f" 2>/dev/null
                echo "rep $rep budget $b: $(grep -E '^  (plan:|keep-everything)' "$f")"
            done
        done
        ;;
    capacity)
        "$BIN" plan "${COMMON[@]}" --budget 1/1 --capacity 2>/dev/null | tee "$OUT/capacity.txt"
        ;;
    *)
        echo "remat-sweep: unknown part '$part' (bench, plain, predict, capacity)" >&2
        exit 2
        ;;
    esac
done
