#!/usr/bin/env bash
# Coverage-guided fuzzing of the readers of outside input, on stable Rust: libFuzzer (from
# libfuzzer-sys, built with the C++ compiler) and rustc's SanitizerCoverage pass, as cargo-fuzz
# sets it up, without a sanitizer (nightly-only; the code is safe Rust, the failures looked for
# are panics, aborts, timeouts and running out of memory).
#
#   bash fuzz/run.sh                 # every target for 60 s
#   bash fuzz/run.sh config 3600     # one target for an hour
#
# Crashes land in fuzz/artifacts/TARGET/; the corpus grows in fuzz/corpus/TARGET/ (seeded from
# fuzz/seeds/TARGET/). Every crash found becomes a regression test.
set -euo pipefail
cd "$(dirname "$0")"
targets=(config tinystories jsonl tokenizer run_files corpus_files)
if [ $# -ge 1 ] && [ "$1" != all ]; then targets=("$1"); fi
seconds="${2:-60}"
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-$HOME/.cache/memsinks-target}/fuzz}"
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
# An explicit --target keeps the instrumentation off build scripts and proc macros (as cargo-fuzz).
host="$(rustc -vV | sed -n 's/^host: //p')"
cargo build --release --bins --target "$host"
bin_dir="$CARGO_TARGET_DIR/$host/release"
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  seeds=()
  if [ -d "seeds/$t" ]; then seeds=("seeds/$t"); fi
  echo "== fuzz $t for ${seconds}s"
  "$bin_dir/$t" "corpus/$t" "${seeds[@]}" -max_total_time="$seconds" \
    -rss_limit_mb=4096 -timeout=20 -max_len=65536 -artifact_prefix="artifacts/$t/" -print_final_stats=1 2>&1 |
    grep -E "^(#[0-9]+[[:space:]]+DONE|Done|stat::number_of_executed_units|stat::peak_rss|==[0-9]+== ERROR|.*panicked|SUMMARY)" || true
  if compgen -G "artifacts/$t/*" > /dev/null; then
    echo "fuzz $t: crash inputs in fuzz/artifacts/$t/" >&2
    exit 1
  fi
done
