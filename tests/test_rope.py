"""RoPE: in every model with pos="rope", attention scores depend on the query-key distance alone.

Su et al.'s rotary embedding rotates each query and key by an angle proportional to its position, so that
q_i . k_j depends on i - j only. The test shifts the whole input by s positions (s filler tokens in front)
and compares the first layer's scores q_i . k_j, as the attention kernel receives them, with those of the
unshifted input: in the first layer q and k depend on their own token only, so the scores must agree to
float rounding. A model whose "rotation" is not one (chapter 7's model once passed a plain sin where a
sign-flipped one was expected: q . k then depended on i + j as well) fails by orders of magnitude.
"""

from __future__ import annotations

import pytest
import torch

import anatomy.model
from anatomy import Config, Transformer
from anatomy.encoder_decoder import EncoderDecoder
from anatomy.experiments.icl import AttentionOnly
from anatomy.model import Rope, RopeTable, _rotate
from anatomy.moe import moe_decoder

V, N, SHIFTS = 32, 12, (1, 5, 17)
TOL = 1e-5  # relative to the largest score; float32 rounding gives ~1e-7, the broken rotation ~1e-1


def _config(**kw) -> Config:
    # init_std 0.5: scores of order one, so that a position-dependent error is not hidden by tiny weights
    base = dict(
        vocab_size=V,
        d_model=32,
        n_layers=2,
        n_heads=2,
        n_kv_heads=1,
        max_seq_len=64,
        pos="rope",
        norm="layer",
        init_std=0.5,
        rope_theta=100.0,
    )
    return Config(**{**base, **kw})


def _encdec(ids: torch.Tensor, model: EncoderDecoder):
    return model(ids, encoder_input_ids=ids)


# Every model class in anatomy that can have pos="rope"; each entry: name, constructor, how to run it,
# and which of its attention-kernel calls are first-layer self-attention (the ones whose q and k depend
# on their own token only).
MODELS = {
    "Transformer causal": (lambda: Transformer(_config()), lambda ids, m: m(ids), (0,)),
    "Transformer bidirectional": (
        lambda: Transformer(_config(mask="bidirectional")),
        lambda ids, m: m(ids),
        (0,),
    ),
    "Transformer prefix": (
        lambda: Transformer(_config(mask="prefix")),
        lambda ids, m: m(ids, prefix_len=3),
        (0,),
    ),
    "Transformer post-norm": (
        lambda: Transformer(_config(norm_position="post", norm="rms")),
        lambda ids, m: m(ids),
        (0,),
    ),
    # calls: encoder layers 0, 1, then decoder layer 0 self, layer 0 cross, layer 1 self, layer 1 cross
    "EncoderDecoder": (lambda: EncoderDecoder(_config()), _encdec, (0, 2)),
    "icl.AttentionOnly": (lambda: AttentionOnly(_config()), lambda ids, m: m(ids), (0,)),
    "moe.moe_decoder": (lambda: moe_decoder(_config(), n_routed=4, top_k=2), lambda ids, m: m(ids), (0,)),
}


def _first_layer_scores(model, run, ids: torch.Tensor, which: tuple[int, ...], monkeypatch):
    """q . k^T (B, H, N, N) of the chosen attention-kernel calls, as the kernel receives q and k."""
    calls = []
    kernel = anatomy.model.attention

    def spy(q, k, v, mask, **kw):
        calls.append((q.detach().clone(), k.detach().clone()))
        return kernel(q, k, v, mask, **kw)

    fast = anatomy.model._self_attention  # the model's own self-attention skips attention()'s checks

    def spy_fast(q, k, v, mask, backend, tile):
        calls.append((q.detach().clone(), k.detach().clone()))
        return fast(q, k, v, mask, backend, tile)

    monkeypatch.setattr(anatomy.model, "attention", spy)
    monkeypatch.setattr(anatomy.model, "_self_attention", spy_fast)
    with torch.no_grad():
        run(ids, model.eval())
    monkeypatch.undo()
    out = []
    for i in which:
        q, k = calls[i]
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # grouped-query: one K per group of heads
        out.append((q @ k.transpose(-1, -2)).double())
    return out


@pytest.mark.parametrize("name", list(MODELS))
def test_scores_depend_on_distance_alone(name, monkeypatch):
    make, run, which = MODELS[name]
    torch.manual_seed(0)
    model = make()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, V, (2, N), generator=g)
    base = _first_layer_scores(model, run, ids, which, monkeypatch)
    for s in SHIFTS:
        shifted = torch.cat([torch.zeros(2, s, dtype=torch.long), ids], dim=1)  # the pattern at s..s+N-1
        moved = _first_layer_scores(model, run, shifted, which, monkeypatch)
        for a, b in zip(base, moved):
            err = float((b[..., s:, s:] - a).abs().max() / a.abs().max())
            assert err < TOL, f"{name}: shifting the input by {s} changed the scores by {err:.2e} (relative)"


@pytest.mark.parametrize("name", list(MODELS))
def test_scores_do_depend_on_distance(name, monkeypatch):
    """The control: the same token pair at two distances gets different scores (there is a rotation)."""
    make, run, which = MODELS[name]
    torch.manual_seed(0)
    model = make()
    ids = torch.full((1, N), 7)  # one token everywhere: any difference between scores comes from positions
    for scores in _first_layer_scores(model, run, ids, which, monkeypatch):
        row = scores[0, :, N - 1]  # the last query against keys at distances N-1 .. 0
        assert float((row - row[:, -1:]).abs().max() / row.abs().max()) > 1e-2


def _reference_rotation(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """RoPE written out pair by pair (Su et al. 2021, Llama's (i, i + D/2) pairing), in float64."""
    D = x.shape[-1]
    inv_freq = theta ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    angle = positions.double()[:, None] * inv_freq[None, :]
    x1, x2 = x[..., : D // 2].double(), x[..., D // 2 :].double()
    return torch.cat([x1 * angle.cos() - x2 * angle.sin(), x2 * angle.cos() + x1 * angle.sin()], dim=-1)


def test_rope_table_rotates():
    table = RopeTable(8, 10_000.0)
    x = torch.randn(2, 3, 5, 8)
    for start in (0, 3, 300):  # 300: past the first table size, so the table grows
        rope = table(start, 5, "cpu", torch.float32)
        got = _rotate(x, rope)
        want = _reference_rotation(x, torch.arange(start, start + 5), 10_000.0)
        torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got.norm(dim=-1), x.norm(dim=-1))  # a rotation keeps lengths


def test_rotate_takes_only_a_rope_table():
    table = RopeTable(8, 10_000.0)
    rope = table(0, 4, "cpu", torch.float32)
    assert isinstance(rope, Rope)
    x = torch.randn(1, 1, 4, 8)
    with pytest.raises(TypeError, match="rope"):
        _rotate(x, (rope.cos, rope.sin_signed))  # plain tables in some layout: refused
    attn = anatomy.model.Attention(_config())
    with pytest.raises(TypeError, match="rope"):
        attn(torch.randn(1, 4, 32), mask="causal", rope=(rope.cos, rope.sin_signed))
    with pytest.raises(ValueError, match="head_dim"):
        RopeTable(7, 10_000.0)
    with pytest.raises(ValueError, match="theta"):
        RopeTable(8, 0.0)
