"""Cached greedy generation and prefill with SmolLM2-135M: anatomy vs transformers, as ratios of medians.

    python benches/generate.py [--threads 1 2] [--repeats 9] [--new-tokens 64] [--prefill 512] [--clock cpu]

Both sides run the same float32 weights: anatomy's model from ``anatomy.pretrained.smollm2()`` and the
``LlamaForCausalLM`` that ``anatomy.convert.to_hf`` builds from it (the same numbers transformers gets
from the GGUF). Generation: the same chat prompt, greedy (``do_sample=False``), the same number of new
tokens, no early stop at EOS; the tokens must be identical. What is timed on anatomy's side is the public
call ``anatomy.generate(model, ids, 64)`` on ``smollm2()`` as a reader gets it: the prompt (more than 16
tokens) runs through ``anatomy.prefill`` (the model's forward pass with its matrix products by oneDNN, which
runs them ~2x faster than MKL on this AMD CPU), and every later token through ``anatomy.decode``'s step,
one C call per token (it runs on one thread at either thread count). The model takes both by itself for a
float32 Llama-style decoder in inference on the CPU (the step when a C compiler is found, the prefill when
PyTorch has oneDNN); the table names the paths it timed. Prefill: one forward pass over a 512-token
prompt that fills a KV cache and returns the last position's logits (what generation does first).
transformers' side runs its own forward pass (matrix products by MKL, through ``F.linear``).

The GPU column: with a CUDA device, the same generation and prefill with both models moved to it (a row of
its own, wall clock, same tokens checked, no target); without one, a printed line says why it is skipped,
and the JSON record says the same under ``machine["gpu column"]``.
Variants alternate within each repeat (and which goes first alternates too), so load from other jobs on
the machine hits both alike; the table reports medians and their ratio next to the
targets (generation >= 1.5x, prefill >= 1.0x, at each thread count given). ``--clock cpu`` times the CPU
work of the timing thread in 1-thread rows (robust on a shared machine; 2-thread rows stay wall-clock).

The floor (printed under each table, and in the JSON row): a decoded token streams every weight matrix once,
so no implementation of the same fp32 weights decodes faster than (a) one row vector times each of the
model's matrices (MKL's matrix-vector product, in anatomy's input-major layout and in transformers' layout;
and the decoding step's own C product, ``anatomy.decode.matmul``, in the input-major layout) or (b) one pass
that only reads the same bytes (a sum: the memory bandwidth). Dividing transformers' time per
token by a floor gives the best ratio any fp32 implementation could reach with that matrix-vector speed.
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

import anatomy  # noqa: E402
from anatomy.convert import to_hf  # noqa: E402
from anatomy.pretrained import smollm2  # noqa: E402

TARGETS = {"generation tokens/s": 1.5, "prefill": 1.0}
PACKED = "anatomy, Q4_1 weights kept packed (same dequantized values)"
PROMPT = "Explain in a few paragraphs why the sky is blue, and why sunsets are red."
PREFILL_TEXT = (
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age "
    "of foolishness, it was the epoch of belief, it was the epoch of incredulity. "
)


def _time(fn, clock=time.perf_counter) -> float:
    t0 = clock()
    fn()
    return clock() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    ap.add_argument(
        "--no-packed", dest="packed", action="store_false", help="skip the row of the packed Q4_1 weights"
    )
    record.add_json_argument(ap)
    args = ap.parse_args()

    machine = record.header(threads=None)

    model, tok = smollm2()
    packed = smollm2(packed=True)[0] if args.packed else None
    hf = to_hf(model)
    hf.generation_config.eos_token_id = None  # generate exactly --new-tokens tokens, like anatomy.generate
    hf.generation_config.pad_token_id = tok.eos_token_id
    ids = tok.apply_chat_template(
        [{"role": "user", "content": PROMPT}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    n_new = args.new_tokens
    long_ids = tok(PREFILL_TEXT * (args.prefill // 20 + 1), return_tensors="pt").input_ids[:, : args.prefill]
    if long_ids.shape[1] < args.prefill:
        raise SystemExit(f"the prefill text gave only {long_ids.shape[1]} tokens")

    variants = _variants(model, hf, ids, long_ids, n_new)
    if packed is not None:  # anatomy's calls on the packed model
        variants[PACKED] = _variants(packed, hf, ids, long_ids, n_new)["anatomy"]
    # Which path anatomy's new tokens take: the C step if a compiler was found and the model qualifies
    # (else the textbook forward pass, e.g. on a machine without cc), printed with each table and recorded.
    from anatomy import decode, prefill

    decode_path = (
        "C decoding step (anatomy.decode, 1 thread)"
        if decode._library() is not None and decode._plan(model) is not None
        else "textbook forward pass (the C step did not apply)"
    )
    prefill_path = (
        "anatomy.prefill (oneDNN products)"
        if prefill._op() is not None and decode._plan(model) is not None
        else "textbook forward pass (anatomy.prefill did not apply)"
    )
    rows, ok = [], True
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(f"anatomy's new tokens: {decode_path}; its prompt and prefill: {prefill_path}")
        row = _table(args, threads, n_new, ids, variants)
        row["anatomy decode path"], row["anatomy prefill path"] = decode_path, prefill_path
        hf_s_per_token = 1.0 / row["transformers tokens/s"]
        row |= _floor(args, threads, _weights(model), _weights(hf, fused=False), hf_s_per_token, packed)
        rows.append(row)
        ok &= (
            row["generation ratio"] >= TARGETS["generation tokens/s"]
            and row["prefill ratio"] >= TARGETS["prefill"]
            and row["same tokens"]
        )
        print()
    gpu = gpu_row(args, model, hf, ids, long_ids, n_new)  # a row of its own; the targets are the CPU rows'
    if gpu is not None:
        rows.append(gpu)
    print("all targets met" if ok else "SOME TARGETS MISSED (see the tables)")
    machine["gpu column"] = gpu_status(gpu)
    record.save("generate", machine, rows, TARGETS, ok, args.json)
    if not all(r["same tokens"] for r in rows if r is not gpu):  # the GPU row's are reported, not required
        raise SystemExit("the greedy tokens differ")


def _variants(ours, theirs, ids, long_ids, n_new, wrap=None) -> dict:
    """The timed calls, name -> (generate, prefill), for anatomy's model ``ours`` and transformers' ``theirs``
    on the device their weights and ``ids`` / ``long_ids`` are on: ``n_new`` greedy tokens after ``ids``, and
    one forward pass over ``long_ids`` that fills a KV cache and keeps the last position's logits. ``wrap``
    (None: as they are) wraps each call (the GPU column synchronizes after it). The CPU rows and the GPU
    column both time these."""
    wrap = wrap or (lambda fn: fn)
    mask = torch.ones_like(ids)  # else generate() guesses one from pad_token_id, which the chat template has

    def ours_prefill():
        with torch.inference_mode():
            return ours(long_ids, cache=ours.new_cache(), logits_to_keep=1)

    def theirs_generate():
        return theirs.generate(ids, attention_mask=mask, max_new_tokens=n_new, do_sample=False)

    def theirs_prefill():
        with torch.inference_mode():
            return theirs(long_ids, use_cache=True, logits_to_keep=1).logits

    return {
        "anatomy": (wrap(lambda: anatomy.generate(ours, ids, n_new)), wrap(ours_prefill)),
        "transformers": (wrap(theirs_generate), wrap(theirs_prefill)),
    }


def _table(args, threads, n_new, ids, variants: dict) -> dict:
    tokens = {name: g() for name, (g, _) in variants.items()}  # warm-up, and the equality check
    logits = {name: p() for name, (_, p) in variants.items()}
    same = torch.equal(tokens["anatomy"], tokens["transformers"])
    prefill_diff = float((logits["anatomy"] - logits["transformers"]).abs().max())
    clock = time.thread_time if args.clock == "cpu" and threads == 1 else time.perf_counter
    gen = {name: [] for name in variants}
    pre = {name: [] for name in variants}
    order = list(variants.items())
    for r in range(
        args.repeats
    ):  # each variant in turn, the order rotated and reversed from repeat to repeat
        turn = order[r % len(order) :] + order[: r % len(order)]
        for name, (g, p) in turn if r % 2 == 0 else turn[::-1]:
            gen[name].append(n_new / _time(g, clock))
            pre[name].append(_time(p, clock))
    med = {k: statistics.median(v) for k, v in gen.items()}
    med_pre = {k: statistics.median(v) for k, v in pre.items()}
    gen_ratio = med["anatomy"] / med["transformers"]
    pre_ratio = med_pre["transformers"] / med_pre["anatomy"]  # > 1: anatomy is faster

    print(
        f"SmolLM2-135M fp32, threads={threads}, repeats={args.repeats}, "
        f"clock={'cpu' if clock is time.thread_time else 'wall'}, prompt {ids.shape[1]} tokens + "
        f"{n_new} new; prefill {args.prefill} tokens; load average {os.getloadavg()[0]:.1f}"
    )
    header = f"{'metric':<22} {'anatomy':>10} {'transformers':>13} {'ratio':>7} {'target':>7}  ok"
    print(header)
    print("-" * len(header))
    target = TARGETS["generation tokens/s"]
    print(
        f"{'generation tokens/s':<22} {med['anatomy']:>10.1f} {med['transformers']:>13.1f} {gen_ratio:>6.2f}x"
        " "
        f"{'>=' + str(target) + 'x':>7}  {'yes' if gen_ratio >= target else 'NO'}"
    )
    t_pre = TARGETS["prefill"]
    print(
        f"{'prefill ' + str(args.prefill) + ' tokens (ms)':<22} {1e3 * med_pre['anatomy']:>10.1f} "
        f"{1e3 * med_pre['transformers']:>13.1f} {pre_ratio:>6.2f}x {'>=' + str(t_pre) + 'x':>7}  "
        f"{'yes' if pre_ratio >= t_pre else 'NO'}"
    )
    print(
        f"same {n_new} greedy tokens: {'yes' if same else 'NO'}; prefill last-position logits max |diff| "
        f"{prefill_diff:.1e}"
    )
    row = {
        "threads": threads,
        "clock": "cpu" if clock is time.thread_time else "wall",
        "anatomy tokens/s": round(med["anatomy"], 3),
        "transformers tokens/s": round(med["transformers"], 3),
        "generation ratio": round(gen_ratio, 4),
        "anatomy prefill ms": round(1e3 * med_pre["anatomy"], 3),
        "transformers prefill ms": round(1e3 * med_pre["transformers"], 3),
        "prefill ratio": round(pre_ratio, 4),
        "same tokens": same,
        "prefill max diff": prefill_diff,
    }
    if PACKED in variants:  # a separate row: not the fp32-vs-fp32 comparison the targets are about
        p_gen, p_pre = med[PACKED] / med["transformers"], med_pre["transformers"] / med_pre[PACKED]
        p_same = torch.equal(tokens[PACKED], tokens["transformers"])
        p_diff = float((logits[PACKED] - logits["transformers"]).abs().max())
        print(f"{PACKED}, vs transformers fp32:")
        print(
            f"{'generation tokens/s':<22} {med[PACKED]:>10.1f} {med['transformers']:>13.1f} {p_gen:>6.2f}x"
            f"{'(reported)':>11}"
        )
        print(
            f"{'prefill ' + str(args.prefill) + ' tokens (ms)':<22} {1e3 * med_pre[PACKED]:>10.1f} "
            f"{1e3 * med_pre['transformers']:>13.1f} {p_pre:>6.2f}x{'(reported)':>11}"
        )
        print(
            f"same {n_new} greedy tokens: {'yes' if p_same else 'NO'}; prefill last-position logits max "
            f"|diff| {p_diff:.1e}"
        )
        row |= {
            "packed tokens/s": round(med[PACKED], 3),
            "packed generation ratio": round(p_gen, 4),
            "packed prefill ms": round(1e3 * med_pre[PACKED], 3),
            "packed prefill ratio": round(p_pre, 4),
            "packed same tokens": p_same,
            "packed prefill max diff": p_diff,
        }
        row["same tokens"] = same and p_same
    print(
        "per-repeat tokens/s: "
        + "; ".join(f"{k} " + ", ".join(f"{x:.1f}" for x in v) for k, v in gen.items())
    )
    return row


def gpu_status(row: dict | None) -> str:
    """What the record says about the GPU column: where it is, or the one-line reason it was skipped."""
    if row is not None:
        return f"the row with variant 'GPU (cuda)' ({row['gpu']})"
    return "skipped: no CUDA device (torch.cuda.is_available() is False)"


def gpu_row(args, model, hf, ids, long_ids, n_new) -> dict | None:
    """The GPU column: the same generation and prefill with both models on the CUDA device, or None (with
    the reason printed in one line) where there is none. Wall clock with a synchronize after each call; the
    same greedy tokens are checked, and no target applies (the targets are about the CPU)."""
    if not torch.cuda.is_available():
        print(f"GPU column: {gpu_status(None)}")
        return None
    row = {"variant": "GPU (cuda)", "gpu": torch.cuda.get_device_name()}
    row |= _device_row(args, model, hf, ids, long_ids, n_new, torch.device("cuda"), torch.cuda.synchronize)
    print(
        f"GPU column ({row['gpu']}, wall clock, repeats={args.repeats}): generation "
        f"{row['anatomy tokens/s']:.1f} vs {row['transformers tokens/s']:.1f} tokens/s "
        f"({row['generation ratio']:.2f}x); prefill {row['anatomy prefill ms']:.1f} vs "
        f"{row['transformers prefill ms']:.1f} ms ({row['prefill ratio']:.2f}x); same {n_new} greedy tokens: "
        f"{'yes' if row['same tokens'] else 'NO'} (reported, no target)"
    )
    return row


def _device_row(args, model, hf, ids, long_ids, n_new, device: torch.device, sync) -> dict:
    """The GPU column's body on ``device`` (tests/test_benches.py runs it on the CPU): copies of both models
    and the prompts moved there, :func:`_variants` with ``sync()`` after each call, one warm-up (whose tokens
    are compared), then ``args.repeats`` alternating wall-clock repeats; the row's medians and ratios."""
    import copy

    ours, theirs = copy.deepcopy(model).to(device), copy.deepcopy(hf).to(device)
    ids, long_ids = ids.to(device), long_ids.to(device)

    def synced(fn):
        def run():
            out = fn()
            sync()
            return out

        return run

    variants = _variants(ours, theirs, ids, long_ids, n_new, wrap=synced)
    tokens = {name: g().cpu() for name, (g, _) in variants.items()}  # warm-up, and the equality check
    for _, p in variants.values():
        p()
    gen, pre = {name: [] for name in variants}, {name: [] for name in variants}
    for r in range(args.repeats):
        for name, (g, p) in list(variants.items())[:: 1 if r % 2 == 0 else -1]:
            gen[name].append(n_new / _time(g))
            pre[name].append(_time(p))
    med = {k: statistics.median(v) for k, v in gen.items()}
    med_pre = {k: statistics.median(v) for k, v in pre.items()}
    return {
        "anatomy tokens/s": round(med["anatomy"], 3),
        "transformers tokens/s": round(med["transformers"], 3),
        "generation ratio": round(med["anatomy"] / med["transformers"], 4),
        "anatomy prefill ms": round(1e3 * med_pre["anatomy"], 3),
        "transformers prefill ms": round(1e3 * med_pre["transformers"], 3),
        "prefill ratio": round(med_pre["transformers"] / med_pre["anatomy"], 4),
        "same tokens": torch.equal(tokens["anatomy"], tokens["transformers"]),
    }


