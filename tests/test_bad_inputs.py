# ruff: noqa: E501  (a table: one row per line reads better than wrapped rows)
"""One table of bad inputs to the public API of anatomy, and one test that runs it.

Each row is (function, argument, bad value, expected exception): the function is called with valid
arguments except that one, and must raise the expected ValueError or TypeError with the argument's name
in the message (a TypeError for a value of the wrong kind, a ValueError for a value of the right kind that
is out of range; some functions that predate the table answer a value of the wrong kind with a ValueError
that names it, and the row says so). Functions of the first table are named bare ("attention",
"KVCache.keys"); the others "<module>.<name>" ("cost.forward_flops", "rank.random_attention",
"plots.draw_mask"). ``test_every_public_function_has_rows`` walks every module of anatomy (core,
experiments, book; not the claim registry) and fails when a public function or class has neither rows nor a
place in NOT_ENTRY_POINTS, so a new function gets its rows when it is added.

A chapter's experiment module may instead declare its rows in its own test file, ``tests/test_<argument>.py``
(so that adding a chapter edits no shared table): module-level ``BAD_INPUTS`` maps "<module>.<name>" to
(valid call, rows), the call taking keyword overrides and each row (argument, bad value, expected exception
[, what the message must name]); ``BAD_INPUTS_EXEMPT`` names functions that need no rows (figures of
computed results) and ``BAD_INPUTS_SLOW`` those whose valid call trains, times or loads weights. They are
collected below (:func:`declared_rows`) into the same CALLS, ROWS, SLOW_OR_EXTERNAL and exemptions:

    BAD_INPUTS = {
        "toy_pairs.causal_pairs": (
            lambda **kw: toy_pairs.causal_pairs(**{"n": 8, **kw}),
            [("n", 0, ValueError), ("n", 1.5, TypeError)],
        ),
    }
    BAD_INPUTS_EXEMPT = {"toy_pairs.plot_pairs"}
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import anatomy
from anatomy import (
    book,
    convert,
    cost,
    data,
    masks,
    metrics,
    moe,
    objectives,
    pretrained,
    speculative,
    timing,
    weight_layout,
)
from anatomy.book import interactive, plots, tables
from anatomy.experiments import (
    capacity,
    causal_kernel,
    dual_form,
    encoder_niche,
    entropy,
    equal_compute,
    experts,
    families,
    few_shot,
    icl,
    inference_economics,
    inference_economics_plots,
    kv_cache,
    parallel,
    positions,
    rank,
    rank_plots,
    record,
    record_runs,
    scaling_laws,
    signal_density,
)
from anatomy.kernels import tiled, triton_kernel

# anatomy.attention and anatomy.generate are functions (re-exported): reach the modules by name.
attention_module = importlib.import_module("anatomy.attention")
cache_module = importlib.import_module("anatomy.cache")
generate_module = importlib.import_module("anatomy.generate")
model_module = importlib.import_module("anatomy.model")
train_module = importlib.import_module("anatomy.train")

V, T = ValueError, TypeError
NAN, INF = float("nan"), float("inf")

# ---------------------------------------------------------------------------------------------------------
# Valid calls: each entry builds valid arguments, lets a row replace one, and makes the call.
# ---------------------------------------------------------------------------------------------------------

_G = torch.Generator().manual_seed(0)
Q = torch.randn(2, 4, 6, 8, generator=_G)
K = torch.randn(2, 2, 6, 8, generator=_G)
VV = torch.randn(2, 2, 6, 8, generator=_G)
SMALL = dict(vocab_size=20, d_model=16, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32)
_models: dict[str, torch.nn.Module] = {}


def tiny(kind: str = "decoder"):
    """Small models, built once (the table never changes them)."""
    if kind not in _models:
        torch.manual_seed(0)
        if kind == "decoder":
            _models[kind] = anatomy.Transformer(anatomy.Config(**SMALL)).eval()
        elif kind == "bert":
            _models[kind] = anatomy.Transformer(
                anatomy.Config(**SMALL, n_token_types=2, mask="bidirectional")
            ).eval()
        elif kind == "learned":
            _models[kind] = anatomy.Transformer(anatomy.Config(**SMALL, pos="learned")).eval()
        elif kind == "prefix":
            _models[kind] = anatomy.Transformer(anatomy.Config(**SMALL, mask="prefix")).eval()
        else:
            _models[kind] = anatomy.EncoderDecoder(anatomy.Config(**SMALL)).eval()
    return _models[kind]


IDS = torch.tensor([[1, 2, 3, 4]])
CHARS = data.CharTokenizer("hello world")
MARKOV = data.MarkovSource(3, order=1, seed=0)
STREAM = torch.arange(50) % 7


def _train_args():
    batch = (IDS[:, :-1], IDS[:, 1:])
    return dict(model=tiny(), batches=lambda step: batch, steps=1, progress=False)


def _call(fn, defaults):
    def run(**override):
        return fn(**{**defaults(), **override})

    return run


def _method(make, name, defaults):
    def run(**override):
        return getattr(make(), name)(**{**defaults(), **override})

    return run


CALLS = {
    # attention and kernels
    "attention": _call(anatomy.attention, lambda: dict(q=Q, k=K, v=VV, mask="causal", backend="tiled", tile=4)),
    "attention_probs": _call(anatomy.attention_probs, lambda: dict(q=Q, k=K, mask="causal", tile=4)),
    "reference_attention": _call(
        attention_module.reference_attention, lambda: dict(q=Q, k=K, v=VV, mask="causal", q_offset=0)
    ),
    "tiled_attention": _call(
        tiled.tiled_attention, lambda: dict(q=Q, k=K, v=VV, mask="causal", q_offset=0, prefix_len=None, tile=4)
    ),
    # masks
    "check_mask": _call(masks.check_mask, lambda: dict(mask="prefix", prefix_len=2, n_keys=6)),
    "visible": _call(
        masks.visible, lambda: dict(mask="prefix", q_pos=torch.arange(3), k_pos=torch.arange(3), prefix_len=1)
    ),
    "default_q_offset": _call(masks.default_q_offset, lambda: dict(n_queries=2, n_keys=5)),
    "dense_mask": _call(anatomy.dense_mask, lambda: dict(mask="causal", n_queries=4, n_keys=6)),
    "tile_map": _call(anatomy.tile_map, lambda: dict(mask="causal", n_queries=4, n_keys=6, tile=2)),
    "count_tiles": _call(anatomy.count_tiles, lambda: dict(mask="causal", n_queries=4, n_keys=6, head_dim=8)),
    "causal_tile_ideal": _call(masks.causal_tile_ideal, lambda: dict(n_tiles=4)),
    # cache
    "KVCache": _call(
        anatomy.KVCache, lambda: dict(n_layers=2, batch_size=1, n_kv_heads=2, head_dim=4, max_len=8)
    ),
    "KVCache.truncate": _method(lambda: anatomy.KVCache(2, 1, 2, 4, 8), "truncate", lambda: dict(length=0)),
    "KVCache.keys": _method(lambda: anatomy.KVCache(2, 1, 2, 4, 8), "keys", lambda: dict(layer=0)),
    "KVCache.values": _method(lambda: anatomy.KVCache(2, 1, 2, 4, 8), "values", lambda: dict(layer=0)),
    "KVCache.check_append": _method(lambda: anatomy.KVCache(2, 1, 2, 4, 8), "check_append", lambda: dict(input_ids=IDS)),
    "KVCache.commit": _method(lambda: anatomy.KVCache(2, 1, 2, 4, 8), "commit", lambda: dict(input_ids=IDS)),
    "KVCache.claim": _method(lambda: anatomy.KVCache(2, 1, 2, 4, 8), "claim", lambda: dict(layers=tiny().layers)),
    "KVCache.update": _method(
        lambda: anatomy.KVCache(2, 1, 2, 4, 8), "update", lambda: dict(layer=0, k=torch.zeros(1, 2, 3, 4), v=torch.zeros(1, 2, 3, 4))
    ),
    "kv_cache_bytes": _call(anatomy.kv_cache_bytes, lambda: dict(n_layers=2, n_kv_heads=2, head_dim=8)),
    # generation
    "next_token": _call(anatomy.next_token, lambda: dict(logits=torch.randn(2, 10), temperature=1.0)),
    "generate": _call(anatomy.generate, lambda: dict(model=tiny(), input_ids=IDS, max_new_tokens=2)),
    "speculative_generate": _call(
        anatomy.speculative_generate,
        lambda: dict(target=tiny(), draft=tiny(), input_ids=IDS, max_new_tokens=2),
    ),
    # model
    "Config": _call(anatomy.Config, lambda: dict(SMALL)),
    "Transformer": _call(anatomy.Transformer, lambda: dict(config=anatomy.Config(**SMALL))),
    "make_norm": _call(model_module.make_norm, lambda: dict(config=anatomy.Config(**SMALL))),
    "Transformer.forward": _method(tiny, "forward", lambda: dict(input_ids=IDS)),
    "Transformer.forward (segments)": _method(lambda: tiny("bert"), "forward", lambda: dict(input_ids=IDS)),
    "Transformer.new_cache": _method(tiny, "new_cache", lambda: dict()),
    "Transformer.embed": _method(tiny, "embed", lambda: dict(input_ids=IDS)),
    "Transformer.num_params": _method(tiny, "num_params", lambda: dict()),
    "EncoderDecoder": _call(anatomy.EncoderDecoder, lambda: dict(config=anatomy.Config(**SMALL))),
    "EncoderDecoder.forward": _method(lambda: tiny("ed"), "forward", lambda: dict(input_ids=IDS, encoder_input_ids=IDS)),
    "EncoderDecoder.encode": _method(lambda: tiny("ed"), "encode", lambda: dict(encoder_input_ids=IDS)),
    "EncoderDecoder.new_cache": _method(lambda: tiny("ed"), "new_cache", lambda: dict()),
    "EncoderDecoder.num_params": _method(lambda: tiny("ed"), "num_params", lambda: dict()),
    "to_input_major": _call(anatomy.to_input_major, lambda: dict(model=tiny())),
    # training
    "train": _call(train_module.train, _train_args),
    "train (seconds budget)": _call(train_module.train, lambda: {**_train_args(), "steps": None, "seconds": 0.01}),
    "learning_rate": _call(train_module.learning_rate, lambda: dict(step=0, total_steps=10)),
    "evaluate": _call(
        train_module.evaluate, lambda: dict(model=tiny(), batches=lambda i: (IDS[:, :-1], IDS[:, 1:]), n_batches=1)
    ),
    "next_token_loss": _call(train_module.next_token_loss, lambda: dict(model=tiny(), batch=(IDS, IDS))),
    "eager_optimizer": _call(train_module.eager_optimizer, lambda: dict(optimizer_class=torch.optim.AdamW)),
    # data
    "CharTokenizer": _call(data.CharTokenizer, lambda: dict(text="abc")),
    "CharTokenizer.encode": _method(lambda: CHARS, "encode", lambda: dict(text="hello")),
    "CharTokenizer.encode_array": _method(lambda: CHARS, "encode_array", lambda: dict(text="hello")),
    "CharTokenizer.decode": _method(lambda: CHARS, "decode", lambda: dict(ids=[0, 1])),
    "bpe_tokenizer": _call(data.bpe_tokenizer, lambda: dict(vocab_size=300, text="abc abc")),
    "encode_corpus": _call(data.encode_corpus, lambda: dict(tokenizer=CHARS, text="hello")),
    "split": _call(data.split, lambda: dict(ids=STREAM, frac=0.5)),
    "random_batches": _call(data.random_batches, lambda: dict(ids=STREAM, batch_size=2, seq_len=4)),
    "token_batches": _call(data.token_batches, lambda: dict(ids=STREAM, batch_size=2, seq_len=4)),
    "MarkovSource": _call(data.MarkovSource, lambda: dict(vocab_size=3)),
    "MarkovSource.from_table": _call(data.MarkovSource.from_table, lambda: dict(P=MARKOV.P)),
    "MarkovSource.marginal": _method(lambda: MARKOV, "marginal", lambda: dict(n=1)),
    "MarkovSource.conditional_entropy": _method(lambda: MARKOV, "conditional_entropy", lambda: dict(k=1)),
    "MarkovSource.joint": _method(lambda: MARKOV, "joint", lambda: dict(n=2)),
    "MarkovSource.joint_entropy": _method(lambda: MARKOV, "joint_entropy", lambda: dict(n=2)),
    "MarkovSource.chain_rule_entropy": _method(lambda: MARKOV, "chain_rule_entropy", lambda: dict(n=2)),
    "MarkovSource.sample": _method(lambda: MARKOV, "sample", lambda: dict(n_seqs=2, length=3)),
    "MarkovSource.token_batches": _method(lambda: MARKOV, "token_batches", lambda: dict(batch_size=2, seq_len=3)),
    "MarkovSource.bayes_next_token_loss": _method(lambda: MARKOV, "bayes_next_token_loss", lambda: dict(seqs=IDS % 3)),
    "MarkovSource.log_prob": _method(lambda: MARKOV, "log_prob", lambda: dict(seqs=IDS % 3)),
    # pretrained (no weights needed: every row is refused before anything is loaded)
    "weight_rules": _call(convert.weight_rules, lambda: dict(config=anatomy.Config(**SMALL))),
    "convert_state": _call(convert.convert_state, lambda: dict(hf_state={}, config=anatomy.Config(**SMALL))),
    "config_from_hf": _call(convert.config_from_hf, lambda: dict(hf_config={"model_type": "llama"})),
    "hf_config_from": _call(convert.hf_config_from, lambda: dict(config=anatomy.Config(**SMALL))),
    "from_hf": _call(anatomy.from_hf, lambda: dict(hf_model=None)),
    "to_hf": _call(anatomy.to_hf, lambda: dict(model=tiny())),
    "file_key": _call(pretrained.file_key, lambda: dict(path=__file__)),
    "smollm2": _call(pretrained.smollm2, lambda: dict()),
    "minilm": _call(pretrained.minilm, lambda: dict()),
    "prefix_state_change": _call(
        families.prefix_state_change, lambda: dict(model=tiny(), prefix_ids=IDS, suffix_ids=IDS)
    ),
}  # fmt: skip

# ---------------------------------------------------------------------------------------------------------
# Families of bad values
# ---------------------------------------------------------------------------------------------------------

POSITIVE_INT = [(0, V), (-1, V), (-(10**9), V), (1.5, T), (2.0, T), (True, T), ("3", T), (NAN, T)]
NON_NEGATIVE_INT = [(-1, V), (-7, V), (1.5, T), (True, T), ("1", T), (None, T)]
INT_OR_NONE = [(1.5, T), (True, T), ("0", T)]
POSITIVE_INT_OR_NONE = [(0, V), (-2, V), (2.5, T), (True, T), ("4", T)]
PROBABILITY_OPEN = [(0.0, V), (1.0, V), (-0.5, V), (1.5, V), (NAN, V), (INF, V), ("0.5", T), (None, T)]
NON_NEGATIVE_FLOAT = [(-1.0, V), (-1e-9, V), (NAN, V), (INF, V), (-INF, V), ("1", T), (True, T), (None, T)]
POSITIVE_FLOAT = [(0.0, V), (-1.0, V), (NAN, V), (INF, V), (-INF, V), ("1", T), (True, T), (None, T)]
MASK = [("sliding", V), ("Causal", V), ("", V), (None, V), (3, V)]
BOOL = [(1, T), (0, T), ("yes", T), (None, T)]
NOT_A_TENSOR = [([1, 2], T), (None, T), ("ids", T), (3, T)]
FLOAT_DTYPE = [(torch.int64, T), (torch.bool, T), ("float16", T), (16, T)]


def family(target, arg, values, name=None):
    return [(target, arg, value, exc, name or arg) for value, exc in values]


def one(target, arg, value, exc, name=None):
    return [(target, arg, value, exc, name or arg)]


ROWS = [
    # ---- attention: tensors, mask, offsets, tile
    *family("attention", "q", NOT_A_TENSOR),
    *one("attention", "q", Q.long(), T),
    *one("attention", "q", Q[0], V),
    *one("attention", "q", Q[:, :3], V, "key/value heads"),
    *one("attention", "k", K.double(), T, "dtype"),
    *one("attention", "k", K[..., :4], V, "k"),
    *one("attention", "k", K[:1], V, "k"),
    *one("attention", "v", VV[:, :, :5], V),
    *family("attention", "v", NOT_A_TENSOR),
    *family("attention", "mask", MASK),
    *family("attention", "backend", [("flash", V), (None, V), ("SDPA", V)]),
    *family("attention", "tile", POSITIVE_INT),
    *family("attention", "q_offset", INT_OR_NONE),
    *one("attention", "q_offset", 1, V),
    *one("attention", "q_offset", -1, V, "no visible key"),
    *family("attention", "prefix_len", [(2, V), (-1, V)]),
    *one("attention", "key_padding_mask", torch.ones(2, 6), T),
    *one("attention", "key_padding_mask", torch.ones(2, 5, dtype=torch.bool), V),
    *one("attention", "key_padding_mask", torch.zeros(2, 6, dtype=torch.bool), V),
    *family("attention_probs", "q", NOT_A_TENSOR[:2]),
    *family("attention_probs", "mask", MASK[:2]),
    *family("attention_probs", "tile", POSITIVE_INT),
    *family("attention_probs", "q_offset", INT_OR_NONE),
    *one("attention_probs", "key_padding_mask", torch.ones(2, 3, dtype=torch.bool), V),
    *family("reference_attention", "q", NOT_A_TENSOR[:2]),
    *family("reference_attention", "q_offset", [(1.5, T), (7, V)]),
    *family("reference_attention", "mask", MASK[:2]),
    *family("tiled_attention", "tile", POSITIVE_INT[:4]),
    *family("tiled_attention", "q_offset", [(1.5, T), (9, V)]),
    *family("tiled_attention", "return_lse", [(1, T), ("yes", T)]),
    *family("tiled_attention", "stats", [([], T), ("x", T)]),
    *family("tiled_attention", "k", NOT_A_TENSOR[:2]),
    # ---- masks
    *family("check_mask", "mask", MASK),
    *family("check_mask", "prefix_len", [(None, V), (-1, V), (7, V), (2.0, T), (True, T)]),
    *family("visible", "mask", [("full", V), (None, V)]),
    *family("visible", "q_pos", [([0, 1], T), (3, T)], "q_pos"),
    *family("visible", "prefix_len", [(None, T), (1.5, T)]),
    *family("default_q_offset", "n_queries", [(1.5, T), ("2", T)]),
    *family("default_q_offset", "n_keys", [(None, T), (True, T)]),
    *family("dense_mask", "n_queries", NON_NEGATIVE_INT),
    *family("dense_mask", "n_keys", NON_NEGATIVE_INT),
    *family("dense_mask", "q_offset", INT_OR_NONE),
    *family("dense_mask", "mask", MASK),
    *family("dense_mask", "prefix_len", [(3, V)]),
    *family("dense_mask", "device", [("gpu", V), (3, T)]),
    *family("tile_map", "n_queries", POSITIVE_INT[:6]),
    *family("tile_map", "n_keys", POSITIVE_INT[:6]),
    *family("tile_map", "tile", [*POSITIVE_INT[:6], ((2, 0), V), ((2, 2, 2), V), ((2, 1.5), T)]),
    *family("tile_map", "q_offset", INT_OR_NONE),
    *family("tile_map", "mask", MASK[:3]),
    *family("count_tiles", "n_queries", POSITIVE_INT[:6]),
    *family("count_tiles", "n_keys", POSITIVE_INT[:4]),
    *family("count_tiles", "head_dim", POSITIVE_INT),
    *family("count_tiles", "batch", POSITIVE_INT[:5]),
    *family("count_tiles", "heads", POSITIVE_INT[:5]),
    *family("count_tiles", "tile", POSITIVE_INT[:5]),
    *family("causal_tile_ideal", "n_tiles", POSITIVE_INT[:6]),
    # ---- cache
    *family("KVCache", "n_layers", POSITIVE_INT),
    *family("KVCache", "batch_size", POSITIVE_INT[:6]),
    *family("KVCache", "n_kv_heads", POSITIVE_INT[:6]),
    *family("KVCache", "head_dim", POSITIVE_INT[:6]),
    *family("KVCache", "max_len", POSITIVE_INT[:6]),
    *family("KVCache", "dtype", FLOAT_DTYPE),
    *family("KVCache", "device", [("gpu", V), (0.5, T)]),
    *family("KVCache.truncate", "length", [(1, V), (-1, V), (0.0, T), (True, T)]),
    *family("KVCache.keys", "layer", [(2, V), (-1, V), (0.5, T)]),
    *family("KVCache.values", "layer", [(5, V), ("0", T)]),
    *family("KVCache.check_append", "input_ids", [(IDS.float(), T), (IDS[0], V), ([1, 2], T)]),
    *one("KVCache.check_append", "input_ids", torch.zeros(1, 9, dtype=torch.long), V, "max_len"),
    *one("KVCache.check_append", "input_ids", torch.zeros(2, 1, dtype=torch.long), V, "batch size"),
    *family("KVCache.commit", "input_ids", [(IDS.float(), T), ([1], T)]),
    *family("KVCache.claim", "layers", [("model", T), (3, T)]),
    *family("KVCache.update", "layer", [(2, V), (-1, V)]),
    *one("KVCache.update", "k", torch.zeros(1, 3, 3, 4), V, "keys"),
    *family("kv_cache_bytes", "n_layers", POSITIVE_INT[:6]),
    *family("kv_cache_bytes", "n_kv_heads", POSITIVE_INT[:4]),
    *family("kv_cache_bytes", "head_dim", POSITIVE_INT[:4]),
    *family("kv_cache_bytes", "n_tokens", NON_NEGATIVE_INT[:5]),
    *family("kv_cache_bytes", "bytes_per_elem", POSITIVE_INT[:5]),
    *family("kv_cache_bytes", "batch_size", POSITIVE_INT[:5]),
    # ---- generation
    *family("next_token", "temperature", NON_NEGATIVE_FLOAT),
    *family("next_token", "top_k", [(0, V), (-3, V), (2.5, T), (True, T)]),
    *family("next_token", "logits", [(torch.randn(10), V), (torch.ones(2, 3, dtype=torch.long), T), ([1.0], T)]),
    *one("next_token", "logits", torch.full((2, 10), NAN), V, "NaN"),
    *family("next_token", "generator", [(0, T), ("seed", T)]),
    *family("generate", "max_new_tokens", NON_NEGATIVE_INT[:5]),
    *family("generate", "temperature", NON_NEGATIVE_FLOAT),
    *family("generate", "top_k", [(0, V), (1.5, T)]),
    *family("generate", "eos_token_id", [(-7, V), (20, V), (1.5, T), ("2", T)]),
    *family("generate", "input_ids", [(IDS.float(), T), (IDS[0], T), (IDS[:, :0], V)]),
    *family("generate", "cache", [("cache", T), (3, T)]),
    *one("generate", "cache", anatomy.KVCache(3, 1, 2, 4, 32), V, "another shape"),
    *family("generate", "generator", [(1, T)]),
    *family("generate", "model", [(None, T), ("model", T)]),
    *family("speculative_generate", "temperature", [(-1.0, V), (NAN, V), (INF, V)]),
    *family("speculative_generate", "max_new_tokens", [(0, V), (-1, V)]),
    *family("speculative_generate", "gamma", [(-1, V), (1.5, V)]),
    # ---- Config: every field
    *family("Config", "vocab_size", POSITIVE_INT[:6]),
    *family("Config", "d_model", POSITIVE_INT[:6]),
    *family("Config", "n_layers", POSITIVE_INT[:6]),
    *family("Config", "n_heads", POSITIVE_INT[:5]),
    *family("Config", "n_kv_heads", [*POSITIVE_INT_OR_NONE, (3, V)]),
    *family("Config", "head_dim", [*POSITIVE_INT_OR_NONE, (5, V)]),
    *family("Config", "d_ff", POSITIVE_INT_OR_NONE),
    *family("Config", "max_seq_len", POSITIVE_INT[:5]),
    *family("Config", "tile", POSITIVE_INT[:5]),
    *family("Config", "norm_eps", NON_NEGATIVE_FLOAT),
    *family("Config", "rope_theta", POSITIVE_FLOAT),
    *family("Config", "init_std", NON_NEGATIVE_FLOAT[:5]),
    *family("Config", "n_token_types", NON_NEGATIVE_INT[:4]),
    *family("Config", "mask", MASK[:3]),
    *family("Config", "norm", [("batch", V), (None, V)]),
    *family("Config", "norm_position", [("middle", V)]),
    *family("Config", "pos", [("alibi", V), (None, V)]),
    *family("Config", "mlp", [("relu", V)]),
    *family("Config", "attn_backend", [("flash", V)]),
    *[row for name in ("qkv_bias", "out_bias", "mlp_bias", "norm_bias", "tie_embeddings", "final_norm",
                       "embed_norm", "lm_head") for row in family("Config", name, BOOL[:2])],
    *family("Config", "extra", [(None, T), ([1], T)]),
    *one("Config", "d_model", 30, V, "divisible"),
    # ---- models
    *family("Transformer", "config", [(None, T), ({"vocab_size": 3}, T)]),
    *family("make_norm", "config", [(None, T)]),
    *family("Transformer.forward", "input_ids", [(IDS.float(), T), (IDS[0], V), (IDS + 100, V), (IDS - 5, V), ([1], T)]),
    *family("Transformer.forward", "logits_to_keep", [(-1, V), (5, V), (1.5, T), (True, T)]),
    *family("Transformer.forward", "return_hidden", BOOL[:3]),
    *family("Transformer.forward", "return_attn", BOOL[:3]),
    *family("Transformer.forward", "attention_mask", [
        (torch.tensor([[1, 1, 2, 1]]), V), (torch.tensor([[1, -1, 1, 1]]), V), (torch.ones(1, 3), V),
        ([1, 1, 1, 1], T), (torch.tensor([[0.5, 1.0, 1.0, 1.0]]), V),
    ]),  # fmt: skip
    *family("Transformer.forward", "token_type_ids", [(torch.zeros(1, 4, dtype=torch.long), V)]),
    *family("Transformer.forward", "cache", [("cache", T), ([], T)]),
    *one("Transformer.forward", "cache", anatomy.KVCache(2, 1, 2, 4, 2), V, "cache overflow"),
    *one("Transformer.forward", "cache", anatomy.KVCache(2, 2, 2, 4, 8), V, "batch size"),
    *one("Transformer.forward", "cache", anatomy.KVCache(2, 1, 2, 8, 8), V, "another shape"),
    *one("Transformer.forward", "prefix_len", 2, V),
    *family("Transformer.forward (segments)", "token_type_ids", [
        (torch.full((1, 4), 2), V), (torch.full((1, 4), -1), V), (torch.zeros(1, 3, dtype=torch.long), V),
        (torch.zeros(1, 4), T),
    ]),  # fmt: skip
    *family("Transformer.new_cache", "batch_size", POSITIVE_INT[:5]),
    *family("Transformer.new_cache", "max_len", POSITIVE_INT_OR_NONE),
    *family("Transformer.embed", "start", NON_NEGATIVE_INT[:4]),
    *family("Transformer.embed", "input_ids", [(IDS.float(), T), (IDS + 50, V)]),
    *family("Transformer.num_params", "non_embedding", BOOL[:2]),
    *family("EncoderDecoder", "config", [(None, T)]),
    *family("EncoderDecoder", "n_decoder_layers", POSITIVE_INT_OR_NONE[:4]),
    *family("EncoderDecoder.forward", "cache", [("cache", T), (3, T)]),
    *one("EncoderDecoder.forward", "cache", anatomy.KVCache(5, 1, 2, 4, 8), V, "another shape"),
    *family("EncoderDecoder.forward", "encoder_input_ids", [(IDS.float(), T), (IDS + 99, V), (None, T)]),
    *family("EncoderDecoder.forward", "encoder_attention_mask", [(torch.tensor([[1, 1, 3, 1]]), V), (torch.ones(1, 2), V)]),
    *family("EncoderDecoder.forward", "logits_to_keep", [(-1, V), (9, V)]),
    *family("EncoderDecoder.forward", "input_ids", [(IDS[0], V)]),
    *family("EncoderDecoder.encode", "encoder_input_ids", [(IDS.float(), T)]),
    *family("EncoderDecoder.new_cache", "max_len", POSITIVE_INT_OR_NONE[:3]),
    *family("EncoderDecoder.new_cache", "batch_size", POSITIVE_INT[:3]),
    *family("EncoderDecoder.num_params", "non_embedding", BOOL[:1]),
    *family("to_input_major", "model", [(None, T), ("m", T)]),
    # ---- training
    *family("train", "lr", POSITIVE_FLOAT),
    *family("train", "steps", POSITIVE_INT[:6]),
    *family("train (seconds budget)", "seconds", [(0, V), (-1.0, V), (NAN, V), (INF, V), ("1", T)]),
    *family("train", "weight_decay", NON_NEGATIVE_FLOAT[:5]),
    *family("train", "min_lr_ratio", [(-0.1, V), (1.5, V), (NAN, V)]),
    *family("train", "grad_clip", [(0.0, V), (-1.0, V), (NAN, V), (INF, V)]),
    *family("train", "warmup", [(-1, V), (1.0, V), (NAN, V), ("5", V)]),
    *family("train", "schedule", [("linear", V), (None, V)]),
    *family("train", "eval_every", [(0, V), (1.5, T)]),
    *family("train", "betas", [((0.9,), T), ((0.9, 1.5), V), ((0.9, NAN), V), (0.9, T)]),
    *family("train", "loss_fn", [(3, T)]),
    *family("train", "eval_fn", [("f", T)]),
    *family("train", "eval_at_start", BOOL[:2]),
    *family("train", "progress", BOOL[:2]),
    *family("train", "seed", INT_OR_NONE),
    *family("train", "model", [(None, T)]),
    *family("train", "batches", [(3, T)]),
    *one("train", "tokens", 10, V, "exactly one budget"),
    *family("learning_rate", "step", [(-5, V), (NAN, V), ("1", T)]),
    *family("learning_rate", "total_steps", POSITIVE_INT[:5]),
    *family("learning_rate", "lr", [(-1.0, V), (NAN, V), (INF, V)]),
    *family("learning_rate", "warmup", [(-2, V), (1.5, V)]),
    *family("learning_rate", "schedule", [("step", V)]),
    *family("learning_rate", "min_lr_ratio", [(2.0, V), (-1.0, V)]),
    *family("evaluate", "n_batches", POSITIVE_INT[:5]),
    *family("eager_optimizer", "optimizer_class", [(None, T), ("AdamW", T), (torch.nn.Linear, T), (torch.optim.AdamW([torch.zeros(1)]), T)]),
    *family("evaluate", "model", [(None, T)]),
    *family("evaluate", "loss_fn", [(1, T)]),
    *one("evaluate", "batches", lambda i: (IDS[:, :-1], torch.full((1, 3), -100)), V),
    *family("next_token_loss", "batch", [(IDS, T), ((IDS,), T), ((IDS, IDS[:, :2]), V)]),
    # ---- data
    *family("CharTokenizer", "text", [("", V), (None, V), (3, V)]),
    *family("CharTokenizer.encode", "text", [(None, T), (b"hello", T), ("xyz", V)], "text|vocabulary"),
    *family("CharTokenizer.encode_array", "text", [(1, T)]),
    *family("CharTokenizer.decode", "ids", [([-1], V), ([99], V), ([1.7], T), ("he", T), (3, T)]),
    *one("CharTokenizer.decode", "ids", torch.tensor([[0, 1]]), V),
    *family("bpe_tokenizer", "vocab_size", [(256, V), (100, V), (300.0, T), (True, T)]),
    *family("bpe_tokenizer", "text", [("", V), (3, V)]),
    *family("encode_corpus", "text", [(None, T), (5, T)]),
    *family("encode_corpus", "tokenizer", [(None, T)]),
    *family("split", "frac", PROBABILITY_OPEN),
    *family("split", "ids", [([1, 2, 3], T), (torch.zeros(2, 3), V)]),
    *family("random_batches", "batch_size", POSITIVE_INT[:5]),
    *family("random_batches", "seq_len", [*POSITIVE_INT[:5], (50, V)]),
    *family("random_batches", "generator", [(3, T)]),
    *family("random_batches", "ids", [(torch.zeros(50), T), ([1, 2], T)]),
    *family("token_batches", "batch_size", POSITIVE_INT[:4]),
    *family("token_batches", "seq_len", [*POSITIVE_INT[:4], (60, V)]),
    *family("token_batches", "seed", [(1.5, T), (None, T)]),
    *family("token_batches", "ids", [(torch.zeros(50), T)]),
    *family("MarkovSource", "vocab_size", [(1, V), (0, V), (2.5, T), (True, T)]),
    *family("MarkovSource", "order", [(0, V), (1.0, T)]),
    *family("MarkovSource", "alpha", [(0.0, V), (-1.0, V), (NAN, V), (INF, V), ("1", T)]),
    *family("MarkovSource", "seed", [(-1, V), (0.5, T)]),
    *one("MarkovSource", "vocab_size", 10_000, V),
    *family("MarkovSource.from_table", "P", [(MARKOV.P * 2, V), (MARKOV.P[0], V), (-MARKOV.P, V)]),
    *family("MarkovSource.marginal", "n", [(-1, V), (3, V), (1.5, T)]),
    *family("MarkovSource.conditional_entropy", "k", [(-1, V), ("1", T)]),
    *family("MarkovSource.joint", "n", [(0, V), (1.5, T), (20, V)]),
    *family("MarkovSource.joint_entropy", "n", [(0, V)]),
    *family("MarkovSource.chain_rule_entropy", "n", [(0, V), (True, T)]),
    *family("MarkovSource.sample", "n_seqs", POSITIVE_INT[:4]),
    *family("MarkovSource.sample", "length", POSITIVE_INT[:4]),
    *family("MarkovSource.sample", "generator", [("g", T)]),
    *family("MarkovSource.token_batches", "batch_size", POSITIVE_INT[:3]),
    *family("MarkovSource.token_batches", "seq_len", POSITIVE_INT[:3]),
    *family("MarkovSource.token_batches", "seed", [(0.5, T)]),
    *family("MarkovSource.bayes_next_token_loss", "seqs", [(IDS + 5, V), (IDS.float(), T), (IDS[0], V), (IDS[:, :1], V)]),
    *family("MarkovSource.log_prob", "seqs", [(IDS - 9, V), (torch.ones(1, 2, dtype=torch.bool), T)]),
    # ---- pretrained
    *family("weight_rules", "config", [(None, T), ("llama", T)]),
    *family("weight_rules", "family", [("t5", V)]),
    *family("weight_rules", "hf_prefix", [(3, T)]),
    *family("convert_state", "hf_state", [(None, T), ([], T)]),
    *family("convert_state", "config", [(None, T)]),
    *family("convert_state", "drop", [("pooler.", T), ((1,), T)]),
    *family("config_from_hf", "hf_config", [(None, T), ("llama", T)]),
    *family("config_from_hf", "lm_head", [(1, T)]),
    *family("config_from_hf", "qkv_bias", [("yes", T)]),
    *family("hf_config_from", "config", [(None, T)]),
    *family("from_hf", "hf_model", [(None, T), ("gpt2", T)]),
    *family("to_hf", "model", [(None, T), (3, T)]),
    *family("file_key", "path", [(None, T), (3, T)]),
    *family("smollm2", "dtype", FLOAT_DTYPE),
    *family("smollm2", "verbose", [(1, T)]),
    *family("minilm", "dtype", FLOAT_DTYPE[:3]),
    *family("prefix_state_change", "model", [(None, T), ("m", T)]),
    *family("prefix_state_change", "prefix_ids", [(IDS[0], V), (IDS.float(), T), (None, V)]),
    *family("prefix_state_change", "suffix_ids", [(IDS[:, :0], V), (torch.ones(2, 3, dtype=torch.long), V)]),
]  # fmt: skip

# ---------------------------------------------------------------------------------------------------------
# The rest of the core: cost, metrics, objectives, moe, timing, speculative, kernels (qualified names)
# ---------------------------------------------------------------------------------------------------------

CFG = anatomy.Config(**SMALL)
P3 = np.array([0.5, 0.25, 0.25])
Q3 = np.array([0.25, 0.25, 0.5])
JOINT = np.arange(1, 9, dtype=float).reshape(2, 2, 2) / 36.0
CONDS = metrics.masked_conditionals(JOINT)
SPECIAL = objectives.SpecialTokens(n_text=10, n_sentinels=4)
SEQS = torch.arange(16).reshape(2, 8) % 10
_SPAN = objectives.span_corruption_batch(SEQS, SPECIAL, generator=torch.Generator().manual_seed(0))
_PREFIX = objectives.prefix_lm_batch(SEQS, prefix_len=3)
V3 = dict(SMALL, vocab_size=3)


def tiny3():
    """A decoder over the Markov source's 3 symbols."""
    if "v3" not in _models:
        torch.manual_seed(0)
        _models["v3"] = anatomy.Transformer(anatomy.Config(**V3)).eval()
    return _models["v3"]


