"""The KV cache: its size per token (and seed 002's formula), multi-turn time to first token
with and without reuse, why a bidirectional model's cache goes stale, and the FLOPs of a dialogue. The
chapter's figures and tables are in :mod:`anatomy.experiments.kv_cache_plots`."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import torch
import torch.nn as nn

from anatomy import decode
from anatomy._checks import check_bool, check_instance, check_int, check_tensor, is_int
from anatomy.cost import (
    PUBLISHED,
    attention_kind,
    encdec_first_token_flops,
    forward_flops,
    kv_bytes_per_token,
    published_config,
    step_bytes,
)
from anatomy.encoder_decoder import EncoderDecoder
from anatomy.model import Config, Transformer
from anatomy.timing import interleaved_times

__all__ = [
    "DIALOGUE",
    "SEED002_LLAMA70B_KV_PER_TOKEN",
    "STRATEGIES",
    "chat_segments",
    "chunk_sweep",
    "dialogue_flops",
    "dialogue_ttft",
    "encoder_decoder_like",
    "kv_table",
    "seed002_kv_bytes_per_token",
    "stale_cache_error",
    "transformers_kv_cache",
    "turn_ttft",
    "with_mask",
]


def seed002_kv_bytes_per_token(n_layers: int, d_model: int, bytes_per_elem: int = 2) -> int:
    """Seed 002's formula, 2 x layers x 2 x d_model x bytes: the full model width for K and V, and a
    second factor 2 (its comment calls the first 2 "K and V" and the second "bytes", then multiplies by
    the bytes per element again)."""
    n_layers = check_int("n_layers", n_layers, lo=1)
    d_model = check_int("d_model", d_model, lo=1)
    bytes_per_elem = check_int("bytes_per_elem", bytes_per_elem, lo=1)
    return 2 * n_layers * 2 * d_model * bytes_per_elem


# Seed 002's stated KV-cache size for Llama-3-70B: "5.24 MB per token" (fp16), from its formula
# 2 x layers x 2 x d_model x bytes with 80 layers and d_model = 8192. A number the seed states, kept here to
# check that seed002_kv_bytes_per_token reproduces the seed's own arithmetic.
SEED002_LLAMA70B_KV_PER_TOKEN = 5.24e6


def transformers_kv_cache(
    config: Config,
    input_ids: torch.Tensor,
    *,
    n_kv_heads: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> dict:
    """The KV cache that transformers itself builds for ``input_ids`` (1, N) with a decoder of ``config``'s
    shape: an independent measurement of what a cache holds, for :func:`kv_bytes_per_token` to be checked
    against.

    The model is transformers' own ``LlamaForCausalLM`` (or Qwen2) built from ``config`` by
    :func:`anatomy.convert.hf_config_from` and run with ``use_cache=True`` on PyTorch's ``meta`` device:
    tensors with shapes and dtypes but no data, so building and running a 135M-parameter model costs almost
    nothing, and a cache's bytes depend on its tensors' shapes and dtype only. ``n_kv_heads`` overrides the
    number of key/value heads (e.g. ``config.n_heads`` for the model's MHA twin). Returns ``nbytes`` (summed
    over every tensor the cache holds), ``n_tensors``, ``shape`` (of one cached tensor, as transformers lays
    it out), ``cache_len`` and ``cache_class``.
    """
    import transformers  # noqa: F401 (an error here names the missing package)

    from anatomy.convert import hf_config_from

    c = check_instance("config", config, Config, "an anatomy Config")
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"input_ids must be a (1, N) tensor, got {getattr(input_ids, 'shape', input_ids)!r}")
    check_tensor("input_ids", input_ids, kind="int")
    if n_kv_heads is not None:
        c = replace(c, n_kv_heads=check_int("n_kv_heads", n_kv_heads, lo=1))
    if c.mask != "causal" or not c.lm_head:
        raise ValueError("config must describe a decoder with an LM head (mask='causal', lm_head=True)")
    hf_config = hf_config_from(c)
    import transformers as tf

    cls = tf.Qwen2ForCausalLM if isinstance(hf_config, tf.Qwen2Config) else tf.LlamaForCausalLM
    with torch.device("meta"), torch.inference_mode():
        hf = cls(hf_config).to(dtype).eval()
        out = hf(input_ids=input_ids.to("meta"), use_cache=True, logits_to_keep=1)
    cache = out.past_key_values
    tensors = [t for layer in cache.layers for t in (layer.keys, layer.values)]
    return {
        "nbytes": sum(t.nbytes for t in tensors),
        "n_tensors": len(tensors),
        "shape": tuple(tensors[0].shape),
        "cache_len": int(cache.get_seq_length()),
        "cache_class": type(cache).__name__,
    }


def kv_table(names: Sequence[str] = PUBLISHED, n_tokens: int = 8192, bytes_per_elem: int = 2) -> list[dict]:
    """One row per published model: attention kind, heads, KV bytes per token and at ``n_tokens``, the
    same model if it had full multi-head K/V, and seed 002's formula."""
    if isinstance(names, str) or not names:
        raise ValueError(f"names must be a non-empty sequence of published model names, got {names!r}")
    check_int("n_tokens", n_tokens, lo=1)
    rows = []
    for name in names:
        c = published_config(name)
        per = kv_bytes_per_token(c, bytes_per_elem)
        mha = kv_bytes_per_token(replace(c, n_kv_heads=c.n_heads), bytes_per_elem)
        seed = seed002_kv_bytes_per_token(c.n_layers, c.d_model, bytes_per_elem)
        rows.append(
            {
                "model": name,
                "kind": attention_kind(c),
                "layers": c.n_layers,
                "q_heads": c.n_heads,
                "kv_heads": c.n_kv_heads,
                "head_dim": c.head_dim,
                "per_token": per,
                "total": per * n_tokens,
                "mha_per_token": mha,
                "seed002_per_token": seed,
                "seed002_over_ours": seed / per,
            }
        )
    return rows