def _weights(module: torch.nn.Module, fused: bool = True) -> list[torch.Tensor]:
    """Every weight matrix a decoded token multiplies, once each, as the module stores it ((out, in) views).

    anatomy's q/k/v and gate/up are one matrix each (``fused_weight``; ``fused=False`` for transformers,
    whose Linears run one by one); a tied LM head counts once.
    """
    from anatomy.weight_layout import FUSED_GROUPS, fused_weight

    mats, seen = [], set()
    with torch.inference_mode():
        if not fused:
            return [m.weight.detach() for m in _unique_linears(module)]
        for m in module.modules():
            for attr, names in FUSED_GROUPS:
                owner = m._modules.get(attr)
                if owner is not None and all(n in owner._modules for n in names):
                    w, _ = fused_weight(owner, names)
                    mats.append(w)
                    seen.update(id(owner._modules[n].weight) for n in names)
    return mats + [m.weight.detach() for m in _unique_linears(module, seen)]


def _unique_linears(module: torch.nn.Module, seen: set | None = None) -> list[torch.nn.Linear]:
    seen, out = set() if seen is None else seen, []
    for m in module.modules():
        if isinstance(m, torch.nn.Linear) and id(m.weight) not in seen:
            out.append(m)
            seen.add(id(m.weight))
    return out


