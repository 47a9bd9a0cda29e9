#!/usr/bin/env bash
# Side-by-side training-speed comparison: memsinks (each CPU backend) against the PyTorch
# reference, run alternately in one session so machine noise hits both alike.
#
#   experiments/bench/compare.sh [--install] [--preset ts-cpu] [--steps 10] [--rounds 3] [--backends "flex ndarray"] [--out FILE]
#
# --install creates a virtualenv with PyTorch from the package registry (large: ~5 GB with its CUDA
# libraries). This is a benchmark step, never a CI step. Prints every run as a JSON line, then one
# JSON line per (backend, method) with the ratio of median tokens/s, ours / PyTorch. --out FILE
# also writes all of those lines to FILE (a new file: an existing one is not overwritten), the
# results file RESULTS.md quotes.
set -euo pipefail
cd "$(dirname "$0")/../.."

venv="${MEMSINKS_BENCH_VENV:-$HOME/.cache/memsinks-bench-venv}"
preset=ts-cpu steps=10 rounds=3 backends="flex ndarray" install=0 threads="$(nproc)" out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --install) install=1 ;;
    --preset) preset="$2"; shift ;;
    --steps) steps="$2"; shift ;;
    --rounds) rounds="$2"; shift ;;
    --backends) backends="$2"; shift ;;
    --threads) threads="$2"; shift ;;
    --out) out="$2"; shift ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

if [ -n "$out" ] && [ -e "$out" ]; then
  echo "$out exists: choose a new file for --out" >&2
  exit 2
fi
if [ "$install" = 1 ] && [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet torch
fi
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  echo "PyTorch not found in $venv: rerun with --install" >&2
  exit 1
fi

# MEMSINKS_BIN: an already built binary (e.g. the one the tests built with --features wgpu; a
# build with other features would recompile burn).
if [ -n "${MEMSINKS_BIN:-}" ]; then
  bin="$MEMSINKS_BIN"
else
  cargo build --release --quiet -p memsinks-cli
  bin="${CARGO_TARGET_DIR:-target}/release/memsinks"
fi
export RAYON_NUM_THREADS="$threads"
results="$(mktemp)"
for round in $(seq "$rounds"); do
  # The single-precision matmul ceiling of this machine with these threads (flex's gemm).
  "$bin" bench matmul --size 2048 --reps 5 --backend flex | tee -a "$results"
  for method in memsinks standard; do
    for backend in $backends; do
      "$bin" bench train --preset "$preset" --method "$method" --steps "$steps" --backend "$backend" | tee -a "$results"
    done
    "$venv/bin/python" experiments/bench/torch_reference.py --preset "$preset" --method "$method" \
      --steps "$steps" --threads "$threads" | tee -a "$results"
  done
done

summary="$(mktemp)"
"$venv/bin/python" - "$results" > "$summary" <<'PY'
import json, statistics, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ceilings = [r["gflops"] for r in lines if "size" in r and "method" not in r]
ceiling = statistics.median(ceilings) if ceilings else None
runs = [r for r in lines if "method" in r]
def median(backend, method, key="tokens_per_s"):
    return statistics.median(r[key] for r in runs if r["backend"] == backend and r["method"] == method)
torch_name = next(r["backend"] for r in runs if r["backend"].startswith("torch"))
for method in ("memsinks", "standard"):
    ref = median(torch_name, method)
    ref_rss = median(torch_name, method, "peak_rss_mb")
    for backend in sorted({r["backend"] for r in runs} - {torch_name}):
        print(json.dumps({
            "summary": True, "backend": backend, "method": method,
            "tokens_per_s": round(median(backend, method), 1), "torch_tokens_per_s": round(ref, 1),
            "ratio_vs_torch": round(median(backend, method) / ref, 3),
            "rss_ratio_vs_torch": round(median(backend, method, "peak_rss_mb") / ref_rss, 3),
            "mask_share": round(median(backend, method, "mask_share"), 5),
            "model_gflops": round(median(backend, method, "model_gflops"), 1),
            "sgemm_ceiling_gflops": round(ceiling, 1) if ceiling else None,
            "share_of_ceiling": round(median(backend, method, "model_gflops") / ceiling, 3) if ceiling else None,
        }))
PY
cat "$summary"
if [ -n "$out" ]; then
  mkdir -p "$(dirname "$out")"
  # A hard link never replaces an existing file: a file made at --out since the check above stays.
  cat "$results" "$summary" > "$out.tmp.$$"
  if ln "$out.tmp.$$" "$out" 2>/dev/null; then echo "wrote $out" >&2; else echo "$out appeared meanwhile: results left in $out.tmp.$$" >&2; fi
  [ -e "$out" ] && [ "$out" -ef "$out.tmp.$$" ] && rm -f "$out.tmp.$$"
fi
rm -f "$results" "$summary"