def tiny_moe():
    if "moe" not in _models:
        torch.manual_seed(0)
        _models["moe"] = moe.moe_decoder(CFG, n_routed=4, top_k=2).eval()
    return _models["moe"]


CALLS.update({
    # cost
    "cost.published_config": _call(cost.published_config, lambda: dict(name="SmolLM2-135M")),
    "cost.attention_kind": _call(cost.attention_kind, lambda: dict(config=CFG)),
    "cost.linear_params": _call(cost.linear_params, lambda: dict(config=CFG)),
    "cost.param_counts": _call(cost.param_counts, lambda: dict(config=CFG)),
    "cost.visible_pairs": _call(cost.visible_pairs, lambda: dict(mask="causal", n_queries=4, n_keys=6)),
    "cost.visible_pairs (prefix)": _call(cost.visible_pairs, lambda: dict(mask="prefix", n_queries=4, n_keys=6, prefix_len=2)),
    "cost.attention_pairs": _call(cost.attention_pairs, lambda: dict(mask="causal", n_ctx=8, tile=4, counting="tiles")),
    "cost.tile_walk": _call(cost.tile_walk, lambda: dict(n_ctx=8, tile_q=4, tile_k=4, p=0)),
    "cost.forward_flops": _call(cost.forward_flops, lambda: dict(config=CFG, n_new=4)),
    "cost.encdec_first_token_flops": _call(cost.encdec_first_token_flops, lambda: dict(config=CFG, n_source=4)),
    "cost.kv_bytes_per_token": _call(cost.kv_bytes_per_token, lambda: dict(config=CFG)),
    "cost.step_bytes": _call(cost.step_bytes, lambda: dict(config=CFG, n_new=1, n_past=4)),
    "cost.decode_bytes": _call(cost.decode_bytes, lambda: dict(config=CFG, context=8)),
    "cost.step_intensity": _call(cost.step_intensity, lambda: dict(config=CFG, n_new=1, n_past=4)),
    "cost.training_flops": _call(cost.training_flops, lambda: dict(n_params=1e6, n_tokens=2e7)),
    # metrics
    "metrics.nats_to_bits": _call(metrics.nats_to_bits, lambda: dict(nats=1.0)),
    "metrics.bits_per_char": _call(metrics.bits_per_char, lambda: dict(nats_per_token=2.0, n_tokens=10, n_chars=40)),
    "metrics.entropy": _call(metrics.entropy, lambda: dict(p=P3)),
    "metrics.cross_entropy": _call(metrics.cross_entropy, lambda: dict(p=P3, q=Q3)),
    "metrics.kl_divergence": _call(metrics.kl_divergence, lambda: dict(p=P3, q=Q3)),
    "metrics.conditional_entropy": _call(metrics.conditional_entropy, lambda: dict(joint=JOINT, target=0, given=(1,))),
    "metrics.chain_rule_terms": _call(metrics.chain_rule_terms, lambda: dict(joint=JOINT, order=(2, 0, 1))),
    "metrics.pseudo_log_likelihood": _call(metrics.pseudo_log_likelihood, lambda: dict(joint=JOINT)),
    "metrics.span_log_likelihood": _call(metrics.span_log_likelihood, lambda: dict(joint=JOINT, span=(0, 1))),
    "metrics.total_variation": _call(metrics.total_variation, lambda: dict(p=P3, q=Q3)),
    "metrics.masked_conditionals": _call(metrics.masked_conditionals, lambda: dict(joint=JOINT)),
    "metrics.masked_lm_conditionals": _call(
        metrics.masked_lm_conditionals, lambda: dict(model=tiny(), vocab_size=3, length=2, mask_id=5)
    ),
    "metrics.gibbs_sweep": _call(metrics.gibbs_sweep, lambda: dict(dist=JOINT, conditionals=CONDS)),
    "metrics.gibbs_sweep_matrix": _call(metrics.gibbs_sweep_matrix, lambda: dict(conditionals=CONDS)),
    "metrics.stationary_distribution": _call(metrics.stationary_distribution, lambda: dict(T=np.array([[0.9, 0.1], [0.2, 0.8]]))),
    "metrics.conditional_inconsistency": _call(metrics.conditional_inconsistency, lambda: dict(conditionals=CONDS, dist=JOINT)),
    "metrics.markov_conditionals": _call(metrics.markov_conditionals, lambda: dict(source=MARKOV, seqs=IDS % 3)),
    "metrics.token_losses": _call(metrics.token_losses, lambda: dict(logits=torch.randn(2, 3, 5), targets=torch.zeros(2, 3, dtype=torch.long))),
    "metrics.kl_to_source": _call(metrics.kl_to_source, lambda: dict(logits=torch.randn(2, 3), true_probs=torch.full((2, 3), 1 / 3))),
    "metrics.NGramModel": _call(metrics.NGramModel, lambda: dict(vocab_size=3, k=1)),
    "metrics.NGramModel.fit": _method(lambda: metrics.NGramModel(3, 1), "fit", lambda: dict(seqs=IDS % 3)),
    "metrics.NGramModel.losses": _method(lambda: metrics.NGramModel(3, 1), "losses", lambda: dict(seqs=IDS % 3)),
    "metrics.NGramModel.loss": _method(lambda: metrics.NGramModel(3, 1), "loss", lambda: dict(seqs=IDS % 3)),
    "metrics.score_on_source": _call(metrics.score_on_source, lambda: dict(model=tiny3(), source=MARKOV, seqs=IDS % 3)),
    # objectives
    "objectives.SpecialTokens": _call(objectives.SpecialTokens, lambda: dict(n_text=10, n_sentinels=4)),
    "objectives.causal_lm_batch": _call(objectives.causal_lm_batch, lambda: dict(seqs=SEQS, label_fraction=0.5)),
    "objectives.masked_lm_batch": _call(objectives.masked_lm_batch, lambda: dict(seqs=SEQS, special=SPECIAL)),
    "objectives.span_counts": _call(objectives.span_counts, lambda: dict(length=20)),
    "objectives.random_spans_noise_mask": _call(objectives.random_spans_noise_mask, lambda: dict(length=20)),
    "objectives.span_corruption_batch": _call(objectives.span_corruption_batch, lambda: dict(seqs=SEQS, special=SPECIAL)),
    "objectives.span_corruption_reconstruct": _call(
        objectives.span_corruption_reconstruct,
        lambda: dict(encoder_input_ids=_SPAN.encoder_input_ids[0], targets=_SPAN.labels[0], special=SPECIAL),
    ),
    "objectives.prefix_lm_batch": _call(objectives.prefix_lm_batch, lambda: dict(seqs=SEQS, prefix_len=3)),
    "objectives.make_batch": _call(objectives.make_batch, lambda: dict(objective="masked", seqs=SEQS, special=SPECIAL)),
    "objectives.text_windows": _call(objectives.text_windows, lambda: dict(ids=STREAM, batch_size=2, seq_len=8)),
    "objectives.objective_batches": _call(
        objectives.objective_batches,
        lambda: dict(objective="causal", windows=objectives.text_windows(STREAM, 2, 8)),
    ),
    "objectives.prefix_lm_loss": _call(objectives.prefix_lm_loss, lambda: dict(model=tiny("prefix"), batch=_PREFIX)),
    "objectives.span_corruption_loss": _call(objectives.span_corruption_loss, lambda: dict(model=tiny("ed"), batch=_SPAN)),
    "objectives.loss_fn": _call(objectives.loss_fn, lambda: dict(objective="span")),
    "objectives.batch_labels": _call(objectives.batch_labels, lambda: dict(batch=_PREFIX)),
    "objectives.signal": _call(objectives.signal, lambda: dict(batch=_SPAN, text_tokens=16, special=SPECIAL)),
    "objectives.train_step_flops": _call(
        objectives.train_step_flops, lambda: dict(model=tiny(), loss=train_module.next_token_loss, batch=(IDS[:, :-1], IDS[:, 1:]))
    ),
    # moe
    "moe.MoE": _call(moe.MoE, lambda: dict(config=CFG, n_routed=4, top_k=2)),
    "moe.MoE.forward": _method(lambda: moe.moe_layers(tiny_moe())[0], "forward", lambda: dict(x=torch.randn(1, 3, 16))),
    "moe.MoE.reset_parameters": _method(lambda: moe.MoE(CFG, 4), "reset_parameters", lambda: dict()),
    "moe.route_reference": _call(moe.route_reference, lambda: dict(
        u=torch.randn(3, 4), centroids=torch.randn(2, 4), bias=torch.zeros(2), top_k=1, shared=[], routed=[torch.tanh, torch.sin])),
    "moe.moe_layers": _call(moe.moe_layers, lambda: dict(model=tiny_moe())),
    "moe.moe_decoder": _call(moe.moe_decoder, lambda: dict(config=CFG, n_routed=4, top_k=2)),
    # timing
    "timing.interleaved_times": _call(timing.interleaved_times, lambda: dict(fns={"a": lambda: None}, repeats=1, warmup=0)),
    "timing.interleaved_medians": _call(timing.interleaved_medians, lambda: dict(fns={"a": lambda: None}, repeats=1, warmup=0)),
    "timing.paired_ratio": _call(timing.paired_ratio, lambda: dict(numerator=[1.0, 2.0], denominator=[1.0, 1.0])),
    # speculative (helper S's module)
    "speculative.TorchRandom": _call(speculative.TorchRandom, lambda: dict()),
    "speculative.ScriptedRandom": _call(speculative.ScriptedRandom, lambda: dict(script=[0, 1])),
    "speculative.acceptance_probability": _call(speculative.acceptance_probability, lambda: dict(p=torch.tensor([0.5, 0.5]), q=torch.tensor([0.25, 0.75]), token=1)),
    "speculative.residual_distribution": _call(speculative.residual_distribution, lambda: dict(p=torch.tensor([0.5, 0.5]), q=torch.tensor([0.25, 0.75]))),
    "speculative.verify": _call(speculative.verify, lambda: dict(
        p=torch.full((2, 3), 1 / 3), q=torch.full((1, 3), 1 / 3), drafts=[1], rng=speculative.TorchRandom())),
    "speculative.ModelDrafter": _call(speculative.ModelDrafter, lambda: dict(model=tiny(), max_len=32)),
    "speculative.NgramDrafter": _call(speculative.NgramDrafter, lambda: dict(vocab_size=20, max_n=3, min_n=1)),
    "speculative.layer_draft": _call(speculative.layer_draft, lambda: dict(model=tiny(), layers=1)),
    "speculative.expected_tokens_per_call": _call(speculative.expected_tokens_per_call, lambda: dict(alpha=0.5, gamma=4)),
    "speculative.expected_speedup": _call(speculative.expected_speedup, lambda: dict(alpha=0.5, gamma=4, c=0.1)),
    "speculative.step_costs": _call(speculative.step_costs, lambda: dict(target=tiny(), draft=tiny(), context_ids=IDS, gamma=1, repeats=1)),
    "speculative.enumerate_distribution": _call(speculative.enumerate_distribution, lambda: dict(sample=lambda rng: [rng.categorical(torch.tensor([0.5, 0.5]))])),
    "speculative.sequence_distribution": _call(speculative.sequence_distribution, lambda: dict(model=tiny(), input_ids=IDS, n_tokens=1)),
    "speculative.dict_total_variation": _call(speculative.dict_total_variation, lambda: dict(a={(0,): 1.0}, b={(1,): 1.0})),
    # kernels (helper K's) and weight layout (helper C's)
    "triton_kernel.block_size": _call(triton_kernel.block_size, lambda: dict(tile=64, head_dim=32)),
    "weight_layout.fused_weight": _call(weight_layout.fused_weight, lambda: dict(owner=tiny().layers[0].mlp, names=("gate_proj", "up_proj"))),
})  # fmt: skip

