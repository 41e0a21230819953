"""Training throughput: anatomy's decoder vs transformers' LlamaForCausalLM at the same config, as a ratio.

    python benches/train_throughput.py [--threads 1 2] [--repeats 9] [--steps 3] [--batch 8] [--seq 256]
        [--clock cpu]

The config is a ~7M-parameter Llama (d_model 256, 6 layers, 8 heads, SwiGLU 704, vocab 8192, tied
embeddings), fp32; both models start from the same initial weights (the transformers model is
``anatomy.convert.to_hf`` of ours) and see the same random token batches. Two rows per thread count:

* ``public training step`` (the target row): each library's own training path. anatomy: ``anatomy.train``
  as the book calls it (``next_token_loss``, whose LM head and cross-entropy run fused chunk by chunk and
  whose matrix products run through oneDNN, see :mod:`anatomy.fused`; torch AdamW; gradient clipping at
  1.0; a constant learning rate) on batches
  (ids, ids shifted left with -100 at the end). transformers: ``model(ids, labels=ids).loss`` (which shifts
  the labels itself), backward, ``clip_grad_norm_(1.0)`` and ``torch.optim.AdamW`` with the Trainer's
  defaults (``optim="adamw_torch_fused"``, its default with torch >= 2.8: ``fused=True``; lr 5e-5, betas
  (0.9, 0.999), no weight decay). Each repeat makes a fresh optimizer on both
  sides (``anatomy.train`` does) and runs ``--steps`` steps. Same math: before timing, the bench checks that
  the two first-step losses agree to 1e-5 relative and every parameter's gradient to 1e-4 of that
  gradient's largest entry, and stops if not.
* ``same step code``: the earlier comparison, one step function for both (forward to logits, external
  ``F.cross_entropy`` on the shifted logits, backward, the same torch AdamW), so only the models differ
  (anatomy's SwiGLU op runs its products through oneDNN there too; its other Linears are ``F.linear``'s).

The GPU column: with a CUDA device, the public training steps of both libraries on it (a row with variant
``GPU (cuda)``, wall clock, reported with no target); without one, one printed line says why it is skipped,
and the JSON record says the same under ``machine["gpu column"]``.

Each repeat times each model's steps; the two alternate (and which goes first alternates), so load from
other jobs hits both alike. The table reports median tokens/s and the ratio next to the target (>= 1.1x
for the public training step at each thread count given). ``--clock cpu`` times the CPU work of the timing
thread in 1-thread rows (robust on a shared machine; 2-thread rows stay wall-clock).
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
from anatomy.train import next_token_loss, train  # noqa: E402

TARGET = 1.1
LOSS_RTOL = 1e-5  # first-step losses of the two public steps must agree this closely (relative)
GRAD_TOL = 1e-4  # and every gradient, relative to that gradient's largest entry
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
        rows.append(_run(args, threads, public=True))
        rows.append(_run(args, threads, public=False))
        print()
    ok = all(r["ratio"] >= TARGET for r in rows if r["step"] == "public training step")
    gpu = gpu_row(args)  # a row of its own, reported; the target is about the CPU rows above
    if gpu is not None:
        rows.append(gpu)
    machine["gpu column"] = gpu_status(gpu)
    print("all targets met" if ok else "SOME TARGETS MISSED (see the tables)")
    record.save("train_throughput", machine, rows, {"training tokens/s": TARGET}, ok, args.json)


def gpu_status(row: dict | None) -> str:
    """What the record says about the GPU column: where it is, or the one-line reason it was skipped."""
    if row is not None:
        return f"the row with variant 'GPU (cuda)' ({row['gpu']})"
    return "skipped: no CUDA device (torch.cuda.is_available() is False)"


def gpu_row(args) -> dict | None:
    """The GPU column: the public training steps of both libraries on the CUDA device, or None (with the
    reason printed in one line) where there is none. The same models, batches, same-math check and
    alternation as the CPU rows; wall clock with a synchronize after each repeat; no target."""
    if not torch.cuda.is_available():
        print(f"GPU column: {gpu_status(None)}")
        return None
    try:
        row = _device_row(args, torch.device("cuda"), torch.cuda.synchronize)
    except SystemExit as failed:  # the same-math check: report it here and keep the CPU rows' record
        print(f"GPU column: {failed}")
        return {"variant": "GPU (cuda)", "gpu": torch.cuda.get_device_name(), "failed": str(failed)}
    row["gpu"] = torch.cuda.get_device_name()
    print(
        f"GPU column ({row['gpu']}, wall clock, repeats={args.repeats} x {args.steps} steps): "
        f"public training step {row['anatomy tokens/s']:.0f} vs {row['transformers tokens/s']:.0f} tokens/s "
        f"({row['ratio']:.2f}x; reported, no target)"
    )
    return row


def _device_row(args, dev: torch.device, sync) -> dict:
    """The GPU column's row on device ``dev`` (``sync`` waits for it); the tests run it on the CPU."""
    torch.manual_seed(0)
    ours = Transformer(Config(**dict(CONFIG, max_seq_len=max(args.seq, 256))))
    hf = to_hf(ours).to(dev).train()
    ours = ours.to(dev).train()
    batches = [
        torch.randint(0, CONFIG["vocab_size"], (args.batch, args.seq), device=dev) for _ in range(args.steps)
    ]
    first = _check_same_math(ours, hf, batches[0])
    runs = _public_steps(ours, hf, args)
    for run in runs.values():
        run(batches[:1])  # warm-up
    sync()
    tps = _alternate(runs, batches, args.repeats, time.perf_counter, sync)
    med = {k: statistics.median(v) for k, v in tps.items()}
    return {
        "step": "public training step",
        "variant": "GPU (cuda)",
        "clock": "wall",
        "anatomy tokens/s": round(med["anatomy"], 1),
        "transformers tokens/s": round(med["transformers"], 1),
        "ratio": round(med["anatomy"] / med["transformers"], 4),
        "first loss anatomy": first["anatomy"],
        "first loss transformers": first["transformers"],
    }


