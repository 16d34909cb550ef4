#!/usr/bin/env bash
# Compresses MiniLM by every method at every ratio, one-shot and iterative, evaluates each
# result on two corpora and prints the markdown table docs/BENCHMARKS.md records (issue 22).
#
#   bash scripts/compress-table.sh                      # everything (hours on 2 cores)
#   METHODS="asvd rom" RATIOS=2 SCHEDULES=one-shot bash scripts/compress-table.sh
#
# Environment: MEMTRAIN (binary, default target/release/memtrain), MODEL (default: what
# scripts/fetch-minilm.sh prints), DATA (calibration/distillation text whose first 500 lines
# are the held-out evaluation lines; default ../shared/data/tinyshakespeare.txt), SECOND (a
# corpus of another domain, default /usr/share/common-licenses/GPL-3), OUT (results, default
# /tmp/compress-table; a finished row is reused, so a stopped run resumes), METHODS, RATIOS,
# SCHEDULES (one-shot and/or iterative), PRINT_ONLY=1 (print the rows already in OUT, run
# nothing). Quantized CP is one-shot only (fine-tuning would move
# its factors off the grid). Needs jq.
set -euo pipefail
cd "$(dirname "$0")/.."
MEMTRAIN=${MEMTRAIN:-target/release/memtrain}
MODEL=${MODEL:-$(bash scripts/fetch-minilm.sh)}
DATA=${DATA:-../shared/data/tinyshakespeare.txt}
SECOND=${SECOND:-/usr/share/common-licenses/GPL-3}
OUT=${OUT:-/tmp/compress-table}
METHODS=${METHODS:-svd tucker2 cp cp-q:4 cp-ptq:4 ttm asvd fwsvd active rom}
RATIOS=${RATIOS:-2 4}
SCHEDULES=${SCHEDULES:-one-shot iterative}
command -v jq >/dev/null || { echo "compress-table: needs jq" >&2; exit 1; }
[ -x "$MEMTRAIN" ] || { echo "compress-table: no $MEMTRAIN (cargo build --release -p memtrain-cli)" >&2; exit 1; }
[ -f "$DATA" ] || { echo "compress-table: no --data file $DATA" >&2; exit 1; }
[ -f "$SECOND" ] || { echo "compress-table: no second corpus $SECOND" >&2; exit 1; }
mkdir -p "$OUT"

for schedule in $SCHEDULES; do
  for ratio in $RATIOS; do
    for method in $METHODS; do
      case "$method:$schedule" in cp-q:*:iterative | cp-ptq:*:iterative) continue ;; esac
      tag="${method//:/}-$ratio-$schedule"
      row="$OUT/$tag.json"
      [ -s "$row" ] && continue
      [ -n "${PRINT_ONLY:-}" ] && continue
      flags=()
      [ "$schedule" = iterative ] && flags+=(--iterative --steps 100)
      case "$method" in cp*) flags+=(--cp-iters "$([ "$ratio" = 2 ] && echo 2 || echo 5)") ;; esac
      echo "compress-table: $method at ${ratio}x, $schedule" >&2
      "$MEMTRAIN" compress --model "$MODEL" --method "$method" --ratio "$ratio" --data "$DATA" \
        "${flags[@]}" --json --out "$OUT/$tag" >"$OUT/$tag.compress.json"
      "$MEMTRAIN" eval-embed --model "$MODEL" --compressed "$OUT/$tag" --data "$DATA" \
        --json >"$OUT/$tag.eval.json"
      "$MEMTRAIN" eval-embed --model "$MODEL" --compressed "$OUT/$tag" --data "$SECOND" \
        --json >"$OUT/$tag.second.json"
      jq -n --slurpfile c "$OUT/$tag.compress.json" --slurpfile e "$OUT/$tag.eval.json" \
        --slurpfile s "$OUT/$tag.second.json" \
        --argjson file_bytes "$(stat -c %s "$OUT/$tag/compressed.safetensors")" \
        --arg method "$method" --arg schedule "$schedule" --argjson ratio "$ratio" '{
          file_bytes: $file_bytes,
          method: $method, ratio: $ratio, schedule: $schedule,
          rel_error: $c[0].mean_rel_error, compress_seconds: $c[0].seconds,
          cosine: $e[0].mean_cosine, min_cosine: $e[0].min_cosine,
          agreement: $e[0].neighbour_agreement,
          model_bytes: $e[0].compressed.model_bytes, packed_bytes: $e[0].compressed.packed_bytes,
          encode_seconds: $e[0].compressed.encode_seconds,
          original_encode_seconds: $e[0].original.encode_seconds,
          second_cosine: $s[0].mean_cosine, second_min_cosine: $s[0].min_cosine,
          second_agreement: $s[0].neighbour_agreement }' >"$row.tmp"
      mv "$row.tmp" "$row"
      rm -rf "${OUT:?}/$tag"
    done
  done
done

echo "| method | ratio | schedule | mean ‖W-Ŵ‖/‖W‖ | cosine (min) | agreement | cosine (min), second corpus | agreement | model bytes | file bytes | encode s (original) | compress s |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
for schedule in $SCHEDULES; do
  for ratio in $RATIOS; do
    for method in $METHODS; do
      row="$OUT/${method//:/}-$ratio-$schedule.json"
      [ -s "$row" ] || continue
      jq -r '"| \(.method) | \(.ratio) | \(.schedule) | \(.rel_error*1000|round/1000) | \(.cosine*1000|round/1000) (\(.min_cosine*1000|round/1000)) | \(.agreement*1000|round/10)% | \(.second_cosine*1000|round/1000) (\(.second_min_cosine*1000|round/1000)) | \(.second_agreement*1000|round/10)% | \(.model_bytes)\(if .packed_bytes then " (\(.packed_bytes) packed)" else "" end) | \(.file_bytes // "-") | \(.encode_seconds*100|round/100) (\(.original_encode_seconds*100|round/100)) | \(.compress_seconds*10|round/10) |"' "$row"
    done
  done
done
