"""Chapter 10, inference economics: arithmetic intensity and the roofline, this machine's peak FLOP rate and
bandwidth, seed 002's cost model next to a corrected one, and the encoder's niche (classifying sentences
with an encoder or by prompting a decoder). The chapter's figures and tables are in
:mod:`anatomy.experiments.inference_economics_plots`.

Everything here is counted from a :class:`~anatomy.model.Config` (no weights needed), so the same functions
describe SmolLM2 running on this machine and Llama-3-70B on a datacenter GPU. Conventions:

* A multiply-add is 2 FLOPs. Attention FLOPs count only the (query, key) pairs the mask lets through
  (``visible_pairs``): 2 * head_dim for q.k and 2 * head_dim for the weighted sum of values, per pair and
  query head. Softmax, norms, RoPE and activations are left out (they are < 1 % here).
* Bytes are the minimum traffic to main memory for one forward call: every weight once (whatever the batch
  size), the KV cache read once, the new keys and values written once. Activations are assumed to stay in
  cache; that is optimistic for long prefills, which are compute-bound anyway.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from anatomy._checks import check_dtype, check_float, check_instance, check_int, check_tensor, check_values
from anatomy.cost import forward_flops, linear_params, step_bytes
from anatomy.experiments.kv_cache import seed002_kv_bytes_per_token, with_mask
from anatomy.model import Config, Transformer
from anatomy.timing import interleaved_times

__all__ = [
    "A100",
    "CLASSIFIERS",
    "SEED002_LATENCY_TABLE",
    "TOPICS",
    "Hardware",
    "batch_decode_sweep",
    "compare_classifiers",
    "fewshot_classify",
    "label_prompts",
    "latency_estimate",
    "measure_bandwidth",
    "measure_matmul_flops",
    "nearest_prototype",
    "prompt_classify",
    "ridge_point",
    "roofline",
    "seed002_costs",
    "seed002_latency_rows",
    "sentence_embeddings",
    "topic_dataset",
]


def roofline(intensity, peak_flops: float, bandwidth: float):
    """Attainable FLOP/s at an arithmetic intensity (FLOP/byte): min(peak, intensity * bandwidth)."""
    check_float("peak_flops", peak_flops, lo=0, lo_open=True)
    check_float("bandwidth", bandwidth, lo=0, lo_open=True)
    check_values("intensity", intensity, lo=0)
    if isinstance(intensity, torch.Tensor):
        return torch.clamp(intensity * bandwidth, max=peak_flops)
    try:
        import numpy as np

        if isinstance(intensity, np.ndarray):
            return np.minimum(intensity * bandwidth, peak_flops)
    except ImportError:  # pragma: no cover
        pass
    return min(float(intensity) * bandwidth, peak_flops)


def ridge_point(peak_flops: float, bandwidth: float) -> float:
    """The intensity (FLOP/byte) where a kernel stops being memory-bound: peak / bandwidth."""
    check_float("peak_flops", peak_flops, lo=0, lo_open=True)
    check_float("bandwidth", bandwidth, lo=0, lo_open=True)
    return peak_flops / bandwidth


@dataclass(frozen=True)
class Hardware:
    """A machine for the roofline: peak FLOP/s and memory bandwidth (bytes/s)."""

    name: str
    peak_flops: float
    bandwidth: float

    @property
    def ridge(self) -> float:
        return ridge_point(self.peak_flops, self.bandwidth)


A100 = Hardware("A100 (seed 002's numbers: 312 TFLOP/s bf16, 2 TB/s)", 312e12, 2e12)


# ---------------------------------------------------------------------------------------------------------
# Seed 002's cost model, as written, and a corrected one
# ---------------------------------------------------------------------------------------------------------

# Seed 002's printed table (A100 80GB, FP16): (model, params in billions, input tokens, output tokens,
# prefill ms, decode ms, total ms). These are the source's claims, quoted to be checked, not results.
SEED002_LATENCY_TABLE: tuple[tuple[str, float, int, int, float, float, float], ...] = (
    ("7B", 7.0, 512, 128, 3.3, 38.4, 41.7),
    ("7B", 7.0, 2048, 128, 13.1, 46.1, 59.2),
    ("7B", 7.0, 2048, 512, 13.1, 215.0, 228.1),
    ("70B", 70.0, 512, 128, 33.0, 384.0, 417.0),
    ("70B", 70.0, 2048, 512, 131.0, 2150.0, 2281.0),
)


def seed002_costs(params_billion: float, seq_len: int, gen_len: int) -> dict[str, float]:
    """Seed 002's inference-cost function, re-implemented step by step as the seed describes it.

    Its shape guesses: d_model = 2 * int(sqrt(P / 12)) and n_layers = int(P / (12 d_model^2)); prefill
    = 2 P seq_len FLOPs at 312 TFLOP/s; decode = the KV cache (its formula 2 L 2 d 2 bytes per token,
    over seq_len + gen_len tokens) read at 2 TB/s per generated token. Weight reads are not counted.
    Returns the intermediate values too, so the reader can see where the numbers come from.
    """
    check_float("params_billion", params_billion, lo=0, lo_open=True)
    check_int("seq_len", seq_len, lo=1)
    check_int("gen_len", gen_len, lo=0)
    P = params_billion * 1e9
    d_model = int((P / 12) ** 0.5) * 2
    n_layers = int(P / (12 * d_model * d_model))
    prefill_ms = 2 * P * seq_len / A100.peak_flops * 1e3
    kv_per_token = 2 * n_layers * 2 * d_model * 2
    decode_step_ms = kv_per_token * (seq_len + gen_len) / A100.bandwidth * 1e3
    return {
        "d_model": d_model,
        "n_layers": n_layers,
        "prefill_ms": prefill_ms,
        "decode_step_ms": decode_step_ms,
        "decode_ms": decode_step_ms * gen_len,
        "total_ms": prefill_ms + decode_step_ms * gen_len,
    }


def latency_estimate(
    config: Config,
    seq_len: int,
    gen_len: int,
    hardware: Hardware = A100,
    *,
    weight_bytes: int = 2,
    kv_bytes: int = 2,
    batch: int = 1,
) -> dict[str, float]:
    """Roofline latency of prefill (seq_len tokens) and of gen_len decode steps at 100 % of the hardware.

    Each call takes max(FLOPs / peak, bytes / bandwidth): a lower bound that a real system approaches but
    never reaches. Decode steps read every weight and the whole cache; the cache grows step by step.
    """
    c = check_instance("config", config, Config, "an anatomy Config")
    check_int("seq_len", seq_len, lo=1)
    check_int("gen_len", gen_len, lo=0)
    check_instance("hardware", hardware, Hardware, "a Hardware")
    f = forward_flops(c, seq_len, batch=batch, logits="last")["total"]
    b = step_bytes(c, seq_len, batch=batch, weight_bytes=weight_bytes, kv_bytes=kv_bytes)["total"]
    prefill = max(f / hardware.peak_flops, b / hardware.bandwidth)
    decode = 0.0
    weights_only = 0.0
    for t in range(gen_len):
        ctx = seq_len + t
        f = forward_flops(c, 1, ctx, batch=batch)["total"]
        by = step_bytes(c, 1, ctx, batch=batch, weight_bytes=weight_bytes, kv_bytes=kv_bytes)
        decode += max(f / hardware.peak_flops, by["total"] / hardware.bandwidth)
        weights_only += by["weights"] / hardware.bandwidth
    return {
        "prefill_ms": prefill * 1e3,
        "decode_ms": decode * 1e3,
        "total_ms": (prefill + decode) * 1e3,
        "decode_weights_ms": weights_only * 1e3,
        "weights_gb": (c.n_layers * linear_params(c) + c.vocab_size * c.d_model) * weight_bytes / 1e9,
    }


def seed002_latency_rows(real: dict[str, Config], hardware: Hardware = A100) -> list[dict]:
    """Seed 002's latency table recomputed, one dict per row of :data:`SEED002_LATENCY_TABLE`: the row's
    ``name``, ``n_in``, ``n_out`` and the table's ``table_prefill_ms``, ``table_decode_ms``; ``own``, seed
    002's function as written (:func:`seed002_costs`); ``kv_decode_ms``, the decode time of its KV formula
    read at 2 TB/s with the real configuration ``real[name]`` (e.g. Llama-2-7B for "7B"); and ``est``, the
    roofline estimate that also counts the weights (:func:`latency_estimate` on ``hardware``)."""
    check_instance("real", real, dict, "a dict name -> Config")
    check_instance("hardware", hardware, Hardware, "a Hardware")
    rows = []
    for name, params, n_in, n_out, s_pre, s_dec, _ in SEED002_LATENCY_TABLE:
        c = check_instance(f"real[{name!r}]", real.get(name), Config, "an anatomy Config")
        kv_decode = sum(seed002_kv_bytes_per_token(c.n_layers, c.d_model) * (n_in + t) for t in range(n_out))
        rows.append(
            {
                "name": name,
                "n_in": n_in,
                "n_out": n_out,
                "table_prefill_ms": s_pre,
                "table_decode_ms": s_dec,
                "own": seed002_costs(params, n_in, n_out),
                "kv_decode_ms": kv_decode / 2e12 * 1e3,
                "est": latency_estimate(c, n_in, n_out, hardware),
            }
        )
    return rows


# ---------------------------------------------------------------------------------------------------------
# Measuring this machine
# ---------------------------------------------------------------------------------------------------------


def measure_matmul_flops(n: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.float32) -> dict:
    """Achievable FLOP/s: time an (n x n) @ (n x n) matmul (2 n^3 FLOPs). Returns median, best, samples."""
    check_int("n", n, lo=16)
    check_int("repeats", repeats, lo=1)
    check_dtype("dtype", dtype, floating=True)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dtype)
    b = torch.randn(n, n, generator=g).to(dtype)
    out = torch.empty(n, n, dtype=dtype)
    matmul = {"matmul": lambda: torch.matmul(a, b, out=out)}
    times = interleaved_times(matmul, repeats, threads=None)["matmul"]
    flops = 2 * n**3
    return {
        "flops": flops,
        "seconds": times,
        "median": flops / statistics.median(times),
        "best": flops / min(times),
    }


def measure_bandwidth(nbytes: int = 256 * 2**20, repeats: int = 5) -> dict:
    """Achievable memory bandwidth: time a copy of an ``nbytes`` float32 buffer into another (read + write
    = 2 * nbytes of traffic). Use a buffer far larger than the CPU caches. Returns median, best, samples."""
    check_int("nbytes", nbytes, lo=2**20)
    check_int("repeats", repeats, lo=1)
    src = torch.ones(nbytes // 4)
    dst = torch.empty_like(src)
    times = interleaved_times({"copy": lambda: dst.copy_(src)}, repeats, threads=None)["copy"]
    moved = 2 * src.numel() * 4
    return {
        "bytes": moved,
        "seconds": times,
        "median": moved / statistics.median(times),
        "best": moved / min(times),
    }


@torch.inference_mode()
def batch_decode_sweep(
    model: Transformer, context_ids: torch.Tensor, batches: Sequence[int] = (1, 4, 16), repeats: int = 3
) -> dict:
    """Time one decode step for B sequences at once (each with the context ``context_ids`` (1, P + 1) cached
    up to its last token, which is the token decoded), for each B in ``batches``. The weights are read once
    per step whatever B is, so the arithmetic intensity grows with B. Returns per B: ``seconds`` (median),
    ``flops``, ``bytes`` (fp32, counted), ``intensity`` and ``achieved`` FLOP/s."""
    check_instance("model", model, Transformer, "an anatomy Transformer")
    if not batches or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in batches):
        raise ValueError(f"batches must be positive ints, got {batches!r}")
    if context_ids.dim() != 2 or context_ids.shape[1] < 2:
        raise ValueError(f"context_ids must be (1, P + 1) with P >= 1, got {tuple(context_ids.shape)}")
    model.eval()
    P = context_ids.shape[1] - 1
    shared = model.new_cache(max_len=P + 1)  # the context is the same for every sequence: computed once
    model(context_ids[:, :P], cache=shared)
    fns = {}
    for B in batches:
        cache = model.new_cache(batch_size=B, max_len=P + 1)
        cache.claim(model.layers)
        for layer in range(model.config.n_layers):
            cache.update(
                layer, shared.keys(layer).expand(B, -1, -1, -1), shared.values(layer).expand(B, -1, -1, -1)
            )
        cache.commit(context_ids[:, :P].expand(B, P))
        last = context_ids[:, P:].expand(B, 1)

        def step(cache=cache, last=last):
            cache.truncate(P)
            model(last, cache=cache)

        fns[B] = step
    times = interleaved_times(fns, repeats=repeats, threads=None)
    out: dict = {
        "batch": list(batches),
        "seconds": [],
        "flops": [],
        "bytes": [],
        "intensity": [],
        "achieved": [],
    }
    for B in batches:
        sec = statistics.median(times[B])
        f = forward_flops(model.config, 1, P, batch=B)["total"]
        b = step_bytes(model.config, 1, P, batch=B)["total"]
        for key, value in (
            ("seconds", sec),
            ("flops", f),
            ("bytes", b),
            ("intensity", f / b),
            ("achieved", f / sec),
        ):
            out[key].append(value)
    return out


# ---------------------------------------------------------------------------------------------------------
# The encoder's niche: classifying sentences with an encoder or by prompting a decoder
# ---------------------------------------------------------------------------------------------------------

# A small labelled set written for this book: four topics, two labelled examples each (for prototypes) and
# eight test sentences each. Small on purpose: one test sentence is 1/32 of the accuracy.
TOPICS: dict[str, dict[str, tuple[str, ...]]] = {
    "Sports": {
        "examples": (
            "The team scored twice in the second half to win the championship.",
            "She won the gold medal in the hundred-metre sprint.",
        ),
        "test": (
            "The striker curled the ball into the top corner in the last minute of extra time.",
            "She finished the marathon in under three hours despite the heat.",
            "The home team lost the final after a controversial penalty.",
            "He has been training six days a week to qualify for the national swimming championship.",
            "Our coach switched to a zone defence in the second half and we won by twelve points.",
            "The tennis match went to a fifth set and lasted almost five hours.",
            "After the injury, the goalkeeper missed the rest of the season.",
            "The cyclists climbed the mountain pass in thick fog during the third stage of the race.",
        ),
    },
    "Food": {
        "examples": (
            "Mix the flour, butter and sugar, then bake the cake for forty minutes.",
            "The soup was seasoned with fresh herbs and black pepper.",
        ),
        "test": (
            "Let the dough rest for an hour before you roll it out and cut the noodles.",
            "This curry gets its warmth from ginger, cumin and a little chili.",
            "The bakery on the corner sells the best sourdough bread in town.",
            "Roast the vegetables with olive oil and garlic until the edges turn brown.",
            "For dessert we had a lemon tart with fresh raspberries.",
            "Simmer the soup slowly so the beans become soft and creamy.",
            "He always adds too much salt to the pasta water.",
            "The restaurant's tasting menu had seven small courses, each paired with a wine.",
        ),
    },
    "Weather": {
        "examples": (
            "Tomorrow will be cloudy with a chance of showers in the afternoon.",
            "Strong winds and freezing temperatures are forecast for the coast.",
        ),
        "test": (
            "Heavy rain is expected tonight, with winds of up to eighty kilometres per hour.",
            "The morning fog should lift by noon, leaving clear skies for the afternoon.",
            "A heat wave will push temperatures above thirty-five degrees this weekend.",
            "Snow is likely in the mountains, so drivers should carry chains.",
            "After weeks of drought, the first thunderstorm finally brought some relief.",
            "Forecasters warn that the hurricane could make landfall on Thursday.",
            "It was so humid that the windows were covered in condensation all day.",
            "Frost overnight may damage early blossoms in the orchards.",
        ),
    },
    "Technology": {
        "examples": (
            "The software update fixes several security bugs in the browser.",
            "This computer has sixteen gigabytes of memory and a fast graphics card.",
        ),
        "test": (
            "The new phone has a faster processor and a battery that lasts two days.",
            "Remember to back up your files before you install the operating system update.",
            "The company released an open-source library for training neural networks.",
            "My laptop keeps disconnecting from the wireless network after it wakes from sleep.",
            "Engineers cut the chip's power consumption by moving to a smaller manufacturing process.",
            "The website crashed because the database could not handle so many requests.",
            "She wrote a script that renames thousands of photos automatically.",
            "The satellite internet service now offers lower latency for rural users.",
        ),
    },
}


def topic_dataset() -> tuple[list[str], list[int], list[str], list[int], list[str]]:
    """(test sentences, their label indices, example sentences, their label indices, label names)."""
    labels = list(TOPICS)
    test, y, examples, ey = [], [], [], []
    for i, name in enumerate(labels):
        test += TOPICS[name]["test"]
        y += [i] * len(TOPICS[name]["test"])
        examples += TOPICS[name]["examples"]
        ey += [i] * len(TOPICS[name]["examples"])
    return test, y, examples, ey, labels


@torch.inference_mode()
def sentence_embeddings(encoder: Transformer, tokenizer, sentences: Sequence[str]) -> torch.Tensor:
    """Sentence-BERT embeddings (Reimers & Gurevych 2019): the encoder's last hidden states averaged over
    the real tokens of each sentence, L2-normalised. One padded batch. -> (N, d)"""
    check_instance("encoder", encoder, Transformer, "an anatomy Transformer")
    if isinstance(sentences, str) or not sentences:
        raise ValueError(f"sentences must be a non-empty sequence of str, got {sentences!r}")
    enc = tokenizer(list(sentences), padding=True, return_tensors="pt")
    mask = enc["attention_mask"]
    hidden = encoder.eval()(enc["input_ids"], attention_mask=mask, token_type_ids=enc.get("token_type_ids"))
    mean = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    return torch.nn.functional.normalize(mean, dim=-1)


def nearest_prototype(embeddings: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Index of the most cosine-similar prototype (C, d) for each embedding (N, d). -> (N,)"""
    check_tensor("embeddings", embeddings, kind="float")
    check_tensor("prototypes", prototypes, kind="float")
    if (
        embeddings.dim() != 2
        or prototypes.dim() != 2
        or embeddings.shape[1] != prototypes.shape[1]
        or not prototypes.numel()
    ):
        raise ValueError(
            f"need (N, d) embeddings and (C, d) prototypes, got {tuple(embeddings.shape)} and "
            f"{tuple(prototypes.shape)}"
        )
    e = torch.nn.functional.normalize(embeddings, dim=-1)
    p = torch.nn.functional.normalize(prototypes, dim=-1)
    return (e @ p.T).argmax(-1)


