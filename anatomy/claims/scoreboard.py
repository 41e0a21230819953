"""The chapter "Path dependence, and the scoreboard": the claim it weighs."""

from __future__ import annotations

from anatomy.claims import claim

claim(
    "scoreboard.path_dependence",
    seeds=("003", "004"),
    claim="Decoder-only won partly by path dependence: OpenAI's head start with GPT and its scaling laws, "
    "and tools (Megatron-LM, FlashAttention) that support causal attention better.",
    verdict="not testable here",
    measure="nothing: history cannot be re-run, and kernel parity or tile counts bear on cost, not on how "
    "the field chose; the chapter discusses the premises instead (FlashAttention's interface has a causal "
    "switch and no prefix-LM mask, so it served decoders and encoders alike and left out prefix LMs)",
    papers=(
        "radford2018improving",
        "kaplan2020scaling",
        "dao2022flashattention",
        "dao2023flashattention2",
        "shoeybi2019megatron",
        "dong2024flex",
    ),
)
