"""One transformer block, three families: the mask decides whether it is a decoder, an encoder or a prefix LM.

``Transformer`` with ``mask="causal"`` is a GPT/Llama-style decoder, with ``"bidirectional"`` a BERT-style
encoder, with ``"prefix"`` a prefix LM (UniLM, T5's prefix-LM variant). ``EncoderDecoder`` adds the fourth
family (in :mod:`anatomy.encoder_decoder`): a bidirectional encoder, and a causal decoder that also
cross-attends to the encoder's output.

Module names follow transformers' Llama (``embed_tokens``, ``q_proj``, ``gate_proj``, ``input_layernorm``
...) so that loading real weights is a plain mapping (see :mod:`anatomy.pretrained`).

Read top to bottom: ``Config`` -> norms -> rotary positions -> ``Attention`` -> ``MLP`` -> ``Block`` ->
``Transformer``. What only serves speed (q/k/v and gate/up run as one matmul, weights
stored input-major for decoding) is in :mod:`anatomy.weight_layout`; it changes no number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from anatomy import decode, prefill
from anatomy._checks import check_bool, check_float, check_int, check_positive_int, check_tensor, is_int
from anatomy.attention import BACKENDS, _self_attention, attention, attention_probs
from anatomy.cache import KVCache
from anatomy.masks import MASKS
from anatomy.weight_layout import FUSED_GROUPS, _deepcopy, fused_weight, to_input_major

__all__ = [
    "FUSED_GROUPS",
    "MLP",
    "Attention",
    "Block",
    "Config",
    "ModelOutput",
    "RMSNorm",
    "Rope",
    "RopeTable",
    "Transformer",
    "make_norm",
    "to_input_major",
]

_CHOICES = {
    "norm": ("rms", "layer"),
    "norm_position": ("pre", "post"),
    "pos": ("rope", "learned", "none"),
    "mlp": ("swiglu", "gelu", "gelu_tanh"),
    "mask": MASKS,
    "attn_backend": BACKENDS,
}


@dataclass
class Config:
    """Everything that defines a model. Defaults: a small Llama-style decoder."""

    vocab_size: int = 256
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None  # grouped-query attention; None = n_heads (multi-head attention)
    head_dim: int | None = None  # None = d_model // n_heads
    d_ff: int | None = None  # None = 4 * d_model (GELU) or the Llama rule ~8/3 * d_model (SwiGLU)
    max_seq_len: int = 1024  # learned positions and the default cache size
    mask: str = "causal"  # "causal" (decoder) | "bidirectional" (encoder) | "prefix" (prefix LM)
    norm: str = "rms"  # "rms" (Llama) | "layer" (GPT-2, BERT)
    norm_eps: float = 1e-5
    norm_position: str = "pre"  # "pre" (GPT-2, Llama) | "post" (BERT, the original Transformer)
    pos: str = "rope"  # "rope" (Llama) | "learned" (GPT-2, BERT) | "none" (NoPE)
    rope_theta: float = 10000.0
    mlp: str = "swiglu"  # "swiglu" (Llama) | "gelu" (BERT, exact erf) | "gelu_tanh" (GPT-2)
    qkv_bias: bool = False
    out_bias: bool = False
    mlp_bias: bool = False
    norm_bias: bool = True  # LayerNorm only
    tie_embeddings: bool = True
    final_norm: bool = True  # a norm after the last block (pre-norm models)
    embed_norm: bool = False  # a LayerNorm right after the embeddings (BERT)
    n_token_types: int = 0  # segment embeddings (BERT); 0 = none
    lm_head: bool = True  # False: forward returns the last hidden states (an encoder used for features)
    attn_backend: str = "sdpa"  # which anatomy.attention backend the model uses
    tile: int = 128  # tile size for the tiled/triton backends
    init_std: float = 0.02
    extra: dict = field(default_factory=dict)  # provenance (e.g. which checkpoint); never read by the model

    def __post_init__(self) -> None:
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"Config.{name} must be one of {choices}, got {getattr(self, name)!r}")
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len", "tile"):
            check_positive_int(f"Config.{name}", getattr(self, name))
        for name in ("n_kv_heads", "head_dim", "d_ff"):
            check_positive_int(f"Config.{name}", getattr(self, name), none=True)
        check_int("Config.n_token_types", self.n_token_types, lo=0)
        # eps >= 0 (0 is the plain formula); theta > 0 (theta <= 0 makes the RoPE tables NaN or inf).
        check_float("Config.norm_eps", self.norm_eps, lo=0.0)
        check_float("Config.rope_theta", self.rope_theta, lo=0.0, lo_open=True)
        check_float("Config.init_std", self.init_std, lo=0.0)
        for name in (
            "qkv_bias", "out_bias", "mlp_bias", "norm_bias", "tie_embeddings", "final_norm", "embed_norm",
            "lm_head",
        ):  # fmt: skip
            setattr(self, name, check_bool(f"Config.{name}", getattr(self, name)))  # np.bool_ -> bool
        if not isinstance(self.extra, dict):
            raise TypeError(f"Config.extra must be a dict, got {type(self.extra).__name__}")
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"Config.n_heads ({self.n_heads}) must be a multiple of Config.n_kv_heads ({self.n_kv_heads})"
            )
        if self.head_dim is None:
            if self.d_model % self.n_heads:
                raise ValueError(
                    f"Config.d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads}) "
                    "unless head_dim is given"
                )
            self.head_dim = self.d_model // self.n_heads
        if self.pos == "rope" and self.head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim, got {self.head_dim}")
        if self.d_ff is None:
            self.d_ff = (
                4 * self.d_model if self.mlp != "swiglu" else 64 * math.ceil(8 * self.d_model / 3 / 64)
            )

    @property
    def n_kv_groups(self) -> int:
        return self.n_heads // self.n_kv_heads


@dataclass
class ModelOutput:
    """What ``forward(..., return_hidden=True / return_attn=True)`` returns."""

    logits: torch.Tensor  # (B, N, vocab), or the last hidden states (B, N, d) for a model without LM head
    hidden_states: tuple[torch.Tensor, ...] | None = None  # embeddings, then each layer (the last one normed)
    attentions: tuple[torch.Tensor, ...] | None = None  # per layer (B, n_heads, N, N_keys), from our kernel


class RMSNorm(nn.Module):
    """x / rms(x) * weight (Zhang & Sennrich 2019), computed in float32."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            if not torch.is_grad_enabled():  # inference: PyTorch's rms_norm, the same numbers in one call
                return torch.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
            from anatomy.fused import _rms_norm  # noqa: PLC0415 (training: one kernel, hand-written backward)

            return _rms_norm(x, self.weight, self.eps)
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def make_norm(config: Config) -> nn.Module:
    _check_config(config)
    if config.norm == "rms":
        return RMSNorm(config.d_model, config.norm_eps)
    return nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=config.norm_bias)