def label_prompts(
    tokenizer, sentences: Sequence[str], labels: Sequence[str], style: str = "chat"
) -> list[list[int]]:
    """Prompts asking a decoder for the topic of each sentence, ending where its answer would start.

    style "chat": one user message in the tokenizer's chat template, then the assistant header.
    style "plain": the text ``Sentence: ...`` and ``Topic (A, B, C or D):``, no template.
    """
    if style not in ("chat", "plain"):
        raise ValueError(f"style must be 'chat' or 'plain', got {style!r}")
    if isinstance(labels, str) or not labels:
        raise ValueError(f"labels must be a non-empty sequence of label words, got {labels!r}")
    options = ", ".join(labels[:-1]) + f" or {labels[-1]}"
    out = []
    for s in sentences:
        if style == "chat":
            msg = [
                {
                    "role": "user",
                    "content": f"Which topic is this sentence about: {options}? Answer with "
                    f"one word.\n\nSentence: {s}",
                }
            ]
            text = tokenizer.apply_chat_template(msg, tokenize=False, add_generation_prompt=True)
        else:
            text = f"Sentence: {s}\nTopic ({options}):"
        out.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return out


def _label_ids(tokenizer, labels: Sequence[str], space: bool) -> list[int]:
    pad = " " if space else ""
    ids = [tokenizer(pad + name, add_special_tokens=False)["input_ids"][0] for name in labels]
    if len(set(ids)) != len(labels):
        raise ValueError(f"the labels {list(labels)} do not start with distinct tokens")
    return ids


