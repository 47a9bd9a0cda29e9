#!/usr/bin/env bash
# Why gradient masking's validation loss fell, then climbed, in the first ts-quick report (its
# evaluations at steps 25..250: 1.60 at 125, 3.47 at 250). That report's corpus is rebuilt here
# (ts-quick before the study protocol changed: 2,000 generated stories, one order replayed every
# pass, no dedup fill, no held-out canaries) and trained with one change at a time:
#   A  the old corpus, gradient masking as configured (lr 2e-3)
#   B  A with every pass after the first reshuffled
#   D  A with another initialisation (train.seed=1)
#   E  A at half the learning rate (lr 1e-3, min_lr 1e-4)
#   F  A's corpus and learning rate, trained as MemSinks
#   G  today's ts-quick corpus (seed 0), gradient masking
# Writes experiments/reports/gradient-masking/trajectories.json (every evaluation and the training
# loss of each run). Usage: experiments/gradient-masking.sh [MEMSINKS_BIN]; ~15 min on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-${MEMSINKS_BIN:-target/release/memsinks}}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cfg=experiments/ts-quick.ron
old=(--set train.method=GradientMasking --set data.source.stories=2000 --set data.reshuffle_each_pass=false
     --set data.dedup_fill=false --set data.canary.held_out=0)
run() { name=$1; shift; "$bin" train --config "$cfg" --out "$work/$name" "$@" > "$work/$name.log" 2>&1; }
run A "${old[@]}"
run B "${old[@]}" --set data.reshuffle_each_pass=true
run D "${old[@]}" --set train.seed=1
run E "${old[@]}" --set train.lr=1e-3 --set train.min_lr=1e-4
run F "${old[@]}" --set train.method=Memsinks
run G --set train.method=GradientMasking
python3 - "$work" experiments/reports/gradient-masking/trajectories.json <<'PY'
import json, sys
work, out = sys.argv[1], sys.argv[2]
what = {
    "A": "old corpus, gradient masking, lr 2e-3", "B": "A, every later pass reshuffled",
    "D": "A, train.seed=1", "E": "A at lr 1e-3", "F": "A's corpus and lr, MemSinks",
    "G": "today's ts-quick corpus, gradient masking",
}
runs = {}
for name, about in what.items():
    lines = [json.loads(l) for l in open(f"{work}/{name}/metrics.jsonl")]
    runs[name] = {
        "about": about,
        "eval": [{k: e[k] for k in ("step", "val_loss", "rep_loss_sinks", "rep_loss_nosinks")} for e in lines if e["kind"] == "eval"],
        "train_loss": [[t["step"], t["loss"]] for t in lines if t["kind"] == "train"],
    }
json.dump(runs, open(out, "w"), indent=1)
print(out)
PY