@torch.inference_mode()
def chunk_sweep(
    model: Transformer,
    context_ids: torch.Tensor,
    new_ids: torch.Tensor,
    chunks: Sequence[int] = (1, 4, 16, 64, 256),
    repeats: int = 3,
) -> dict:
    """Time one forward call that runs n new tokens on a cache of ``context_ids`` (1, P), for each n in
    ``chunks`` (interleaved, median of ``repeats``; the context's untimed prefill is the warm-up). n = 1 is a
    decode step; large n is a prefill. As in generation, only the last position goes through the LM head
    (``logits_to_keep=1``). Every n runs the model's textbook path (:func:`anatomy.decode.disabled`: calls of
    up to 16 tokens would otherwise take the one-call C step, longer ones :mod:`anatomy.prefill`'s oneDNN
    products), so the sweep compares one implementation across sizes, not two.

    new_ids (1, >= max(chunks)) supplies the tokens. Returns per chunk: ``seconds`` (median per call),
    ``per_token`` (seconds per token), ``flops`` and ``bytes`` (counted, fp32 weights and cache) and
    ``intensity`` (FLOP/byte), ``achieved`` (FLOP/s); and ``cache_len``, ``cache_nbytes`` of the context's
    cache (a real cache, to check the size formula against).
    """
    check_instance("model", model, Transformer, "an anatomy Transformer")
    if not chunks or any(not is_int(n) or n < 1 for n in chunks):
        raise ValueError(f"chunks must be positive ints, got {chunks!r}")
    if new_ids.shape[1] < max(chunks):
        raise ValueError(f"new_ids has {new_ids.shape[1]} tokens, fewer than the largest chunk {max(chunks)}")
    model.eval()
    P = context_ids.shape[1]
    cache = model.new_cache(max_len=P + max(chunks))
    model(context_ids, cache=cache)

    def run(n: int):
        def fn():
            cache.truncate(P)
            model(new_ids[:, :n], cache=cache, logits_to_keep=1)

        return fn

    # No warm-up round: the context's prefill above already built what a first call builds (the fused
    # weights, the position table), and the median of the repeats absorbs a slower first call of a size.
    with decode.disabled():
        times = interleaved_times({n: run(n) for n in chunks}, repeats=repeats, warmup=0, threads=None)
    cache.truncate(P)
    out: dict = {
        "chunk": list(chunks),
        "seconds": [],
        "per_token": [],
        "flops": [],
        "bytes": [],
        "intensity": [],
        "achieved": [],
        "cache_len": len(cache),
        "cache_nbytes": cache.nbytes,
    }
    for n in chunks:
        sec = statistics.median(times[n])
        f = forward_flops(model.config, n, P, logits="last")["total"]
        b = step_bytes(model.config, n, P)["total"]
        for key, value in (
            ("seconds", sec),
            ("per_token", sec / n),
            ("flops", f),
            ("bytes", b),
            ("intensity", f / b),
            ("achieved", f / sec),
        ):
            out[key].append(value)
    return out


