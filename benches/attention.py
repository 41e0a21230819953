"""Attention speed: our tiled kernel, causal vs full, and against PyTorch SDPA, as ratios of medians.

    python benches/attention.py [--threads 1] [--repeats 7] [--sizes 512 1024 2048 4096]

fp32, B=1, H=8, D=64, tile 128. Variants are interleaved within each repeat so that load on the machine
hits all of them alike; the table reports medians and their ratios next to the tile-skipping ideal
(T + 1) / 2T and the targets of DESIGN.md section 6.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its thread pool

import torch  # noqa: E402

from anatomy import attention, count_tiles  # noqa: E402

TARGETS = {"causal/full": {2048: 0.58, 4096: 0.55}, "tiled/sdpa": 1.3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    ap.add_argument("--tile", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    variants = {
        "tiled causal": dict(mask="causal", backend="tiled"),
        "tiled full": dict(mask="bidirectional", backend="tiled"),
        "sdpa causal": dict(mask="causal", backend="sdpa"),
        "sdpa full": dict(mask="bidirectional", backend="sdpa"),
    }
    print(
        f"threads={args.threads} repeats={args.repeats} tile={args.tile} (fp32, B=1, H=8, D=64); times in ms"
    )
    header = (
        f"{'N':>5} | {'tiled c':>8} {'tiled f':>8} {'sdpa c':>8} {'sdpa f':>8} | {'c/f ours':>8} "
        f"{'ideal':>6} {'target':>6} | {'ours/sdpa c':>11} {'target':>6} | {'sdpa c/f':>8}"
    )
    print(header)
    print("-" * len(header))
    ok = True
    with torch.inference_mode():
        for n in args.sizes:
            q, k, v = (torch.randn(1, 8, n, 64) for _ in range(3))
            times = {name: [] for name in variants}
            for kw in variants.values():  # warm-up
                attention(q, k, v, tile=args.tile, **kw)
            for _ in range(args.repeats):
                for name, kw in variants.items():
                    t0 = time.perf_counter()
                    attention(q, k, v, tile=args.tile, **kw)
                    times[name].append(time.perf_counter() - t0)
            med = {name: statistics.median(ts) * 1e3 for name, ts in times.items()}
            cf = med["tiled causal"] / med["tiled full"]
            vs = med["tiled causal"] / med["sdpa causal"]
            ideal = count_tiles("causal", n, n, 64, tile=args.tile).computed_fraction
            t_cf = TARGETS["causal/full"].get(n)
            t_vs = TARGETS["tiled/sdpa"] if n >= 1024 else None
            ok &= (t_cf is None or cf <= t_cf) and (t_vs is None or vs <= t_vs)
            fmt = lambda t: f"{t:>6.2f}" if t else f"{'-':>6}"  # noqa: E731
            print(
                f"{n:>5} | {med['tiled causal']:>8.1f} {med['tiled full']:>8.1f} {med['sdpa causal']:>8.1f} "
                f"{med['sdpa full']:>8.1f} | {cf:>8.3f} {ideal:>6.3f} {fmt(t_cf)} | {vs:>11.2f} {fmt(t_vs)} "
                f"| "
                f"{med['sdpa causal'] / med['sdpa full']:>8.3f}"
            )
    print("all targets met" if ok else "SOME TARGETS MISSED (see the table)")


if __name__ == "__main__":
    main()