NOT_FINITE = [(NAN, V), (INF, V), ("1", T), (None, T)]
CONFIG = [(None, T), ("SmolLM2-135M", T), ({"d_model": 16}, T)]
PROBS = [
    (np.array([0.5, 0.6, 0.1]), V),
    (np.array([-0.5, 1.0, 0.5]), V),
    (np.array([NAN, 0.5, 0.5]), V),
    (0.5, V),
    ("abc", T),
]
JOINTS = [(np.ones((2, 2)), V), (-JOINT, V), (np.array(1.0), V), ("joint", T)]
SEQ_TENSOR = [([[1, 2]], T), (None, T), (SEQS.float(), T), (SEQS[0], V)]

ROWS += [
    # ---- cost
    *family("cost.published_config", "name", [("GPT-5", V), (None, V), (3, V), (["SmolLM2-135M"], V)]),
    *family("cost.attention_kind", "config", CONFIG),
    *family("cost.linear_params", "config", CONFIG[:2]),
    *family("cost.linear_params", "cross_attention", [(1, T), ("yes", T)]),
    *family("cost.param_counts", "config", CONFIG),
    *family("cost.visible_pairs", "mask", MASK),
    *family("cost.visible_pairs", "n_queries", POSITIVE_INT[:6]),
    *family("cost.visible_pairs", "n_keys", [(3, V), (-1, V), (6.0, T), (True, T)]),
    *family("cost.visible_pairs (prefix)", "prefix_len", [(None, V), (-1, V), (1.5, T), (True, T)]),
    *family("cost.attention_pairs", "n_ctx", POSITIVE_INT[:6]),
    *family("cost.attention_pairs", "tile", [*POSITIVE_INT[:5], ((4, 0), V), ((4,), V), ((4, 4, 4), V), ((4, 1.5), T), ("4", T)]),
    *family("cost.attention_pairs", "counting", [("exact", V), (None, V)]),
    *family("cost.attention_pairs", "mask", MASK[:3]),
    *family("cost.tile_walk", "n_ctx", [(-1, V), (1.5, T), (True, T)]),
    *family("cost.tile_walk", "tile_q", POSITIVE_INT[:5]),
    *family("cost.tile_walk", "tile_k", POSITIVE_INT[:5]),
    *family("cost.tile_walk", "p", [(-1, V), (1.5, T), (None, T)]),
    *family("cost.forward_flops", "config", CONFIG[:2]),
    *family("cost.forward_flops", "n_new", POSITIVE_INT[:6]),
    *family("cost.forward_flops", "n_past", NON_NEGATIVE_INT[:5]),
    *family("cost.forward_flops", "batch", POSITIVE_INT[:4]),
    *family("cost.forward_flops", "logits", [("first", V), (None, V)]),
    *family("cost.forward_flops", "counting", [("exact", V)]),
    *family("cost.forward_flops", "mask", [("sliding", V), (3, V)]),
    *family("cost.encdec_first_token_flops", "config", CONFIG[:1]),
    *family("cost.encdec_first_token_flops", "n_source", POSITIVE_INT[:5]),
    *family("cost.encdec_first_token_flops", "n_decoder_layers", POSITIVE_INT_OR_NONE),
    *family("cost.kv_bytes_per_token", "config", CONFIG[:1]),
    *family("cost.kv_bytes_per_token", "bytes_per_elem", POSITIVE_INT[:5]),
    *family("cost.step_bytes", "config", CONFIG[:1]),
    *family("cost.step_bytes", "n_new", POSITIVE_INT[:4]),
    *family("cost.step_bytes", "n_past", NON_NEGATIVE_INT[:4]),
    *family("cost.step_bytes", "batch", POSITIVE_INT[:3]),
    *family("cost.step_bytes", "weight_bytes", POSITIVE_INT[:5]),
    *family("cost.step_bytes", "kv_bytes", POSITIVE_INT[:5]),
    *family("cost.step_bytes", "logits", [("first", V), (None, V)]),
    *family("cost.decode_bytes", "context", NON_NEGATIVE_INT[:5]),
    *family("cost.decode_bytes", "config", CONFIG[:1]),
    *family("cost.step_intensity", "n_new", POSITIVE_INT[:3]),
    *family("cost.step_intensity", "weight_bytes", [(0, V), (1.5, T)]),
    *family("cost.step_intensity", "logits", [("first", V)]),
    *family("cost.training_flops", "n_params", POSITIVE_FLOAT),
    *family("cost.training_flops", "n_tokens", POSITIVE_FLOAT[:6]),
    # ---- metrics
    *family("metrics.nats_to_bits", "nats", [("1", T), (None, T), (True, T), ([1.0], T)]),
    *family("metrics.bits_per_char", "nats_per_token", [(-1.0, V), (NAN, V), (INF, V), ("1", T), (None, T)]),
    *family("metrics.bits_per_char", "n_tokens", [(0, V), (-1, V), (1.5, V), (True, V), ("3", V)]),
    *family("metrics.bits_per_char", "n_chars", [(0, V), (-3, V), (2.0, V), (None, V)]),
    *family("metrics.entropy", "p", PROBS),
    *family("metrics.entropy", "axis", [(1.5, T), (True, T), (3, V)]),
    *family("metrics.cross_entropy", "p", PROBS[:3]),
    *family("metrics.cross_entropy", "q", [*PROBS, (np.array([0.5, 0.5]), V)]),
    *family("metrics.kl_divergence", "p", PROBS[:2]),
    *family("metrics.kl_divergence", "q", [*PROBS[:2], (np.array([1.0]), V)]),
    *family("metrics.kl_divergence", "axis", [(1.5, T)]),
    *family("metrics.conditional_entropy", "joint", JOINTS),
    *family("metrics.conditional_entropy", "target", [(3, V), (-1, V), (1.5, T), (None, T)]),
    *family("metrics.conditional_entropy", "given", [((5,), V), ((0,), V), ((1, 1), V), (1, T)]),
    *family("metrics.chain_rule_terms", "joint", JOINTS[:2]),
    *family("metrics.chain_rule_terms", "order", [((0, 0, 1), V), ((0, 1), V), ((0, 1, 5), V), (3, T)]),
    *family("metrics.pseudo_log_likelihood", "joint", JOINTS),
    *family("metrics.span_log_likelihood", "joint", JOINTS[:2]),
    *family("metrics.span_log_likelihood", "span", [((), V), ((7,), V), ((0, 0), V), (None, T)]),
    *family("metrics.total_variation", "p", [*PROBS[1:3], ("abc", T), (None, T)]),
    *family("metrics.total_variation", "q", [(np.array([0.5, 0.5]), V)]),
    *family("metrics.masked_conditionals", "joint", JOINTS),
    *family("metrics.masked_lm_conditionals", "vocab_size", [(1, V), (1.5, T), (True, T)]),
    *family("metrics.masked_lm_conditionals", "length", [(0, V), (-1, V), ("2", T)]),
    *family("metrics.masked_lm_conditionals", "mask_id", [(1, V), (-1, V), (5.0, T)]),
    *family("metrics.masked_lm_conditionals", "batch_size", [(0, V), (1.5, T)]),
    *family("metrics.masked_lm_conditionals", "model", [(None, T), ("bert", T)]),
    *family("metrics.gibbs_sweep", "dist", JOINTS[:2]),
    *family("metrics.gibbs_sweep", "conditionals", [(CONDS[:2], V), (np.ones((3, 2, 2, 2)), V), ("c", T)]),
    *family("metrics.gibbs_sweep", "order", [((0, 0, 1), V), ((0, 9), V), (3, T)]),
    *family("metrics.gibbs_sweep_matrix", "conditionals", [(CONDS[:2], V), (-CONDS, V)]),
    *family("metrics.gibbs_sweep_matrix", "order", [((5,), V)]),
    *family("metrics.stationary_distribution", "T", [(np.ones((2, 3)) / 3, V), (np.array([[2.0, -1.0], [0.0, 1.0]]), V), (np.ones((2, 2)), V), ("T", T)]),
    *family("metrics.conditional_inconsistency", "conditionals", [(CONDS[:1], V)]),
    *family("metrics.conditional_inconsistency", "dist", [(np.ones((3, 3, 3)) / 27, V), (-JOINT, V)]),
    *family("metrics.markov_conditionals", "source", [(None, T), ("markov", T)]),
    *family("metrics.markov_conditionals", "seqs", [(IDS + 5, V), (IDS.float(), T), (IDS[0], V)]),
    *family("metrics.token_losses", "logits", [(torch.randn(2, 4, 5), V), ([[0.0]], T), (torch.ones(2, 3, 5, dtype=torch.long), T)]),
    *family("metrics.token_losses", "targets", [(torch.full((2, 3), 5), V), (torch.full((2, 3), -1), V), (torch.zeros(2, 3), T), (None, T)]),
    *family("metrics.kl_to_source", "logits", [(torch.randn(2, 4), V), (None, T)]),
    *family("metrics.kl_to_source", "true_probs", [(torch.randn(2, 4), V), (torch.full((2, 3), -1.0), V), ([[1.0]], T)]),
    *family("metrics.NGramModel", "vocab_size", [(1, V), (0, V), (1.5, V), (True, V), ("3", V)]),
    *family("metrics.NGramModel", "k", [(-1, V), (1.5, V), (None, V)]),
    *family("metrics.NGramModel", "alpha", [(0.0, V), (-1.0, V), (NAN, V), (INF, V), ("1", V)]),
    *family("metrics.NGramModel", "reverse", [(1, T), ("yes", T)]),
    *one("metrics.NGramModel", "k", 30, V),
    *family("metrics.NGramModel.fit", "seqs", [(IDS + 5, V), (IDS - 5, V), ("abc", V), (None, V), (IDS.float(), V), (IDS[:, :1], V)]),
    *family("metrics.NGramModel.losses", "seqs", [(IDS + 5, V), (None, V)]),
    *family("metrics.NGramModel.losses", "start", [(-1, V), (1.5, V), (9, V)]),
    *family("metrics.NGramModel.loss", "seqs", [(IDS + 5, V)]),
    *family("metrics.score_on_source", "model", [(None, T), ("m", T)]),
    *family("metrics.score_on_source", "source", [(None, T), (3, T)]),
    *family("metrics.score_on_source", "seqs", [(IDS + 5, V), (IDS[:, :1], V), (IDS.float(), T)]),
    # ---- objectives
    *family("objectives.SpecialTokens", "n_text", POSITIVE_INT[:5]),
    *family("objectives.SpecialTokens", "n_sentinels", [(-1, V), (1.5, T), (True, T)]),
    *family("objectives.causal_lm_batch", "seqs", SEQ_TENSOR),
    *family("objectives.causal_lm_batch", "label_fraction", [(0.0, V), (1.5, V), (NAN, V), ("1", T)]),
    *family("objectives.causal_lm_batch", "generator", [(3, T)]),
    *family("objectives.masked_lm_batch", "seqs", [*SEQ_TENSOR, (SEQS + 10, V)]),
    *family("objectives.masked_lm_batch", "special", [(None, T), (10, T)]),
    *family("objectives.masked_lm_batch", "rate", [(0.0, V), (1.5, V), (NAN, V), ("0.1", T)]),
    *family("objectives.masked_lm_batch", "replace", [((0.5, 0.5, 0.5), V), ((1.0, 0.0), V), ((1.5, -0.5, 0.0), V), (0.8, V)]),
    *family("objectives.masked_lm_batch", "selection", [("random", V), (None, V)]),
    *family("objectives.span_counts", "length", POSITIVE_INT[:6]),
    *family("objectives.span_counts", "noise_density", [(0.0, V), (1.0, V), (NAN, V), ("0.1", T)]),
    *family("objectives.span_counts", "mean_span_length", [(0.0, V), (-1.0, V), (NAN, V), (INF, V), ("3", V)]),
    *family("objectives.random_spans_noise_mask", "length", POSITIVE_INT[:4]),
    *family("objectives.random_spans_noise_mask", "noise_density", [(1.5, V), (NAN, V)]),
    *family("objectives.random_spans_noise_mask", "random_roll", [(1, T), ("yes", T)]),
    *family("objectives.random_spans_noise_mask", "generator", [(3, T)]),
    *family("objectives.span_corruption_batch", "seqs", [*SEQ_TENSOR, (SEQS + 10, V)]),
    *family("objectives.span_corruption_batch", "special", [(None, T)]),
    *family("objectives.span_corruption_batch", "noise_density", [(0.0, V), (NAN, V)]),
    *family("objectives.span_corruption_batch", "mean_span_length", [(0.0, V)]),
    *family("objectives.span_corruption_reconstruct", "special", [(None, T), (4, T)]),
    *family("objectives.span_corruption_reconstruct", "encoder_input_ids", [(None, T), ("abc", T), (torch.zeros(2, 2, dtype=torch.long), V)]),
    *family("objectives.span_corruption_reconstruct", "targets", [(None, T), (torch.zeros(1, 2, 2, dtype=torch.long), V)]),
    *family("objectives.prefix_lm_batch", "seqs", SEQ_TENSOR),
    *family("objectives.prefix_lm_batch", "prefix_len", [(0, V), (8, V), (-1, V), (1.5, T), (True, T)]),
    *family("objectives.prefix_lm_batch", "generator", [("g", T)]),
    *family("objectives.make_batch", "objective", [("mlm", V), (None, V), ("Causal", V)]),
    *family("objectives.make_batch", "seqs", SEQ_TENSOR[:2]),
    *family("objectives.make_batch", "special", [(None, V), (3, T)], "special"),
    *one("objectives.make_batch", "prefix_len", 3, T),
    *family("objectives.text_windows", "ids", [([1, 2], T), (torch.zeros(50), T), (torch.zeros(2, 25, dtype=torch.long), V)]),
    *family("objectives.text_windows", "batch_size", POSITIVE_INT[:5]),
    *family("objectives.text_windows", "seq_len", [*POSITIVE_INT[:5], (60, V)]),
    *family("objectives.text_windows", "seed", [(1.5, T), (None, T)]),
    *family("objectives.objective_batches", "objective", [("mlm", V), (None, V)]),
    *family("objectives.objective_batches", "windows", [(3, T), (None, T)]),
    *family("objectives.objective_batches", "seed", [(1.5, T), ("0", T)]),
    *family("objectives.prefix_lm_loss", "model", [(None, T), ("m", T)]),
    *family("objectives.prefix_lm_loss", "batch", [(None, T), ((IDS, IDS), T), (_SPAN, T)]),
    *family("objectives.span_corruption_loss", "model", [(None, T)]),
    *family("objectives.span_corruption_loss", "batch", [(None, T), (_PREFIX, T), ((IDS, IDS), T)]),
    *family("objectives.loss_fn", "objective", [("mlm", V), (None, V), (3, V)]),
    *family("objectives.batch_labels", "batch", [(None, T), ([1], T), (IDS, T)]),
    *family("objectives.signal", "batch", [(None, T), (IDS, T)]),
    *family("objectives.signal", "text_tokens", POSITIVE_INT[:5]),
    *family("objectives.signal", "special", [("special", T), (10, T)]),
    *family("objectives.train_step_flops", "model", [(None, T), ("m", T)]),
    *family("objectives.train_step_flops", "loss", [(3, T), (None, T)]),
    # ---- moe
    *family("moe.MoE", "config", CONFIG[:2]),
    *family("moe.MoE", "n_routed", POSITIVE_INT[:5]),
    *family("moe.MoE", "n_shared", [(-1, V), (1.5, T)]),
    *family("moe.MoE", "top_k", [(0, V), (5, V), (1.5, T), (True, T)]),
    *family("moe.MoE", "d_expert", [(0, V), (-4, V), (2.5, T)]),
    *family("moe.MoE", "bias_update_speed", [(-1.0, V), (NAN, V), (INF, V), ("0.1", T)]),
    *family("moe.MoE", "route_scale", [(0.0, V), (-1.0, V), (NAN, V)]),
    *family("moe.MoE.forward", "x", [(torch.randn(1, 3, 8), V), ([[0.0]], T), (torch.ones(1, 3, 16, dtype=torch.long), T)]),
    *family("moe.MoE.reset_parameters", "std", [(-1.0, V), (NAN, V), ("0.02", T)]),
    *family("moe.MoE.reset_parameters", "residual_std", [(-1.0, V), (INF, V)]),
    *family("moe.route_reference", "top_k", [(0, V), (3, V), (1.5, T)]),
    *family("moe.route_reference", "u", [(torch.randn(3, 5), V), (None, T)], "u|centroids"),
    *family("moe.route_reference", "centroids", [(torch.randn(3, 4), V), (None, T)], "centroids|bias"),
    *family("moe.route_reference", "bias", [(torch.zeros(3), V)]),
    *family("moe.route_reference", "routed", [([torch.tanh], V), (None, T)]),
    *family("moe.route_reference", "shared", [(None, T), ([3], T)]),
    *family("moe.route_reference", "route_scale", [(NAN, V), (0.0, V)]),
    *family("moe.moe_layers", "model", [(None, T), ("m", T)]),
    *family("moe.moe_decoder", "config", CONFIG[:2]),
    *family("moe.moe_decoder", "n_routed", [(0, V), (1.5, T)]),
    *family("moe.moe_decoder", "top_k", [(9, V), (True, T)]),
    # ---- timing
    *family("timing.interleaved_times", "fns", [({}, V), ([lambda: None], T), ({"a": 3}, T), (None, T)]),
    *family("timing.interleaved_times", "repeats", POSITIVE_INT[:5]),
    *family("timing.interleaved_times", "warmup", [(-1, V), (1.5, T), (True, T)]),
    *family("timing.interleaved_times", "threads", [(0, V), (1.5, T), ("2", T)]),
    *family("timing.interleaved_times", "clock", [("gpu", V), (None, V)]),
    *family("timing.interleaved_medians", "fns", [({}, V)]),
    *family("timing.interleaved_medians", "repeats", [(0, V)]),
    *family("timing.paired_ratio", "numerator", [([], V), ([1.0], V), ([NAN, 1.0], V), ("ab", T), (None, T)]),
    *family("timing.paired_ratio", "denominator", [([0.0, 1.0], V), ([-1.0, 1.0], V), ([INF, 1.0], V), ([1.0, 1.0, 1.0], V)]),
    # ---- speculative
    *family("speculative.TorchRandom", "generator", [(3, T), ("seed", T)]),
    *family("speculative.ScriptedRandom", "script", [(None, T), (3, T), ([1.5], T), ([-1], V)]),
    *family("speculative.acceptance_probability", "token", [(-1, V), (2, V), (1.5, T)]),
    *family("speculative.acceptance_probability", "p", [(torch.tensor([0.5, 0.25, 0.25]), V), ([0.5, 0.5], T)]),
    *family("speculative.acceptance_probability", "q", [(torch.tensor([1, 0]), T)]),
    *family("speculative.residual_distribution", "q", [(torch.tensor([1.0]), V), (None, T)]),
    *family("speculative.verify", "rule", [("greedy", V), (None, V)]),
    *family("speculative.verify", "drafts", [([5], V), ([1, 1, 1], V), (None, T)], "drafts|p"),
    *family("speculative.verify", "p", [(torch.full((2, 4), 0.25), V), (None, T)], "p|q"),
    *family("speculative.verify", "q", [([[0.5, 0.5, 0.0]], T), (torch.full((2, 3), 1 / 3), V)]),
    *family("speculative.ModelDrafter", "max_len", POSITIVE_INT[:4]),
    *family("speculative.ModelDrafter", "model", [(None, T), ("m", T)]),
    *family("speculative.NgramDrafter", "vocab_size", POSITIVE_INT[:4]),
    *family("speculative.NgramDrafter", "max_n", [(0, V), (1.5, T)]),
    *family("speculative.NgramDrafter", "min_n", [(0, V), (4, V), (True, T)]),
    *family("speculative.layer_draft", "model", [(None, T), ("m", T)]),
    *family("speculative.layer_draft", "layers", [(0, V), (3, V), (-1, V), ([], V), ([0, 0], V), ([5], V), (1.5, T)]),
    *family("speculative.expected_tokens_per_call", "alpha", [(-0.1, V), (1.5, V), (NAN, V), ("0.5", T)]),
    *family("speculative.expected_tokens_per_call", "gamma", [(-1, V), (1.5, T), (True, T)]),
    *family("speculative.expected_speedup", "c", [(-1.0, V), (NAN, V), (INF, V), ("0.1", T)]),
    *family("speculative.expected_speedup", "alpha", [(2.0, V)]),
    *family("speculative.expected_speedup", "gamma", [(-2, V)]),
    *family("speculative.expected_speedup", "v", [(0.0, V), (NAN, V), (INF, V), ("1", T)]),
    *family("speculative.step_costs", "gamma", [(0, V), (-1, V), (1.5, V)]),
    *family("speculative.step_costs", "repeats", [(0, V), (1.5, T)]),
    *family("speculative.step_costs", "context_ids", [(IDS.float(), T), (IDS[:, :0], V), (None, T)]),
    *family("speculative.step_costs", "clock", [("gpu", V)]),
    *family("speculative.enumerate_distribution", "sample", [(None, T), (3, T)]),
    *family("speculative.enumerate_distribution", "max_runs", [(0, V), (-1, V), (1.5, T)]),
    *family("speculative.sequence_distribution", "n_tokens", POSITIVE_INT[:4]),
    *family("speculative.sequence_distribution", "temperature", [(0.0, V), (-1.0, V), (NAN, V), (INF, V)]),
    *family("speculative.sequence_distribution", "input_ids", [(IDS.float(), T), (None, T), (IDS[0], V)]),
    *family("speculative.dict_total_variation", "a", [(None, T), ([1.0], T), ({(0,): -1.0}, V)]),
    *family("speculative.dict_total_variation", "b", [({(1,): NAN}, V), ({(1,): "1"}, V)]),
    *family("speculative.sequence_distribution", "model", [(None, T), ("m", T)]),
    # ---- kernels (helper K's) and the weight layout (helper C's)
    *family("triton_kernel.block_size", "tile", [(0, V), (-1, V)]),
    *family("triton_kernel.block_size", "head_dim", [(0, V), (512, V)]),
    *family("weight_layout.fused_weight", "names", [(("gate_proj", "nope"), V), ((), V), (None, T), ("gate_proj", T), (("gate_proj", "down_proj"), V)]),
    *family("weight_layout.fused_weight", "owner", [(None, T), ("mlp", T)]),
]  # fmt: skip