def _rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """Plain RoPE angle tables cos, sin of shape (N, head_dim) (Su et al. 2021, Llama layout).

    Private on purpose: these are not what :class:`Attention` takes. Models get their rotation from
    :class:`RopeTable`, the one entry point (a model once passed this plain sin where the sign-flipped one
    was expected, and its "rotation" mixed in absolute positions).
    """
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim)
    )
    freqs = positions.float()[:, None] * inv_freq[None, :]  # (N, head_dim / 2)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


@dataclass(frozen=True)
class Rope:
    """The rotation for a run of positions, made by :class:`RopeTable`; what ``Attention(rope=...)`` takes.

    cos (n, head_dim); sin_signed (n, head_dim) = sin with its first half negated, so that rotating pairs
    (i, i + D/2) is x * cos + roll(x, D/2) * sin_signed (see :func:`_rotate`).
    """

    cos: torch.Tensor
    sin_signed: torch.Tensor


class RopeTable:
    """RoPE for every model: tables for positions 0..n-1, computed once and sliced per call.

    ``table(start, n, device, dtype)`` -> a :class:`Rope` for positions start..start + n - 1. Every model with
    ``pos="rope"`` (``Transformer``, ``EncoderDecoder``, ``icl.AttentionOnly``) gets its rotation here, and
    ``Attention`` accepts nothing else, so no model can pass tables in another layout.
    """

    def __init__(self, head_dim: int, theta: float) -> None:
        if not is_int(head_dim) or head_dim < 2 or head_dim % 2:
            raise ValueError(f"head_dim must be an even int >= 2, got {head_dim!r}")
        if not theta > 0:
            raise ValueError(f"theta must be > 0, got {theta!r}")
        self.head_dim, self.theta = head_dim, theta
        self.cos = self.sin_signed = None

    def __call__(self, start: int, n: int, device, dtype) -> Rope:
        """The rotation for positions start..start + n - 1 (cos and sin_signed, each (n, head_dim))."""
        t = self.cos
        if t is None or t.shape[0] < start + n or t.device != torch.device(device) or t.dtype != dtype:
            size = max(start + n, 2 * (0 if t is None else t.shape[0]), 256)
            with torch.inference_mode(False):  # tables made during generate() must stay usable outside it
                cos, sin = _rope_cos_sin(torch.arange(size, device=device), self.head_dim, self.theta, dtype)
                half = self.head_dim // 2
                self.cos, self.sin_signed = cos, torch.cat([-sin[:, :half], sin[:, half:]], dim=-1)
        return Rope(self.cos[start : start + n], self.sin_signed[start : start + n])


