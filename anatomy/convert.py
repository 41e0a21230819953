"""Conversion between anatomy models and transformers models (Llama family, GPT-2, BERT): the weight
mapping rules, the configs, and ``from_hf`` / ``to_hf``."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn

from anatomy._checks import check_bool, check_instance
from anatomy.model import Config, Transformer

__all__ = ["Rule", "config_from_hf", "convert_state", "from_hf", "hf_config_from", "to_hf", "weight_rules"]


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
    check_instance("config", config, Config, "an anatomy Config")
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
    hf_state: dict[str, torch.Tensor], config: Config, *, hf_prefix: str = "", drop: tuple[str, ...] = ()
) -> dict[str, torch.Tensor]:
    """transformers state dict -> anatomy state dict, by :func:`weight_rules`. Every key must be used.

    drop: key prefixes that are knowingly discarded (e.g. BERT's pooler, which is not part of the encoder's
    hidden states). Anything else left over raises ValueError, and so does a missing source key.
    """
    if not isinstance(hf_state, dict):
        raise TypeError(f"hf_state must be a dict of tensors (a state dict), got {type(hf_state).__name__}")
    check_instance("config", config, Config, "an anatomy Config")
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
        k
        for k, v in state.items()
        if v.dim() == 2
        and (
            k.endswith("_proj.weight")
            or k == "lm_head.weight"
            or (k == "embed_tokens.weight" and config.tie_embeddings and config.lm_head)
        )
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

    c, fam = check_instance("config", config, Config, "an anatomy Config"), _family(config)
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
