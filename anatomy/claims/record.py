"""The chapter "The record": claims about published results and how models are used."""

from __future__ import annotations

from anatomy.claims import claim


def _sizes() -> dict:
    from anatomy.experiments.record import SEED002_TABLES, published_sizes

    sizes = published_sizes()
    enc = max(s["counted"] for s in sizes if s["family"] == "encoder")
    encdec = max(s["counted"] for s in sizes if s["family"] == "encoder-decoder")
    return {
        "largest_encoder_over_seed": enc / 1.5e9,
        "largest_encdec_over_seed": encdec / 11e9,
        "max_count_error": max(abs(s["error"]) for s in sizes),
        "statements_checked": len(SEED002_TABLES),
        "statements_wrong": sum(e.status != "correct" for e in SEED002_TABLES),
    }


def _instruction_tuned() -> dict:
    from anatomy.experiments.record import ENCDEC_RECORD

    return {
        "flan_t5_xl_mmlu_5shot": 52.4,
        "gpt3_175b_mmlu_5shot": 43.9,
        "largest_encdec_in_record_b": max(r[2] for r in ENCDEC_RECORD),
    }


def _gqa() -> dict:
    from anatomy.experiments.record import cache_bytes_by_family

    rows = {r["n_kv_heads"]: r for r in cache_bytes_by_family()}
    return {
        "decoder_saving_gqa": rows[8]["decoder"] / rows[2]["decoder"],
        "encdec_saving_gqa": rows[8]["encoder_decoder"] / rows[2]["encoder_decoder"],
        "encdec_cross_saving_mqa": rows[8]["encoder_decoder_cross"] / rows[1]["encoder_decoder_cross"],
        "encoder_cache_bytes": rows[8]["encoder"],
    }


def _cross_share() -> dict:
    from anatomy.experiments.record import PUBLISHED_SHAPES, cross_attention_share

    shapes = {name: cfg for name, _, cfg, _, _ in PUBLISHED_SHAPES}
    return {
        "t5_11b_cross_share": cross_attention_share(shapes["T5-11B"], 512, 512)["cross_attention"],
        "ul2_cross_share": cross_attention_share(shapes["UL2 20B"], 512, 512)["cross_attention"],
    }


def _comparisons() -> dict:
    from anatomy.experiments.record import COMPARISONS

    return {"largest_controlled_comparison_b": max(c[2] for c in COMPARISONS), "studies": len(COMPARISONS)}


claim(
    "record.seed002_tables",
    seeds=("002",),
    claim="Seed 002's benchmark tables: GPT-2 (117M) fine-tuned on GLUE trails BERT-base by 5-10 points; "
    "DeBERTa beats GPT-3 'when both are fine-tuned'; DeBERTa-v3 scores 91.4 on SuperGLUE; GPT-4 "
    "scores 86.4 on MMLU zero-shot; the largest encoder has ~1.5B parameters and the largest "
    "encoder-decoder 11B.",
    verdict="contradicted",
    measure="each statement checked against its primary paper: none of the statements holds as stated (wrong "
    "setting, wrong number, or not published); counted with the book's model classes, the largest "
    "published encoder (XLM-R XXL) is > 5x the seed's 1.5B and the largest dense encoder-decoder "
    "(UL2) > 1.5x its 11B, with every count within 5% of the published size",
    papers=(
        "radford2019language",
        "devlin2019bert",
        "brown2020language",
        "he2021deberta",
        "he2023debertav3",
        "openai2023gpt4",
        "goyal2021larger",
        "tay2023ul2",
    ),
    quick=_sizes,
)

claim(
    "record.t5_needed_finetuning",
    seeds=("000", "004"),
    claim="Encoder-decoders such as T5 needed fine-tuning to perform on unseen tasks, while a decoder can "
    "follow a prompt zero- or few-shot.",
    verdict="supported with caveats",
    measure="true of T5 as released, which was evaluated after fine-tuning; not of the architecture: in the "
    "record, instruction-tuned encoder-decoders of 3-20B match or beat the 175B GPT-3 zero- or "
    "few-shot (Flan-T5-XL, 3B: 52.4% vs 43.9% on 5-shot MMLU), and T5Gemma (2025) turns "
    "decoders into encoder-decoders that match them",
    papers=("raffel2020exploring", "sanh2022multitask", "chung2022scaling", "tay2023ul2", "zhang2025encoder"),
    quick=_instruction_tuned,
)

