"""Multi-turn chat: time to first token at one turn, KV-cache reuse vs recomputing the conversation.

    python benches/multiturn.py [--threads 1 2] [--repeats 9] [--turn 5] [--clock wall|cpu] [--packed]

SmolLM2-135M-Instruct through anatomy, the five-turn conversation of chapter 9
(anatomy.experiments.kv_cache.DIALOGUE), under ``torch.inference_mode`` as in ``anatomy.generate``. The
cache of the earlier turns is filled untimed; then the two ways of answering the turn's message run
interleaved (reuse, recompute, reuse, ...) so that background load hits both alike. The table reports the
medians, their ratio next to the targets (>= 4x at turn 5, and >= 70% of the counted FLOP ratio, what the
ratio would be if every FLOP cost the same) and the largest logit difference (reuse is exact: float
rounding only). The targets decide the run's verdict at 1 thread, as in the attention bench; a row at
another thread count is reported against them.

Both calls run the path the model takes for a call of more than 16 tokens with a cache: ``anatomy.prefill``
(the model's operations, matrix products by oneDNN on weights kept in its own layout, attention as two
oneDNN products per key/value head), the table names it. Where the rest of the FLOP ratio
goes, measured in the same interleaved loop: ``new alone`` runs the turn's new tokens with an empty cache
(the reuse call minus its attention over the history), ``1 token`` runs a single token with an empty cache
through the same path (what any call costs however few tokens it computes: every weight is streamed from
memory once, and each layer's kernels are launched; called as ``anatomy.prefill.forward``, since the model
would give a one-token call to the C decoding step, which a call of the turn's 50 new tokens never takes).
reuse - new alone = attention over the cache; 1 token / reuse = the share of the reuse call that is the
per-call floor. The rest of the reuse call is its 50 rows of matrix products, which run at a lower FLOP rate
than the recomputed conversation's ~580 rows (small products use a core less well, and at 2 threads split
into less work per thread), and is why the time ratio stays under the FLOP ratio. Under each row with more
than one thread (when a 1-thread row ran first) the bench prints the best share this floor allows: the
reuse call if everything but its floor had scaled perfectly from the 1-thread row (floor + (reuse - floor) /
threads, both rows' medians), against this row's recompute time.

Before anatomy.prefill kept its weights in oneDNN's layout (commit c96af3c, quiet machine), oneDNN reordered
all 425 MB of the blocks' weights on every call, which did not get faster with a second thread: the 1-token
floor was 32.1 / 30.9 ms at 1 / 2 threads, the 2-thread share 0.58, and the best share that floor allowed
0.73. Reordered once, and with attention by oneDNN instead of SDPA with an explicit mask, the reuse call took
123.6 -> 89.8 ms and recomputing 1030 -> 813 ms (1 thread, CPU clock, under load 3.6-4.7), with bit-identical
turn-5 logits for reuse and recompute. At 2 threads that is not enough (e800697, load 0.8-1.2): reuse 92.8
ms, recompute 609.8, share 0.62 (1 thread in the same run: 95.7 / 844.0, 0.83), and the floor allows 0.81;
what keeps the share down is that the small call gets slower with a second thread (the 1-token floor 37.1
ms at 2 threads against 27.8 at 1, the 50 new tokens alone 89.1 against 78.9) while recomputing scales
(844 -> 610). The cause, measured on the quiet machine (alternated processes, e935c75): with
``OMP_WAIT_POLICY=PASSIVE`` (what ``anatomy`` sets at import) each parallel region (oneDNN's ten products per
layer, and every elementwise operation over more than 32,768 numbers) wakes the sleeping second thread; at
2 threads a 1-token call took 46.5 / 38.9 ms under PASSIVE and 24.8 / 24.3 under ACTIVE, a 50-token call
101.1 / 92.1 and 62.0 / 51.0 (1 thread: the same within 5%). The benches keep the package's policy;
``OMP_WAIT_POLICY=ACTIVE python benches/multiturn.py`` runs this bench with spinning threads instead, and
``benches/wait_policy.py`` measures both sides of the trade (this row's share, and training beside busy
processes) under PASSIVE, a bounded spin and ACTIVE.

Splitting the call's rows between two Python threads, each with one OpenMP thread (so no parallel region
wakes anyone), was measured too, as an upper bound (quiet machine, 82df4d2: each half a call of its own,
without the history, so no attention across the halves and no synchronisation; medians of 15 and 9): 61.4
ms against 81.5 for the turn's 50 rows at 2 OpenMP threads and 74.4 at 1; but a recomputation's many rows
gain as much (400 random tokens: 278.5 against 397.1 ms), so the share would not rise.

``--packed`` runs the same with ``smollm2(packed=True)`` (the GGUF's Q4_1 blocks kept packed,
``anatomy.packed``): both ways of answering use it, so the ratio stays like for like. Its kernel serves calls
of up to 8 positions; the turn's 50 new tokens (and the recomputed conversation) go through one fp32 matrix
product with the weights dequantized for the call, so only the 1-token floor can get faster.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its thread pool

import record  # noqa: E402  (benches/record.py: machine line and JSON record)
import torch  # noqa: E402

from anatomy import decode, prefill, pretrained  # noqa: E402
from anatomy.experiments import kv_cache  # noqa: E402

TARGET = 4.0
TARGET_OF_FLOP_RATIO = 0.7
# The targets hold for the 1-thread row, as the attention bench's; rows at other thread counts are reported
# against them without deciding the run's verdict (at 2 threads the wait policy decides the share: the
# module docstring, and benches/wait_policy.py).
TARGET_THREADS = 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--turn", type=int, default=5)
    ap.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu: CPU time of the timing thread (1-thread rows only; 2-thread rows stay wall)",
    )
    ap.add_argument("--packed", action="store_true", help="SmolLM2 with its Q4_1 weights kept packed")
    record.add_json_argument(ap)
    args = ap.parse_args()
    machine = record.header(threads=None)
    model, tokenizer = pretrained.smollm2(verbose=False, packed=args.packed)
    model.eval()
    segments = kv_cache.chat_segments(tokenizer)
    rows = [_run(args, model, segments, threads) for threads in args.threads]
    one = next((r for r in rows if r["threads"] == 1), None)
    for r in rows:
        if one is not None and r["threads"] > 1:
            best = r["one token ms"] + (one["reuse ms"] - one["one token ms"]) / r["threads"]
            r["best reuse ms if all but the floor scaled"] = round(best, 3)
            r["best share"] = round(r["recompute ms"] / best / r["flop ratio"], 4)
            print(
                f"threads={r['threads']}: if everything but the 1-token floor ({r['one token ms']:.1f} ms) "
                f"scaled perfectly from the 1-thread row, reuse would take {best:.1f} ms: ratio "
                f"{r['recompute ms'] / best:.2f}, share {r['best share']:.2f} (the floor's limit on this row)"
            )
    judged = [r for r in rows if r["targeted"]]
    ok = all(r["ok"] for r in judged) if judged else None
    others = [r for r in rows if not r["targeted"]]
    below = ", ".join(f"{r['threads']}-thread row {'meets' if r['ok'] else 'is below'} them" for r in others)
    if ok is None:
        print(f"no {TARGET_THREADS}-thread row: nothing judged" + (f" ({below})" if below else ""))
    else:
        print(
            (f"targets met at {TARGET_THREADS} thread" if ok else "SOME TARGETS MISSED (see the tables)")
            + (f"; {below}" if below else "")
        )
    record.save(
        "multiturn",
        machine,
        rows,
        {"ratio": TARGET, "share of flop ratio": TARGET_OF_FLOP_RATIO},
        ok,
        args.json,
    )


@torch.inference_mode()
def _run(args, model, segments, threads: int) -> dict:
    torch.set_num_threads(threads)
    turn = args.turn
    history = torch.cat([torch.cat([s["prompt"], s["reply"]], dim=1) for s in segments[: turn - 1]], dim=1)
    new = segments[turn - 1]["prompt"]
    convo = torch.cat([history, new], dim=1)
    H = history.shape[1]
    cache = model.new_cache(max_len=convo.shape[1])
    model(history, cache=cache)
    got = {}

    def reuse():
        cache.truncate(H)
        got["reuse"] = model(new, cache=cache, logits_to_keep=1)[:, -1]

    def recompute():
        fresh = model.new_cache(max_len=convo.shape[1])
        got["recompute"] = model(convo, cache=fresh, logits_to_keep=1)[:, -1]

    def new_alone():
        model(new, cache=model.new_cache(max_len=new.shape[1]), logits_to_keep=1)

    def one_token():  # the floor of the path the reuse call takes (the model would take the C step)
        if prefill.forward(model, new[:, :1], model.new_cache(max_len=1), 1) is None:
            with decode.disabled():  # no oneDNN path: the reuse call runs the textbook path, and so does this
                model(new[:, :1], cache=model.new_cache(max_len=1), logits_to_keep=1)

    fns = {"reuse": reuse, "recompute": recompute, "new alone": new_alone, "1 token": one_token}
    cpu = args.clock == "cpu" and threads == 1
    clock = time.thread_time if cpu else time.perf_counter
    for fn in fns.values():
        fn()  # warm-up
    times = {k: [] for k in fns}
    for r in range(args.repeats):
        order = list(fns.items())
        for name, fn in order if r % 2 == 0 else order[::-1]:
            t0 = clock()
            fn()
            times[name].append(clock() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["recompute"] / med["reuse"]
    flops = kv_cache.dialogue_flops(model.config, [H], [new.shape[1]])
    flop_ratio = flops["recompute"][0] / flops["reuse"][0]
    share = ratio / flop_ratio
    err = float((got["reuse"] - got["recompute"]).abs().max())
    ok = ratio >= TARGET and share >= TARGET_OF_FLOP_RATIO
    targeted = threads == TARGET_THREADS
    path = (
        "anatomy.prefill (oneDNN products)"
        if prefill._op() is not None and decode._plan(model) is not None
        else "textbook forward pass"
    )
    print(
        f"threads={threads} repeats={args.repeats} clock={'cpu' if cpu else 'wall'}, path: {path} "
        f"(SmolLM2-135M "
        f"{'Q4_1 weights kept packed' if args.packed else 'fp32'}, "
        f"anatomy, inference mode, interleaved medians); load average {os.getloadavg()[0]:.1f}"
    )
    header = (
        f"{'turn':>4} {'history':>8} {'new':>5} | {'reuse ms':>9} {'recompute ms':>12} | "
        f"{'ratio':>6} {'target':>7} | {'FLOP ratio':>10} {'share':>6} {'target':>7} | "
        f"{'max |dlogit|':>12}"
    )
    print(header)
    print("-" * len(header))
    print(
        f"{turn:>4} {H:>8} {new.shape[1]:>5} | {1e3 * med['reuse']:>9.1f} "
        f"{1e3 * med['recompute']:>12.1f} | {ratio:>6.2f} {'>= ' + str(TARGET):>7} | "
        f"{flop_ratio:>10.1f} {share:>6.2f} {'>= ' + str(TARGET_OF_FLOP_RATIO):>7} | {err:>12.1e}"
    )
    attn = med["reuse"] - med["new alone"]
    print(
        f"where the reuse call's time goes: {1e3 * med['1 token']:.1f} ms is the per-call floor (1 token: "
        f"every weight streamed once, every kernel launched; {med['1 token'] / med['reuse']:.0%} of the "
        f"call), {1e3 * med['new alone']:.1f} ms the {new.shape[1]} new tokens without the history, "
        f"{1e3 * attn:.1f} ms attention over the {H}-token cache ({attn / med['reuse']:.0%})"
    )
    if targeted:
        print("verdict:", "yes" if ok else "NO")
    else:
        print(
            f"verdict: reported (the target is the {TARGET_THREADS}-thread row); against it this row "
            f"would be {'met' if ok else 'missed'}"
        )
    print()
    return {
        "turn": turn,
        "threads": threads,
        "weights": "Q4_1 kept packed" if args.packed else "fp32",
        "clock": "cpu" if cpu else "wall",
        "history": H,
        "new": new.shape[1],
        "reuse ms": round(1e3 * med["reuse"], 3),
        "recompute ms": round(1e3 * med["recompute"], 3),
        "new alone ms": round(1e3 * med["new alone"], 3),
        "one token ms": round(1e3 * med["1 token"], 3),
        "ratio": round(ratio, 4),
        "flop ratio": round(flop_ratio, 4),
        "share of flop ratio": round(share, 4),
        "max logit diff": err,
        "path": path,
        "ok": ok,
        "targeted": targeted,
    }


if __name__ == "__main__":
    main()
