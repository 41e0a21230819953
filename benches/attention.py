"""Attention speed: our kernels, causal vs full, and against PyTorch SDPA, as ratios of medians.

    python benches/attention.py [--threads 1 2] [--repeats 7] [--sizes 512 1024 2048 4096] [--clock wall]
    python benches/attention.py --gpu-sizes 1024 2048 4096 8192      # the GPU table (needs CUDA)

CPU table: our tiled PyTorch kernel and SDPA, fp32, B=1, H=8, D=64, tile 128. GPU table (only when CUDA is
available): our Triton kernel and SDPA (FlashAttention-2 on recent GPUs), fp16, B=1, H=16, D=64. Variants
are interleaved within each repeat so that load on the machine hits all of them alike (see
:func:`anatomy.timing.interleaved_medians`); the tables report medians and their ratios next to the
tile-skipping ideal (T + 1) / 2T and the targets (causal/full within 0.01 of the ideal; tiled causal at
most SDPA's causal time at N >= 1024; both at 1 thread, other thread counts are reported). ``--clock cpu``
times the CPU work of the (single) timing thread instead of wall-clock time: on a shared machine it leaves
out the time other jobs held the core.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its thread pool

import record  # noqa: E402  (benches/record.py: machine line and JSON record)
import torch  # noqa: E402

from anatomy import count_tiles  # noqa: E402
from anatomy.experiments.causal_kernel import time_attention  # noqa: E402

# causal/full: at most this much above the tile-skipping ideal; tiled/sdpa: at most this ratio (N >= 1024).
# Both are targets at 1 thread; rows at other thread counts are reported without a target.
TARGETS = {"causal/full above ideal": 0.01, "tiled/sdpa causal": 1.0}


def _fmt(t: float | None) -> str:
    return f"{t:>6.2f}" if t else f"{'-':>6}"


def cpu_table(args, threads: int, rows: list) -> bool:
    variants = {
        "tiled causal": dict(mask="causal", backend="tiled"),
        "tiled full": dict(mask="bidirectional", backend="tiled"),
        "sdpa causal": dict(mask="causal", backend="sdpa"),
        "sdpa full": dict(mask="bidirectional", backend="sdpa"),
    }
    print(
        f"CPU: threads={threads} repeats={args.repeats} tile={args.tile} clock={args.clock} "
        "(fp32, B=1, H=8, D=64); times in ms"
    )
    header = (
        f"{'N':>5} | {'tiled c':>8} {'tiled f':>8} {'sdpa c':>8} {'sdpa f':>8} | {'c/f ours':>8} "
        f"{'ideal':>6} {'target':>6} | {'ours/sdpa c':>11} {'target':>6} | {'sdpa c/f':>8}"
    )
    print(header)
    print("-" * len(header))
    ok = True
    for n in args.sizes:
        (row,) = time_attention([n], variants, heads=8, kv_heads=8, head_dim=64, tile=args.tile,
                                repeats=args.repeats, threads=threads, clock=args.clock)
        med = {name: row[name] * 1e3 for name in variants}
        cf = med["tiled causal"] / med["tiled full"]
        vs = med["tiled causal"] / med["sdpa causal"]
        ideal = count_tiles("causal", n, n, 64, tile=args.tile).computed_fraction
        t_cf = ideal + TARGETS["causal/full above ideal"] if threads == 1 and n >= 1024 else None
        t_vs = TARGETS["tiled/sdpa causal"] if threads == 1 and n >= 1024 else None
        ok &= (t_cf is None or cf <= t_cf) and (t_vs is None or vs <= t_vs)
        rows.append({"threads": threads, "n": n, **{f"{k} ms": round(v, 4) for k, v in med.items()},
                     "causal/full": round(cf, 4), "ideal": round(ideal, 4), "tiled/sdpa causal": round(vs, 4),
                     "sdpa causal/full": round(med["sdpa causal"] / med["sdpa full"], 4)})
        print(
            f"{n:>5} | {med['tiled causal']:>8.1f} {med['tiled full']:>8.1f} {med['sdpa causal']:>8.1f} "
            f"{med['sdpa full']:>8.1f} | {cf:>8.3f} {ideal:>6.3f} {_fmt(t_cf)} | {vs:>11.2f} {_fmt(t_vs)} "
            f"| {med['sdpa causal'] / med['sdpa full']:>8.3f}"
        )
    return ok


def gpu_table(args, rows: list) -> None:
    """Our Triton kernel against SDPA on the GPU (fp16); reported, no targets."""
    variants = {
        "triton causal": dict(mask="causal", backend="triton"),
        "triton full": dict(mask="bidirectional", backend="triton"),
        "sdpa causal": dict(mask="causal", backend="sdpa"),
        "sdpa full": dict(mask="bidirectional", backend="sdpa"),
    }
    print(f"\nGPU: {torch.cuda.get_device_name()} repeats={args.gpu_repeats} tile={args.tile} "
          "(fp16, B=1, H=16, D=64); times in ms")
    header = (
        f"{'N':>5} | {'triton c':>9} {'triton f':>9} {'sdpa c':>8} {'sdpa f':>8} | {'c/f triton':>10} "
        f"{'ideal':>6} | {'c/f sdpa':>8} | {'triton/sdpa c':>13} | {'triton TFLOP/s c':>16}"
    )
    print(header)
    print("-" * len(header))
    for n in args.gpu_sizes:
        (row,) = time_attention([n], variants, heads=16, kv_heads=16, head_dim=64, tile=args.tile,
                                repeats=args.gpu_repeats, threads=None, dtype=torch.float16, device="cuda")
        med = {name: row[name] * 1e3 for name in variants}
        flops_causal = count_tiles("causal", n, n, 64, tile=args.tile, heads=16).flops_needed
        rows.append({"device": "cuda", "n": n, **{f"{k} ms": round(v, 5) for k, v in med.items()}})
        print(
            f"{n:>5} | {med['triton causal']:>9.3f} {med['triton full']:>9.3f} {med['sdpa causal']:>8.3f} "
            f"{med['sdpa full']:>8.3f} | {med['triton causal'] / med['triton full']:>10.3f} "
            f"{count_tiles('causal', n, n, 64, tile=args.tile).computed_fraction:>6.3f} | "
            f"{med['sdpa causal'] / med['sdpa full']:>8.3f} | "
            f"{med['triton causal'] / med['sdpa causal']:>13.2f} | "
            f"{flops_causal / (med['triton causal'] * 1e-3) / 1e12:>16.1f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    ap.add_argument("--tile", type=int, default=128)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    ap.add_argument("--gpu-sizes", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    ap.add_argument("--gpu-repeats", type=int, default=20)
    ap.add_argument("--no-cpu", action="store_true", help="only the GPU table")
    record.add_json_argument(ap)
    args = ap.parse_args()
    torch.manual_seed(0)
    machine = record.header(threads=None)
    ok, rows = True, []
    if not args.no_cpu:
        for threads in args.threads:
            ok &= cpu_table(args, threads, rows)
            print()
        print("all targets met" if ok else "SOME TARGETS MISSED (see the table)")
    if torch.cuda.is_available():
        gpu_table(args, rows)
    else:
        print("\nGPU: no CUDA device here, so the Triton-vs-SDPA (FlashAttention) table is skipped")
    record.save("attention", machine, rows, TARGETS, ok, args.json)


if __name__ == "__main__":
    main()