# ---------------------------------------------------------------------------------------------------------
# Multi-turn dialogue: the conversation and time to first token per turn
# ---------------------------------------------------------------------------------------------------------

# A five-turn conversation (user message, assistant reply), written for this book. The replies are fixed
# text, fed to the model as if it had generated them, so every run processes the same tokens.
DIALOGUE: tuple[tuple[str, str], ...] = (
    (
        "I want to start a small vegetable garden on my balcony. It gets about five hours of direct sun in "
        "the afternoon. Which vegetables would you suggest for a beginner, and how big should the pots be?",
        "Five hours of afternoon sun is enough for many easy crops. Good choices for a beginner are cherry "
        "tomatoes, lettuce, radishes, spinach, bush beans and herbs such as basil, parsley and chives. "
        "Tomatoes need the largest pots, at least twenty litres each; beans and spinach are happy in ten "
        "litres, and herbs or radishes in pots of three to five litres.",
    ),
    (
        "That sounds good. What kind of soil should I buy? The garden centre near me sells bags of potting "
        "mix, compost and something called topsoil, and I am not sure which of these is meant for pots.",
        "Use potting mix for containers. It is light, holds water without becoming soggy and lets air reach "
        "the roots. Topsoil is meant for garden beds: in a pot it packs down, drains badly and gets heavy. "
        "You can mix in some compost, about one part compost to four parts potting mix, to add nutrients, "
        "but do not fill the pots with compost alone.",
    ),
    (
        "How often will I need to water everything? I travel for work about two days a week, so I am "
        "worried that the plants will dry out while I am away, especially in the middle of summer.",
        "Containers dry out much faster than beds, so in summer most plants need water every day, and "
        "tomatoes in hot weather sometimes twice. For your trips, water deeply the evening before you leave, "
        "group the pots together in partial shade, and consider self-watering pots or simple drip spikes "
        "connected to a bottle. A layer of mulch on the soil also slows evaporation noticeably.",
    ),
    (
        "My neighbour says I should add fertiliser every week, but another website says fertiliser burns "
        "the roots. Who is right, and what would you recommend for tomatoes and herbs in particular?",
        "Both have a point. Potting mix runs out of nutrients after a few weeks, so regular feeding helps, "
        "but too much fertiliser, or a strong dose on dry soil, can damage roots. For tomatoes, use a liquid "
        "tomato feed at half strength every week once the first flowers appear. Herbs need very little: a "
        "light feed once a month keeps the flavour stronger than frequent feeding does.",
    ),
    (
        "Last question for today: some leaves on my basil have small holes and there are tiny green insects "
        "under the leaves. Is that dangerous for the other plants, and how can I get rid of them safely?",
        "Tiny green insects under the leaves are most likely aphids, and the holes may come from slugs or "
        "caterpillars. Aphids spread easily to nearby plants, so act early: spray them off with a strong jet "
        "of water, wipe the leaves, or use a mild soap spray every few days. Check the undersides of the "
        "leaves regularly, and pick off any caterpillars by hand in the evening.",
    ),
)


