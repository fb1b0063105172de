#!/usr/bin/env bash
# Serving sweep on the H100: mini_engine NVFP4 vs bf16 on the Llama-3.1-8B shape with dummy weights,
# concurrency 1..512, 1024 in / 128 out, one server per configuration (python -m mini_engine.bench
# --launch). Each level is time-bounded so both configurations fit in ~8 minutes of wall time.
#
# On the device (one `run` call; the repo root is the working directory):
#   source .device/env.sh && OUT=$OUT bash scripts/gpu_serving_sweep.sh
#   carry: [".device", "build/llama3_tokenizer"]  (the Llama-3 tokenizer when llama-models is absent)
# Split over two runs if needed (each run self-contained), then merge here:
#   CONFIGS=nvfp4 ... ; CONFIGS=bf16 ... ;
#   python -m mini_engine.bench --plot-only a/serving_*.json b/serving_*.json \
#       --out benchmarks/results/serving_h100_<date>.json
#
# Writes under $OUT (at most 8 files come back): serving_h100_<date>.json/.csv/.png (the PNG only if
# matplotlib is installed; else re-plot with --plot-only), summary.txt (cold start, failures, KV
# blocks after each sweep, target checks), logs.tar.gz (server logs, per-config results, bench
# output). Knobs (env): CONFIGS LEVELS INPUT_LEN OUTPUT_LEN SECONDS_PER_LEVEL SCRIPT_BUDGET
# MAX_NUM_SEQS MODEL_ARGS EXTRA_SERVER_ARGS WARM_RESTART=1 (restart nvfp4 once to time a warm-cache start).
set -uo pipefail

OUT=${OUT:-$PWD/serving_out}
CONFIGS=${CONFIGS:-"nvfp4 bf16"}
LEVELS=${LEVELS:-1,2,4,8,16,32,64,128,256,512}
INPUT_LEN=${INPUT_LEN:-1024}
OUTPUT_LEN=${OUTPUT_LEN:-128}
SECONDS_PER_LEVEL=${SECONDS_PER_LEVEL:-6}
SCRIPT_BUDGET=${SCRIPT_BUDGET:-540}     # whole script, s (a device command may run 600 s at most)
MAX_NUM_SEQS=${MAX_NUM_SEQS:-256}
WARM_RESTART=${WARM_RESTART:-1}
EXTRA_SERVER_ARGS=${EXTRA_SERVER_ARGS:-}
DATE=$(date -u +%Y%m%d)
DEADLINE=$(( $(date +%s) + SCRIPT_BUDGET ))
WARM_RESERVE=0; [ "$WARM_RESTART" = "1" ] && WARM_RESERVE=60
PY=${PYTHON:-python3}
COMMIT=${COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}

mkdir -p "$OUT/work"
WORK="$OUT/work"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
log() { echo "[sweep $(date -u +%H:%M:%S)] $*" | tee -a "$SUMMARY"; }

finish() {
  # Whatever happened, stop any server we started and pack the logs.
  for pidfile in "$WORK"/server_*.pid; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
      log "stopping leftover server pid $pid ($pidfile)"
      kill -INT -- "-$pid" 2>/dev/null; sleep 5; kill -KILL -- "-$pid" 2>/dev/null
    fi
    rm -f "$pidfile"
  done
  tar czf "$OUT/logs.tar.gz" -C "$OUT" work 2>/dev/null && rm -rf "$WORK"
}
trap finish EXIT

MODEL_ARGS=${MODEL_ARGS:-"--model llama-3.1-8b --load-format dummy"}
SERVER_ARGS="$MODEL_ARGS --max-num-seqs $MAX_NUM_SEQS"
if [[ "$MODEL_ARGS" == *llama-3.1-8b* ]] && ! $PY -c "import llama_models" 2>/dev/null; then
  if [ -f build/llama3_tokenizer/tokenizer.json ]; then
    SERVER_ARGS="$SERVER_ARGS --tokenizer build/llama3_tokenizer"
    log "llama-models not installed: using the pre-converted build/llama3_tokenizer"
  else
    log "WARNING: neither llama-models nor build/llama3_tokenizer: the 8B preset has no tokenizer"
  fi
fi
SERVER_ARGS="$SERVER_ARGS $EXTRA_SERVER_ARGS"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >> "$SUMMARY" 2>&1
log "configs=[$CONFIGS] levels=$LEVELS in=$INPUT_LEN out=$OUTPUT_LEN ${SECONDS_PER_LEVEL}s/level"
log "server args: $SERVER_ARGS"