# ---------------------------------------------------------------------------------------------------------
# Experiments (anatomy.experiments.*): keyed "<module>.<name>". Calls that train, time or need a pretrained
# model or tokenizer are skipped by test_each_valid_call_succeeds; their rows are refused before any of that.
# ---------------------------------------------------------------------------------------------------------

A44 = torch.randn(4, 4, generator=_G)
CHAT_TOKENIZER = type("ChatTokenizer", (), {"apply_chat_template": None})()  # passes the type check only
POS_IDS = torch.arange(12)[None] % 20
MAPS = torch.softmax(torch.randn(1, 2, 4, 4, generator=_G), -1)
SOURCES = [capacity.teacher_source(3, 1)]
_CURVES = None


def curves():
    global _CURVES
    if _CURVES is None:
        _CURVES = rank.collapse_curves(
            ("attention",), ("causal",), depth=2, n=4, d_model=8, n_heads=2, seeds=(0,)
        )
    return _CURVES


def _routings():
    return experts.routing_of(tiny_moe(), IDS)


CALLS.update({
    # capacity
    "capacity.table_params": _call(capacity.table_params, lambda: dict(vocab_size=3, order=2)),
    "capacity.student_params": _call(capacity.student_params, lambda: dict(vocab_size=3, order=2, width=4)),
    "capacity.all_contexts": _call(capacity.all_contexts, lambda: dict(vocab_size=3, order=2)),
    "capacity.MLPStudents": _call(capacity.MLPStudents, lambda: dict(vocab_size=3, order=2, widths=[2, 4])),
    "capacity.teacher_source": _call(capacity.teacher_source, lambda: dict(vocab_size=3, order=2)),
    "capacity.fit_population": _call(capacity.fit_population, lambda: dict(sources=SOURCES, widths=[2], steps=2, record_every=1)),
    "capacity.decoder_config": _call(capacity.decoder_config, lambda: dict(d_model=16, n_layers=1, vocab_size=20, seq_len=8, head_dim=8)),
    "capacity.scaling_run": _call(capacity.scaling_run, lambda: dict(
        configs=[capacity.decoder_config(16, 1, 20, 8, head_dim=8)], train_ids=STREAM, val_ids=STREAM, tokens=64, batch_size=2, seq_len=8, n_checkpoints=1, val_batches=1)),
    "scaling_laws.fit_power_law": _call(scaling_laws.fit_power_law, lambda: dict(n=[1e3, 1e4, 1e5], loss=[3.0, 2.5, 2.1])),
    "scaling_laws.fit_power_law_floor": _call(scaling_laws.fit_power_law_floor, lambda: dict(n=[1e3, 1e4, 1e5, 1e6], loss=[3.0, 2.5, 2.2, 2.05], grid=50)),
    "scaling_laws.chinchilla_loss": _call(scaling_laws.chinchilla_loss, lambda: dict(n_params=1e9, n_tokens=2e10)),
    "scaling_laws.chinchilla_exponents": _call(scaling_laws.chinchilla_exponents, lambda: dict()),
    "scaling_laws.compute_optimal": _call(scaling_laws.compute_optimal, lambda: dict(flops=1e21)),
    "scaling_laws.rule_of_thumb": _call(scaling_laws.rule_of_thumb, lambda: dict(flops=1e21)),
    "capacity.width_scaled_lr": _call(capacity.width_scaled_lr, lambda: dict(d_model=64)),
    # causal_kernel
    "causal_kernel.sdpa_cpu_tiles": _call(causal_kernel.sdpa_cpu_tiles, lambda: dict(n_queries=64)),
    "causal_kernel.causal_saving": _call(causal_kernel.causal_saving, lambda: dict(config=CFG, n_ctx=16)),
    "causal_kernel.attention_traffic": _call(causal_kernel.attention_traffic, lambda: dict(mask="causal", n_ctx=16, head_dim=8, tile=4)),
    "causal_kernel.time_attention": _call(causal_kernel.time_attention, lambda: dict(
        sizes=[8], variants={"a": dict(mask="causal")}, heads=2, kv_heads=2, head_dim=8, tile=4, repeats=1)),
    "causal_kernel.time_forward": _call(causal_kernel.time_forward, lambda: dict(config=CFG, sizes=[8], repeats=1)),
    # dual_form, entropy
    "dual_form.dual_form": _call(dual_form.dual_form, lambda: dict(n_examples=4, d_in=2, d_out=1, n_query=2, softmax_scales=(0.1,))),
    "entropy.text_surprisal": _call(entropy.text_surprisal, lambda: dict(model=tiny(), ids=IDS[0])),
    # equal_compute
    "equal_compute.build_model": _call(equal_compute.build_model, lambda: dict(objective="causal", config=CFG)),
    "equal_compute.predict_token": _call(equal_compute.predict_token, lambda: dict(
        model=tiny(), objective="causal", left=SEQS[:, :4], right=None, special=SPECIAL)),
    "equal_compute.token_cross_entropy": _call(equal_compute.token_cross_entropy, lambda: dict(
        model=tiny(), objective="causal", windows=SEQS, position=4, special=SPECIAL)),
    "equal_compute.compare_objectives": _call(equal_compute.compare_objectives, lambda: dict(
        train_ids=STREAM, eval_windows=SEQS, special=SPECIAL, config=CFG, steps=1, batch_size=2, seq_len=8)),
    "equal_compute.masking_tradeoff": _call(equal_compute.masking_tradeoff, lambda: dict(source=MARKOV, rates=[0.15], n=2, seq_len=8)),
    # experts
    "experts.matched_dense_config": _call(experts.matched_dense_config, lambda: dict(config=CFG, moe=tiny_moe())),
    "experts.active_param_counts": _call(experts.active_param_counts, lambda: dict(model=tiny_moe())),
    "experts.load_imbalance": _call(experts.load_imbalance, lambda: dict(load=torch.tensor([3, 1, 2, 2]))),
    "experts.effective_experts": _call(experts.effective_experts, lambda: dict(load=torch.tensor([3, 1, 2, 2]))),
    "experts.routing_of": _call(experts.routing_of, lambda: dict(model=tiny_moe(), input_ids=IDS)),
    "experts.expert_token_table": _call(experts.expert_token_table, lambda: dict(routings=_routings(), input_ids=IDS, vocab_size=20)),
    "experts.train_runs": _call(experts.train_runs, lambda: dict(
        models={"moe": tiny_moe()}, train_ids=STREAM, val_ids=STREAM, steps=1, batch_size=2, seq_len=4, n_val_batches=1)),
    "experts.deepseek_v3_params": _call(experts.deepseek_v3_params, lambda: dict()),
    # few_shot
    "few_shot.few_shot_accuracy": _call(few_shot.few_shot_accuracy, lambda: dict(
        model=tiny(), tokenizer=CHARS, pairs=[("h", "e"), ("l", "o"), ("w", "r")], ks=(0, 1), n_queries=2, n_prompts=1)),
    # icl
    "icl.AttentionOnly": _call(icl.AttentionOnly, lambda: dict(config=CFG)),
    "icl.repeated_sequences": _call(icl.repeated_sequences, lambda: dict(n=2, length=4, vocab_size=10)),
    "icl.induction_batches": _call(icl.induction_batches, lambda: dict(batch_size=2, lengths=(4, 8), vocab_size=10)),
    "icl.copy_losses": _call(icl.copy_losses, lambda: dict(model=tiny(), seqs=icl.repeated_sequences(2, 4, 10))),
    "icl.head_scores": _call(icl.head_scores, lambda: dict(attentions=[MAPS[0, :, None].expand(2, 1, 4, 4)], tokens=torch.tensor([[1, 2, 1, 2], [3, 4, 3, 4]]))),
    "icl.induction_experiment": _call(icl.induction_experiment, lambda: dict(
        length=4, train_lengths=(4, 4), vocab_size=20, config=CFG, steps=1, batch_size=2, eval_every=1, n_eval=2)),
    "icl.masked_induction_batches": _call(icl.masked_induction_batches, lambda: dict(batch_size=2, lengths=(4, 8), vocab_size=10)),
    "icl.fill_losses": _call(icl.fill_losses, lambda: dict(model=tiny(), seqs=icl.repeated_sequences(2, 4, 10), mask_id=19)),
    "icl.masked_induction_experiment": _call(icl.masked_induction_experiment, lambda: dict(
        length=4, train_lengths=(4, 4), vocab_size=10, config=CFG, steps=1, batch_size=2, eval_every=1, n_eval=2, curve_eval=2)),
    # inference_economics
    "inference_economics.roofline": _call(inference_economics.roofline, lambda: dict(intensity=1.0, peak_flops=1e12, bandwidth=1e11)),
    "inference_economics.ridge_point": _call(inference_economics.ridge_point, lambda: dict(peak_flops=1e12, bandwidth=1e11)),
    "inference_economics.seed002_costs": _call(inference_economics.seed002_costs, lambda: dict(params_billion=7.0, seq_len=512, gen_len=128)),
    "inference_economics.latency_estimate": _call(inference_economics.latency_estimate, lambda: dict(config=CFG, seq_len=16, gen_len=4)),
    "inference_economics.measure_matmul_flops": _call(inference_economics.measure_matmul_flops, lambda: dict(n=16, repeats=1)),
    "inference_economics.measure_bandwidth": _call(inference_economics.measure_bandwidth, lambda: dict(nbytes=2**20, repeats=1)),
    "inference_economics.batch_decode_sweep": _call(inference_economics.batch_decode_sweep, lambda: dict(model=tiny(), context_ids=IDS, batches=(1,), repeats=1)),
    "encoder_niche.sentence_embeddings": _call(encoder_niche.sentence_embeddings, lambda: dict(encoder=tiny("bert"), tokenizer=None, sentences=["a b"])),
    "encoder_niche.nearest_prototype": _call(encoder_niche.nearest_prototype, lambda: dict(embeddings=torch.randn(3, 4), prototypes=torch.randn(2, 4))),
    "encoder_niche.label_prompts": _call(encoder_niche.label_prompts, lambda: dict(tokenizer=None, sentences=["a"], labels=["x", "y"])),
    "encoder_niche.prompt_classify": _call(encoder_niche.prompt_classify, lambda: dict(decoder=tiny(), tokenizer=None, sentences=["a"], labels=["x", "y"])),
    "encoder_niche.fewshot_classify": _call(encoder_niche.fewshot_classify, lambda: dict(
        decoder=tiny(), tokenizer=None, sentences=["a"], labels=["x", "y"], examples=["b"], example_labels=[0])),
    "encoder_niche.compare_classifiers": _call(encoder_niche.compare_classifiers, lambda: dict(
        encoder=tiny("bert"), encoder_tokenizer=None, decoder=tiny(), decoder_tokenizer=None, encoder_repeats=1)),
    "inference_economics_plots.decode_bytes_table": _call(inference_economics_plots.decode_bytes_table, lambda: dict(names=["SmolLM2-135M"], context=64, prompt=16, batch=2)),
    # kv_cache
    "kv_cache.seed002_kv_bytes_per_token": _call(kv_cache.seed002_kv_bytes_per_token, lambda: dict(n_layers=2, d_model=16)),
    "kv_cache.transformers_kv_cache": _call(kv_cache.transformers_kv_cache, lambda: dict(config=CFG, input_ids=IDS)),
    "kv_cache.kv_table": _call(kv_cache.kv_table, lambda: dict(names=("SmolLM2-135M",), n_tokens=16)),
    "kv_cache.chunk_sweep": _call(kv_cache.chunk_sweep, lambda: dict(model=tiny(), context_ids=IDS, new_ids=IDS, chunks=(1, 4), repeats=1)),
    "kv_cache.chat_segments": _call(kv_cache.chat_segments, lambda: dict(tokenizer=CHAT_TOKENIZER)),
    "kv_cache.with_mask": _call(kv_cache.with_mask, lambda: dict(model=tiny(), mask="bidirectional")),
    "kv_cache.encoder_decoder_like": _call(kv_cache.encoder_decoder_like, lambda: dict(model=tiny())),
    "kv_cache.dialogue_ttft": _call(kv_cache.dialogue_ttft, lambda: dict(segments=[{"prompt": IDS, "reply": IDS}], decoder=tiny())),
    "kv_cache.turn_ttft": _call(kv_cache.turn_ttft, lambda: dict(decoder=tiny(), segments=[{"prompt": IDS, "reply": IDS}] * 2, turn=1, repeats=1)),
    "kv_cache.stale_cache_error": _call(kv_cache.stale_cache_error, lambda: dict(model=tiny(), ids=POS_IDS, history_len=4, new_len=4, reply_len=4)),
    "kv_cache.dialogue_flops": _call(kv_cache.dialogue_flops, lambda: dict(config=CFG, history=[4, 8], new=[2, 2])),
    # positions
    "positions.hidden_states": _call(positions.hidden_states, lambda: dict(model=tiny(), input_ids=IDS)),
    "positions.permutation_gap": _call(positions.permutation_gap, lambda: dict(model=tiny(), input_ids=IDS, perm=torch.tensor([1, 0, 2, 3]))),
    "positions.first_attention_output": _call(positions.first_attention_output, lambda: dict(model=tiny("learned"), input_ids=IDS)),
    "positions.probe_features": _call(positions.probe_features, lambda: dict(model=tiny(), input_ids=POS_IDS)),
    "positions.ridge_r2": _call(positions.ridge_r2, lambda: dict(features=torch.randn(8, 3, 2), targets=torch.randn(3), n_train=4)),
    "positions.position_probe": _call(positions.position_probe, lambda: dict(model=tiny(), input_ids=POS_IDS.expand(2, 12), n_train=1)),
    "positions.masked_batch": _call(positions.masked_batch, lambda: dict(seqs=IDS, mask_id=19, rate=0.5)),
    "positions.markov_masked_posterior": _call(positions.markov_masked_posterior, lambda: dict(
        source=MARKOV, x=IDS % 3, visible=torch.tensor([[True, False, True, True]]))),
    "positions.order_experiment": _call(positions.order_experiment, lambda: dict(
        source=MARKOV, runs=(("causal", "none"),), steps=1, batch_size=2, seq_len=8, d_model=16, n_layers=1, n_heads=2)),
    "positions.context_shuffle_penalty": _call(positions.context_shuffle_penalty, lambda: dict(run=None, source=MARKOV)),
    "positions.offset_attention": _call(positions.offset_attention, lambda: dict(model=tiny(), input_ids=POS_IDS)),
    # rank
    "rank.singular_values": _call(rank.singular_values, lambda: dict(A=A44)),
    "rank.numerical_rank": _call(rank.numerical_rank, lambda: dict(A=A44)),
    "rank.effective_rank": _call(rank.effective_rank, lambda: dict(A=A44)),
    "rank.smallest_singular_value": _call(rank.smallest_singular_value, lambda: dict(A=A44)),
    "rank.log10_det": _call(rank.log10_det, lambda: dict(A=A44)),
    "rank.matrix_stats": _call(rank.matrix_stats, lambda: dict(A=A44)),
    "rank.random_attention": _call(rank.random_attention, lambda: dict(n=4, d=2, logit_std=1.0)),
    "rank.single_matrix_sweep": _call(rank.single_matrix_sweep, lambda: dict(n=4, d=2, logit_stds=(1.0,), seeds=(0,))),
    "rank.triangular_condition": _call(rank.triangular_condition, lambda: dict(ns=(4,), seeds=(0,))),
    "rank.residual_to_rank_one": _call(rank.residual_to_rank_one, lambda: dict(X=torch.randn(4, 3))),
    "rank.attention_product": _call(rank.attention_product, lambda: dict(n=4, d=2, depth=2)),
    "rank.collapse_stack": _call(rank.collapse_stack, lambda: dict(variant="attention", mask="causal", depth=2, d_model=8, n_heads=2)),
    "rank.collapse_states": _call(rank.collapse_states, lambda: dict(layers=rank.collapse_stack("attention", "causal", 2, 8, 2), X=torch.randn(1, 4, 8))),
    "rank.collapse_curves": _call(rank.collapse_curves, lambda: dict(variants=("attention",), masks=("causal",), depth=2, n=4, d_model=8, n_heads=2, seeds=(0,))),
    "rank.attention_maps": _call(rank.attention_maps, lambda: dict(model=tiny(), input_ids=IDS)),
    "rank.head_stats": _call(rank.head_stats, lambda: dict(maps=MAPS)),
    "rank.layer_residuals": _call(rank.layer_residuals, lambda: dict(hidden_states=[torch.randn(1, 4, 8), torch.randn(1, 4, 8)])),
    "rank.inspect_model": _call(rank.inspect_model, lambda: dict(model=tiny(), input_ids=IDS)),
    "rank_plots.collapse_at": _call(rank_plots.collapse_at, lambda: dict(curves=curves(), variant="attention", mask="causal", depth=2)),
    # record, record_runs
    "record.short_cite": _call(record.short_cite, lambda: dict(keys=("vaswani2017attention",))),
    "record.count_params": _call(record.count_params, lambda: dict(config=CFG, family="decoder")),
    "record.cross_attention_share": _call(record.cross_attention_share, lambda: dict(config=CFG, n_source=8, n_target=4)),
    "record.cache_bytes_by_family": _call(record.cache_bytes_by_family, lambda: dict(n_source=8, n_target=4, n_heads=2, kv_heads=(2, 1), d_model=16, n_layers=1)),
    "record_runs.exposure_bias": _call(record_runs.exposure_bias, lambda: dict(steps=4, n_eval=4, length=12, prompt=4, d_model=16)),
    "record_runs.budget_runs": _call(record_runs.budget_runs, lambda: dict(steps=1, batch=2, n_source=4, n_target=4, d_model=16, layers=1)),
    "record_runs.retrieval_scores": _call(record_runs.retrieval_scores, lambda: dict(query_emb=torch.randn(3, 4), doc_emb=torch.randn(3, 4), gold=[0, 1, 2])),
    "record_runs.decoder_embeddings": _call(record_runs.decoder_embeddings, lambda: dict(model=tiny(), tokenizer=None, sentences=["a"])),
    "record_runs.embedding_comparison": _call(record_runs.embedding_comparison, lambda: dict(
        decoder=tiny(), decoder_tokenizer=None, encoder=tiny("bert"), encoder_tokenizer=None)),
    # signal_density
    "signal_density.bayes_loss": _call(signal_density.bayes_loss, lambda: dict(objective="causal", source=MARKOV, batch=(IDS[:, :-1] % 3, IDS[:, 1:] % 3))),
    "signal_density.label_density_experiment": _call(signal_density.label_density_experiment, lambda: dict(
        source=MARKOV, fractions=(1.0,), steps=1, batch_size=2, seq_len=8, eval_every=1, n_eval=2, warmup=0)),
    "signal_density.show_example": _call(signal_density.show_example, lambda: dict(
        objective="masked", batch=objectives.masked_lm_batch(SEQS, SPECIAL), special=SPECIAL, decode=lambda ids: " ".join(map(str, ids)))),
})  # fmt: skip