@torch.inference_mode()
def prompt_classify(
    decoder: Transformer, tokenizer, sentences: Sequence[str], labels: Sequence[str], style: str = "chat"
) -> dict:
    """Zero-shot classification by prompting: the label whose first token the decoder finds most likely
    where its answer starts. One right-padded batch: with a causal mask the padding after a prompt cannot
    affect it, and the LM head runs only at each prompt's last token (as a classifier would).

    Returns ``pred`` (N,), ``scores`` (N, C) logits of the label tokens and ``lengths`` (prompt tokens).
    """
    check_instance("decoder", decoder, Transformer, "an anatomy Transformer")
    label_ids = _label_ids(tokenizer, labels, space=style == "plain")
    prompts = label_prompts(tokenizer, sentences, labels, style)
    lengths = torch.tensor([len(p) for p in prompts])
    ids = torch.zeros(len(prompts), int(lengths.max()), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, : len(p)] = torch.tensor(p)
    body = with_mask(decoder, decoder.config.mask, lm_head=False).eval()
    hidden = body(ids)[torch.arange(len(prompts)), lengths - 1]  # (N, d), final-normed
    scores = decoder.lm_head(hidden)[:, label_ids]
    return {"pred": scores.argmax(-1), "scores": scores, "lengths": lengths.tolist()}


