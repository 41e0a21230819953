"""The fourth family: a bidirectional encoder and a causal decoder that cross-attends to its output.

Built from the same ``Block`` as :class:`anatomy.model.Transformer` (a decoder block here also has
``cross_attn``); Vaswani et al. (2017), T5 (Raffel et al. 2020).
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn as nn

from anatomy._checks import check_positive_int
from anatomy.cache import KVCache
from anatomy.model import (
    Block,
    Config,
    RopeTable,
    Transformer,
    _check_0_1_mask,
    _check_cache,
    _check_config,
    _check_ids,
    _check_logits_to_keep,
    _Model,
    make_norm,
)

__all__ = ["EncoderDecoder"]


class EncoderDecoder(_Model):
    """A bidirectional encoder and a causal decoder that cross-attends to it (Vaswani et al. 2017; T5).

    ``model(decoder_ids, encoder_input_ids=src)`` -> logits (B, N_dec, vocab). Token embeddings are shared.
    With a cache, the encoder runs once per source and its cross-attention keys/values are kept; only new
    decoder tokens are computed. A different source needs a new cache (the encoding would change).
    """

    def __init__(self, config: Config, n_decoder_layers: int | None = None) -> None:
        super().__init__()
        _check_config(config)
        check_positive_int("n_decoder_layers", n_decoder_layers, none=True)
        self.config = config
        self.encoder = Transformer(replace(config, mask="bidirectional", lm_head=False))
        self.embed_tokens = self.encoder.embed_tokens
        dec = replace(config, mask="causal", n_layers=n_decoder_layers or config.n_layers)
        self.decoder_config = dec
        if dec.pos == "learned":
            self.embed_positions = nn.Embedding(dec.max_seq_len, dec.d_model)
        self.layers = nn.ModuleList(Block(dec, cross=True) for _ in range(dec.n_layers))
        if dec.final_norm:
            self.norm = make_norm(dec)
        self.rope = RopeTable(dec.head_dim, dec.rope_theta) if dec.pos == "rope" else None
        self.lm_head = nn.Linear(dec.d_model, dec.vocab_size, bias=False)
        if dec.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        for module in [*self.layers, self.lm_head] + ([self.embed_positions] if dec.pos == "learned" else []):
            module.apply(self._init_weights)
        self._scale_residual_init(self.layers)

    def encode(self, encoder_input_ids: torch.Tensor, encoder_attention_mask: torch.Tensor | None = None):
        """The encoder's output (B, N_src, d) and each decoder layer's cross-attention keys/values."""
        _check_ids(encoder_input_ids, self.decoder_config.vocab_size, "encoder_input_ids")
        memory = self.encoder(encoder_input_ids, attention_mask=encoder_attention_mask)
        return memory, [layer.cross_attn.project_kv(memory) for layer in self.layers]

    def forward(
        self,
        input_ids: torch.Tensor,
        cache: KVCache | None = None,
        *,
        encoder_input_ids: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        logits_to_keep: int = 0,
    ) -> torch.Tensor:
        """Decoder ids (B, N) given source ids (B, N_src) -> logits (B, N, vocab).

        logits_to_keep: if > 0, logits only for the last that many positions (as in ``Transformer``).
        """
        c = self.decoder_config
        _check_ids(input_ids, c.vocab_size)
        _check_ids(encoder_input_ids, c.vocab_size, "encoder_input_ids")
        if encoder_input_ids.shape[0] != input_ids.shape[0]:
            raise ValueError(
                f"encoder_input_ids has batch size {encoder_input_ids.shape[0]}, "
                f"input_ids has {input_ids.shape[0]}"
            )
        _check_logits_to_keep(logits_to_keep, input_ids.shape[1])
        pad = None
        if encoder_attention_mask is not None:
            pad = _check_0_1_mask(
                "encoder_attention_mask", encoder_attention_mask, encoder_input_ids, "encoder_input_ids"
            )
        start = 0
        if cache is not None:
            start = _check_cache(cache, c, self.layers, input_ids, self.embed_tokens.weight.dtype)
            if cache.source is not None and not torch.equal(cache.source, encoder_input_ids):
                raise ValueError(
                    "the source differs from the one this cache encoded; an encoder-decoder must "
                    "re-encode a changed source (use a new cache)"
                )
        if cache is not None and cache.cross is not None:
            cross = cache.cross
        else:
            _, cross = self.encode(encoder_input_ids, pad)
            if cache is not None:
                cache.cross, cache.source = cross, encoder_input_ids.clone()
        N = input_ids.shape[1]
        x = self.embed_tokens(input_ids)
        rope = None
        if c.pos == "learned":
            x = x + self.embed_positions(torch.arange(start, start + N, device=x.device))
        elif c.pos == "rope":
            rope = self.rope(start, N, x.device, x.dtype)
        own = dict(mask="causal", rope=rope, cache=cache, _checked=True)  # self-attention's arguments
        for i, layer in enumerate(self.layers):
            x, _ = layer(x, layer=i, cross_kv=cross[i], cross_padding_mask=pad, **own)
        if c.final_norm:
            x = self.norm(x)
        if cache is not None:
            cache.commit(input_ids)
        return self.lm_head(x[:, -logits_to_keep:] if logits_to_keep else x)
