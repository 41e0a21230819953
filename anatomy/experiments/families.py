"""Three families: probes of a pretrained model that show what each mask lets a token see."""

from __future__ import annotations

import torch

from anatomy.model import Transformer

__all__ = ["prefix_state_change"]


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