def chat_segments(tokenizer, dialogue: Sequence[tuple[str, str]] = DIALOGUE) -> list[dict[str, torch.Tensor]]:
    """Token ids of a chat, turn by turn, with the tokenizer's chat template.

    Returns one dict per turn: ``prompt`` (1, m) = the tokens a turn adds before the model can answer
    (the end of the previous reply's markup, the user message, the assistant header) and ``reply`` (1, r).
    Concatenating all segments gives exactly the template's rendering of the whole conversation (checked).
    """
    if not hasattr(tokenizer, "apply_chat_template"):
        raise TypeError(f"tokenizer must be a tokenizer with a chat template, got {type(tokenizer).__name__}")
    if not dialogue:
        raise ValueError("dialogue must hold at least one (user, assistant) turn")
    messages: list[dict[str, str]] = []
    segments, done = [], []

    def ids_of(msgs, gen: bool) -> list[int]:
        text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    for user, assistant in dialogue:
        messages.append({"role": "user", "content": user})
        prompt_ids = ids_of(messages, True)
        messages.append({"role": "assistant", "content": assistant})
        full_ids = ids_of(messages, False)
        if prompt_ids[: len(done)] != done or full_ids[: len(prompt_ids)] != prompt_ids:
            raise ValueError("the chat template does not render the turns as a growing prefix")
        segments.append(
            {
                "prompt": torch.tensor([prompt_ids[len(done) :]]),
                "reply": torch.tensor([full_ids[len(prompt_ids) :]]),
            }
        )
        done = full_ids
    return segments


def with_mask(model: Transformer, mask: str, *, lm_head: bool = True) -> Transformer:
    """The same network with another attention mask: a new Transformer that shares every module (and so
    every weight, without a copy) with ``model``. SmolLM2 with mask="prefix" is a prefix LM of its shape;
    with mask="bidirectional" and lm_head=False, an encoder of its shape that returns hidden states."""
    if not isinstance(model, Transformer):
        raise TypeError(f"model must be an anatomy Transformer, got {type(model).__name__}")
    check_bool("lm_head", lm_head)
    cfg = replace(model.config, mask=mask, lm_head=lm_head and model.config.lm_head)
    with torch.device("meta"):
        twin = Transformer(cfg)
    for name, child in model.named_children():
        if name != "lm_head" or cfg.lm_head:
            setattr(twin, name, child)
    for name, value in vars(model).items():  # plain attributes (e.g. a RoPE table)
        if not name.startswith("_") and name not in ("config", "training"):
            setattr(twin, name, value)
    twin.config = cfg
    return twin.train(model.training)


def encoder_decoder_like(model: Transformer, seed: int = 0) -> EncoderDecoder:
    """An encoder-decoder of ``model``'s shape (T5's convention: as many encoder layers as decoder layers),
    built around ``model``'s own modules: the encoder is ``model`` with a bidirectional mask, and decoder
    block i reuses block i's norms, self-attention and MLP. Only the cross-attention (and its norm) is new,
    initialised at random from ``seed``. A model for timing and counting, not for text: it was never trained.
    """
    if not isinstance(model, Transformer):
        raise TypeError(f"model must be an anatomy Transformer, got {type(model).__name__}")
    check_int("seed", seed)
    c = model.config
    with torch.device("meta"):
        ed = EncoderDecoder(replace(c, mask="causal"))
    ed.encoder = with_mask(model, "bidirectional", lm_head=False)
    ed.embed_tokens = model.embed_tokens
    for name in ("norm", "lm_head", "embed_positions"):
        if hasattr(model, name):
            setattr(ed, name, getattr(model, name))
    g = torch.Generator().manual_seed(seed)
    device = model.embed_tokens.weight.device
    dtype = model.embed_tokens.weight.dtype
    for block, src in zip(ed.layers, model.layers):
        for name in ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp"):
            setattr(block, name, getattr(src, name))
        block.cross_attn_layernorm = _fresh_norm(src.input_layernorm)
        block.cross_attn.to_empty(device=device)
        block.cross_attn.to(dtype)
        for lin in (
            block.cross_attn.q_proj,
            block.cross_attn.k_proj,
            block.cross_attn.v_proj,
            block.cross_attn.o_proj,
        ):
            with torch.no_grad():
                lin.weight.normal_(0.0, c.init_std, generator=g)
                if lin.bias is not None:
                    lin.bias.zero_()
    return ed.eval()


def _fresh_norm(norm: nn.Module) -> nn.Module:
    """A new norm like ``norm`` (same class and size), with unit gain and zero bias."""
    import copy

    fresh = copy.deepcopy(norm)
    with torch.no_grad():
        for name, param in fresh.named_parameters():
            param.fill_(1.0 if name == "weight" else 0.0)
    return fresh


