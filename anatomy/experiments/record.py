"""The record: the sources' claims about published results and use, checked.

Three kinds of evidence live here. The *record*: what the primary papers report, transcribed with the
BibTeX key of each source, next to what seed 002 says they report. *Counts* made with the book's own
models: parameters of published encoder and encoder-decoder shapes (instantiated on the meta device, so
no memory is used), the FLOPs of cross-attention, the bytes of each family's KV cache with and without
grouped-query attention. And three small *experiments*: exposure bias measured exactly on a Markov
source, an encoder-decoder against decoders at equal FLOPs and at equal parameters, and SmolLM2 sentence
embeddings next to MiniLM on a small paraphrase-retrieval set written for this chapter.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from anatomy._checks import check_instance, check_positive_int, is_int
from anatomy.book.tables import html_table
from anatomy.cache import kv_cache_bytes
from anatomy.cost import forward_flops
from anatomy.encoder_decoder import EncoderDecoder
from anatomy.model import Config, Transformer

# ---------------------------------------------------------------------------------------------------------
# The record: seed 002's benchmark statements against the primary sources
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One statement of a source, and what the primary paper reports."""

    topic: str
    seed_says: str
    record: str
    keys: tuple[str, ...]  # BibTeX keys of the primary sources
    status: str  # "wrong setting", "wrong number", "not published", "wrong size", "correct"


SEED002_TABLES = (
    Entry(
        "GPT-2 (117M) fine-tuned on GLUE tasks",
        "MNLI 78.2, SST-2 88.7, STS-B 82.1 for GPT-2 117M, 5-10 points behind BERT-base",
        "GPT-2 was evaluated zero-shot only, never fine-tuned on GLUE. The same-size GPT of 2018 was: "
        "MNLI-m 82.1, SST-2 91.3, STS-B 80.0 against BERT-base's 84.6, 93.5, 85.8 (2-6 points)",
        ("radford2019language", "radford2018improving", "devlin2019bert"),
        "not published",
    ),
    Entry(
        "BERT-base on CoNLL-03 NER",
        "92.8 F1",
        "92.8 is BERT-large's test F1; BERT-base's is 92.4",
        ("devlin2019bert",),
        "wrong number",
    ),
    Entry(
        "DeBERTa vs GPT-3",
        "DeBERTa-large beats GPT-3 on several benchmarks 'when both are fine-tuned'",
        "GPT-3 was never fine-tuned: it was evaluated zero-, one- and few-shot (SuperGLUE test, few-shot: "
        "71.8). Fine-tuned DeBERTa (1.5B) scored 89.9 single / 90.3 ensemble on SuperGLUE",
        ("brown2020language", "he2021deberta"),
        "wrong setting",
    ),
    Entry(
        "DeBERTa-v3-large's SuperGLUE score",
        "91.4 on SuperGLUE",
        "91.37 is DeBERTaV3-large's average on the GLUE development sets; the paper reports no "
        "SuperGLUE score",
        ("he2023debertav3", "wang2019superglue"),
        "wrong number",
    ),
    Entry(
        "GPT-4 on MMLU and HellaSwag",
        "86.4 and 95.3, zero-shot",
        "86.4% is 5-shot (MMLU) and 95.3% is 10-shot (HellaSwag)",
        ("openai2023gpt4", "hendrycks2021measuring"),
        "wrong setting",
    ),
    Entry(
        "GPT-4 on SuperGLUE",
        "93.8",
        "the GPT-4 report gives no SuperGLUE score",
        ("openai2023gpt4",),
        "not published",
    ),
    Entry(
        "GPT-4's size",
        "rumored ~1.8T MoE",
        "the report discloses no size or architecture details",
        ("openai2023gpt4",),
        "not published",
    ),
    Entry(
        "The largest encoder",
        "~1.5B (DeBERTa-xxl)",
        "XLM-R XXL has 10.7B parameters and Megatron-BERT 3.9B (counted below)",
        ("goyal2021larger", "shoeybi2019megatron", "he2021deberta"),
        "wrong size",
    ),
    Entry(
        "The largest encoder-decoder",
        "11B (T5)",
        "UL2 has 20B (listed in the same seed's own table), mT5-XXL 13B; Switch-C, a sparse "
        "encoder-decoder, 1.6T (counted below)",
        ("tay2023ul2", "xue2021mt5", "fedus2022switch", "raffel2020exploring"),
        "wrong size",
    ),
    Entry(
        "Nomic Embed",
        "a decoder-derived embedding model",
        "nomic-embed-text-v1 is a BERT-style encoder trained from scratch",
        ("nussbaum2024nomic",),
        "wrong setting",
    ),
)


