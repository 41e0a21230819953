"""Training throughput: anatomy's decoder vs transformers' LlamaForCausalLM at the same config, as a ratio.

    python benches/train_throughput.py [--threads 1 2] [--repeats 9] [--steps 3] [--batch 8] [--seq 256]
        [--clock cpu]

One training step = forward, next-token cross-entropy, backward and an AdamW step, on the same random
token batch, from the same initial weights (the transformers model is ``anatomy.convert.to_hf`` of
ours). The config is a ~7M-parameter Llama (d_model 256, 6 layers, 8 heads, SwiGLU 704, vocab 8192, tied
embeddings). Each repeat times ``--steps`` steps of each model; the two alternate (and which goes first
alternates), so load from other jobs hits both alike. The table reports median tokens/s and the ratio next
to the target (>= 1.1x at each thread count given). ``--clock cpu`` times the CPU work of the timing thread
in 1-thread rows (robust on a shared machine; 2-thread rows stay wall-clock).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its thread pool
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import record  # noqa: E402  (benches/record.py: machine line and JSON record)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from anatomy import Config, Transformer  # noqa: E402
from anatomy.convert import to_hf  # noqa: E402

TARGET = 1.1
CONFIG = dict(vocab_size=8192, d_model=256, n_layers=6, n_heads=8, d_ff=704, tie_embeddings=True)


def _step_fn(forward, params):
    opt = torch.optim.AdamW(params, lr=3e-4, weight_decay=0.1)

    def step(ids):
        logits = forward(ids)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--steps", type=int, default=3, help="timed training steps per model per repeat")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    record.add_json_argument(ap)
    args = ap.parse_args()
    machine = record.header(threads=None)
    rows = []
    for threads in args.threads:
        rows.append(_run(args, threads))
        print()
    ok = all(r["ratio"] >= TARGET for r in rows)
    print("all targets met" if ok else "SOME TARGETS MISSED (see the tables)")
    record.save("train_throughput", machine, rows, {"training tokens/s": TARGET}, ok, args.json)


def _run(args, threads: int) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)

    ours = Transformer(Config(**dict(CONFIG, max_seq_len=max(args.seq, 256)))).train()
    hf = to_hf(ours).train()
    n_params = sum(p.numel() for p in ours.parameters())
    assert n_params == sum(p.numel() for p in hf.parameters())
    steps = {
        "anatomy": _step_fn(ours, ours.parameters()),
        "transformers": _step_fn(lambda ids: hf(ids).logits, hf.parameters()),
    }
    batches = [torch.randint(0, CONFIG["vocab_size"], (args.batch, args.seq)) for _ in range(args.steps)]
    first = {name: float(step(batches[0])) for name, step in steps.items()}  # warm-up; the same loss
    tokens = args.batch * args.seq * args.steps
    clock = time.thread_time if args.clock == "cpu" and threads == 1 else time.perf_counter
    tps = {name: [] for name in steps}
    for r in range(args.repeats):
        order = list(steps.items())
        for name, step in order if r % 2 == 0 else order[::-1]:
            t0 = clock()
            for ids in batches:
                step(ids)
            tps[name].append(tokens / (clock() - t0))
    med = {k: statistics.median(v) for k, v in tps.items()}
    ratio = med["anatomy"] / med["transformers"]
    print(
        f"training, {n_params / 1e6:.1f}M parameters, batch {args.batch} x seq {args.seq}, fp32, AdamW, "
        f"threads={threads}, repeats={args.repeats} x {args.steps} steps, "
        f"clock={'cpu' if clock is time.thread_time else 'wall'}; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    header = f"{'metric':<20} {'anatomy':>10} {'LlamaForCausalLM':>17} {'ratio':>7} {'target':>7}  ok"
    print(header)
    print("-" * len(header))
    print(
        f"{'training tokens/s':<20} {med['anatomy']:>10.0f} {med['transformers']:>17.0f} {ratio:>6.2f}x "
        f"{'>=' + str(TARGET) + 'x':>7}  {'yes' if ratio >= TARGET else 'NO'}"
    )
    print(f"first-step loss: anatomy {first['anatomy']:.6f}, transformers {first['transformers']:.6f}")
    runs = "; ".join(f"{k} " + ", ".join(f"{x:.0f}" for x in v) for k, v in tps.items())
    print(f"per-repeat tokens/s: {runs}")
    return {
        "threads": threads,
        "clock": "cpu" if clock is time.thread_time else "wall",
        "anatomy tokens/s": round(med["anatomy"], 1),
        "transformers tokens/s": round(med["transformers"], 1),
        "ratio": round(ratio, 4),
        "first loss anatomy": first["anatomy"],
        "first loss transformers": first["transformers"],
    }


if __name__ == "__main__":
    main()