claim(
    "record.exposure_bias",
    seeds=("002",),
    claim="Causal attention is generation: a decoder does at inference exactly what it was trained for, so "
    "there is no gap between training and inference.",
    verdict="supported with caveats",
    measure="the next-token distribution used at inference is the one trained, but the contexts differ: a "
    "decoder trained on a Markov source (exact next-token laws known) makes larger per-token errors "
    "KL(p || q) on contexts it wrote itself than on real ones (early in training: ratio > 1, paired "
    "z > 3 over 1,024 sequences), and the gap shrinks in absolute terms as the model learns (a "
    "perfect model has none)",
    papers=("bengio2015scheduled", "ranzato2016sequence"),
)

claim(
    "record.encdec_budget",
    seeds=("002",),
    claim="An encoder-decoder must split a fixed parameter budget between encoder and decoder, with no "
    "obvious answer; a decoder-only model avoids the decision.",
    verdict="supported with caveats",
    measure="the split is a real extra choice, but counted with the book's models an L + L encoder-decoder "
    "holds about 2.3x the parameters of an L-layer decoder at about the same training FLOPs per step "
    "(ratio 0.8-1.3), so 'a fixed parameter budget' is not a fixed compute budget; in a small "
    "continuation task trained at equal steps, every model learns (excess loss < half the "
    "untrained model's) and the ranking is reported, not asserted",
    papers=("raffel2020exploring", "wang2022what"),
)

claim(
    "record.gqa_not_decoder_only",
    seeds=("002",),
    claim="MQA, GQA and the other KV-cache optimizations are decoder-specific; encoders do not need them.",
    verdict="supported with caveats",
    measure="an encoder keeps no cache, so there is nothing to save; but the saving is not decoder-only: "
    "measured with the book's cache, an encoder-decoder's cache (self-attention and cross-attention "
    "keys and values) shrinks by exactly n_heads / n_kv_heads, as a decoder's does, and GQA was "
    "introduced by uptraining T5 encoder-decoder checkpoints",
    papers=("shazeer2019fast", "ainslie2023gqa"),
    quick=_gqa,
)

claim(
    "record.decoder_embeddings",
    seeds=("002",),
    claim="Decoder-derived embedding models (LLM2Vec, GritLM) have caught up with encoders for embeddings.",
    verdict="supported with caveats",
    measure="the papers report it after contrastive training (and, for LLM2Vec, bidirectional attention) of "
    "7B decoders; out of the box, on the chapter's 20 paraphrase pairs, MiniLM (22M, trained for "
    "embeddings) retrieves at least as well as SmolLM2 (135M) pooled any of four ways (top-1 and "
    "MRR), at less than a third of the FLOPs per sentence",
    papers=(
        "behnamghader2024llm2vec",
        "muennighoff2024generative",
        "reimers2019sentence",
        "jiang2023scaling",
    ),
)

claim(
    "record.cross_attention_bottleneck",
    seeds=("000",),
    claim="Cross-attention between encoder and decoder is a severe compute and communication bottleneck in "
    "distributed training.",
    verdict="not testable here",
    measure="communication in distributed training cannot be measured on one CPU; what can be counted: "
    "cross-attention is < 25% of the forward FLOPs of T5-11B and of UL2 at 512 + 512 tokens, less "
    "than the encoder or the decoder's own layers",
    papers=("raffel2020exploring", "tay2023ul2"),
    quick=_cross_share,
)

claim(
    "record.decoder_cannot_plan",
    seeds=("000",),
    claim="A decoder cannot decide in advance what it will generate as a whole; it only ever picks the most "
    "probable next token.",
    verdict="not testable here",
    measure="whether a decoder plans ahead is a question about its hidden states that no experiment here "
    "answers (Pal et al. 2023 decode later tokens from one state); the measurable half is about "
    "decoding, not architecture: sampling from the chapter's decoder picks a token other than the "
    "most probable one more than 10% of the time",
    papers=("pal2023future",),
)

claim(
    "record.no_large_comparison",
    seeds=("004",),
    claim="At tens to hundreds of billions of parameters, no systematic comparison shows that decoder-only "
    "is best.",
    verdict="supported",
    measure="the controlled comparisons of architectures and objectives in the record stop below 10B "
    "parameters (Wang et al. 2022: about 5B; Artetxe et al. 2022: 6.7B), and what they found depends "
    "on the setting (zero-shot after pretraining favours the causal decoder; after multitask "
    "finetuning, non-causal models)",
    papers=("wang2022what", "artetxe2022role", "tay2023ul2", "tay2023scaling"),
    quick=_comparisons,
)