def _time(fn: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _check_segments(segments) -> None:
    if not segments or not all(isinstance(s, Mapping) and {"prompt", "reply"} <= set(s) for s in segments):
        raise ValueError("segments must be a non-empty list of {'prompt', 'reply'} dicts (see chat_segments)")


@torch.inference_mode()
def dialogue_ttft(
    segments: Sequence[Mapping[str, torch.Tensor]],
    decoder: Transformer,
    *,
    prefix_lm: Transformer | None = None,
    encdec: EncoderDecoder | None = None,
    start_id: int = 0,
    repeats: int = 1,
    final_repeats: int = 5,
) -> dict:
    """Time to first token at every turn of a chat, for up to four ways of serving it.

    * ``reuse``: the decoder keeps its KV cache across turns and runs only the new prompt tokens.
    * ``recompute``: the decoder re-encodes the whole conversation each turn (a fresh cache).
    * ``prefix``: a prefix LM whose bidirectional prefix is the conversation so far; the prefix grows every
      turn, so its states must all be recomputed.
    * ``encdec``: an encoder-decoder that encodes the conversation so far and starts its reply with
      ``start_id``.

    Each call computes logits only at the last position (``logits_to_keep=1``), as a server does.
    Every turn times each strategy ``repeats`` times; the last turn times reuse and recompute
    ``final_repeats`` times, interleaved (reuse, recompute, reuse, ...) so that background load hits both
    alike. After the timing the reply is appended to the reuse cache, untimed, as generating it would.
    Returns ``history`` (tokens before each turn's prompt), ``new`` (prompt tokens), ``times`` (strategy ->
    per turn list of seconds), ``ttft`` (strategy -> per turn median), ``logit_err`` (per turn max |reuse -
    recompute| over the first-token logits) and ``cache_nbytes``, ``cache_len`` (the reuse cache at the end).
    Every call runs the models' textbook forward pass (:func:`anatomy.decode.disabled`): the prefix LM and
    the encoder-decoder have no faster path, so the four strategies differ in the work they do, not in the
    matrix library that does it (the decoder's own faster path for such calls, :mod:`anatomy.prefill`, is
    timed by ``benches/multiturn.py``); and ``logit_err``, a rounding-sized number, is the same on every
    machine, whichever fast paths it has.
    """
    _check_segments(segments)
    check_instance("decoder", decoder, Transformer, "an anatomy Transformer")
    check_int("repeats", repeats, lo=1)
    check_int("final_repeats", final_repeats, lo=1)
    strategies = (
        ["reuse", "recompute"]
        + (["prefix"] if prefix_lm is not None else [])
        + (["encdec"] if encdec is not None else [])
    )
    for model in (decoder, prefix_lm, encdec):
        if model is not None:
            model.eval()
    total = sum(s["prompt"].shape[1] + s["reply"].shape[1] for s in segments)
    cache = decoder.new_cache(max_len=total)
    history = torch.empty(1, 0, dtype=torch.long)
    out = {
        "history": [],
        "new": [],
        "times": {k: [] for k in strategies},
        "ttft": {k: [] for k in strategies},
        "logit_err": [],
    }
    start = torch.tensor([[start_id]])
    warm = segments[0]["prompt"][:, :8]  # one untimed call each: first calls build weight buffers and tables
    decoder(warm)
    if prefix_lm is not None:
        prefix_lm(warm, prefix_len=warm.shape[1])
    if encdec is not None:
        encdec(start, encoder_input_ids=warm)
    for turn, seg in enumerate(segments):
        new = seg["prompt"]
        convo = torch.cat([history, new], dim=1)
        H = history.shape[1]
        logits: dict[str, torch.Tensor] = {}

        def reuse(H=H, new=new):
            cache.truncate(H)
            return decoder(new, cache=cache, logits_to_keep=1)[:, -1]

        def recompute(convo=convo):
            fresh = decoder.new_cache(max_len=convo.shape[1])
            return decoder(convo, cache=fresh, logits_to_keep=1)[:, -1]

        def prefix(convo=convo):
            return prefix_lm(convo, prefix_len=convo.shape[1], logits_to_keep=1)[:, -1]

        def encoder_decoder(convo=convo):
            c = encdec.new_cache(max_len=8)
            return encdec(start, cache=c, encoder_input_ids=convo, logits_to_keep=1)[:, -1]

        fns = {"reuse": reuse, "recompute": recompute, "prefix": prefix, "encdec": encoder_decoder}
        last = turn == len(segments) - 1
        n_rep = {
            k: (max(repeats, final_repeats) if last and k in ("reuse", "recompute") else repeats)
            for k in strategies
        }
        samples = {k: [] for k in strategies}
        for r in range(max(n_rep.values())):
            for k in strategies:
                if r < n_rep[k]:
                    with decode.disabled():  # the textbook path for every strategy (see the docstring)
                        dt, logits[k] = _time(fns[k])
                    samples[k].append(dt)
        for k in strategies:
            out["times"][k].append(samples[k])
            out["ttft"][k].append(statistics.median(samples[k]))
        out["logit_err"].append(float((logits["reuse"] - logits["recompute"]).abs().max()))
        out["history"].append(H)
        out["new"].append(new.shape[1])
        cache.truncate(H + new.shape[1])
        with decode.disabled():  # the reply goes in as if it had been generated
            decoder(seg["reply"], cache=cache, logits_to_keep=1)
        history = torch.cat([convo, seg["reply"]], dim=1)
    out["cache_nbytes"], out["cache_len"] = cache.nbytes, len(cache)
    return out


@torch.inference_mode()
def turn_ttft(
    decoder: Transformer, segments: Sequence[Mapping[str, torch.Tensor]], turn: int, repeats: int = 7
) -> dict:
    """Time to first token at one turn (1-based), reuse vs recompute, interleaved ``repeats`` times.

    The cache for the earlier turns is filled untimed. Returns ``history``, ``new``, ``reuse`` and
    ``recompute`` (lists of seconds), their medians, ``ratio`` (recompute / reuse medians) and ``logit_err``.
    """
    _check_segments(segments)
    if not is_int(turn) or not 1 <= turn <= len(segments):
        raise ValueError(f"turn must be an int in [1, {len(segments)}], got {turn!r}")
    check_int("repeats", repeats, lo=1)
    decoder.eval()
    history = torch.cat(
        [torch.cat([s["prompt"], s["reply"]], dim=1) for s in segments[: turn - 1]]
        or [torch.empty(1, 0, dtype=torch.long)],
        dim=1,
    )
    new = segments[turn - 1]["prompt"]
    convo = torch.cat([history, new], dim=1)
    cache = decoder.new_cache(max_len=convo.shape[1])
    if history.shape[1]:
        decoder(history, cache=cache)
    H = history.shape[1]
    got = {}

    def reuse():
        cache.truncate(H)
        got["reuse"] = decoder(new, cache=cache, logits_to_keep=1)[:, -1]

    def recompute():
        fresh = decoder.new_cache(max_len=convo.shape[1])
        got["recompute"] = decoder(convo, cache=fresh, logits_to_keep=1)[:, -1]

    times = interleaved_times({"reuse": reuse, "recompute": recompute}, repeats=repeats, threads=None)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "history": H,
        "new": new.shape[1],
        **times,
        "reuse_median": med["reuse"],
        "recompute_median": med["recompute"],
        "ratio": med["recompute"] / med["reuse"],
        "logit_err": float((got["reuse"] - got["recompute"]).abs().max()),
    }