# Short author-year labels for the HTML tables (a notebook output cannot use the {cite} role).
SHORT_CITES = {
    "radford2018improving": "Radford et al. 2018",
    "radford2019language": "Radford et al. 2019",
    "devlin2019bert": "Devlin et al. 2019",
    "brown2020language": "Brown et al. 2020",
    "he2021deberta": "He et al. 2021",
    "he2023debertav3": "He et al. 2023",
    "wang2019superglue": "Wang et al. 2019",
    "openai2023gpt4": "OpenAI 2023",
    "hendrycks2021measuring": "Hendrycks et al. 2021",
    "goyal2021larger": "Goyal et al. 2021",
    "shoeybi2019megatron": "Shoeybi et al. 2019",
    "tay2023ul2": "Tay et al. 2023",
    "xue2021mt5": "Xue et al. 2021",
    "fedus2022switch": "Fedus et al. 2022",
    "raffel2020exploring": "Raffel et al. 2020",
    "nussbaum2024nomic": "Nussbaum et al. 2024",
    "sanh2022multitask": "Sanh et al. 2022",
    "chung2022scaling": "Chung et al. 2022",
    "zhang2025encoder": "Zhang et al. 2025",
    "wang2022what": "Wang et al. 2022",
    "artetxe2022role": "Artetxe et al. 2022",
}


def short_cite(keys) -> str:
    """'Devlin et al. 2019; Brown et al. 2020' for a sequence of BibTeX keys (the key itself if unknown)."""
    if isinstance(keys, str):
        keys = (keys,)
    if not isinstance(keys, (tuple, list)) or not all(isinstance(k, str) for k in keys):
        raise TypeError(f"keys must be a citation key or a sequence of them, got {keys!r}")
    if not keys:
        raise ValueError("keys must hold at least one citation key")
    return "; ".join(SHORT_CITES.get(k, k) for k in keys)


def record_html(entries=SEED002_TABLES, cite=None) -> str:
    """The record as an HTML table, each status coloured. cite(keys) -> str formats the source column
    (default: :func:`short_cite`)."""
    cite = cite or short_cite
    colour = {
        "correct": "#d8f0d8",
        "not published": "#f8d4d4",
        "wrong setting": "#f8d4d4",
        "wrong number": "#f8d4d4",
        "wrong size": "#f8d4d4",
    }
    for e in entries:
        if e.status not in colour:
            raise ValueError(f"unknown status {e.status!r}")
    rows = [[e.topic, e.seed_says, e.record, e.status, cite(e.keys)] for e in entries]
    styles = [[None, None, None, f"background:{colour[e.status]};color:#1a1a1a", None] for e in entries]
    return html_table(
        ["what", "seed 002 says", "the primary source", "status", "source"],
        rows,
        widths=[17, 22, 37, 11, 13],
        styles=styles,
    )


# Instruction-tuned and adapted encoder-decoders against "T5 needed fine-tuning" (seeds 000, 004).
# (model, family, params in billions, setting, what the paper reports, compared with, BibTeX key)
ENCDEC_RECORD = (
    (
        "T0",
        "encoder-decoder",
        11,
        "zero-shot, held-out tasks",
        "matches or beats GPT-3 (175B) on most of its held-out datasets after multitask prompted training",
        "GPT-3 175B",
        "sanh2022multitask",
    ),
    (
        "Flan-T5-XL",
        "encoder-decoder",
        3,
        "5-shot MMLU",
        "52.4% against GPT-3 175B's 43.9%",
        "GPT-3 175B",
        "chung2022scaling",
    ),
    (
        "UL2 20B",
        "encoder-decoder",
        20,
        "zero-shot SuperGLUE, one-shot summarization",
        "beats GPT-3 175B on zero-shot SuperGLUE; also does chain-of-thought prompting",
        "GPT-3 175B",
        "tay2023ul2",
    ),
    (
        "T5Gemma",
        "encoder-decoder adapted from Gemma 2",
        9,
        "pretraining and instruction tuning",
        "the adapted encoder-decoders match or beat their decoder-only Gemma 2 counterparts at similar "
        "inference cost",
        "Gemma 2",
        "zhang2025encoder",
    ),
)