# Calls that train, time, or need a pretrained model or a real tokenizer: their rows are refused first.
SLOW_OR_EXTERNAL = {
    "capacity.scaling_run", "capacity.fit_population", "causal_kernel.time_attention", "causal_kernel.time_forward",
    "equal_compute.compare_objectives", "equal_compute.predict_token", "equal_compute.token_cross_entropy",
    "experts.train_runs", "few_shot.few_shot_accuracy", "icl.induction_experiment", "icl.masked_induction_experiment",
    "encoder_niche.sentence_embeddings", "encoder_niche.label_prompts", "encoder_niche.prompt_classify",
    "encoder_niche.fewshot_classify", "encoder_niche.compare_classifiers", "inference_economics.batch_decode_sweep",
    "inference_economics.measure_matmul_flops", "inference_economics.measure_bandwidth",
    "kv_cache.transformers_kv_cache", "kv_cache.chat_segments", "kv_cache.dialogue_ttft", "kv_cache.turn_ttft",
    "kv_cache.chunk_sweep", "positions.order_experiment", "record_runs.exposure_bias", "record_runs.budget_runs",
    "record_runs.decoder_embeddings", "record_runs.embedding_comparison", "signal_density.label_density_experiment",
    "signal_density.bayes_loss", "signal_density.show_example", "positions.context_shuffle_penalty", "speculative.step_costs", "speculative.verify",
    "speculative.enumerate_distribution", "speculative.sequence_distribution", "positions.position_probe",
}  # fmt: skip

