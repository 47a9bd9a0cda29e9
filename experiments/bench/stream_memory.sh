#!/usr/bin/env bash
# Streaming a large SlimPajama-style corpus keeps memory flat: generates .jsonl.zst shards of
# synthetic stories at two sizes, prepares a corpus from each (all documents as the unique set),
# and prints one JSON line per size with the input size, wall time and peak RSS of
# `memsinks data prepare` (measured by /usr/bin/time). Flat memory: the larger input should not
# need proportionally more RSS.
#
#   experiments/bench/stream_memory.sh [SMALL_STORIES] [LARGE_STORIES]     (default 100000 800000)
set -euo pipefail
cd "$(dirname "$0")/../.."
small="${1:-100000}" large="${2:-800000}"
cargo build --release --quiet -p memsinks-cli
bin="${CARGO_TARGET_DIR:-target}/release/memsinks"
[ -x /usr/bin/time ] || { echo "needs /usr/bin/time (Debian package: time)" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for n in "$small" "$large"; do
  mkdir -p "$work/$n/shards"
  "$bin" data generate --stories "$n" --seed 7 --jsonl --out "$work/$n/shards/part-0.jsonl.zst" > /dev/null
  cat > "$work/$n/config.ron" <<RON
(
    data: (
        source: SlimPajama(dir: "$work/$n/shards"),
        tokenizer: Train(vocab_size: 1024),
        repeated: (docs: 100, repetitions: 16),
        canary: (docs: 0, repetitions: 1, length: 2),
        unique: $((n - 1100)),
        validation: 1000,
        context: 128,
    ),
)
RON
  /usr/bin/time -f "%M %e" -o "$work/$n/time" "$bin" data prepare --config "$work/$n/config.ron" --out "$work/$n/out" > /dev/null
  read -r rss_kb secs < "$work/$n/time"
  bytes=$(stat -c %s "$work/$n/shards/part-0.jsonl.zst")
  tokens=$(grep -o '"cache_tokens": [0-9]*' <("$bin" data stats "$work/$n/out") | grep -o '[0-9]*$')
  echo "{\"stories\": $n, \"zst_bytes\": $bytes, \"tokens\": $tokens, \"wall_s\": $secs, \"peak_rss_mb\": $((rss_kb / 1024))}"
done
