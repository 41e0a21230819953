"""Attention speed: our kernels, causal vs full, and against PyTorch SDPA, as ratios measured side by side.

    python benches/attention.py [--threads 1 2] [--repeats 9] [--sizes 512 1024 2048 4096] [--clock wall]
    python benches/attention.py --gpu-sizes 1024 2048 4096 8192      # the GPU table (needs CUDA)

CPU table: our tiled PyTorch kernel and SDPA, fp32, B=1, H=8, D=64, tile 128, one table per thread count.
GPU table (only when CUDA is available): our Triton kernel and SDPA (FlashAttention-2 on recent GPUs), fp16,
B=1, H=16, D=64. The four variants run in turn within each repeat (:func:`anatomy.timing.interleaved_times`),
so that load on the machine hits all of them alike; the times are medians, and each ratio is the median over
repeats of the back-to-back ratio (:func:`anatomy.timing.paired_ratio`), which cancels a slowdown that lasts
longer than one pair. The targets (ARCHITECTURE.md, "Targets"), at 1 thread and N >= 1024: causal/full at most
0.01 above the tile-skipping ideal (T + 1) / 2T, and tiled causal at most SDPA's causal time. Rows at other
thread counts are reported without a target. The load average is printed before and after each table.
``--clock cpu`` times the CPU work of the (single) timing thread instead of wall-clock time: on a shared
machine it leaves out the time other jobs held the core.
"""

from __future__ import annotations

import argparse
import os
import statistics

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its thread pool

import record  # noqa: E402  (benches/record.py: machine line and JSON record)
import torch  # noqa: E402

from anatomy import count_tiles  # noqa: E402
from anatomy.attention import attention  # noqa: E402
from anatomy.timing import interleaved_times, paired_ratio  # noqa: E402

# causal/full: at most this much above the tile-skipping ideal; tiled/sdpa: at most this ratio (N >= 1024).
# Both are targets at 1 thread; rows at other thread counts are reported without a target.
TARGETS = {"causal/full above ideal": 0.01, "tiled/sdpa causal": 1.0}
TARGET_MIN_N = 1024


def _load() -> float:
    return os.getloadavg()[0]


def time_variants(
    n: int,
    variants: dict,
    *,
    heads: int,
    tile: int,
    repeats: int,
    threads: int | None,
    clock: str = "wall",
    dtype=torch.float32,
    device: str = "cpu",
    seed: int = 0,
) -> dict:
    """Interleaved times of ``attention`` for each variant (keyword arguments) at sequence length n."""
    g = torch.Generator().manual_seed(seed + n)
    q, k, v = (torch.randn(1, heads, n, 64, generator=g).to(device=device, dtype=dtype) for _ in range(3))
    fns = {name: (lambda kw=kw: attention(q, k, v, tile=tile, **kw)) for name, kw in variants.items()}
    return interleaved_times(fns, repeats, threads=threads, clock=clock)


def cpu_table(args, threads: int, rows: list, verdicts: list) -> bool:
    variants = {
        "tiled causal": dict(mask="causal", backend="tiled"),
        "tiled full": dict(mask="bidirectional", backend="tiled"),
        "sdpa causal": dict(mask="causal", backend="sdpa"),
        "sdpa full": dict(mask="bidirectional", backend="sdpa"),
    }
    load0 = _load()
    print(
        f"CPU: threads={threads} repeats={args.repeats} tile={args.tile} clock={args.clock} "
        f"(fp32, B=1, H=8, D=64); times in ms (medians), ratios are medians of back-to-back ratios; "
        f"load average {load0:.2f} at the start"
    )
    header = (
        f"{'N':>5} | {'tiled c':>8} {'tiled f':>8} {'sdpa c':>8} {'sdpa f':>8} | {'c/f ours':>8} "
        f"{'ideal':>6} {'target':>6} | {'ours/sdpa c':>11} {'target':>6} | {'sdpa c/f':>8}"
    )
    print(header)
    print("-" * len(header))
    ok = True
    for n in args.sizes:
        times = time_variants(
            n, variants, heads=8, tile=args.tile, repeats=args.repeats, threads=threads, clock=args.clock
        )
        med = {name: 1e3 * statistics.median(ts) for name, ts in times.items()}
        cf = paired_ratio(times["tiled causal"], times["tiled full"])
        vs = paired_ratio(times["tiled causal"], times["sdpa causal"])
        sdpa_cf = paired_ratio(times["sdpa causal"], times["sdpa full"])
        ideal = count_tiles("causal", n, n, 64, tile=args.tile).computed_fraction
        targeted = threads == 1 and n >= TARGET_MIN_N
        t_cf = ideal + TARGETS["causal/full above ideal"] if targeted else None
        t_vs = TARGETS["tiled/sdpa causal"] if targeted else None
        if targeted:
            verdicts.append((n, "causal/full", cf, t_cf, cf <= t_cf))
            verdicts.append((n, "tiled/sdpa causal", vs, t_vs, vs <= t_vs))
            ok &= cf <= t_cf and vs <= t_vs
        rows.append(
            {
                "threads": threads,
                "n": n,
                "clock": args.clock,
                "load_average_1min": round(_load(), 2),
                **{f"{k} ms": round(v, 4) for k, v in med.items()},
                "causal/full": round(cf, 4),
                "ideal": round(ideal, 4),
                "tiled/sdpa causal": round(vs, 4),
                "sdpa causal/full": round(sdpa_cf, 4),
            }
        )
        print(
            f"{n:>5} | {med['tiled causal']:>8.1f} {med['tiled full']:>8.1f} {med['sdpa causal']:>8.1f} "
            f"{med['sdpa full']:>8.1f} | {cf:>8.3f} {ideal:>6.3f} {_fmt(t_cf, 3)} | {vs:>11.2f} "
            f"{_fmt(t_vs, 2)} | {sdpa_cf:>8.3f}"
        )
    print(f"load average {_load():.2f} at the end")
    return ok