MODEL = [(None, T), ("model", T)]

ROWS += [
    # ---- capacity
    *family("capacity.table_params", "vocab_size", [(0, V), (1.5, T), (True, T)]),
    *family("capacity.table_params", "order", [(-1, V), ("2", T)]),
    *family("capacity.student_params", "width", [(0, V), (1.5, T)]),
    *family("capacity.student_params", "embed_dim", [(0, V)]),
    *family("capacity.all_contexts", "vocab_size", [(0, V), (None, T)]),
    *family("capacity.all_contexts", "order", [(-1, V), (1.5, T)]),
    *family("capacity.MLPStudents", "widths", [([], T), ([0], V), ([1.5], T), (3, T)]),
    *family("capacity.MLPStudents", "vocab_size", [(1, V)]),
    *family("capacity.teacher_source", "scale", [(NAN, V), (INF, V), (-1.0, V)]),
    *family("capacity.teacher_source", "rate", [(-1.0, V), (NAN, V)]),
    *family("capacity.teacher_source", "width", [(0, V)]),
    *family("capacity.fit_population", "steps", [(0, V), (-1, V), (1.5, T)]),
    *family("capacity.fit_population", "lr", [(0.0, V), (NAN, V), (INF, V)]),
    *family("capacity.fit_population", "widths", [([], T), ([0], V)]),
    *family("capacity.fit_population", "sources", [([], V), (None, V)]),
    *family("capacity.fit_population", "train_fraction", [(0.0, V), (1.5, V), (NAN, V)]),
    *family("capacity.fit_population", "record_every", [(0, V)]),
    *family("capacity.decoder_config", "d_model", [(0, V), (1.5, T)]),
    *family("capacity.decoder_config", "head_dim", [(0, V), (5, V)]),
    *family("capacity.decoder_config", "n_layers", [(0, V)]),
    *family("capacity.scaling_run", "tokens", [(0, V), (-1, V), (1.5, T)]),
    *family("capacity.scaling_run", "configs", [([], V), (None, V)]),
    *family("capacity.scaling_run", "batch_size", [(0, V)]),
    *family("capacity.scaling_run", "lr", [(0.0, V), (NAN, V), ([0.01, 0.01], V)]),
    *family("capacity.scaling_run", "train_ids", [(torch.zeros(50), T), (None, T)]),
    *family("capacity.width_scaled_lr", "d_model", [(0, V), (1.5, T)]),
    *family("capacity.width_scaled_lr", "base", [(0.0, V), (NAN, V)]),
    *family("capacity.width_scaled_lr", "cap", [(-1.0, V)]),
    *family("capacity.width_scaled_lr", "base_width", [(0, V)]),
    # ---- scaling_laws
    *family("scaling_laws.fit_power_law", "n", [([1e3, 1e4], V), ([-1.0, 1e4, 1e5], V), ([NAN, 1e4, 1e5], V), (None, V)]),
    *family("scaling_laws.fit_power_law", "loss", [([3.0, NAN, 2.0], V), ([3.0, -1.0, 2.0], V)]),
    *family("scaling_laws.fit_power_law_floor", "grid", [(0, V), (1.5, T)]),
    *family("scaling_laws.fit_power_law_floor", "n", [([1e3], V)]),
    *family("scaling_laws.chinchilla_loss", "n_params", [(-1.0, V), (0.0, V), (NAN, V), ("1", T)]),
    *family("scaling_laws.chinchilla_loss", "n_tokens", [(-1.0, V), (NAN, V)]),
    *family("scaling_laws.chinchilla_loss", "constants", [("x", T), ({"A": 1.0}, V)]),
    *family("scaling_laws.chinchilla_exponents", "constants", [("x", T), ({"alpha": 0.3}, V)]),
    *family("scaling_laws.compute_optimal", "flops", [(0.0, V), (-1.0, V), (NAN, V), (INF, V), ("1e21", V)]),
    *family("scaling_laws.rule_of_thumb", "flops", [(-1.0, V), (NAN, V)]),
    *family("scaling_laws.rule_of_thumb", "tokens_per_param", [(0.0, V), (NAN, V)]),
    # ---- causal_kernel
    *family("causal_kernel.sdpa_cpu_tiles", "n_queries", [(0, V), (-1, V), (1.5, T), (True, T)]),
    *family("causal_kernel.causal_saving", "config", CONFIG[:2]),
    *family("causal_kernel.causal_saving", "n_ctx", [(0, V), (1.5, T)]),
    *family("causal_kernel.causal_saving", "counting", [("exact", V)]),
    *family("causal_kernel.causal_saving", "lm_head", [(1, T)]),
    *family("causal_kernel.attention_traffic", "mask", MASK[:3]),
    *family("causal_kernel.attention_traffic", "n_ctx", [(0, V), (1.5, T)]),
    *family("causal_kernel.attention_traffic", "head_dim", [(0, V), (-8, V)]),
    *family("causal_kernel.attention_traffic", "itemsize", [(0, V), (1.5, T)]),
    *family("causal_kernel.attention_traffic", "n_heads", [(0, V)]),
    *family("causal_kernel.attention_traffic", "tile", [(0, V), (1.5, T)]),
    *family("causal_kernel.time_attention", "sizes", [([], V), ([0], V), (None, T)], "sizes|size"),
    *family("causal_kernel.time_attention", "repeats", [(0, V), (1.5, T)]),
    *family("causal_kernel.time_attention", "clock", [("gpu", V)]),
    *family("causal_kernel.time_attention", "heads", [(0, V), (3, V)]),
    *family("causal_kernel.time_attention", "variants", [({}, V), (None, V)]),
    *family("causal_kernel.time_forward", "sizes", [([], V), ([0], V)], "sizes|size"),
    *family("causal_kernel.time_forward", "masks", [(("sliding",), V)]),
    *family("causal_kernel.time_forward", "repeats", [(0, V)]),
    *family("causal_kernel.time_forward", "config", CONFIG[:1]),
    # ---- dual_form, entropy
    *family("dual_form.dual_form", "n_examples", [(0, V), (1.5, T)]),
    *family("dual_form.dual_form", "d_in", [(0, V)]),
    *family("dual_form.dual_form", "lr", [(NAN, V), (INF, V)]),
    *family("dual_form.dual_form", "softmax_scales", [((), V), ((0.0,), V), ((NAN,), V)]),
    *family("entropy.text_surprisal", "model", MODEL),
    *family("entropy.text_surprisal", "ids", [(IDS.float(), T), (IDS[:, :1], V), (torch.zeros(2, 4, dtype=torch.long), V)]),
    # ---- equal_compute
    *family("equal_compute.build_model", "objective", [("mlm", V), (None, V)]),
    *family("equal_compute.build_model", "config", CONFIG[:2]),
    *family("equal_compute.predict_token", "objective", [("mlm", V)]),
    *family("equal_compute.predict_token", "model", MODEL[:1]),
    *family("equal_compute.token_cross_entropy", "objective", [("mlm", V)]),
    *family("equal_compute.token_cross_entropy", "position", [(-1, V), (8, V), (1.5, T)]),
    *family("equal_compute.token_cross_entropy", "right", [(-1, V)]),
    *family("equal_compute.compare_objectives", "steps", [(0, V), (1.5, T)]),
    *family("equal_compute.compare_objectives", "lr", [(0.0, V), (NAN, V)]),
    *family("equal_compute.compare_objectives", "special", [(None, V)]),
    *family("equal_compute.masking_tradeoff", "rates", [([], V), ([1.5], V), ([NAN], V)], "rates|rate"),
    *family("equal_compute.masking_tradeoff", "source", [(None, V)]),
    *family("equal_compute.masking_tradeoff", "n", [(0, V)]),
    # ---- experts
    *family("experts.matched_dense_config", "config", CONFIG[:2]),
    *family("experts.matched_dense_config", "moe", [(None, T), (3, T)]),
    *family("experts.active_param_counts", "model", MODEL),
    *family("experts.load_imbalance", "load", [([1, -2], V), (torch.zeros(0), V), (torch.tensor([-1, 2]), V), (torch.zeros(3), V)]),
    *family("experts.effective_experts", "load", [([NAN, 2.0], V), (torch.zeros(0), V), (torch.tensor([-1, 2]), V)]),
    *family("experts.routing_of", "model", [(None, T), (tiny, T)]),
    *family("experts.routing_of", "input_ids", [(IDS.float(), T), (IDS + 50, V)]),
    *family("experts.expert_token_table", "vocab_size", [(0, V), (3, V), (1.5, T)]),
    *family("experts.expert_token_table", "rank", [(-1, V), (2, V), (1.5, T)]),
    *family("experts.expert_token_table", "routings", [(None, T), ([], V)]),
    *family("experts.train_runs", "steps", [(0, V), (1.5, T)]),
    *family("experts.train_runs", "models", [({}, V), (None, V)]),
    *family("experts.train_runs", "lr", [(NAN, V)]),
    *family("experts.deepseek_v3_params", "config", [("x", T), ({"n_layers": 0}, V)]),
    # ---- few_shot
    *family("few_shot.few_shot_accuracy", "model", MODEL),
    *family("few_shot.few_shot_accuracy", "ks", [([-1], V), ([], V), ([1.5], T)]),
    *family("few_shot.few_shot_accuracy", "n_queries", [(0, V), (1.5, T)]),
    *family("few_shot.few_shot_accuracy", "n_prompts", [(0, V)]),
    *family("few_shot.few_shot_accuracy", "pairs", [([], V), (None, T)]),
    *family("few_shot.few_shot_accuracy", "wrong_labels", [(1, T)]),
    # ---- icl
    *family("icl.AttentionOnly", "config", CONFIG[:2]),
    *family("icl.repeated_sequences", "n", [(0, V), (1.5, T)]),
    *family("icl.repeated_sequences", "length", [(0, V), (-1, V)]),
    *family("icl.repeated_sequences", "vocab_size", [(0, V), (True, T)]),
    *family("icl.repeated_sequences", "low", [(-1, V), (10, V)], "low|vocab_size"),
    *family("icl.induction_batches", "batch_size", [(0, V)]),
    *family("icl.induction_batches", "lengths", [((8, 4), V), ((0, 4), V), (4, T)]),
    *family("icl.induction_batches", "supervise", [("first", V), (None, V)]),
    *family("icl.induction_batches", "vocab_size", [(1, V)]),
    *family("icl.copy_losses", "model", MODEL),
    *family("icl.copy_losses", "seqs", [(torch.zeros(2, 7, dtype=torch.long), V), (IDS.float(), V)]),
    *family("icl.head_scores", "kind", [("induction", V), (None, V)]),
    *family("icl.head_scores", "start", [(-1, V), (1.5, T)]),
    *family("icl.head_scores", "attentions", [([], V), (None, V)]),
    *family("icl.induction_experiment", "steps", [(0, V), (1.5, T)]),
    *family("icl.induction_experiment", "vocab_size", [(1, V)]),
    *family("icl.induction_experiment", "lr", [(NAN, V), (0.0, V)]),
    *family("icl.induction_experiment", "eval_every", [(0, V)]),
    *family("icl.masked_induction_batches", "rate", [(0.0, V), (1.5, V), (NAN, V)]),
    *family("icl.masked_induction_batches", "lengths", [((8, 4), V)]),
    *family("icl.fill_losses", "mask_id", [(-1, V), (1.5, T), (25, V)]),
    *family("icl.fill_losses", "model", MODEL[:1]),
    *family("icl.masked_induction_experiment", "steps", [(0, V)]),
    *family("icl.masked_induction_experiment", "rate", [(0.0, V), (NAN, V)]),
    # ---- inference_economics
    *family("inference_economics.roofline", "peak_flops", [(0.0, V), (-1.0, V), (NAN, V), ("1", T)]),
    *family("inference_economics.roofline", "bandwidth", [(0.0, V), (INF, V)]),
    *family("inference_economics.roofline", "intensity", [(-1.0, V), (NAN, V), ("x", T)]),
    *family("inference_economics.ridge_point", "peak_flops", [(0.0, V), (NAN, V)]),
    *family("inference_economics.ridge_point", "bandwidth", [(-1.0, V), (None, T)]),
    *family("inference_economics.seed002_costs", "params_billion", [(0.0, V), (NAN, V), ("7", T)]),
    *family("inference_economics.seed002_costs", "seq_len", [(0, V), (1.5, T)]),
    *family("inference_economics.seed002_costs", "gen_len", [(-1, V)]),
    *family("inference_economics.latency_estimate", "config", CONFIG[:1]),
    *family("inference_economics.latency_estimate", "seq_len", [(0, V), (1.5, T)]),
    *family("inference_economics.latency_estimate", "gen_len", [(-1, V)]),
    *family("inference_economics.latency_estimate", "hardware", [("A100", T), (None, T)]),
    *family("inference_economics.latency_estimate", "batch", [(0, V)]),
    *family("inference_economics.measure_matmul_flops", "n", [(0, V), (1.5, T)]),
    *family("inference_economics.measure_matmul_flops", "repeats", [(0, V)]),
    *family("inference_economics.measure_matmul_flops", "dtype", [("float32", T), (torch.int64, T)]),
    *family("inference_economics.measure_bandwidth", "nbytes", [(0, V), (1.5, T), (4096, V)]),
    *family("inference_economics.measure_bandwidth", "repeats", [(0, V)]),
    *family("inference_economics.batch_decode_sweep", "batches", [([], V), ([0], V)]),
    *family("inference_economics.batch_decode_sweep", "repeats", [(0, V)]),
    *family("inference_economics.batch_decode_sweep", "model", MODEL[:1]),
    *family("encoder_niche.sentence_embeddings", "encoder", MODEL),
    *family("encoder_niche.sentence_embeddings", "sentences", [([], V), ("a b", V)]),
    *family("encoder_niche.nearest_prototype", "prototypes", [(torch.randn(2, 5), V), ([[1.0]], T), (torch.randn(0, 4), V)]),
    *family("encoder_niche.nearest_prototype", "embeddings", [(torch.randn(4), V), (None, T)]),
    *family("encoder_niche.label_prompts", "style", [("markdown", V), (None, V)]),
    *family("encoder_niche.label_prompts", "labels", [([], V)]),
    *family("encoder_niche.prompt_classify", "decoder", MODEL),
        *family("encoder_niche.fewshot_classify", "decoder", MODEL[:1]),
    *family("encoder_niche.fewshot_classify", "example_labels", [([0, 1], V), ([5], V)]),
    *family("encoder_niche.compare_classifiers", "encoder_repeats", [(0, V), (1.5, T)]),
    *family("encoder_niche.compare_classifiers", "clock", [("gpu", V)]),
    *family("encoder_niche.compare_classifiers", "encoder", MODEL[:1]),
    *family("inference_economics_plots.decode_bytes_table", "names", [(["GPT-5"], V), ([], V)], "names|name"),
    *family("inference_economics_plots.decode_bytes_table", "context", [(0, V), (1.5, T)]),
    *family("inference_economics_plots.decode_bytes_table", "batch", [(0, V)]),
    # ---- kv_cache
    *family("kv_cache.seed002_kv_bytes_per_token", "n_layers", [(0, V), (1.5, T)]),
    *family("kv_cache.seed002_kv_bytes_per_token", "d_model", [(-16, V)]),
    *family("kv_cache.seed002_kv_bytes_per_token", "bytes_per_elem", [(0, V)]),
    *family("kv_cache.transformers_kv_cache", "config", CONFIG[:1]),
    *family("kv_cache.transformers_kv_cache", "n_kv_heads", [(0, V), (3, V)]),
    *family("kv_cache.transformers_kv_cache", "input_ids", [(IDS.float(), T)]),
    *family("kv_cache.kv_table", "names", [(("GPT-5",), V), ((), V)], "names|name"),
    *family("kv_cache.kv_table", "n_tokens", [(0, V), (1.5, T)]),
    *family("kv_cache.kv_table", "bytes_per_elem", [(0, V)]),
    *family("kv_cache.chunk_sweep", "chunks", [([], V), ([0], V)]),
    *family("kv_cache.chunk_sweep", "repeats", [(0, V)]),
    *family("kv_cache.chunk_sweep", "model", MODEL[:1]),
    *family("kv_cache.chat_segments", "tokenizer", [(None, T)]),
    *family("kv_cache.chat_segments", "dialogue", [([], V)]),
    *family("kv_cache.with_mask", "mask", MASK[:3]),
    *family("kv_cache.with_mask", "model", MODEL),
    *family("kv_cache.with_mask", "lm_head", [(1, T)]),
    *family("kv_cache.encoder_decoder_like", "model", MODEL),
    *family("kv_cache.encoder_decoder_like", "seed", [(1.5, T)]),
    *family("kv_cache.dialogue_ttft", "decoder", MODEL),
    *family("kv_cache.dialogue_ttft", "segments", [([], V)]),
    *family("kv_cache.dialogue_ttft", "repeats", [(0, V)]),
    *family("kv_cache.turn_ttft", "turn", [(-1, V), (3, V), (0, V), (1.5, V)]),
    *family("kv_cache.turn_ttft", "repeats", [(0, V)]),
    *family("kv_cache.stale_cache_error", "history_len", [(0, V), (1.5, T)]),
    *family("kv_cache.stale_cache_error", "new_len", [(0, V), (9, V)], "new_len|ids"),
    *family("kv_cache.stale_cache_error", "reply_len", [(0, V)]),
    *family("kv_cache.stale_cache_error", "model", MODEL[:1]),
    *family("kv_cache.dialogue_flops", "history", [([4], V), ([-1, 8], V), ([1.5, 8], T)]),
    *family("kv_cache.dialogue_flops", "new", [([0, 2], V)]),
    *family("kv_cache.dialogue_flops", "n_decoder_layers", [(0, V)]),
    *family("kv_cache.dialogue_flops", "config", CONFIG[:1]),
    # ---- positions
    *family("positions.hidden_states", "model", MODEL),
    *family("positions.hidden_states", "input_ids", [(IDS.float(), V), (IDS[0], V)]),
    *family("positions.permutation_gap", "perm", [(torch.tensor([0, 0, 1, 2]), V), (torch.tensor([1, 0]), V), ([1, 0, 2, 3], V)]),
    *family("positions.permutation_gap", "model", MODEL[:1]),
    *family("positions.first_attention_output", "model", MODEL),
    *family("positions.first_attention_output", "input_ids", [(IDS.float(), V)]),
    *family("positions.probe_features", "kind", [("logits", V), (None, V)]),
    *family("positions.probe_features", "layer", [(9, V), (1.5, T)]),
    *family("positions.probe_features", "model", MODEL[:1]),
    *family("positions.ridge_r2", "n_train", [(0, V), (8, V), (1.5, T)]),
    *family("positions.ridge_r2", "ridge", [(-1.0, V), (NAN, V)]),
    *family("positions.ridge_r2", "targets", [(torch.randn(7), V), (None, T)]),
    *family("positions.ridge_r2", "features", [(torch.randn(8, 3), V), ([[1.0]], V)]),
    *family("positions.position_probe", "kind", [("logits", V)]),
    *family("positions.position_probe", "target", [("time", V)]),
    *family("positions.position_probe", "ridge", [(-1.0, V)]),
    *family("positions.masked_batch", "rate", [(0.0, V), (1.5, V), (NAN, V)]),
    *family("positions.masked_batch", "mask_id", [(-1, V), (1.5, T)]),
    *family("positions.masked_batch", "seqs", [(IDS.float(), V), ([[1]], V)]),
    *family("positions.markov_masked_posterior", "source", [(None, T)]),
    *family("positions.markov_masked_posterior", "visible", [(torch.ones(1, 3, dtype=torch.bool), V), (torch.ones(1, 4), V)]),
    *family("positions.markov_masked_posterior", "x", [(IDS + 5, V)]),
    *family("positions.order_experiment", "steps", [(0, V), (1.5, T)]),
    *family("positions.order_experiment", "runs", [((("causal", "alibi"),), V), ((("mlm", "none"),), V), ((), V)]),
    *family("positions.order_experiment", "mask_rate", [(0.0, V), (NAN, V)]),
    *family("positions.order_experiment", "source", [(None, T)]),
    *family("positions.context_shuffle_penalty", "run", [(None, T)]),
    *family("positions.offset_attention", "offsets", [([-1], V), ([], V), ([1.5], T)]),
    *family("positions.offset_attention", "model", MODEL[:1]),
    # ---- rank
    *family("rank.singular_values", "A", [([[1.0]], T), (torch.randn(4), V), (None, T)]),
    *family("rank.numerical_rank", "rtol", [(-1.0, V), (NAN, V), ("0.1", T)]),
    *family("rank.numerical_rank", "A", [(torch.randn(4), V)]),
    *family("rank.effective_rank", "A", [(torch.randn(4), V), ([[1.0]], T)]),
    *family("rank.smallest_singular_value", "A", [(torch.randn(3, 4), V), (None, T)]),
    *family("rank.log10_det", "A", [(torch.randn(3, 4), V), (None, T)]),
    *family("rank.matrix_stats", "A", [(torch.randn(4), V), (None, T)]),
    *family("rank.matrix_stats", "rtol", [(-1.0, V)]),
    *family("rank.random_attention", "n", [(0, V), (1.5, T)]),
    *family("rank.random_attention", "d", [(0, V)]),
    *family("rank.random_attention", "logit_std", [(-1.0, V), (NAN, V), (INF, V)]),
    *family("rank.random_attention", "mask", MASK[:3]),
    *family("rank.random_attention", "dtype", [("float64", T), (torch.int64, T)]),
    *family("rank.random_attention", "generator", [(3, T)]),
    *family("rank.single_matrix_sweep", "n", [(0, V)]),
    *family("rank.single_matrix_sweep", "logit_stds", [((), V), ((-1.0,), V)]),
    *family("rank.single_matrix_sweep", "seeds", [((), V), ((1.5,), T)]),
    *family("rank.triangular_condition", "ns", [((), V), ((0,), V)]),
    *family("rank.triangular_condition", "logit_std", [(NAN, V)]),
    *family("rank.residual_to_rank_one", "skip", [(-1, V), (4, V), (1.5, T)]),
    *family("rank.residual_to_rank_one", "X", [(torch.randn(4), V), (None, T)]),
    *family("rank.attention_product", "depth", [(0, V), (1.5, T)]),
    *family("rank.attention_product", "mask", MASK[:3]),
    *family("rank.attention_product", "n", [(0, V)]),
    *family("rank.collapse_stack", "variant", [("mlp", V), (None, V)]),
    *family("rank.collapse_stack", "mask", MASK[:3]),
    *family("rank.collapse_stack", "depth", [(0, V), (1.5, T)]),
    *family("rank.collapse_stack", "n_heads", [(3, V), (0, V)]),
    *family("rank.collapse_stack", "weight_std", [(-1.0, V), (NAN, V)]),
    *family("rank.collapse_states", "X", [(torch.randn(1, 4, 5), V), (None, T)]),
    *family("rank.collapse_states", "layers", [(None, T)]),
    *family("rank.collapse_curves", "variants", [(("mlp",), V), ((), V)]),
    *family("rank.collapse_curves", "masks", [(("sliding",), V)], "masks|mask"),
    *family("rank.collapse_curves", "depth", [(0, V)]),
    *family("rank.collapse_curves", "keep_states", [((9,), V)]),
    *family("rank.attention_maps", "model", MODEL),
    *family("rank.attention_maps", "input_ids", [(IDS.float(), T)]),
    *family("rank.head_stats", "maps", [(torch.randn(2, 4, 4), V), (None, T), (torch.randn(1, 2, 4, 5), V)]),
    *family("rank.layer_residuals", "hidden_states", [([], V), (None, V)]),
    *family("rank.layer_residuals", "skip", [(-1, V), (1.5, T)]),
    *family("rank.inspect_model", "model", MODEL),
    *family("rank_plots.collapse_at", "variant", [("mlp", V), (None, V)]),
    *family("rank_plots.collapse_at", "mask", [("bidirectional", V), ("Causal", V)]),
    *family("rank_plots.collapse_at", "depth", [(99, V), (1.5, T)]),
    # ---- record, record_runs
    *family("record.short_cite", "keys", [(None, T), ((), V), (3, T)]),
    *family("record.count_params", "family", [("t5", V), (None, V)]),
    *family("record.count_params", "config", CONFIG[:1]),
    *family("record.cross_attention_share", "n_source", [(0, V), (1.5, T)]),
    *family("record.cross_attention_share", "n_target", [(-1, V)]),
    *family("record.cross_attention_share", "config", CONFIG[:1]),
    *family("record.cache_bytes_by_family", "kv_heads", [((3,), V), ((), V), ((0,), V)]),
    *family("record.cache_bytes_by_family", "n_source", [(0, V), (1.5, V)]),
    *family("record.cache_bytes_by_family", "n_layers", [(0, V)]),
    *family("record_runs.exposure_bias", "vocab_size", [(1, V), (1.5, T)]),
    *family("record_runs.exposure_bias", "steps", [(0, V)]),
    *family("record_runs.exposure_bias", "temperature", [(0.0, V), (-1.0, V), (NAN, V)]),
    *family("record_runs.exposure_bias", "prompt", [(0, V), (12, V)]),
    *family("record_runs.budget_runs", "layers", [(0, V), (1.5, T)]),
    *family("record_runs.budget_runs", "steps", [(0, V)]),
    *family("record_runs.budget_runs", "lr", [(NAN, V)]),
    *family("record_runs.retrieval_scores", "gold", [([5, 0, 0], V), ([0, 1], V), (None, T)]),
    *family("record_runs.retrieval_scores", "doc_emb", [(torch.randn(3, 5), V), (None, T)]),
    *family("record_runs.retrieval_scores", "query_emb", [(torch.randn(3), V)]),
    *family("record_runs.decoder_embeddings", "model", MODEL),
    *family("record_runs.decoder_embeddings", "sentences", [([], V), ("a", T)]),
    *family("record_runs.embedding_comparison", "decoder", MODEL[:1]),
    *family("record_runs.embedding_comparison", "encoder", MODEL[:1]),
    # ---- signal_density
    *family("signal_density.bayes_loss", "objective", [("mlm", V), (None, V)]),
    *family("signal_density.bayes_loss", "source", [(None, V)]),
    *family("signal_density.bayes_loss", "rate", [(NAN, V), (1.5, V)]),
    *family("signal_density.label_density_experiment", "fractions", [((), V), ((1.5,), V), ((0.0,), V)], "fractions|fraction"),
    *family("signal_density.label_density_experiment", "steps", [(0, V), (1.5, T)]),
    *family("signal_density.label_density_experiment", "lr", [(NAN, V)]),
    *family("signal_density.label_density_experiment", "source", [(None, V)]),
    *family("signal_density.show_example", "objective", [("mlm", V)]),
    *family("signal_density.show_example", "row", [(-1, V), (2, V), (1.5, T)]),
    *family("signal_density.show_example", "special", [(None, T)]),
    *family("signal_density.show_example", "decode", [(None, T)]),
]  # fmt: skip