@torch.inference_mode()
def stale_cache_error(
    model: Transformer, ids: torch.Tensor, history_len: int, new_len: int, reply_len: int
) -> dict:
    """What goes wrong when a cache is reused after the context it encoded has grown.

    ids (B, N) with N >= history_len + new_len + reply_len. The cache is filled with the history (for a
    prefix LM, as its prefix); then the new tokens join the context (for a prefix LM, the prefix grows to
    history_len + new_len) and the reply follows. ``fresh`` recomputes everything; ``stale`` reuses the
    history's cache. Returns per layer the relative change ||K_stale - K_fresh|| / ||K_fresh|| of the
    history's keys (``key_change``) and values (``value_change``), and on the reply positions the largest
    logit difference (``max_logit_err``), the mean KL(fresh || stale) in nats (``kl``), the next-token loss
    of each (``loss_fresh``, ``loss_stale``) and the share of positions whose argmax differs (``flips``).
    A causal decoder gives zeros (up to float rounding); a prefix LM does not. Every call runs the model's
    textbook path (:func:`anatomy.decode.disabled`), so the rounding-sized numbers are the same on every
    machine, whichever fast paths it has.
    """
    import torch.nn.functional as F

    if not isinstance(model, Transformer):
        raise TypeError(f"model must be an anatomy Transformer, got {type(model).__name__}")
    H, M, R = (
        check_int(n, v, lo=1)
        for n, v in (("history_len", history_len), ("new_len", new_len), ("reply_len", reply_len))
    )
    if ids.dim() != 2 or ids.shape[1] < H + M + R:
        raise ValueError(f"ids must be (B, N >= {H + M + R}), got {tuple(ids.shape)}")
    model.eval()
    prefix = model.config.mask == "prefix"
    kw = (lambda p: {"prefix_len": p}) if prefix else (lambda p: {})
    B = ids.shape[0]
    fresh_cache = model.new_cache(batch_size=B, max_len=H + M + R)
    stale_cache = model.new_cache(batch_size=B, max_len=H + M + R)
    with decode.disabled():
        fresh = model(ids[:, : H + M + R], cache=fresh_cache, **kw(H + M))[:, H + M - 1 : H + M + R - 1]
        model(ids[:, :H], cache=stale_cache, **kw(H))
        stale = model(ids[:, H : H + M + R], cache=stale_cache, **kw(H + M))[:, M - 1 : M + R - 1]

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).double().norm() / b.double().norm())

    key_change = [
        rel(stale_cache.keys(i)[:, :, :H], fresh_cache.keys(i)[:, :, :H])
        for i in range(model.config.n_layers)
    ]
    value_change = [
        rel(stale_cache.values(i)[:, :, :H], fresh_cache.values(i)[:, :, :H])
        for i in range(model.config.n_layers)
    ]
    target = ids[:, H + M : H + M + R]
    lf, ls = F.log_softmax(fresh.double(), -1), F.log_softmax(stale.double(), -1)
    return {
        "key_change": key_change,
        "value_change": value_change,
        "max_logit_err": float((fresh - stale).abs().max()),
        "kl": float((lf.exp() * (lf - ls)).sum(-1).mean()),
        "loss_fresh": float(F.nll_loss(lf.flatten(0, 1), target.flatten())),
        "loss_stale": float(F.nll_loss(ls.flatten(0, 1), target.flatten())),
        "flips": float((fresh.argmax(-1) != stale.argmax(-1)).double().mean()),
    }


