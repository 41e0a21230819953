"""The chapter "The causal kernel": the claims it tests."""

from __future__ import annotations

import torch

from anatomy.claims import claim


def _tile_fraction() -> dict:
    from anatomy import attention, count_tiles
    from anatomy.masks import causal_tile_ideal

    c = count_tiles("causal", 2048, 2048, 64, tile=128)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, 256, 64, generator=g) for _ in range(3))
    exact = attention(q.double(), k.double(), v.double(), "causal", backend="reference")
    err = (attention(q, k, v, "causal", backend="tiled", tile=64).double() - exact).abs().max().item()
    return {
        "computed_fraction_2048": c.computed_fraction,
        "tile_ideal_2048": causal_tile_ideal(16),
        "tiled_max_err": err,
    }


def _whole_model_saving() -> dict:
    from anatomy.experiments.causal_kernel import PRESETS, causal_saving

    return {
        "saving_smollm2_2k": causal_saving(PRESETS["SmolLM2-135M"], 2048),
        "saving_llama3_70b_8k": causal_saving(PRESETS["Llama-3-70B"], 8192),
        "saving_gpt3_2k": causal_saving(PRESETS["GPT-3 175B"], 2048),
    }


claim(
    "causal_kernel.lower_triangle_cheap",
    seeds=("000", "003", "004"),
    claim="With a causal mask the attention matrix is lower triangular, and kernels such as FlashAttention "
    "exploit it: the upper triangle is never computed, so causal attention costs about half of full "
    "attention.",
    verdict="supported",
    measure="a tiled kernel computes (T+1)/2T of the dense tiles (counted); the Triton kernel loads exactly "
    "the non-empty tiles and matches float64 within 1e-5; our tiled kernel's causal/full CPU time at "
    "N = 2048 (median of back-to-back ratios, one thread) stays within a quarter of the counted (T+1)/2T",
    papers=("dao2022flashattention", "dao2023flashattention2", "milakov2018online", "tillet2019triton"),
    quick=_tile_fraction,
)

claim(
    "causal_kernel.throughput_decides",
    seeds=("000",),
    claim="Because causal training computes only a lower-triangular matrix, decoder-only models get the "
    "highest training throughput on GPUs, an advantage that decides which architecture survives at scale.",
    verdict="contradicted",
    measure="skipping the upper triangle saves less than 10% of a whole forward pass for Llama-3-70B at 8k "
    "context and GPT-3 at 2k (counted FLOPs, LM head included); on a small anatomy model timed at 2,048 "
    "tokens (CPU time of one thread), the measured whole-model saving does not exceed the counted one by "
    "more than 10 points (on this CPU the count does not understate what the mask saves in time)",
    papers=("brown2020language", "allal2025smollm2", "kaplan2020scaling", "hoffmann2022training"),
    quick=_whole_model_saving,
)