# ---------------------------------------------------------------------------------------------------------
# Book helpers (anatomy.book.*): figures need an Axes, made once with matplotlib's Agg backend
# ---------------------------------------------------------------------------------------------------------

_AX = []


def ax():
    if not _AX:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        _AX.append(plt.subplots()[1])
    return _AX[0]


def _render(x=1):
    import matplotlib.pyplot as plt

    return plt.figure()


CALLS.update({
    "book.glue": _call(book.glue, lambda: dict(name="x", value=1.0)),
    "book.needed_packages": _call(book.needed_packages, lambda: dict(code="import numpy")),
    "book.setup": _call(book.setup, lambda: dict(seed=0, threads=None)),
    "book.setup_cell": _call(book.setup_cell, lambda: dict()),
    "book.show_source": _call(book.show_source, lambda: dict(obj=book.device)),
    "interactive.explore_html": _call(interactive.explore_html, lambda: dict(render=_render, x=[1])),
    "interactive.explore": _call(interactive.explore, lambda: dict(render=_render, x=[1])),
    "interactive.explore_live": _call(interactive.explore_live, lambda: dict(render=_render, x=[1])),
    "plots.draw_mask": _call(plots.draw_mask, lambda: dict(ax=ax(), mask="causal", n_queries=4)),
    "plots.draw_visibility": _call(plots.draw_visibility, lambda: dict(ax=ax(), visible=torch.ones(3, 3, dtype=torch.bool))),
    "plots.draw_change": _call(plots.draw_change, lambda: dict(ax=ax(), delta=torch.rand(3, 3), colorbar=False)),
    "plots.tile_legend": _call(plots.tile_legend, lambda: dict(ax=ax())),
    "tables.html_table": _call(tables.html_table, lambda: dict(header=["a", "b"], rows=[[1, 2]])),
    "parallel.workers": _call(parallel.workers, lambda: dict(n_runs=2)),
    "parallel.run_all": _call(parallel.run_all, lambda: dict(jobs=[int])),
    "inference_economics.seed002_latency_rows": _call(inference_economics.seed002_latency_rows, lambda: dict(real={"tiny": CFG})),
})  # fmt: skip
SLOW_OR_EXTERNAL |= {
    "inference_economics.seed002_latency_rows",
    "book.glue",
    "book.setup",
    "book.show_source",
    "interactive.explore",
    "interactive.explore_live",
}