def _alternate(runs: dict, batches, repeats: int, clock, sync=None) -> dict:
    """tokens/s of each run over ``batches`` per repeat; the runs alternate, and which goes first too."""
    tokens = sum(ids.numel() for ids in batches)
    tps = {name: [] for name in runs}
    for r in range(repeats):
        order = list(runs.items())
        for name, run in order if r % 2 == 0 else order[::-1]:
            t0 = clock()
            run(batches)
            if sync is not None:
                sync()
            tps[name].append(tokens / (clock() - t0))
    return tps


def _public_steps(ours, hf, args):
    """Each library's own training step, as a function (batches) -> None running len(batches) steps."""

    def anatomy_steps(batches):
        pairs = [(ids, _shifted(ids)) for ids in batches]
        train(ours, pairs, steps=len(pairs), schedule="constant", warmup=0, grad_clip=1.0, progress=False)

    def hf_steps(batches):
        params = [p for p in hf.parameters() if p.requires_grad]
        # the Trainer's default optimizer with torch >= 2.8 ("adamw_torch_fused"), as anatomy.train's
        opt = torch.optim.AdamW(params, lr=5e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, fused=True)
        for ids in batches:
            loss = hf(ids, labels=ids).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

    return {"anatomy": anatomy_steps, "transformers": hf_steps}


def _shifted(ids):
    """Next-token targets of ids: ids shifted left by one, -100 (no target) at the last position."""
    return torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], -100)], dim=1)


def _check_same_math(ours, hf, ids) -> dict:
    """The first-step losses and gradients of the two public steps agree (LOSS_RTOL, GRAD_TOL), else stop."""
    ours.zero_grad(set_to_none=True)
    hf.zero_grad(set_to_none=True)
    loss_ours, _ = next_token_loss(ours, (ids, _shifted(ids)))
    loss_ours.backward()
    loss_hf = hf(ids, labels=ids).loss
    loss_hf.backward()
    a, b = loss_ours.item(), loss_hf.item()
    if not abs(a - b) <= LOSS_RTOL * abs(b):
        raise SystemExit(f"not the same loss: anatomy {a!r}, transformers {b!r}")
    hf_grads = {name.removeprefix("model."): p.grad for name, p in hf.named_parameters()}
    worst = 0.0
    for name, p in ours.named_parameters():
        diff = float((p.grad - hf_grads[name]).abs().max() / hf_grads[name].abs().max())
        worst = max(worst, diff)
        if not diff <= GRAD_TOL:
            raise SystemExit(f"not the same gradient of {name}: relative difference {diff:.2e}")
    ours.zero_grad(set_to_none=True)
    hf.zero_grad(set_to_none=True)
    return {"anatomy": a, "transformers": b, "worst gradient difference": worst}


def _run(args, threads: int, public: bool) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)

    ours = Transformer(Config(**dict(CONFIG, max_seq_len=max(args.seq, 256)))).train()
    hf = to_hf(ours).train()
    n_params = sum(p.numel() for p in ours.parameters())
    assert n_params == sum(p.numel() for p in hf.parameters())
    batches = [torch.randint(0, CONFIG["vocab_size"], (args.batch, args.seq)) for _ in range(args.steps)]
    if public:
        first = _check_same_math(ours, hf, batches[0])
        runs = _public_steps(ours, hf, args)
        for run in runs.values():
            run(batches[:1])  # warm-up
    else:
        one = {
            "anatomy": _step_fn(ours, ours.parameters()),
            "transformers": _step_fn(lambda ids: hf(ids).logits, hf.parameters()),
        }
        first = {name: float(step(batches[0])) for name, step in one.items()}  # warm-up; the same loss
        runs = {name: (lambda bs, step=step: [step(ids) for ids in bs]) for name, step in one.items()}
    clock = time.thread_time if args.clock == "cpu" and threads == 1 else time.perf_counter
    tps = _alternate(runs, batches, args.repeats, clock)
    med = {k: statistics.median(v) for k, v in tps.items()}
    ratio = med["anatomy"] / med["transformers"]
    print(
        f"training, {n_params / 1e6:.1f}M parameters, batch {args.batch} x seq {args.seq}, fp32, AdamW, "
        f"threads={threads}, repeats={args.repeats} x {args.steps} steps, "
        f"clock={'cpu' if clock is time.thread_time else 'wall'}; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    label = "public training step" if public else "same step code"
    target = f">={TARGET}x" if public else "-"
    verdict = ("yes" if ratio >= TARGET else "NO") if public else "-"
    header = (
        f"{'training tokens/s':<22} {'anatomy':>10} {'LlamaForCausalLM':>17} {'ratio':>7} {'target':>7}  ok"
    )
    print(header)
    print("-" * len(header))
    values = f"{med['anatomy']:>10.0f} {med['transformers']:>17.0f} {ratio:>6.2f}x"
    print(f"{label:<22} {values} {target:>7}  {verdict}")
    same = f", worst gradient difference {first['worst gradient difference']:.1e}" if public else ""
    print(f"first-step loss: anatomy {first['anatomy']:.6f}, transformers {first['transformers']:.6f}{same}")
    runs = "; ".join(f"{k} " + ", ".join(f"{x:.0f}" for x in v) for k, v in tps.items())
    print(f"per-repeat tokens/s: {runs}")
    return {
        "step": label,
        "variant": label,  # a key column of benches/compare.py: the two rows of one thread count stay apart
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
