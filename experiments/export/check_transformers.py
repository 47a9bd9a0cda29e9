#!/usr/bin/env python3
"""Loads a `memsinks export` folder with Hugging Face transformers from its path alone and
continues a prompt greedily; prints one JSON line (for tests/e2e.rs, which compares it with
`memsinks generate --greedy`).

    python experiments/export/check_transformers.py EXPORT_DIR --prompt "Once upon a time" --max-new-tokens 16

Exit code 3 when torch or transformers is missing (the caller skips)."""
import argparse
import json
import sys

try:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
except ImportError as e:  # the caller turns this into a skip
    print(f"transformers unavailable: {e}", file=sys.stderr)
    sys.exit(3)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir")
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    args = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(args.dir)
    model, info = AutoModelForCausalLM.from_pretrained(args.dir, output_loading_info=True)
    ids = tok(args.prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=args.max_new_tokens, do_sample=False, num_beams=1)
    continuation = out[0, ids.shape[1]:].tolist()
    print(json.dumps({
        "missing_keys": list(info["missing_keys"]),
        "unexpected_keys": list(info["unexpected_keys"]),
        "prompt_tokens": ids[0].tolist(),
        "continuation": tok.decode(continuation, skip_special_tokens=True),
    }))


if __name__ == "__main__":
    main()
