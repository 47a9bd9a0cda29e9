#!/usr/bin/env bash
# Side-by-side training-speed comparison: memsinks (each CPU backend) against the PyTorch
# reference, eager and with torch.compile, run alternately in one session so machine noise hits
# all alike.
#
#   experiments/bench/compare.sh [--install] [--shapes "ts-cpu ts-quick"] [--steps 6] [--rounds 3] [--backends flex] [--out FILE]
#
# Shapes: `ts-cpu` (the preset: vocab 4096, d 256, 4 layers, I 1024, context 256, batch 16) and
# `ts-quick` (the model the default study trains, from experiments/ts-quick.ron: d 128, I 512,
# vocab 1024, context 128, batch 16). Every round times, for each shape and method (memsinks,
# standard), each memsinks backend, PyTorch eager and PyTorch with the forward compiled
# (torch.compile; its compilation falls in the untimed warm-up steps, reported as warmup_s).
#
# --install creates a virtualenv with PyTorch from the package registry (large: ~5 GB with its CUDA
# libraries). This is a benchmark step, never a CI step. Prints every run as a JSON line, then one
# JSON line per (shape, method, backend) with the median tokens/s, its range over the rounds, and
# the ratios of medians to PyTorch eager and to torch.compile. --out FILE also writes all of those
# lines to FILE (a new file: an existing one is not overwritten), the results file RESULTS.md
# quotes.
set -euo pipefail
cd "$(dirname "$0")/../.."

venv="${MEMSINKS_BENCH_VENV:-$HOME/.cache/memsinks-bench-venv}"
shapes="ts-cpu ts-quick" steps=6 rounds=3 backends="flex" install=0 threads="$(nproc)" out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --install) install=1 ;;
    --shapes) shapes="$2"; shift ;;
    --preset) shapes="$2"; shift ;;
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
  "$venv/bin/pip" install --quiet torch numpy
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
  # The single-precision matmul ceiling of the machine running the benchmark, with these threads (flex's gemm).
  "$bin" bench matmul --size 2048 --reps 5 --backend flex | tee -a "$results"
  for shape in $shapes; do
    case "$shape" in
      ts-quick) ours=(--config experiments/ts-quick.ron) ;;
      *) ours=(--preset "$shape") ;;
    esac
    for method in memsinks standard; do
      for backend in $backends; do
        "$bin" bench train "${ours[@]}" --method "$method" --steps "$steps" --backend "$backend" | tee -a "$results"
      done
      for compile in "" --compile; do
        "$venv/bin/python" experiments/bench/torch_reference.py --preset "$shape" --method "$method" \
          --steps "$steps" --threads "$threads" $compile | tee -a "$results"
      done
    done
  done
done

summary="$(mktemp)"
"$venv/bin/python" - "$results" > "$summary" <<'PY'
import json, statistics, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ceilings = [r["gflops"] for r in lines if "size" in r and "method" not in r]
ceiling = statistics.median(ceilings) if ceilings else None
runs = [r for r in lines if "method" in r]
def values(shape, backend, method, key="tokens_per_s"):
    return [r[key] for r in runs if r["preset"] == shape and r["backend"] == backend and r["method"] == method]
for shape in sorted({r["preset"] for r in runs}):
    for method in ("memsinks", "standard"):
        eager = statistics.median(values(shape, "torch-cpu", method))
        compiled = statistics.median(values(shape, "torch-cpu-compile", method))
        for backend in sorted({r["backend"] for r in runs if r["preset"] == shape}):
            tps = values(shape, backend, method)
            row = {
                "summary": True, "shape": shape, "backend": backend, "method": method, "rounds": len(tps),
                "tokens_per_s": round(statistics.median(tps), 1),
                "tokens_per_s_min": round(min(tps), 1), "tokens_per_s_max": round(max(tps), 1),
                "ratio_vs_eager": round(statistics.median(tps) / eager, 3),
                "ratio_vs_compile": round(statistics.median(tps) / compiled, 3),
                "peak_rss_mb": round(statistics.median(values(shape, backend, method, "peak_rss_mb")), 1),
            }
            if not backend.startswith("torch"):
                gflops = statistics.median(values(shape, backend, method, "model_gflops"))
                row["model_gflops"] = round(gflops, 1)
                row["sgemm_ceiling_gflops"] = round(ceiling, 1) if ceiling else None
                row["share_of_ceiling"] = round(gflops / ceiling, 3) if ceiling else None
            print(json.dumps(row))
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
