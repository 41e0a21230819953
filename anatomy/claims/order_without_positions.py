"""The chapter "Order without positions": the claims it tests."""

from __future__ import annotations

import torch

from anatomy.claims import claim


def _untrained(mask: str):
    """The small NoPE transformer both checks use, freshly initialised from seed 0."""
    from anatomy import Config, Transformer

    torch.manual_seed(0)
    config = Config(
        vocab_size=64, d_model=64, n_layers=2, n_heads=4, mask=mask, pos="none", norm="layer", mlp="gelu"
    )
    return Transformer(config).eval()


def _permutation() -> dict:
    from anatomy.experiments import positions

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 64, (4, 32), generator=g)
    perm = torch.randperm(32, generator=g)
    out = {}
    for mask in ("bidirectional", "causal"):
        model = _untrained(mask)
        out[f"permutation_gap_{mask}"] = max(positions.permutation_gap(model, x, perm)["relative"])
    return out


def _probe() -> dict:
    from anatomy.experiments import positions

    ids = torch.randint(0, 64, (512, 64), generator=torch.Generator().manual_seed(1))
    out = {}
    for mask in ("causal", "bidirectional"):
        model = _untrained(mask)
        out[f"probe_r2_init_{mask}"] = positions.position_probe(
            model, ids, kind="attn_logvar", target="log_position"
        )["r2"]
    return out


claim(
    "order_without_positions.bidirectional_order_blind",
    seeds=("004",),
    claim="A model with bidirectional attention and no position encoding cannot tell word orders apart: "
    "tokens can be swapped without changing what it computes.",
    verdict="supported",
    measure="a bidirectional NoPE transformer is permutation-equivariant to float rounding, a position probe "
    "finds nothing in it, and a trained bidirectional NoPE masked LM is unaffected by shuffling its context "
    "and stays far above the same model with RoPE",
    papers=("haviv2022transformer",),
    quick=_permutation,
)

claim(
    "order_without_positions.causal_implicit_position",
    seeds=("004",),
    claim="Causal attention carries position information by itself, without a position encoding.",
    verdict="supported",
    measure="held-out R^2 of a position probe: high from the log-variance of the first attention output at "
    "initialisation and from the raw hidden state after training (causal), near zero (bidirectional)",
    papers=("haviv2022transformer", "chi2023latent", "kazemnejad2023impact"),
    quick=_probe,
)

claim(
    "order_without_positions.nope_learns_order",
    seeds=("004",),
    claim="A causal model without position encoding still learns order-dependent structure, so the causal "
    "mask gives decoders an implicit position encoding.",
    verdict="supported with caveats",
    measure="on an order-2 Markov source the causal NoPE model uses order (shuffling its context raises its "
    "loss by more than 5 standard errors) and ends below 0.9 times the order-1 optimum's excess, but learns "
    "more slowly than with RoPE at this scale",
    papers=("haviv2022transformer",),
)
