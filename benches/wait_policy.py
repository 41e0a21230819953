"""OpenMP's wait policy, both sides of the trade: a small inference call, and training on a busy machine.

    python benches/wait_policy.py [--rounds 2] [--busy 2] [--policies PASSIVE SPIN ACTIVE]

``anatomy`` sets ``OMP_WAIT_POLICY=PASSIVE`` when it is imported first (unless the variable is set): an idle
OpenMP thread then sleeps at once instead of spinning, and each parallel region wakes it. This bench
measures what that choice costs and what it saves, under three policies, each in a fresh process (OpenMP
reads the policy once, when torch loads it):

* ``PASSIVE``: anatomy's default;
* ``SPIN``: ``OMP_WAIT_POLICY=ACTIVE GOMP_SPINCOUNT=10000``, a bounded spin (libgomp spins that many
  times, about 0.1 ms, then sleeps);
* ``ACTIVE``: spin ~3e10 times (minutes) before sleeping (libgomp; its default without the variable is a
  300,000-spin wait, ~3 ms).

Two workloads, 2 torch threads, the policies alternating within each round:

* the multi-turn bench's 2-thread row (``benches/multiturn.py --threads 2``): the reuse call (50 new tokens
  through ``anatomy.prefill``, ~400 parallel regions of a few hundred microseconds each), recomputing the
  conversation, and the reuse share of the FLOP ratio (target >= 70%);
* training a small decoder with ``anatomy.train`` (d_model 128, 4 layers, batch 16 x 128 tokens, the size of
  the book's first chapters' models), alone and beside ``--busy`` processes that each keep a core busy (what
  CI's parallel test processes, or a neighbour on a shared cloud machine, do to it).

The table gives the medians over rounds (with the default two rounds, the mean of two). libgomp only: other
OpenMP runtimes (LLVM's libomp on macOS) read ``KMP_BLOCKTIME`` instead of ``GOMP_SPINCOUNT``, so there
``SPIN`` is ``ACTIVE``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
POLICIES = {
    "PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "SPIN": {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "10000"},
    "ACTIVE": {"OMP_WAIT_POLICY": "ACTIVE"},
}


def _train_child(steps: int) -> None:
    """In a child process: tokens/s of anatomy.train on a small decoder at 2 threads (printed as JSON)."""
    import torch

    from anatomy.model import Config, Transformer
    from anatomy.train import train

    torch.set_num_threads(2)
    torch.manual_seed(0)
    cfg = Config(vocab_size=256, d_model=128, n_layers=4, n_heads=4, max_seq_len=128)
    model = Transformer(cfg)
    g = torch.Generator().manual_seed(1)
    B, N = 16, 128

    def batches(_step):
        x = torch.randint(0, cfg.vocab_size, (B, N + 1), generator=g)
        return x[:, :-1], x[:, 1:]

    train(model, batches, steps=3, progress=False, eval_at_start=False)  # warm-up
    t0 = time.perf_counter()
    train(model, batches, steps=steps, progress=False, eval_at_start=False)
    print(json.dumps({"tokens_per_s": B * N * steps / (time.perf_counter() - t0)}))


def _child_env(policy: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(POLICIES[policy], HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


# A process that keeps a core busy, and ends by itself when this bench is gone (killed, or timed out) or
# after 15 minutes: a busy loop left behind would take a core of a 2-core machine for good.
HOG = """
import os, time
parent, end = os.getppid(), time.monotonic() + 900
while os.getppid() == parent and time.monotonic() < end:
    for _ in range(100_000):
        pass
"""


def _train(policy: str, steps: int, busy: int) -> float:
    hogs = []
    try:
        for _ in range(busy):
            hogs.append(subprocess.Popen([sys.executable, "-c", HOG]))
        out = subprocess.run(
            [sys.executable, __file__, "--child-train", str(steps)],
            env=_child_env(policy), capture_output=True, text=True, check=True, timeout=600,
        )  # fmt: skip
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    return json.loads(out.stdout.strip().splitlines()[-1])["tokens_per_s"]


def _multiturn(policy: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "multiturn.json"
        subprocess.run(
            [sys.executable, str(HERE / "multiturn.py"), "--threads", "2", "--json", str(path)],
            env=_child_env(policy), capture_output=True, text=True, check=True, timeout=600,
        )  # fmt: skip
        return json.loads(path.read_text())["rows"][0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--busy", type=int, default=2, help="processes that each keep a core busy")
    ap.add_argument("--steps", type=int, default=30, help="timed training steps per measurement")
    ap.add_argument("--policies", nargs="+", choices=list(POLICIES), default=list(POLICIES))
    ap.add_argument("--child-train", type=int, default=None, help=argparse.SUPPRESS)
    sys.path.insert(0, str(HERE))
    import record

    record.add_json_argument(ap)
    args = ap.parse_args()
    if args.child_train is not None:
        _train_child(args.child_train)
        return
    machine = record.header(threads=2)
    got = {
        p: {"reuse ms": [], "recompute ms": [], "share": [], "train": [], "train busy": []}
        for p in args.policies
    }
    for r in range(args.rounds):
        order = args.policies if r % 2 == 0 else args.policies[::-1]
        for p in order:
            row = _multiturn(p)
            got[p]["reuse ms"].append(row["reuse ms"])
            got[p]["recompute ms"].append(row["recompute ms"])
            got[p]["share"].append(row["share of flop ratio"])
            got[p]["train"].append(_train(p, args.steps, busy=0))
            got[p]["train busy"].append(_train(p, args.steps, busy=args.busy))
        print(f"round {r + 1}/{args.rounds} done, load average {os.getloadavg()[0]:.1f}", flush=True)
    header = (
        f"{'policy':>8} | {'reuse ms':>9} {'recompute ms':>12} {'share':>6} | "
        f"{'train tok/s':>11} {f'beside {args.busy} busy':>14} {'busy/alone':>10}"
    )
    print(header)
    print("-" * len(header))
    rows = []
    for p in args.policies:
        med = {k: statistics.median(v) for k, v in got[p].items()}
        rows.append(
            {
                "variant": p,
                "env": " ".join(f"{k}={v}" for k, v in POLICIES[p].items()),
                "reuse ms": round(med["reuse ms"], 2),
                "recompute ms": round(med["recompute ms"], 2),
                "share of flop ratio": round(med["share"], 4),
                "train tokens/s": round(med["train"]),
                "train tokens/s busy": round(med["train busy"]),
                "busy processes": args.busy,
                "rounds": args.rounds,
            }
        )
        print(
            f"{p:>8} | {med['reuse ms']:>9.1f} {med['recompute ms']:>12.1f} {med['share']:>6.2f} | "
            f"{med['train']:>11.0f} {med['train busy']:>14.0f} {med['train busy'] / med['train']:>10.2f}"
        )
    print("(no target: the trade-off behind the package's choice of PASSIVE; see the module docstring)")
    record.save("wait_policy", machine, rows, {}, None, args.json)


if __name__ == "__main__":
    main()