def _rotate(x: torch.Tensor, rope: Rope) -> torch.Tensor:
    """Rotate pairs (i, i + D/2) of x (B, H, N, D) by their angle: [x1 cos - x2 sin, x2 cos + x1 sin].

    Computed as x * cos + roll(x, D/2) * sin_signed, with sin_signed = [-sin, sin] from a :class:`RopeTable`.
    """
    if not isinstance(rope, Rope):
        raise TypeError(f"rope must be an anatomy.model.Rope from a RopeTable, got {type(rope).__name__}")
    return x * rope.cos + x.roll(x.shape[-1] // 2, dims=-1) * rope.sin_signed


class Attention(nn.Module):
    """Multi-head attention with grouped-query K/V; the mask is given per call, so one class serves all."""

    def __init__(self, config: Config, cross: bool = False) -> None:
        super().__init__()
        c = config
        self.config, self.cross = c, cross
        self.q_proj = nn.Linear(c.d_model, c.n_heads * c.head_dim, bias=c.qkv_bias)
        self.k_proj = nn.Linear(c.d_model, c.n_kv_heads * c.head_dim, bias=c.qkv_bias)
        self.v_proj = nn.Linear(c.d_model, c.n_kv_heads * c.head_dim, bias=c.qkv_bias)
        self.o_proj = nn.Linear(c.n_heads * c.head_dim, c.d_model, bias=c.out_bias)

    def project_kv(self, x: torch.Tensor, rope=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of x (B, N, d), each (B, n_kv_heads, N, head_dim)."""
        B, N, _ = x.shape
        c = self.config
        k = self.k_proj(x).view(B, N, c.n_kv_heads, c.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, N, c.n_kv_heads, c.head_dim).transpose(1, 2)
        if rope is not None:
            k = _rotate(k, rope)
        return k, v

    def forward(
        self,
        x: torch.Tensor,
        *,
        mask: str,
        prefix_len: int | None = None,
        rope=None,
        cache: KVCache | None = None,
        layer: int = 0,
        kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        key_padding_mask: torch.Tensor | None = None,
        return_attn: bool = False,
        _checked: bool = False,
    ):
        """x (B, N, d) -> (B, N, d) [, attention probabilities (B, n_heads, N, N_keys)].

        Self-attention computes k, v from x (appending them to ``cache`` if given); cross-attention gets
        precomputed ``kv`` from the encoder. ``_checked``: the calling model validated ``cache`` already.
        """
        B, N, _ = x.shape
        c = self.config
        Hq, Hkv = c.n_heads, c.n_kv_heads
        if kv is None:
            # q, k and v in one matmul (nanoGPT's c_attn), from the three Llama-named Linears.
            packed = self._modules.get("qkv_proj")  # packed GGUF weights (anatomy.packed), opt-in
            if packed is not None:
                qkv = packed(x)
            else:
                qkv = F.linear(x, *fused_weight(self, ("q_proj", "k_proj", "v_proj")))
            qkv = qkv.view(B, N, Hq + 2 * Hkv, c.head_dim).transpose(1, 2)  # (B, H+2Hkv, N, hd)
            qk, v = qkv.split_with_sizes((Hq + Hkv, Hkv), dim=1)
            if rope is not None:
                qk = _rotate(qk, rope)  # queries and keys rotated together
            q, k = qk.split_with_sizes((Hq, Hkv), dim=1)  # (B, Hq, N, hd), (B, Hkv, N, hd)
            if cache is not None:
                # now all positions so far: (B, Hkv, len + N, hd); unchecked only after _check_cache
                k, v = cache._append(layer, k, v) if _checked else cache.update(layer, k, v)
            if (
                (cache is None or _checked)  # a direct call's cache may hold another dtype: checked below
                and key_padding_mask is None
                and prefix_len is None
                and (mask == "causal" or mask == "bidirectional")
            ):
                out = _self_attention(q, k, v, mask, c.attn_backend, c.tile)  # our own q, k, v: no checks
                return self._out(out, q, k, mask, prefix_len, key_padding_mask, return_attn)
        else:
            q = self.q_proj(x).view(B, N, Hq, c.head_dim).transpose(1, 2)  # (B, Hq, N, hd)
            k, v = kv
        out = attention(
            q,
            k,
            v,
            mask,
            prefix_len=prefix_len,
            backend=c.attn_backend,
            tile=c.tile,
            key_padding_mask=key_padding_mask,
        )
        return self._out(out, q, k, mask, prefix_len, key_padding_mask, return_attn)

    def _out(self, out, q, k, mask, prefix_len, key_padding_mask, return_attn):
        """The output projection of the heads' outputs (B, Hq, N, hd) [, and the attention probabilities]."""
        B, _, N, hd = out.shape
        c = self.config
        y = self.o_proj(out.transpose(1, 2).reshape(B, N, c.n_heads * hd))
        if not return_attn:
            return y, None
        probs = attention_probs(
            q.detach(),
            k.detach(),
            mask,
            prefix_len=prefix_len,
            tile=c.tile,
            key_padding_mask=key_padding_mask,
        )
        return y, probs


class MLP(nn.Module):
    """SwiGLU (Shazeer 2020; Llama): down(silu(gate(x)) * up(x)); or GELU: down(gelu(up(x)))."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        c = config
        self.kind = c.mlp
        if c.mlp == "swiglu":
            self.gate_proj = nn.Linear(c.d_model, c.d_ff, bias=c.mlp_bias)
        self.up_proj = nn.Linear(c.d_model, c.d_ff, bias=c.mlp_bias)
        self.down_proj = nn.Linear(c.d_ff, c.d_model, bias=c.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "swiglu":
            packed = self._modules.get("gate_up_proj")  # packed GGUF weights (anatomy.packed), opt-in
            if torch.is_grad_enabled():  # training: anatomy.fused's ops (the same numbers, less traffic)
                from anatomy.fused import _swiglu_mlp  # noqa: PLC0415

                return self.down_proj(_swiglu_mlp(self, x, packed))
            if packed is not None:
                gate_up = packed(x)
            else:  # gate and up in one matmul
                gate_up = F.linear(x, *fused_weight(self, ("gate_proj", "up_proj")))
            gate, up = gate_up.chunk(2, dim=-1)
            return self.down_proj(F.silu(gate) * up)
        approximate = "tanh" if self.kind == "gelu_tanh" else "none"
        return self.down_proj(F.gelu(self.up_proj(x), approximate=approximate))


class Block(nn.Module):
    """Attention then MLP, each with a residual connection; pre-norm (GPT-2, Llama) or post-norm (BERT).

    Post-norm uses ``input_layernorm`` after the attention residual and ``post_attention_layernorm``
    after the MLP residual. A decoder block of an encoder-decoder also has ``cross_attn``.
    """

    def __init__(self, config: Config, cross: bool = False) -> None:
        super().__init__()
        self.pre = config.norm_position == "pre"
        self.input_layernorm = make_norm(config)
        self.self_attn = Attention(config)
        if cross:
            self.cross_attn_layernorm = make_norm(config)
            self.cross_attn = Attention(config, cross=True)
        self.post_attention_layernorm = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x, *, cross_kv=None, cross_padding_mask=None, **attn_kwargs):
        cross = (
            None
            if cross_kv is None
            else dict(mask="bidirectional", kv=cross_kv, key_padding_mask=cross_padding_mask)
        )
        if self.pre:  # x + f(norm(x))
            h, probs = self.self_attn(self.input_layernorm(x), **attn_kwargs)
            x = x + h
            if cross_kv is not None:
                x = x + self.cross_attn(self.cross_attn_layernorm(x), **cross)[0]
            return x + self.mlp(self.post_attention_layernorm(x)), probs
        h, probs = self.self_attn(x, **attn_kwargs)  # post-norm: norm(x + f(x))
        x = self.input_layernorm(x + h)
        if cross_kv is not None:
            x = self.cross_attn_layernorm(x + self.cross_attn(x, **cross)[0])
        return self.post_attention_layernorm(x + self.mlp(x)), probs


class _Model(nn.Module):
    """What ``Transformer`` and ``EncoderDecoder`` share: initialisation, parameter count, an empty cache."""

    config: Config
    layers: nn.ModuleList  # the stack of blocks whose keys and values a cache holds

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.init_std
        # a meta tensor holds no values (counting parameters): torch would run normal_ through its slow
        # Python reference implementation for nothing
        if isinstance(module, (nn.Linear, nn.Embedding)) and not module.weight.is_meta:
            nn.init.normal_(module.weight, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def _scale_residual_init(self, layers) -> None:
        # GPT-2: the projections that write into the residual stream get std / sqrt(2 * layers), so the
        # stream's variance stays O(1) however deep the model is.
        std = self.config.init_std / math.sqrt(2 * len(layers))
        for block in layers:
            if block.self_attn.o_proj.weight.is_meta:
                continue
            nn.init.normal_(block.self_attn.o_proj.weight, std=std)
            nn.init.normal_(block.mlp.down_proj.weight, std=std)
            if hasattr(block, "cross_attn"):
                nn.init.normal_(block.cross_attn.o_proj.weight, std=std)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; without the token/position embedding tables by default (Kaplan et al.'s N)."""
        check_bool("non_embedding", non_embedding)
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            tables = {
                id(m.weight): m.weight.numel()
                for name, m in self.named_modules()
                if name.rpartition(".")[2] in ("embed_tokens", "embed_positions")
            }
            n -= sum(tables.values())
        return n

    def new_cache(self, batch_size: int = 1, max_len: int | None = None) -> KVCache:
        """An empty KV cache for this model's (decoder) layers, filled in place by ``model(ids, cache=cache)``
        and ``generate``; ``max_len`` defaults to ``config.max_seq_len``."""
        c = self.layers[0].self_attn.config  # the config of the blocks that fill the cache
        p = self.embed_tokens.weight
        return KVCache(
            len(self.layers),
            batch_size,
            c.n_kv_heads,
            c.head_dim,
            c.max_seq_len if max_len is None else max_len,
            dtype=p.dtype,
            device=p.device,
        )


class Transformer(_Model):
    """A stack of blocks over token embeddings. Decoder, encoder or prefix LM, depending on ``config.mask``.

    ``model(input_ids)`` -> logits (B, N, vocab), or hidden states (B, N, d) if ``config.lm_head`` is False.
    ``model(new_ids, cache=cache)`` runs only the new tokens, at positions len(cache).., and appends them.
    """

    def __init__(self, config: Config) -> None:
        super().__init__()
        _check_config(config)
        self.config = c = config
        self.embed_tokens = nn.Embedding(c.vocab_size, c.d_model)
        if c.pos == "learned":
            self.embed_positions = nn.Embedding(c.max_seq_len, c.d_model)
        if c.n_token_types:
            self.embed_token_types = nn.Embedding(c.n_token_types, c.d_model)
        if c.embed_norm:
            self.embed_layernorm = nn.LayerNorm(c.d_model, eps=c.norm_eps)
        self.layers = nn.ModuleList(Block(c) for _ in range(c.n_layers))
        if c.final_norm:
            self.norm = make_norm(c)
        self.rope = RopeTable(c.head_dim, c.rope_theta) if c.pos == "rope" else None
        if c.lm_head:
            self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
            if c.tie_embeddings:
                self.lm_head.weight = self.embed_tokens.weight
        self.apply(self._init_weights)
        self._scale_residual_init(self.layers)

    def __deepcopy__(self, memo):  # a copy keeps the input-major weight layout (anatomy.weight_layout)
        return _deepcopy(self, memo)

    def __getstate__(self):
        """What pickle and ``torch.save`` store: the module without the C step's cached plan (it refers to
        the model by a weak reference, which cannot be pickled; the loaded model builds its own)."""
        state = dict(super().__getstate__())
        state.pop("_decode_plan", None)
        return state

    def embed(self, input_ids: torch.Tensor, start: int = 0, token_type_ids: torch.Tensor | None = None):
        """Token (+ position, + segment) embeddings of input_ids (B, N) at positions start.. -> (B, N, d)."""
        _check_ids(input_ids, self.config.vocab_size)
        return self._embed(input_ids, check_int("start", start, lo=0), token_type_ids)

    def _embed(self, input_ids, start, token_type_ids):
        c = self.config
        x = self.embed_tokens(input_ids)
        N = input_ids.shape[1]
        if c.pos == "learned":
            if start + N > c.max_seq_len:
                raise ValueError(
                    f"positions up to {start + N - 1} exceed the learned position table "
                    f"(max_seq_len={c.max_seq_len})"
                )
            x = x + self.embed_positions(torch.arange(start, start + N, device=input_ids.device))
        if token_type_ids is not None:
            if not c.n_token_types:
                raise ValueError(
                    "token_type_ids given, but this model has no segment embeddings (n_token_types=0)"
                )
            _check_ids(token_type_ids, c.n_token_types, "token_type_ids")
            if token_type_ids.shape != input_ids.shape:
                raise ValueError(
                    f"token_type_ids must have the shape of input_ids {tuple(input_ids.shape)}, "
                    f"got {tuple(token_type_ids.shape)}"
                )
        if c.n_token_types:
            types = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
            x = x + self.embed_token_types(types)
        if c.embed_norm:
            x = self.embed_layernorm(x)
        return x

    def forward(
        self,
        input_ids: torch.Tensor,
        cache: KVCache | None = None,
        *,
        prefix_len: int | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        return_hidden: bool = False,
        return_attn: bool = False,
        logits_to_keep: int = 0,
        _head: bool = True,
    ):
        """input_ids (B, N) -> logits (B, N, vocab), or a ModelOutput with hidden states / attention maps.

        prefix_len: for a prefix LM, the number of leading positions (absolute, counting the cache) that
        every position sees; defaults to the whole input of the first call. attention_mask: (B, N) with 1 for
        real tokens and 0 for padding (no cache). A cached encoder or prefix LM is exact only if appending
        tokens would not have changed the cached states (it would: that is the KV cache chapter's point).
        logits_to_keep: if > 0, only the last that many positions go through the LM head, so the logits are
        (B, logits_to_keep, vocab) (as in transformers; generation needs only the last position's).
        """
        c = self.config
        _check_ids(input_ids, c.vocab_size)
        check_bool("return_hidden", return_hidden)
        check_bool("return_attn", return_attn)
        _check_logits_to_keep(logits_to_keep, input_ids.shape[1])
        start = 0
        if cache is not None:
            if attention_mask is not None:
                raise ValueError("attention_mask (padding) is not supported together with a cache")
            start = _check_cache(cache, c, self.layers, input_ids, self.embed_tokens.weight.dtype)
        if c.mask == "prefix" and prefix_len is None:
            if cache is not None and start > 0:
                raise ValueError("a prefix LM continuing from a cache needs prefix_len (absolute positions)")
            prefix_len = start + input_ids.shape[1]
        if c.mask != "prefix" and prefix_len is not None:
            raise ValueError(
                f"prefix_len is only meaningful for a prefix LM (config.mask='prefix'), got mask={c.mask!r}"
            )
        key_padding_mask = None
        if attention_mask is not None:
            key_padding_mask = _check_0_1_mask("attention_mask", attention_mask, input_ids, "input_ids")
        if cache is not None and _head and not (return_hidden or return_attn or token_type_ids is not None):
            logits = decode.step(self, input_ids, cache, logits_to_keep)  # a few new tokens: one C call
            if logits is None:  # many (a prompt): the same operations, matrix products by oneDNN
                logits = prefill.forward(self, input_ids, cache, logits_to_keep)
            if logits is not None:
                return logits
        N = input_ids.shape[1]
        rope = None
        if c.pos == "rope":
            rope = self.rope(start, N, input_ids.device, self.embed_tokens.weight.dtype)
        x = self._embed(input_ids, start, token_type_ids)
        hidden, attns = [x], []
        for i, layer in enumerate(self.layers):
            x, probs = layer(
                x,
                mask=c.mask,
                prefix_len=prefix_len,
                rope=rope,
                cache=cache,
                layer=i,
                key_padding_mask=key_padding_mask,
                return_attn=return_attn,
                _checked=True,
            )
            hidden.append(x)
            attns.append(probs)
        if c.final_norm:
            x = self.norm(x)
            hidden[-1] = x
        if cache is not None:
            cache.commit(input_ids)
        if c.lm_head and _head:  # _head=False: the final hidden states (anatomy.train fuses head and loss)
            out = self.lm_head(x[:, -logits_to_keep:] if logits_to_keep else x)
        else:
            out = x[:, -logits_to_keep:] if logits_to_keep else x
        if return_hidden or return_attn:
            return ModelOutput(
                out, tuple(hidden) if return_hidden else None, tuple(attns) if return_attn else None
            )
        return out


# Argument checks shared by the models above.


def _check_ids(input_ids, vocab_size: int, name: str = "input_ids") -> None:
    if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (
        torch.long,
        torch.int32,
        torch.int64,
    ):
        raise TypeError(
            f"{name} must be an integer torch.Tensor of shape (B, N), got "
            f"{type(input_ids).__name__} {getattr(input_ids, 'dtype', '')}"
        )
    if input_ids.dim() != 2 or input_ids.shape[1] == 0 or input_ids.shape[0] == 0:
        raise ValueError(f"{name} must have shape (B, N) with B, N >= 1, got {tuple(input_ids.shape)}")
    lo, hi = (int(t) for t in torch.aminmax(input_ids))
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"{name} must be token ids in [0, {vocab_size}), got values in [{lo}, {hi}]")


def _check_0_1_mask(name: str, mask, like: torch.Tensor, like_name: str) -> torch.Tensor:
    """A (B, N) padding mask shaped like ``like``, holding only 0/1 (or False/True) -> bool tensor."""
    check_tensor(name, mask)
    if mask.is_complex():
        raise TypeError(f"{name} must hold 0/1 or bools, got {mask.dtype}")
    if tuple(mask.shape) != tuple(like.shape):
        raise ValueError(
            f"{name} must have the shape of {like_name} {tuple(like.shape)}, got {tuple(mask.shape)}"
        )
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"{name} must hold only 0 (padding) and 1 (a real token)")
        mask = mask.bool()
    return mask