status=0
left=$(echo $CONFIGS | wc -w)
for cfg in $CONFIGS; do
  # Share what is left of the budget among the remaining configurations. The bench stops starting
  # levels 45 s before its cap (--time-budget-s); the cap (SIGINT, then SIGKILL) is the backstop.
  cap=$(( (DEADLINE - $(date +%s) - WARM_RESERVE) / left ))
  left=$(( left - 1 ))
  log "=== $cfg: launch + sweep (cap ${cap}s)"
  t0=$(date +%s)
  # SIGINT first: the bench stops its server in a finally block and keeps the levels done so far.
  timeout --signal=INT --kill-after=30 "$cap" \
    $PY -m mini_engine.bench --launch "$cfg" --server-args "$SERVER_ARGS" \
      --input-len "$INPUT_LEN" --output-len "$OUTPUT_LEN" --concurrency "$LEVELS" \
      --max-seconds-per-level "$SECONDS_PER_LEVEL" --time-budget-s $(( cap - 45 )) \
      --request-timeout 240 --startup-timeout 200 \
      --no-progress --commit "$COMMIT" --out "$WORK/serving_${cfg}.json" \
      > "$WORK/bench_${cfg}.log" 2>&1
  rc=$?
  log "$cfg: exit $rc after $(( $(date +%s) - t0 ))s"
  [ $rc -eq 0 ] || status=1
  tail -n 14 "$WORK/bench_${cfg}.log" >> "$SUMMARY"
done

if [ "$WARM_RESTART" = "1" ]; then
  # Second start of the nvfp4 server on this machine: kernel caches are warm now.
  log "=== nvfp4 warm restart (ready time only)"
  timeout --signal=INT --kill-after=20 $(( DEADLINE - $(date +%s) > 30 ? DEADLINE - $(date +%s) : 30 )) \
    $PY -m mini_engine.bench --launch "nvfp4" --server-args "$SERVER_ARGS" \
      --input-len 128 --output-len 8 --concurrency 1 --num-prompts 2 --warmup 0 --no-progress \
      --commit "$COMMIT" --out "$WORK/warm_restart.json" > "$WORK/bench_warm.log" 2>&1 \
    || log "warm restart failed (see logs)"
fi

MERGED="$OUT/serving_h100_${DATE}.json"
jsons=$(ls "$WORK"/serving_*.json 2>/dev/null)
if [ -n "$jsons" ]; then
  # shellcheck disable=SC2086
  $PY -m mini_engine.bench --plot-only $jsons --out "$MERGED" >> "$SUMMARY" 2>&1 || status=1
  $PY - "$MERGED" "$WORK/warm_restart.json" >> "$SUMMARY" 2>&1 <<'EOF'
import json, sys
from pathlib import Path
doc = json.loads(Path(sys.argv[1]).read_text())
print("\n== checks ==")
for s in doc.get("servers", []):
    kv = s.get("metrics_after", {}).get("mini_engine:kv_cache_blocks_used")
    print(f"{s['config']}: cold start ready_s={s.get('ready_s')} levels={s.get('levels_done')} "
          f"kv_blocks_used_after={kv} error={s.get('error')}")
recs = {(r["config"], r["concurrency"]): r for r in doc["records"]}
for (cfg, c), r in sorted(recs.items()):
    if c == 512:
        print(f"{cfg} @512: completed={r['completed']} failed={r['failed']}")
n1, b1 = recs.get(("nvfp4", 1)), recs.get(("bf16", 1))
if n1 and b1 and n1["tpot_ms_median"] and b1["tpot_ms_median"]:
    print(f"TPOT@1 nvfp4={n1['tpot_ms_median']:.2f} ms bf16={b1['tpot_ms_median']:.2f} ms "
          f"ratio={n1['tpot_ms_median'] / b1['tpot_ms_median']:.2f} (target <= 2.2 ms, <= 0.4)")
for (cfg, c), r in sorted(recs.items()):
    if cfg == "nvfp4" and ("bf16", c) in recs and recs[("bf16", c)]["output_tok_s"]:
        ratio = r["output_tok_s"] / recs[("bf16", c)]["output_tok_s"]
        print(f"output tok/s nvfp4/bf16 @{c}: {ratio:.2f}")
warm = Path(sys.argv[2])
if warm.is_file():
    for s in json.loads(warm.read_text()).get("servers", []):
        print(f"warm restart ready_s={s.get('ready_s')} error={s.get('error')}")
EOF
else
  log "no results were written"
  status=1
fi
log "done (status $status)"
cat "$SUMMARY"
exit $status