def _fewshot_prefix(
    tokenizer, labels: Sequence[str], examples: Sequence[str], example_labels: Sequence[int]
) -> list[int]:
    """Token ids of the few-shot prompt's labelled examples (the prefix :func:`fewshot_classify` caches)."""
    shots = "".join(f"Sentence: {e}\nTopic: {labels[k]}\n\n" for e, k in zip(examples, example_labels))
    return tokenizer(shots, add_special_tokens=False)["input_ids"]


@torch.inference_mode()
def fewshot_classify(
    decoder: Transformer,
    tokenizer,
    sentences: Sequence[str],
    labels: Sequence[str],
    examples: Sequence[str],
    example_labels: Sequence[int],
) -> dict:
    """Few-shot classification by prompting, with the shared prefix cached once (chapter 9's trick).

    The prompt is the labelled examples as ``Sentence: ...`` / ``Topic: <label>`` pairs, then the sentence
    and ``Topic:``. The examples' KV cache is computed once; each sentence runs only its own tokens on it.
    Returns ``pred`` (N,), ``scores`` (N, C), ``prefix_len`` and ``lengths`` (tokens run per sentence).
    """
    check_instance("decoder", decoder, Transformer, "an anatomy Transformer")
    if len(examples) != len(example_labels):
        raise ValueError("examples and example_labels must have the same length")
    for label in example_labels:
        check_int("example_labels", label, lo=0, hi=len(labels) - 1)
    label_ids = _label_ids(tokenizer, labels, space=True)
    prefix = torch.tensor([_fewshot_prefix(tokenizer, labels, examples, example_labels)])
    suffixes = [tokenizer(f"Sentence: {s}\nTopic:", add_special_tokens=False)["input_ids"] for s in sentences]
    cache = decoder.eval().new_cache(max_len=prefix.shape[1] + max(len(x) for x in suffixes))
    decoder(prefix, cache=cache)
    body = with_mask(decoder, decoder.config.mask, lm_head=False)
    scores = []
    for suffix in suffixes:
        cache.truncate(prefix.shape[1])
        hidden = body(torch.tensor([suffix]), cache=cache)[0, -1]
        scores.append(decoder.lm_head(hidden)[label_ids])
    scores = torch.stack(scores)
    return {
        "pred": scores.argmax(-1),
        "scores": scores,
        "prefix_len": prefix.shape[1],
        "lengths": [len(x) for x in suffixes],
    }


