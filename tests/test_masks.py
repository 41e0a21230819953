"""Mask predicates, their dense form, the tile classifier and the FLOP counter."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from anatomy.masks import EMPTY, FULL, PARTIAL, causal_tile_ideal, count_tiles, dense_mask, tile_map


def test_dense_masks_by_hand():
    causal = dense_mask("causal", 4, 4)
    assert torch.equal(causal, torch.tril(torch.ones(4, 4, dtype=torch.bool)))
    assert dense_mask("bidirectional", 3, 5).all()
    prefix = dense_mask("prefix", 5, 5, prefix_len=3)
    assert prefix[:, :3].all() and not prefix[3, 4] and prefix[4, 4]
    # A query block at the end of a cache: bottom-right aligned by default.
    block = dense_mask("causal", 2, 5)
    assert block.tolist() == [[True, True, True, True, False], [True] * 5]
    assert torch.equal(dense_mask("causal", 2, 5, q_offset=0), torch.tril(torch.ones(2, 5, dtype=torch.bool)))


@settings(max_examples=60, deadline=None)
@given(
    mask=st.sampled_from(["causal", "bidirectional", "prefix"]),
    nk=st.integers(1, 70),
    nq_frac=st.floats(0.01, 1.0),
    tq=st.integers(1, 32),
    tk=st.integers(1, 32),
    data=st.data(),
)
def test_tile_map_agrees_with_dense(mask, nk, nq_frac, tq, tk, data):
    nq = max(1, int(nk * nq_frac))
    q_offset = data.draw(st.integers(0, nk - nq))
    prefix_len = data.draw(st.integers(0, nk)) if mask == "prefix" else None
    dense = dense_mask(mask, nq, nk, q_offset=q_offset, prefix_len=prefix_len)
    tmap = tile_map(mask, nq, nk, tile=(tq, tk), q_offset=q_offset, prefix_len=prefix_len)
    for i in range(tmap.shape[0]):
        for j in range(tmap.shape[1]):
            block = dense[i * tq : (i + 1) * tq, j * tk : (j + 1) * tk]
            expected = FULL if block.all() else EMPTY if not block.any() else PARTIAL
            assert tmap[i, j] == expected


@pytest.mark.parametrize("n,tile", [(2048, 128), (4096, 128), (1000, 64)])
def test_causal_counts_match_the_ideal(n, tile):
    c = count_tiles("causal", n, n, 64, tile=tile)
    t = -(-n // tile)
    assert c.tiles_total == t * t
    assert c.tiles_empty == t * (t - 1) // 2 and c.tiles_partial == t
    if n % tile == 0:
        assert c.computed_fraction == pytest.approx(causal_tile_ideal(t))
    assert c.flops_needed == n * (n + 1) // 2 * 4 * 64
    assert c.flops_needed <= c.flops_computed <= c.flops_dense
    full = count_tiles("bidirectional", n, n, 64, tile=tile)
    assert full.tiles_empty == 0 and full.flops_computed == full.flops_dense == full.flops_needed


def test_prefix_counts_between_causal_and_full():
    causal = count_tiles("causal", 1024, 1024, 64)
    prefix = count_tiles("prefix", 1024, 1024, 64, prefix_len=512)
    full = count_tiles("bidirectional", 1024, 1024, 64)
    assert causal.flops_computed < prefix.flops_computed < full.flops_computed


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(mask="sliding"), "mask must be one of"),
        (dict(mask="prefix"), "needs prefix_len"),
        (dict(mask="prefix", prefix_len=99), r"prefix_len must be in \[0, 8\]"),
        (dict(mask="prefix", prefix_len=-1), r"prefix_len must be in \[0, 8\]"),
        (dict(mask="causal", prefix_len=2), "only meaningful"),
        (dict(mask="causal", tile=0), "tile must be a positive int"),
    ],
)
def test_bad_arguments(kwargs, match):
    mask = kwargs.pop("mask")
    with pytest.raises(ValueError, match=match):
        tile_map(mask, 8, 8, **kwargs)


def test_prefix_len_type():
    with pytest.raises(TypeError, match="prefix_len must be an int"):
        dense_mask("prefix", 4, 4, prefix_len=2.0)


def test_bad_sizes_are_value_errors_naming_the_argument():
    # dense_mask with a negative size was a RuntimeError, count_tiles with 0 rows an IndexError, and a
    # negative head_dim gave negative FLOP counts.
    from anatomy import kv_cache_bytes

    for call, name in (
        (lambda: dense_mask("causal", -1, 4), "n_queries"),
        (lambda: dense_mask("causal", 4, -2), "n_keys"),
        (lambda: count_tiles("causal", 0, 4, 8), "n_queries"),
        (lambda: count_tiles("causal", 4, 4, -8), "head_dim"),
        (lambda: tile_map("causal", 4, 0), "n_keys"),
        (lambda: kv_cache_bytes(2, 2, 64, n_tokens=-5), "n_tokens"),
        (lambda: kv_cache_bytes(-2, 2, 64), "n_layers"),
    ):
        with pytest.raises(ValueError, match=name):
            call()
    assert dense_mask("causal", 0, 3).shape == (0, 3)  # empty is fine


def test_huge_tile_is_one_tile_without_allocating_it():
    # The tile map padded to whole tiles: tile=10**9 asked for 10**18 entries.
    assert tile_map("causal", 5, 7, tile=10**9).tolist() == [[PARTIAL]]
    assert tile_map("causal", 5, 7, tile=(10**9, 3)).shape == (1, 3)
