"""Multi-turn chat: time to first token at one turn, KV-cache reuse vs recomputing the conversation.

    python benches/multiturn.py [--threads 2] [--repeats 7] [--turn 5]

SmolLM2-135M-Instruct through anatomy, the five-turn conversation of chapter 9 (anatomy.inference.DIALOGUE).
The cache of the earlier turns is filled untimed; then the two ways of answering the turn's message run
interleaved (reuse, recompute, reuse, ...) so that background load hits both alike. The table reports
the medians, their ratio next to the target of DESIGN.md section 6 (>= 4x at turn 5), the counted FLOP
ratio (what the ratio would be if every FLOP cost the same) and the largest logit difference (reuse is
exact: float rounding only).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its thread pool

import torch  # noqa: E402

from anatomy import inference as inf  # noqa: E402
from anatomy import pretrained  # noqa: E402

TARGET = 4.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--turn", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = pretrained.smollm2(verbose=False)
    segments = inf.chat_segments(tokenizer)
    r = inf.turn_ttft(model, segments, args.turn, repeats=args.repeats)
    flops = inf.dialogue_flops(model.config, [r["history"]], [r["new"]])
    flop_ratio = flops["recompute"][0] / flops["reuse"][0]
    print(f"threads={args.threads} repeats={args.repeats} (SmolLM2-135M fp32, anatomy, interleaved medians)")
    header = (f"{'turn':>4} {'history':>8} {'new':>5} | {'reuse ms':>9} {'recompute ms':>12} | "
              f"{'ratio':>6} {'target':>7} | {'FLOP ratio':>10} | {'max |dlogit|':>12}")
    print(header)
    print("-" * len(header))
    print(f"{args.turn:>4} {r['history']:>8} {r['new']:>5} | {1e3 * r['reuse_median']:>9.1f} "
          f"{1e3 * r['recompute_median']:>12.1f} | {r['ratio']:>6.2f} {'>= ' + str(TARGET):>7} | "
          f"{flop_ratio:>10.1f} | {r['logit_err']:>12.1e}")
    print("target met" if r["ratio"] >= TARGET else "TARGET MISSED (see the table)")


if __name__ == "__main__":
    main()