def _floor(args, threads, ours: list, theirs: list, hf_s_per_token: float, packed=None) -> dict:
    """Time one pass of x @ W.T over each weight list, and a sum over as many bytes: ms per token.

    The clock is the table's (CPU time with ``--clock cpu`` at 1 thread): the ratios compare like with like.
    """
    clock = time.thread_time if args.clock == "cpu" and threads == 1 else time.perf_counter
    nbytes = sum(w.numel() * w.element_size() for w in ours)
    flat = torch.empty(nbytes // 4).normal_()
    xs = {id(w): torch.randn(1, w.shape[1]) for w in ours + theirs}
    linear = torch.nn.functional.linear
    fns = {
        "anatomy layout": lambda: [linear(xs[id(w)], w) for w in ours],
        "transformers layout": lambda: [linear(xs[id(w)], w) for w in theirs],
        "read only (sum)": flat.sum,
    }
    from anatomy.decode import _library

    lib = _library()
    if lib is not None:  # the decoding step's own product (the C call alone, without matmul's checks)
        ys = {id(w): torch.empty(w.shape[0]) for w in ours}
        calls = [
            (xs[id(w)].data_ptr(), 1, w.shape[1], w.shape[0], w.data_ptr(), ys[id(w)].data_ptr())
            for w in ours
        ]
        fns["anatomy decode kernel"] = lambda: [lib.matmul(*call) for call in calls]
    if packed is not None:  # the packed kernels over every PackedLinear (not a floor of fp32 decoding)
        from anatomy.packed import PackedLinear

        mods = [m for m in packed.modules() if isinstance(m, PackedLinear)]
        px = [torch.randn(1, m.in_features) for m in mods]
        fns["packed Q4_1/Q8_0 kernels"] = lambda: [m(x) for m, x in zip(mods, px)]
    times = {k: [] for k in fns}
    with torch.inference_mode():
        for r in range(max(args.repeats, 5)):
            for name, fn in fns.items() if r % 2 == 0 else list(fns.items())[::-1]:
                times[name].append(_time(fn, clock))
    ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    hf_ms = 1e3 * hf_s_per_token
    print(
        f"floor ({nbytes / 1e6:.0f} MB of fp32 weights per token, threads={threads}): "
        + "; ".join(
            f"{k} {v:.1f} ms" + ("" if k.startswith("packed") else f" ({nbytes / v / 1e6:.1f} GB/s)")
            for k, v in ms.items()
        )
        + f"; transformers {hf_ms:.1f} ms/token, so the best possible ratio is "
        + " / ".join(f"{hf_ms / v:.2f}x" for v in ms.values())
    )
    return {
        "weight MB per token": round(nbytes / 1e6, 1),
        **{f"floor ms, {k}": round(v, 2) for k, v in ms.items()},
        **{f"best ratio, {k}": round(hf_ms / v, 3) for k, v in ms.items()},
    }


if __name__ == "__main__":
    main()