CLASSIFIERS = (
    "MiniLM, prototypes from examples",
    "MiniLM, prototypes from label names",
    "SmolLM2 prompted, zero-shot (chat)",
    "SmolLM2 prompted, zero-shot (plain)",
    "SmolLM2 prompted, few-shot (cached examples)",
    "SmolLM2 as an encoder, prototypes from examples",
)


@torch.inference_mode()
def compare_classifiers(
    encoder: Transformer,
    encoder_tokenizer,
    decoder: Transformer,
    decoder_tokenizer,
    *,
    encoder_repeats: int = 5,
    clock: str = "cpu",
) -> dict:
    """Classify :data:`TOPICS`'s test sentences six ways (``CLASSIFIERS``) with an encoder (MiniLM) and a
    decoder (SmolLM2); time each way once, interleaved, after an untimed warm-up call of each model. The
    encoder's ways take milliseconds, so a single descheduling by another job could multiply their time:
    they are timed ``encoder_repeats`` times in all (interleaved with each other) and their median is
    reported. The decoder's ways take seconds, which averages such interruptions out. ``clock="cpu"``
    (default) times every way on one thread by that thread's CPU time, so other jobs on the machine do not
    enter the ratios; ``clock="wall"`` uses elapsed time with torch's current threads.

    Returns name -> ``accuracy``, ``pred`` (N,), ``seconds`` and ``flops`` per sentence (counted: the tokens
    each way runs through the model that runs them; prototypes and the few-shot examples' cache are
    one-time costs, included in the measured time and left out of the counted FLOPs), ``tokens`` per
    sentence; and ``labels``, ``n_test``.
    """
    if clock not in ("cpu", "wall"):
        raise ValueError(f'clock must be "cpu" or "wall", got {clock!r}')
    check_instance("encoder", encoder, Transformer, "an anatomy Transformer")
    check_instance("decoder", decoder, Transformer, "an anatomy Transformer")
    check_int("encoder_repeats", encoder_repeats, lo=1)
    test, y, examples, ey, labels = topic_dataset()
    y_t, ey_t = torch.tensor(y), torch.tensor(ey)
    body = with_mask(decoder, decoder.config.mask, lm_head=False)

    def by_examples(model, tok):
        e, p = sentence_embeddings(model, tok, test), sentence_embeddings(model, tok, examples)
        return nearest_prototype(e, torch.stack([p[ey_t == k].mean(0) for k in range(len(labels))]))

    def by_names():
        names = [f"This sentence is about {name.lower()}." for name in labels]
        e = sentence_embeddings(encoder, encoder_tokenizer, test)
        return nearest_prototype(e, sentence_embeddings(encoder, encoder_tokenizer, names))

    ways = {
        CLASSIFIERS[0]: lambda: by_examples(encoder, encoder_tokenizer),
        CLASSIFIERS[1]: by_names,
        CLASSIFIERS[2]: lambda: prompt_classify(decoder, decoder_tokenizer, test, labels, "chat")["pred"],
        CLASSIFIERS[3]: lambda: prompt_classify(decoder, decoder_tokenizer, test, labels, "plain")["pred"],
        CLASSIFIERS[4]: lambda: fewshot_classify(decoder, decoder_tokenizer, test, labels, examples, ey)[
            "pred"
        ],
        CLASSIFIERS[5]: lambda: by_examples(body, decoder_tokenizer),
    }
    sentence_embeddings(encoder, encoder_tokenizer, examples[:2])  # first calls build fused weights: untimed
    sentence_embeddings(body, decoder_tokenizer, examples[:2])
    preds: dict[str, torch.Tensor] = {}

    def timed(name):
        def run():
            preds[name] = ways[name]()

        return run

    check_int("encoder_repeats", encoder_repeats, lo=1)
    timing = dict(threads=1, clock="cpu") if clock == "cpu" else dict(threads=None)
    times = interleaved_times({k: timed(k) for k in ways}, repeats=1, warmup=0, **timing)
    if encoder_repeats > 1:
        again = interleaved_times(
            {k: timed(k) for k in CLASSIFIERS[:2]}, repeats=encoder_repeats - 1, warmup=0, **timing
        )
        for k, extra in again.items():
            times[k] = [statistics.median(times[k] + extra)]
    enc_cfg, dec_cfg = encoder.config, decoder.config
    mini = [len(t) for t in encoder_tokenizer(test)["input_ids"]]
    bare = [len(decoder_tokenizer(t, add_special_tokens=False)["input_ids"]) for t in test]
    chat = [len(p) for p in label_prompts(decoder_tokenizer, test, labels, "chat")]
    plain = [len(p) for p in label_prompts(decoder_tokenizer, test, labels, "plain")]
    shots = len(_fewshot_prefix(decoder_tokenizer, labels, examples, ey))
    few_lens = [
        len(decoder_tokenizer(f"Sentence: {t}\nTopic:", add_special_tokens=False)["input_ids"]) for t in test
    ]

    def mean_flops(cfg, lengths, past=0, logits="last"):
        return statistics.mean(forward_flops(cfg, n, past, logits=logits)["total"] for n in lengths)

    counted = {
        CLASSIFIERS[0]: (mini, mean_flops(enc_cfg, mini, logits="none")),
        CLASSIFIERS[1]: (mini, mean_flops(enc_cfg, mini, logits="none")),
        CLASSIFIERS[2]: (chat, mean_flops(dec_cfg, chat)),
        CLASSIFIERS[3]: (plain, mean_flops(dec_cfg, plain)),
        CLASSIFIERS[4]: (few_lens, mean_flops(dec_cfg, few_lens, shots)),
        CLASSIFIERS[5]: (bare, mean_flops(dec_cfg, bare, logits="none")),
    }
    out: dict = {"labels": labels, "n_test": len(test)}
    for name in ways:
        lengths, flops = counted[name]
        out[name] = {
            "pred": preds[name],
            "accuracy": float((preds[name] == y_t).double().mean()),
            "seconds": times[name][0] / len(test),
            "flops": flops,
            "tokens": statistics.mean(lengths),
        }
    return out