def _fmt(t: float | None, digits: int) -> str:
    return f"{t:>6.{digits}f}" if t is not None else f"{'-':>6}"


def gpu_table(args, rows: list) -> None:
    """Our Triton kernel against SDPA on the GPU (fp16); reported, no targets."""
    variants = {
        "triton causal": dict(mask="causal", backend="triton"),
        "triton full": dict(mask="bidirectional", backend="triton"),
        "sdpa causal": dict(mask="causal", backend="sdpa"),
        "sdpa full": dict(mask="bidirectional", backend="sdpa"),
    }
    print(
        f"\nGPU: {torch.cuda.get_device_name()} repeats={args.gpu_repeats} tile={args.tile} "
        "(fp16, B=1, H=16, D=64); times in ms"
    )
    header = (
        f"{'N':>5} | {'triton c':>9} {'triton f':>9} {'sdpa c':>8} {'sdpa f':>8} | {'c/f triton':>10} "
        f"{'ideal':>6} | {'c/f sdpa':>8} | {'triton/sdpa c':>13} | {'triton TFLOP/s c':>16}"
    )
    print(header)
    print("-" * len(header))
    for n in args.gpu_sizes:
        times = time_variants(
            n,
            variants,
            heads=16,
            tile=args.tile,
            repeats=args.gpu_repeats,
            threads=None,
            dtype=torch.float16,
            device="cuda",
        )
        med = {name: 1e3 * statistics.median(ts) for name, ts in times.items()}
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
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    ap.add_argument("--tile", type=int, default=128)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    ap.add_argument("--gpu-sizes", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    ap.add_argument("--gpu-repeats", type=int, default=20)
    ap.add_argument("--no-cpu", action="store_true", help="only the GPU table")
    record.add_json_argument(ap)
    args = ap.parse_args()
    if args.clock == "cpu" and args.threads != [1]:
        ap.error("--clock cpu times one thread: use it with --threads 1")
    machine = record.header(threads=None)
    ok, rows, verdicts = True, [], []
    if not args.no_cpu:
        for threads in args.threads:
            ok &= cpu_table(args, threads, rows, verdicts)
            print()
        if verdicts:
            print(f"targets (1 thread, N >= {TARGET_MIN_N}):")
            for n, what, value, target, met in verdicts:
                print(f"  N = {n:>5}  {what:<18} {value:6.3f} <= {target:6.3f}  {'met' if met else 'MISSED'}")
        else:
            print(f"no targeted row in this run (targets are at 1 thread, N >= {TARGET_MIN_N})")
        print("all targets met" if ok and verdicts else "SOME TARGETS MISSED (see above)" if verdicts else "")
    if torch.cuda.is_available():
        gpu_table(args, rows)
    else:
        print("\nGPU: no CUDA device here, so the Triton-vs-SDPA (FlashAttention) table is skipped")
    record.save("attention", machine, rows, TARGETS, ok and bool(verdicts), args.json)


if __name__ == "__main__":
    main()