def dialogue_flops(
    config: Config, history: Sequence[int], new: Sequence[int], n_decoder_layers: int | None = None
) -> dict[str, list[int]]:
    """FLOPs to the first token per turn for the four strategies of :func:`dialogue_ttft`."""
    if len(history) != len(new):
        raise ValueError(f"history and new must have one entry per turn, got {len(history)} and {len(new)}")
    for H in history:
        check_int("history", H, lo=0)
    for m in new:
        check_int("new", m, lo=1)
    out = {"reuse": [], "recompute": [], "prefix": [], "encdec": []}
    for H, m in zip(history, new):
        out["reuse"].append(forward_flops(config, m, H, mask="causal", logits="last")["total"])
        out["recompute"].append(forward_flops(config, H + m, 0, mask="causal", logits="last")["total"])
        out["prefix"].append(
            forward_flops(config, H + m, 0, mask="prefix", prefix_len=H + m, logits="last")["total"]
        )
        out["encdec"].append(encdec_first_token_flops(config, H + m, n_decoder_layers)["total"])
    return out


# The four ways of serving a conversation that :func:`dialogue_ttft` times, as the chapter names them.
STRATEGIES: dict[str, str] = {
    "reuse": "(a) decoder, cache reused",
    "recompute": "(b) decoder, recomputed",
    "prefix": "(c) prefix LM",
    "encdec": "(d) encoder-decoder",
}