def _check_config(config) -> Config:
    if not isinstance(config, Config):
        raise TypeError(f"config must be an anatomy Config, got {type(config).__name__}")
    return config


def _check_cache(cache, config: Config, layers: nn.Module, input_ids: torch.Tensor, dtype) -> int:
    """Validate a KV cache for this model (computing in dtype), these new ids; claim it; -> tokens cached."""
    if not isinstance(cache, KVCache):
        raise TypeError(
            f"cache must be an anatomy.KVCache (from model.new_cache()), got {type(cache).__name__}"
        )
    c = config
    if (cache.n_layers, cache.n_kv_heads, cache.head_dim) != (c.n_layers, c.n_kv_heads, c.head_dim):
        raise ValueError(
            "cache was made for a model of another shape "
            f"(layers, kv heads, head_dim = {cache.n_layers}, {cache.n_kv_heads}, {cache.head_dim})"
        )
    if cache.dtype != dtype:  # the model's attention no longer checks that q, k, v share a dtype
        raise TypeError(f"cache holds {cache.dtype} keys and values, the model computes {dtype}")
    cache.check_append(input_ids)
    cache.claim(layers)  # refuses a cache another model filled
    return len(cache)


def _check_logits_to_keep(logits_to_keep, n: int) -> int:
    return check_int("logits_to_keep", logits_to_keep, lo=0, hi=n)