ROWS += [
    *family("book.glue", "name", [(3, V), ("", V), (None, V), ("a b", V)]),
    *family("book.glue", "fmt", [(3, T)]),
    *family("book.glue", "timed", [(1, T)]),
    *family("book.needed_packages", "code", [(None, T), (3, T)]),
    *family("book.setup", "seed", [(-1, V), (1.5, T), ("0", T)]),
    *family("book.setup", "threads", [(0, V), (1.5, V)]),
    *family("book.setup_cell", "no_deps", [("numpy", T), (3, T)]),
    *family("book.setup_cell", "url", [(3, T)]),
    *family("book.setup_cell", "branch", [(3, T)]),
    *family("book.show_source", "obj", [(3, T), (None, T)]),
    *family("interactive.explore_html", "render", [(None, T), (3, T)]),
    *family("interactive.explore_html", "x", [(3, T), ([], V)]),
    *family("interactive.explore", "render", [(None, T)]),
    *family("interactive.explore_live", "render", [(None, T)]),
    *family("plots.draw_mask", "mask", MASK[:3]),
    *family("plots.draw_mask", "n_queries", [(0, V), (1.5, T)]),
    *family("plots.draw_mask", "tile", [(0, V)]),
    *family("plots.draw_mask", "ax", [(None, T)]),
    *family("plots.draw_visibility", "visible", [("x", T), (torch.ones(3), V), (None, T)]),
    *family("plots.draw_visibility", "ax", [(None, T)]),
    *family("plots.draw_change", "delta", [("x", T), (torch.ones(3), V)]),
    *family("plots.draw_change", "vmin", [(0.0, V), (-1.0, V), (NAN, V)]),
    *family("plots.draw_change", "vmax", [(0.0, V)]),
    *family("plots.tile_legend", "ax", [(None, T), (3, T)]),
    *family("tables.html_table", "header", [(None, T), ("ab", T)]),
    *family("tables.html_table", "rows", [([[1]], V), (None, T), ([1, 2], T)]),
    *family("tables.html_table", "widths", [([1.0], V), ([-1.0, 1.0], V)]),
    *family("tables.html_table", "numeric", [(1, T)]),
    *family("tables.html_table", "caption", [(3, T)]),
    *family("inference_economics.seed002_latency_rows", "real", [(None, T), ({"x": 3}, T)]),
    *family("inference_economics.seed002_latency_rows", "hardware", [("A100", T)]),
    *family("parallel.workers", "n_runs", [(0, V), (-1, V), (1.5, T)]),
    *family("parallel.run_all", "jobs", [(None, T), (3, T), ([3], T)]),
    *family("parallel.run_all", "costs", [([1.0, 2.0], V), ([NAN], V), (["1"], T), ("1", T), (3, T)]),
]  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# Rows declared by the experiments' own test files (BAD_INPUTS, BAD_INPUTS_EXEMPT, BAD_INPUTS_SLOW)
# ---------------------------------------------------------------------------------------------------------

TESTS = Path(__file__).resolve().parent


def declared_rows(module) -> tuple[dict, list, set, set]:
    """(calls, rows, slow, exempt) that a test module declares, in this table's forms."""
    calls, rows = {}, []
    for target, (call, module_rows) in getattr(module, "BAD_INPUTS", {}).items():
        calls[target] = call
        for row in module_rows:
            arg, value, exc, *name = row
            rows.append((target, arg, value, exc, name[0] if name else arg))
    slow, exempt = set(getattr(module, "BAD_INPUTS_SLOW", ())), set(getattr(module, "BAD_INPUTS_EXEMPT", ()))
    return calls, rows, slow, exempt


def _collect_declared():
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    exempt = set()
    for path in sorted(TESTS.glob("test_*.py")):
        if path.name == Path(__file__).name or "BAD_INPUTS" not in path.read_text(encoding="utf-8"):
            continue
        calls, rows, slow, skip = declared_rows(importlib.import_module(path.stem))
        twice = set(calls) & set(CALLS)
        assert not twice, f"{path.name} declares rows this file already has: {sorted(twice)}"
        CALLS.update(calls)
        ROWS.extend(rows)
        SLOW_OR_EXTERNAL.update(slow)
        exempt |= skip
    return exempt


DECLARED_EXEMPT = _collect_declared()


def test_declared_rows_take_this_tables_form():
    def causal_pairs(n):
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")

    module = type(sys)("test_toy")
    module.BAD_INPUTS = {"toy.causal_pairs": (lambda **kw: causal_pairs(**{"n": 8, **kw}), [("n", 0, V)])}
    module.BAD_INPUTS_EXEMPT = {"toy.plot_pairs"}
    calls, rows, slow, exempt = declared_rows(module)
    assert rows == [("toy.causal_pairs", "n", 0, V, "n")] and exempt == {"toy.plot_pairs"} and not slow
    calls["toy.causal_pairs"]()  # the valid call
    with pytest.raises(ValueError, match="n"):
        calls["toy.causal_pairs"](n=0)


def _row_id(row):
    target, arg, value, exc, _ = row
    text = repr(value) if not isinstance(value, torch.Tensor) else f"tensor{tuple(value.shape)}:{value.dtype}"
    if callable(value) and not isinstance(value, torch.Tensor):
        text = "fn"
    return f"{target}-{arg}={text[:30]}-{exc.__name__}"


# Functions whose rows are known to fail (target -> reason), marked xfail (not strict): none left. A defect
# found in a module that cannot be fixed at once goes here, with its reason, until it is fixed.
KNOWN_DEFECTS: dict[str, str] = {}


def _param(row):
    reason = KNOWN_DEFECTS.get(row[0])
    marks = [pytest.mark.xfail(reason=reason, strict=False)] if reason else []
    return pytest.param(row, id=_row_id(row), marks=marks)


@pytest.mark.parametrize("row", [_param(r) for r in ROWS])
def test_bad_input_is_refused_with_its_name(row):
    target, arg, value, exc, name = row
    with pytest.raises((TypeError, ValueError)) as info:
        CALLS[target](**{arg: value})
    assert isinstance(info.value, exc), f"{type(info.value).__name__} instead of {exc.__name__}: {info.value}"
    message = str(info.value)
    assert re.search(rf"(?<![A-Za-z0-9_])({name})(?![A-Za-z0-9_])", message), (
        f"the message does not name {name!r}: {message}"
    )


def test_the_table_is_large():
    assert len(ROWS) >= 300


@pytest.mark.parametrize("target", sorted(CALLS))
def test_each_valid_call_succeeds(target):
    # Guards the table: a row fails because of its one bad argument, not because the rest is invalid.
    if (
        target
        in (
            "smollm2",
            "minilm",
            "to_hf",
            "from_hf",
            "bpe_tokenizer",
            "convert_state",
            "config_from_hf",
            "hf_config_from",
            "speculative_generate",
            "train",
            "train (seconds budget)",
        )
        or target in SLOW_OR_EXTERNAL
    ):
        pytest.skip("loads weights or transformers, trains or needs a real state dict: exercised elsewhere")
    CALLS[target]()  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# Coverage: every public function and class of every module of anatomy has rows
# ---------------------------------------------------------------------------------------------------------

# anatomy.claims is the claim registry: functions of no argument that recompute a chapter's checked values
# (their input is the chapter's own run, not a user's), so it is not part of the API this table covers.
EXCLUDED_PACKAGES = ("anatomy.claims",)
# Modules whose functions the table's first rows name without a module prefix ("attention", "KVCache.keys").
BARE_NAME_MODULES = {
    "anatomy", "anatomy.attention", "anatomy.masks", "anatomy.cache", "anatomy.generate", "anatomy.model",
    "anatomy.encoder_decoder", "anatomy.train", "anatomy.data", "anatomy.pretrained", "anatomy.convert", "anatomy.weight_layout",
    "anatomy.kernels.tiled", "anatomy.experiments.families", "anatomy.speculative",
}  # fmt: skip
NOT_ENTRY_POINTS = {
    # Records and containers: dataclasses of results or parts of a model, built by the package itself.
    "ModelOutput", "TileCount", "History", "Tokenizer", "Rule", "RMSNorm", "MLP", "Block", "Attention",
    "Rope", "RopeTable", "BPETokenizer", "KVCache.nbytes", "KVCache.allocated_nbytes", "KVCache.clear",
    "objectives.PrefixLMBatch", "objectives.Seq2SeqBatch", "objectives.Signal", "moe.Routing",
    "speculative.SpeculativeOutput", "capacity.PopulationFit", "scaling_laws.PowerLawFit", "scaling_laws.FloorPowerLawFit",
    "dual_form.DualForm", "equal_compute.ObjectiveRun", "few_shot.FewShot", "icl.InductionRun",
    "icl.MaskedInductionRun", "inference_economics.Hardware", "positions.OrderRun", "record.Entry",
    "record_runs.ExposureRun", "record_runs.BudgetRun", "signal_density.DensityRun", "tables.raw", "tables.HTMLTable",
    # Figures and tables drawn from a result this package computed (a chapter's record, not user input).
    "capacity_plots.plot_capacity", "capacity_plots.plot_generalization", "capacity_plots.plot_scaling",
    "capacity_plots.plot_isoflop",
    "causal_kernel.draw_tile_map", "dual_form.plot_dual_form", "entropy.plot_chain_rule", "entropy.plot_kl_training",
    "entropy.plot_kl_floor", "entropy.plot_memorization", "entropy.plot_pll", "entropy.plot_gibbs",
    "entropy.plot_context_curve", "entropy.plot_surprisal", "equal_compute.plot_comparison",
    "equal_compute.plot_masking_tradeoff", "icl.plot_induction", "icl.plot_induction_attention", "icl.plot_head_scores",
    "icl.plot_decoder_vs_encoder", "positions.plot_order_runs", "positions.plot_probe", "positions.plot_position_signal",
    "rank_plots.plot_single_matrix", "rank_plots.plot_product", "rank_plots.plot_collapse", "rank_plots.plot_gram",
    "rank_plots.plot_heads", "rank_plots.sweep_table", "rank_plots.sweep_summary", "rank_plots.inspection_summary",
    "rank_plots.plot_real_models", "record.record_html", "signal_density.plot_density",
    "inference_economics_plots.classifier_table", "kv_cache_plots.chunk_sweep_table", "kv_cache_plots.kv_sizes_table",
    "kv_cache_plots.dialogue_table", "kv_cache_plots.stale_table", "answer.answer_html", "answer.scoreboard_table",
    "answer.scoreboard_rows", "answer.resolve_point", "answer.format_number", "answer.listed", "answer.chapter_page",
    "answer.plot_verdicts", "inference_economics_plots.latency_table", "inference_economics_plots.plot_classifiers",
    "inference_economics_plots.plot_roofline", "inference_economics_plots.plot_sampler_distributions",
    "inference_economics_plots.plot_speculative", "kv_cache_plots.plot_chunk_sweep", "kv_cache_plots.plot_dialogue",
    "kv_cache_plots.plot_kv_variants", "kv_cache_plots.plot_stale",
    # Forks a process to run a job later: its rows would start processes.
    "parallel.start", "parallel.Background",
    # Another helper's module: the GPU kernel (needs CUDA).
    "triton_attention", "triton_kernel.triton_attention", "triton_kernel.visited_tiles", "kernels.triton_attention",
}  # fmt: skip


def _modules():
    modules = [anatomy]
    for info in pkgutil.walk_packages(anatomy.__path__, "anatomy."):
        if info.name.startswith(EXCLUDED_PACKAGES) or info.name.rsplit(".", 1)[-1].startswith("_"):
            continue
        try:
            modules.append(importlib.import_module(info.name))
        except ImportError:  # the Triton kernel without triton installed
            continue
    return modules


def _takes_arguments(obj) -> bool:
    try:
        return bool(inspect.signature(obj).parameters)
    except (TypeError, ValueError):
        return True


def _public_functions():
    """{key: bare name} of every public function and class, counted once, in the module that defines it.

    The key is "<last part of the module name>.<name>" (e.g. "cost.forward_flops"); functions of no
    argument have nothing to get wrong and are left out.
    """
    out = {}
    for module in _modules():
        for name, obj in vars(module).items():
            if name.startswith("_") or not callable(obj) or getattr(obj, "__module__", "") != module.__name__:
                continue
            if inspect.isclass(obj) and issubclass(obj, BaseException):
                continue
            if not inspect.isclass(obj) and not _takes_arguments(obj):
                continue
            short = module.__name__.rsplit(".", 1)[-1]
            out[f"{short}.{name}"] = name if module.__name__ in BARE_NAME_MODULES else None
    return out


def test_every_public_function_has_rows():
    heads = {row[0].split(" ")[0] for row in ROWS}

    def covered(key, bare):
        names = [key] + ([bare] if bare else [])
        return any(
            n in NOT_ENTRY_POINTS
            or n in DECLARED_EXEMPT
            or n in heads
            or any(h.startswith(n + ".") for h in heads)
            for n in names
        )

    functions = _public_functions()
    missing = sorted(key for key, bare in functions.items() if not covered(key, bare))
    assert not missing, f"public functions without a row in the bad-input table: {missing}"
    # the check above can fail: it sees the core, the experiments and the book helpers
    for key in (
        "attention.attention",
        "cost.forward_flops",
        "rank.random_attention",
        "book.glue",
        "plots.draw_mask",
    ):
        assert key in functions


def test_divergent_training_stops_naming_the_step():
    torch.manual_seed(0)
    model = anatomy.Transformer(anatomy.Config(**SMALL))
    batch = (IDS[:, :-1], IDS[:, 1:])
    with pytest.raises(FloatingPointError, match=r"step \d+"):
        train_module.train(model, lambda s: batch, steps=5, lr=1e12, warmup=0, progress=False)