# Controlled architecture comparisons that exist (seed 004: "none at tens to hundreds of billions").
# (study, what was compared, largest compared model in billions of parameters, what it found, BibTeX key).
# UL2's size is that of its architecture ablations (about 1B, our reading); its 20B model was one run.
COMPARISONS = (
    (
        "Raffel et al. 2020 (T5)",
        "~220M-scale variants",
        0.22,
        "encoder-decoder with denoising best on their fine-tuned benchmarks at equal FLOPs",
        "raffel2020exploring",
    ),
    (
        "Wang et al. 2022",
        "causal, non-causal decoders and encoder-decoders",
        5.0,
        "causal decoder + LM best zero-shot after pretraining alone; after multitask finetuning, "
        "non-causal models with masked LM best",
        "wang2022what",
    ),
    (
        "Artetxe et al. 2022",
        "bidirectional vs unidirectional",
        6.7,
        "bidirectional attention helps fine-tuning and infilling, hurts next-token prediction and priming",
        "artetxe2022role",
    ),
    (
        "Tay et al. 2023 (UL2)",
        "decoder vs encoder-decoder, several objectives",
        1.0,
        "the objective matters more than the architecture; encoder-decoders with the UL2 mixture best at "
        "matched compute; scaled to a 20B encoder-decoder",
        "tay2023ul2",
    ),
)


# ---------------------------------------------------------------------------------------------------------
# Counting published shapes with the book's model classes
# ---------------------------------------------------------------------------------------------------------


def _bert(vocab, d, layers, heads, d_ff, name) -> Config:
    return Config(
        vocab_size=vocab,
        d_model=d,
        n_layers=layers,
        n_heads=heads,
        d_ff=d_ff,
        mask="bidirectional",
        norm="layer",
        norm_position="post",
        pos="learned",
        max_seq_len=512,
        mlp="gelu",
        qkv_bias=True,
        out_bias=True,
        mlp_bias=True,
        lm_head=False,
        embed_norm=True,
        extra={"name": name},
    )


def _t5(vocab, d, layers, heads, head_dim, d_ff, gated, tied, name) -> Config:
    return Config(
        vocab_size=vocab,
        d_model=d,
        n_layers=layers,
        n_heads=heads,
        head_dim=head_dim,
        d_ff=d_ff,
        mlp="swiglu" if gated else "gelu",
        norm="rms",
        pos="none",
        tie_embeddings=tied,
        extra={"name": name},
    )


# (name, family, config, published size in billions, BibTeX key). Shapes from the papers and their
# released configs; T5's relative-position biases and DeBERTa's relative embeddings (< 0.1% of the weights)
# are left out, and a gated GELU counts like SwiGLU (three matrices).
PUBLISHED_SHAPES = (
    (
        "DeBERTa-v2-xxlarge",
        "encoder",
        _bert(128100, 1536, 48, 24, 6144, "DeBERTa-v2-xxlarge"),
        1.5,
        "he2021deberta",
    ),
    (
        "Megatron-BERT 3.9B",
        "encoder",
        _bert(30592, 2560, 48, 40, 10240, "Megatron-BERT"),
        3.9,
        "shoeybi2019megatron",
    ),
    ("XLM-R XXL", "encoder", _bert(250002, 4096, 48, 32, 16384, "XLM-R XXL"), 10.7, "goyal2021larger"),
    (
        "T5-11B",
        "encoder-decoder",
        _t5(32128, 1024, 24, 128, 128, 65536, False, True, "T5-11B"),
        11.0,
        "raffel2020exploring",
    ),
    (
        "mT5-XXL",
        "encoder-decoder",
        _t5(250112, 4096, 24, 64, 64, 10240, True, False, "mT5-XXL"),
        13.0,
        "xue2021mt5",
    ),
    (
        "UL2 20B",
        "encoder-decoder",
        _t5(32128, 4096, 32, 16, 256, 16384, True, False, "UL2"),
        20.0,
        "tay2023ul2",
    ),
)


def count_params(config: Config, family: str) -> int:
    """Every parameter of a model of this shape, counted from an instance on the meta device (no memory)."""
    if family not in ("decoder", "encoder", "encoder-decoder"):
        raise ValueError(f"family must be 'decoder', 'encoder' or 'encoder-decoder', got {family!r}")
    if not isinstance(config, Config):
        raise TypeError(f"config must be an anatomy Config, got {type(config).__name__}")
    with torch.device("meta"):  # no values: the model skips its initialisation there
        model = EncoderDecoder(config) if family == "encoder-decoder" else Transformer(config)
    return sum(p.numel() for p in model.parameters())  # tied weights are one Parameter, counted once


