#!/usr/bin/env bash
# One-command GPU check for a machine with an NVIDIA GPU (no package registry needed there).
#
# Build elsewhere, with the CUDA backend, the binary and the GPU test binary:
#   cargo build --release -p memsinks-cli --no-default-features --features flex,cuda
#   cargo test  --release -p memsinks-cli --no-default-features --features flex,cuda --test gpu --no-run
# and copy this repository (for experiments/) plus both binaries to the GPU machine. Then:
#   MEMSINKS_BIN=path/to/memsinks GPU_TEST_BIN=path/to/deps/gpu-HASH bash experiments/gpu/check.sh [OUT.json]
#
# It runs, within ten minutes on one GPU: the GPU tests on cuda (parity with flex, device masks,
# ten smoke runs, kill and resume, f16/bf16, the smoke study against flex), the training
# benchmark of `ts-cpu` and `smollm2-360m` in bf16 (tokens/s and model FLOP utilisation against
# the GPU's peak dense bf16 rate), and a short training run of the 344M `ts-paper` model on a
# synthetic corpus (the real one needs a download), and with two GPUs or more the two-device
# path against one GPU (tokens/s, scaling efficiency). Everything goes into one JSON file
# (default: gpu-check.json). Set GPU_PEAK_TFLOPS to override the peak looked up from the GPU name.
set -uo pipefail
cd "$(dirname "$0")/../.."
out="${1:-gpu-check.json}"
bin="${MEMSINKS_BIN:?set MEMSINKS_BIN to a memsinks binary built with --features cuda}"
tests="${GPU_TEST_BIN:-}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export MEMSINKS_BIN="$bin" MEMSINKS_REPO="$PWD"

gpu_name="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)"
# Peak dense bf16 tensor-core TFLOP/s (no sparsity), from the vendors' data sheets.
case "$gpu_name" in
  *H200*|*H100*SXM*|*H100\ 80GB\ HBM3*) peak=989 ;;
  *H100*) peak=756 ;;
  *A100*) peak=312 ;;
  *L40S*) peak=362 ;;
  *A10*) peak=125 ;;
  *4090*) peak=165 ;;
  *) peak=0 ;;
esac
peak="${GPU_PEAK_TFLOPS:-$peak}"
# Unknown GPU (peak 0): no MFU, the achieved model GFLOP/s stay.
peak_arg=()
[ "$peak" != 0 ] && peak_arg=(--peak-tflops "$peak")
echo "GPU: ${gpu_name:-unknown} (peak dense bf16: $peak TFLOP/s)"

# 1. The GPU tests on cuda.
tests_json='null'
if [ -n "$tests" ]; then
  started=$(date +%s)
  timeout 300 "$tests" --test-threads 1 > "$work/tests.log" 2>&1
  rc=$?
  summary="$(grep -E '^test result:' "$work/tests.log" | tail -n 1)"
  tail -n 20 "$work/tests.log"
  tests_json="{\"exit\": $rc, \"summary\": \"$summary\", \"seconds\": $(( $(date +%s) - started ))}"
fi

# 2. Training benchmark in bf16: tokens/s, model FLOPs per token (`bench train` counts forward
#    and backward of every matmul, attention included) and MFU against the peak.
bench() {
  local preset=$1 batch=$2 seq=$3
  local line
  line="$(timeout 150 "$bin" bench train --preset "$preset" --method memsinks --backend cuda --precision bf16 \
      --steps 10 --warmup 3 --batch "$batch" --seq "$seq" "${peak_arg[@]}" 2>"$work/bench-$preset.err" | tail -n 1)"
  if [ -z "$line" ]; then
    echo "{\"preset\": \"$preset\", \"error\": \"$(tail -n 1 "$work/bench-$preset.err" | tr '"' "'")\"}"
    return
  fi
  echo "$line"
}
bench_ts_cpu="$(bench ts-cpu 64 256)"
bench_smollm="$(bench smollm2-360m 16 1024)"
echo "$bench_ts_cpu"; echo "$bench_smollm"

# 3. A short ts-paper run (344M, bf16) on a synthetic corpus: 30 steps, evaluated twice.
started=$(date +%s)
timeout 240 "$bin" train --config experiments/ts-paper.ron --backend cuda --out "$work/ts-paper" \
  --set 'data.source={"Synthetic":{"stories":3000,"seed":1}}' \
  --set 'data.tokenizer={"Train":{"vocab_size":4096}}' \
  --set data.repeated.docs=20 --set data.repeated.repetitions=16 \
  --set data.canary.docs=20 --set data.canary.repetitions=16 \
  --set data.unique=1500 --set data.validation=100 \
  --set train.steps=30 --set train.eval_every=15 --set train.warmup_steps=5 --set train.log_every=5 \
  --set train.eval_docs=32 > "$work/ts-paper.log" 2>&1
rc=$?
tail -n 3 "$work/ts-paper.log"
last_eval="$(grep '"kind":"eval"' "$work/ts-paper/metrics.jsonl" 2>/dev/null | tail -n 1)"
ts_paper="{\"exit\": $rc, \"seconds\": $(( $(date +%s) - started )), \"last_eval\": ${last_eval:-null}}"

# 4. Two devices (more than one GPU visible): the same global batch on one GPU (2 accumulated
#    micro-batches) and on two (one each); training tokens/s of each (median of the logged windows
#    after the first) and the scaling efficiency, tokens/s on two / (2 x tokens/s on one).
gpus="$(nvidia-smi --list-gpus 2>/dev/null | wc -l)"
two_devices='{"skipped": "one GPU visible"}'
if [ "${gpus:-0}" -ge 2 ]; then
  for n in 1 2; do
    timeout 150 "$bin" train --config experiments/ts-cpu.ron --backend cuda --devices "$n" --out "$work/devices-$n" \
      --set 'data.source={"Synthetic":{"stories":3000,"seed":1}}' --set 'data.tokenizer={"Train":{"vocab_size":4096}}' \
      --set train.devices=2 --set train.steps=60 --set train.eval_every=30 --set train.log_every=5 \
      > "$work/devices-$n.log" 2>&1
  done
  two_devices="$(python3 - "$work" <<'PY' 2>&1
import json, statistics, sys
def rate(n):
    try:
        lines = [json.loads(l) for l in open(f"{sys.argv[1]}/devices-{n}/metrics.jsonl")]
    except OSError as e:
        return None
    rates = [l["tokens_per_s"] for l in lines if l.get("kind") == "train"][1:]
    return statistics.median(rates) if rates else None
one, two = rate(1), rate(2)
print(json.dumps({"tokens_per_s_one_gpu": one, "tokens_per_s_two_gpus": two,
                  "tokens_per_s_per_gpu_two": two / 2 if two else None,
                  "scaling_efficiency": two / (2 * one) if one and two else None}))
PY
)"
  echo "two devices: $two_devices"
else
  echo "two devices: skipped (one GPU visible)"
fi

cat > "$out" <<JSON
{
  "gpu": "${gpu_name:-unknown}",
  "peak_bf16_tflops": $peak,
  "memsinks": "$("$bin" --version 2>/dev/null)",
  "tests": $tests_json,
  "bench_ts_cpu_bf16": $bench_ts_cpu,
  "bench_smollm2_360m_bf16": $bench_smollm,
  "ts_paper_short_run": $ts_paper,
  "two_devices": $two_devices
}
JSON
echo "wrote $out"