def published_sizes() -> list[dict]:
    """Counted vs published sizes of the largest encoders and encoder-decoders."""
    out = []
    for name, family, config, published, key in PUBLISHED_SHAPES:
        n = count_params(config, family)
        out.append(
            {
                "name": name,
                "family": family,
                "counted": n,
                "published_b": published,
                "error": n / (published * 1e9) - 1,
                "key": key,
            }
        )
    return out


def cross_attention_share(config: Config, n_source: int, n_target: int) -> dict[str, float]:
    """FLOPs of one encoder-decoder forward pass over a (source, target) pair, split by part.

    The encoder runs n_source tokens bidirectionally; the decoder n_target tokens causally with a
    cross-attention to the source in every layer (query/output projections on the target tokens, key/value
    projections on the source tokens, scores and weighted values over n_target x n_source pairs).
    """
    c = check_instance("config", config, Config, "an anatomy Config")
    check_positive_int("n_source", n_source)
    check_positive_int("n_target", n_target)
    enc = forward_flops(replace(c, lm_head=False), n_source, mask="bidirectional", logits="none")["total"]
    self_part = forward_flops(replace(c, lm_head=False), n_target, mask="causal", logits="none")["total"]
    inner, kv_inner = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    cross = c.n_layers * (
        2 * n_target * 2 * c.d_model * inner
        + 2 * n_source * 2 * c.d_model * kv_inner
        + 4 * inner * n_target * n_source
    )
    head = 2 * n_target * c.d_model * c.vocab_size
    total = enc + self_part + cross + head
    return {
        "encoder": enc / total,
        "decoder_self_and_mlp": self_part / total,
        "cross_attention": cross / total,
        "head": head / total,
        "total_flops": float(total),
    }


# ---------------------------------------------------------------------------------------------------------
# MQA / GQA in each family's cache, measured with the book's cache
# ---------------------------------------------------------------------------------------------------------


@torch.no_grad()
def cache_bytes_by_family(
    n_source: int = 48,
    n_target: int = 16,
    n_heads: int = 8,
    kv_heads=(8, 2, 1),
    d_model: int = 64,
    n_layers: int = 2,
    seed: int = 0,
) -> list[dict]:
    """Bytes held after reading a source and writing a target, for each family and each number of KV heads.

    decoder: one cache over source + target; encoder-decoder: the decoder's self-attention cache over the
    target plus the cross-attention keys/values of the source (``KVCache.cross``); encoder: no cache (it
    runs once over its input and generates nothing). Real forward passes of small random models.
    """
    for name, v in (("n_source", n_source), ("n_target", n_target), ("n_heads", n_heads)):
        if not is_int(v) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if isinstance(kv_heads, (str, bytes)) or not kv_heads:
        raise ValueError(f"kv_heads must be a non-empty sequence of ints, got {kv_heads!r}")
    for h in kv_heads:
        check_positive_int("kv_heads", h)
        if n_heads % h:
            raise ValueError(f"kv_heads must divide n_heads={n_heads}, got {h}")
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(0, 64, (1, n_source), generator=g)
    tgt = torch.randint(0, 64, (1, n_target), generator=g)
    rows = []
    for hkv in kv_heads:
        cfg = Config(vocab_size=64, d_model=d_model, n_layers=n_layers, n_heads=n_heads, n_kv_heads=hkv)
        torch.manual_seed(seed)
        dec = Transformer(cfg).eval()
        cache = dec.new_cache()
        dec(torch.cat([src, tgt], 1), cache=cache)
        ed = EncoderDecoder(cfg).eval()
        ed_cache = ed.new_cache()
        ed(tgt, cache=ed_cache, encoder_input_ids=src)
        cross = sum(k.numel() * k.element_size() * 2 for k, _ in ed_cache.cross)
        rows.append(
            {
                "n_kv_heads": hkv,
                "decoder": cache.nbytes,
                "encoder_decoder": ed_cache.nbytes,
                "encoder_decoder_cross": cross,
                "encoder": 0,
                "formula_decoder": kv_cache_bytes(n_layers, hkv, cfg.head_dim, n_source + n_target, 4),
            }
        )
    return rows
