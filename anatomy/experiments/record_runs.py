"""The record's measurements: exposure bias, equal-budget runs, sentence embeddings."""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import torch

from anatomy._checks import check_float, check_instance, check_int, is_int
from anatomy.cost import forward_flops
from anatomy.data import MarkovSource
from anatomy.encoder_decoder import EncoderDecoder
from anatomy.experiments.parallel import run_all
from anatomy.generate import generate
from anatomy.metrics import score_on_source
from anatomy.model import Config, Transformer
from anatomy.objectives import train_step_flops
from anatomy.train import train

# ---------------------------------------------------------------------------------------------------------
# Exposure bias, measured exactly on a Markov source
# ---------------------------------------------------------------------------------------------------------


@dataclass
class ExposureRun:
    steps: list[int]
    kl_teacher: list[float]  # mean KL(p || q) per token on contexts from the data
    kl_free: list[float]  # the same on contexts the model wrote itself (sampled at temperature 1)
    z: list[float]  # paired z-score of the difference, over sequences
    curve_teacher: np.ndarray  # final model: KL by position
    curve_free: np.ndarray
    nonargmax_share: float  # share of sampled tokens that were not the model's most probable token
    entropy_rate: float
    prompt: int


def exposure_bias(
    seed: int = 0,
    *,
    vocab_size: int = 12,
    order: int = 2,
    alpha: float = 0.1,
    steps: int = 300,
    n_eval: int = 1024,
    prompt: int = 8,
    length: int = 64,
    d_model: int = 48,
    lr: float = 1e-2,
    temperature: float = 1.0,
    progress: bool = False,
) -> ExposureRun:
    """Train a small decoder on a Markov source; compare its error on data contexts and on its own.

    At several points of training, ``n_eval`` held-out sequences are scored teacher-forced (every prefix
    from the data), and the model continues their first ``prompt`` tokens itself, sampling at temperature 1;
    the continuation is then scored on the prefixes it wrote. With the source's exact next-token
    distribution p, the per-token error KL(p || q) needs no sampling of targets, so the two numbers differ
    only through the contexts they are measured on: the gap that teacher forcing never sees.
    """
    if not is_int(steps) or steps < 4:
        raise ValueError(f"steps must be an int >= 4, got {steps!r}")
    if not 1 <= prompt < length:
        raise ValueError(f"prompt must be in [1, length), got {prompt!r}")
    check_float("temperature", temperature, lo=0, lo_open=True)
    source = MarkovSource(vocab_size, order=order, alpha=alpha, seed=seed)
    torch.manual_seed(seed)
    model = Transformer(
        Config(vocab_size=vocab_size, d_model=d_model, n_layers=2, n_heads=4, max_seq_len=128)
    )
    test = source.sample(n_eval, length + 1, torch.Generator().manual_seed(10_000 + seed))
    last = {}

    def evaluate(m):
        tf = score_on_source(m, source, test)["kl"][:, prompt:]
        gen = generate(
            m,
            test[:, :prompt],
            length + 1 - prompt,
            temperature=temperature,
            generator=torch.Generator().manual_seed(20_000 + seed),
        )
        m.eval()
        logits = m(gen[:, :-1])
        fr = score_on_source(lambda x: logits, source, gen)["kl"][:, prompt:]  # the same forward, once
        diff = fr.mean(1) - tf.mean(1)
        last.update(
            tf=tf,
            fr=fr,
            nonargmax=float((logits[:, prompt - 1 :].argmax(-1) != gen[:, prompt:]).double().mean()),
        )
        return {
            "kl_teacher": float(tf.mean()),
            "kl_free": float(fr.mean()),
            "z": float(diff.mean() / (diff.std() / len(diff) ** 0.5)),
        }

    hist = train(
        model,
        source.token_batches(32, length, seed=seed),
        steps=steps,
        lr=lr,
        eval_fn=evaluate,
        eval_every=steps // 6,
        eval_at_start=False,
        progress=progress,
        seed=seed,
    )
    steps_ = [s for s, _ in hist.evals]
    get = lambda k: [e[k] for _, e in hist.evals]
    return ExposureRun(
        steps_,
        get("kl_teacher"),
        get("kl_free"),
        get("z"),
        last["tf"].mean(0).numpy(),
        last["fr"].mean(0).numpy(),
        last["nonargmax"],
        source.entropy_rate(),
        prompt,
    )


# ---------------------------------------------------------------------------------------------------------
# The encoder-decoder's parameter budget: equal FLOPs, equal parameters
# ---------------------------------------------------------------------------------------------------------


@dataclass
class BudgetRun:
    name: str
    family: str
    layers: str
    params: int  # non-embedding
    flops_per_step: int  # counted matmul FLOPs of one training step (forward + backward)
    excess: float  # final mean KL(p || q) per target token, exactly (nats)
    curve: list[tuple[int, float]]
    initial: float  # the same before training


def _continuation_batches(source: MarkovSource, batch: int, n_source: int, n_target: int, seed: int):
    """step -> (decoder-only batch, encoder-decoder batch) on the same sequences: continue a source text."""
    from anatomy.objectives import Seq2SeqBatch

    bos = source.vocab_size  # the encoder-decoder's decoder-start token (an extra id, unused by the decoder)

    def make(step: int):
        seqs = source.sample(batch, n_source + n_target, torch.Generator().manual_seed(seed * 100_003 + step))
        x, y = seqs[:, :-1], seqs[:, 1:].clone()
        y[
            :, : n_source - 1
        ] = -100  # the decoder is scored on the continuation only, like the encoder-decoder
        tgt = seqs[:, n_source:]
        dec_in = torch.cat([torch.full((batch, 1), bos), tgt[:, :-1]], 1)
        return (x, y), Seq2SeqBatch(seqs[:, :n_source], dec_in, tgt)

    return make


@torch.no_grad()
def _continuation_kl(model, family: str, source: MarkovSource, seqs: torch.Tensor, n_source: int) -> float:
    from anatomy.metrics import kl_to_source, markov_conditionals

    p = markov_conditionals(source, seqs[:, :-1])[:, n_source - 1 :]  # true next-token laws at the targets
    p = torch.cat([p, torch.zeros(*p.shape[:2], 1, dtype=p.dtype)], -1)  # the extra BOS id: probability 0
    model.eval()
    if family == "decoder":
        logits = model(seqs[:, :-1])[:, n_source - 1 :]
    else:
        tgt = seqs[:, n_source:]
        dec_in = torch.cat([torch.full((len(seqs), 1), source.vocab_size), tgt[:, :-1]], 1)
        logits = model(dec_in, encoder_input_ids=seqs[:, :n_source])
    return float(kl_to_source(logits, p).mean())


def budget_runs(
    seed: int = 0,
    *,
    layers: int = 2,
    d_model: int = 64,
    steps: int = 120,
    batch: int = 24,
    n_source: int = 32,
    n_target: int = 32,
    lr: float = 1e-2,
    vocab_size: int = 8,
    alpha: float = 0.2,
    order: int = 1,
    progress: bool = False,
) -> list[BudgetRun]:
    """A decoder of ``layers`` layers, an encoder-decoder of layers + layers, and a decoder of 2 x layers,
    trained on the same continuation task (read n_source tokens of a Markov source, predict the next
    n_target) with the same steps and batches. The first two cost about the same FLOPs per step, the
    last two hold about the same parameters. Excess loss is measured exactly against the source."""
    from anatomy.objectives import span_corruption_loss
    from anatomy.train import next_token_loss

    check_int("layers", layers, lo=1)
    source = MarkovSource(vocab_size, order=order, alpha=alpha, seed=seed)
    make = _continuation_batches(source, batch, n_source, n_target, seed)
    held = source.sample(256, n_source + n_target, torch.Generator().manual_seed(50_000 + seed))
    base = Config(
        vocab_size=source.vocab_size + 1,
        d_model=d_model,
        n_layers=layers,
        n_heads=4,
        max_seq_len=n_source + n_target,
    )
    specs = [
        (f"decoder, {layers} layers", "decoder", str(layers), base),
        (f"encoder-decoder, {layers} + {layers}", "encoder-decoder", f"{layers} + {layers}", base),
        (f"decoder, {2 * layers} layers", "decoder", str(2 * layers), replace(base, n_layers=2 * layers)),
    ]

    def one(name: str, family: str, depth: str, cfg: Config) -> BudgetRun:
        torch.manual_seed(seed)
        model = Transformer(cfg) if family == "decoder" else EncoderDecoder(cfg)
        pick = 0 if family == "decoder" else 1
        loss = next_token_loss if family == "decoder" else span_corruption_loss
        flops = train_step_flops(model, loss, make(0)[pick])
        initial = _continuation_kl(model, family, source, held, n_source)
        hist = train(
            model,
            lambda step: make(step)[pick],
            steps=steps,
            lr=lr,
            loss_fn=loss,
            eval_fn=lambda m: _continuation_kl(m, family, source, held, n_source),
            eval_every=steps // 4,
            eval_at_start=False,
            progress=progress,
            seed=seed,
        )
        curve = [(s, e["loss"]) for s, e in hist.evals]
        return BudgetRun(name, family, depth, model.num_params(), flops, curve[-1][1], curve, initial)

    # the runs share nothing (each seeds itself): one process per core, the same results as a loop
    jobs = [partial(one, *spec) for spec in specs]
    runs = run_all(jobs) if not progress else [job() for job in jobs]
    return runs


# ---------------------------------------------------------------------------------------------------------
# Sentence embeddings: a decoder used as an embedder, next to a trained encoder
# ---------------------------------------------------------------------------------------------------------

# Twenty sentence pairs written for this chapter: each query and its paraphrase share little wording. Ten
# distractors reuse the queries' words with another meaning. A tiny set: it can show large differences only.
PARAPHRASES = (
    ("The meeting was moved to next Tuesday.", "They rescheduled the gathering for the following week."),
    ("She forgot her umbrella and got soaked.", "Without anything to cover her, the rain drenched her."),
    ("The bakery sells out of bread by noon.", "By midday there are no loaves left at the baker's."),
    ("He fixed the leaking tap in the kitchen.", "The dripping faucet by the sink was repaired by him."),
    (
        "Prices at the supermarket rose sharply this year.",
        "Groceries have become much more expensive lately.",
    ),
    ("The train was delayed because of snow.", "Heavy snowfall made the railway service run late."),
    ("My phone battery dies after a few hours.", "The charge on my mobile runs out very quickly."),
    ("The children played football in the park.", "Kids were kicking a ball around on the green."),
    ("The museum is closed on Mondays.", "You cannot visit the gallery at the start of the week."),
    ("He has been learning to play the violin.", "He is taking lessons on a string instrument."),
    ("The company hired fifty new engineers.", "The firm took on dozens of technical staff."),
    (
        "The soup was far too salty to eat.",
        "There was so much salt in the broth that nobody could finish it.",
    ),
    (
        "Our flight was cancelled at the last minute.",
        "The airline called off the trip just before departure.",
    ),
    (
        "The river flooded the village after the storm.",
        "Water poured into the town's streets once the storm passed.",
    ),
    (
        "She finished the marathon in under four hours.",
        "Her time for the 42-kilometre race was below four hours.",
    ),
    ("The library extended its opening hours.", "You can now borrow books later in the evening."),
    ("The doctor told him to get more sleep.", "His physician advised him to rest longer at night."),
    (
        "The old bridge is being replaced.",
        "Work has begun on a new crossing to take the place of the old one.",
    ),
    ("They planted tomatoes in the garden.", "Tomato seedlings went into the vegetable patch."),
    ("The printer ran out of ink again.", "Once more the cartridges in the printer are empty."),
)
DISTRACTORS = (
    "The meeting of the two rivers is next to the old mill.",
    "She bought an umbrella stand for the hall.",
    "The train station has a small bakery.",
    "The kitchen tap water tastes of chlorine.",
    "The supermarket car park is full on Saturdays.",
    "My phone has a photo of the park at noon.",
    "The museum's football collection is closed for repairs.",
    "The company's engineers play the violin in a band.",
    "The flight attendant served soup to the passengers.",
    "The doctor planted a garden by the bridge.",
)


def embedding_set() -> tuple[list[str], list[str], list[int]]:
    """(queries, documents, index of each query's paraphrase among the documents)."""
    queries = [q for q, _ in PARAPHRASES]
    docs = [d for _, d in PARAPHRASES] + list(DISTRACTORS)
    return queries, docs, list(range(len(PARAPHRASES)))


def retrieval_scores(query_emb: torch.Tensor, doc_emb: torch.Tensor, gold: list[int]) -> dict[str, float]:
    """Top-1 accuracy and mean reciprocal rank of cosine-similarity retrieval."""
    for name, emb in (("query_emb", query_emb), ("doc_emb", doc_emb)):
        if not isinstance(emb, torch.Tensor) or not emb.is_floating_point():
            raise TypeError(f"{name} must be a float tensor (N, d), got {type(emb).__name__}")
        if emb.dim() != 2:
            raise ValueError(f"{name} must be (N, d), got shape {tuple(emb.shape)}")
    if doc_emb.shape[1] != query_emb.shape[1]:
        raise ValueError(f"doc_emb must have the width of query_emb, got {doc_emb.shape[1]}")
    if not isinstance(gold, (list, tuple)):
        raise TypeError(f"gold must be a list of document indices, got {type(gold).__name__}")
    if len(gold) != len(query_emb):
        raise ValueError(f"gold must hold one document index per query ({len(query_emb)}), got {len(gold)}")
    for g in gold:
        check_int("gold", g, lo=0, hi=len(doc_emb) - 1)
    q = torch.nn.functional.normalize(query_emb.double(), dim=-1)
    d = torch.nn.functional.normalize(doc_emb.double(), dim=-1)
    sims = q @ d.T
    gold_t = torch.tensor(gold)
    rank = (sims > sims[torch.arange(len(gold)), gold_t][:, None]).sum(1) + 1
    return {"top1": float((rank == 1).double().mean()), "mrr": float((1.0 / rank.double()).mean())}


PROMPT = 'This sentence: "{}" means in one word: "'  # PromptEOL (Jiang et al. 2023)


@torch.no_grad()
def decoder_embeddings(model: Transformer, tokenizer, sentences, *, prompt: str | None = None) -> dict:
    """Sentence embeddings from a decoder's last hidden states: the mean over the sentence's positions and
    the last position's state. With ``prompt`` (a format string with one ``{}``), the sentence is wrapped
    in it first and only the last position is meaningful. Right padding: a causal model's real positions
    never see the padding after them, so no mask is needed. -> {"mean": (N, d), "last": (N, d)}"""
    if prompt is not None and prompt.count("{}") != 1:
        raise ValueError(f"prompt must contain exactly one '{{}}', got {prompt!r}")
    check_instance("model", model, Transformer, "an anatomy Transformer")
    if isinstance(sentences, str):
        raise TypeError("sentences must be a sequence of str, got one str")
    if not sentences:
        raise ValueError("sentences must not be empty")
    texts = [prompt.format(s) if prompt else s for s in sentences]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    n = max(len(i) for i in ids)
    batch = torch.tensor([i + [0] * (n - len(i)) for i in ids])
    # (N, n, d), after the final norm; the LM head runs on the last position only (its logits go unused)
    hidden = model.eval()(batch, return_hidden=True, logits_to_keep=1).hidden_states[-1]
    lengths = torch.tensor([len(i) for i in ids])
    real = (torch.arange(n)[None, :] < lengths[:, None]).to(hidden.dtype)
    mean = (hidden * real[..., None]).sum(1) / lengths[:, None]
    last = hidden[torch.arange(len(ids)), lengths - 1]
    return {"mean": mean, "last": last}


def embedding_comparison(decoder, decoder_tokenizer, encoder, encoder_tokenizer) -> dict[str, dict]:
    """Retrieval scores on :func:`embedding_set` for the encoder (mean pooling, as trained) and for the
    decoder pooled four ways: mean or last position, without and with the PromptEOL prompt. Each entry also
    has ``flops``: counted forward FLOPs per sentence (mean over the set), without the LM head."""
    from anatomy.experiments.encoder_niche import sentence_embeddings

    check_instance("decoder", decoder, Transformer, "an anatomy Transformer")
    check_instance("encoder", encoder, Transformer, "an anatomy Transformer")
    queries, docs, gold = embedding_set()
    sentences = queries + docs

    def flops(model, lengths) -> float:
        cfg = replace(model.config, lm_head=False)
        return float(np.mean([forward_flops(cfg, n, mask=cfg.mask, logits="none")["total"] for n in lengths]))

    enc_len = [len(encoder_tokenizer(s)["input_ids"]) for s in sentences]
    out = {
        "MiniLM, mean": retrieval_scores(
            sentence_embeddings(encoder, encoder_tokenizer, queries),
            sentence_embeddings(encoder, encoder_tokenizer, docs),
            gold,
        )
    }
    out["MiniLM, mean"]["flops"] = flops(encoder, enc_len)
    for label, prompt in (("", None), (" + prompt", PROMPT)):
        eq = decoder_embeddings(decoder, decoder_tokenizer, queries, prompt=prompt)
        ed = decoder_embeddings(decoder, decoder_tokenizer, docs, prompt=prompt)
        dec_len = [
            len(decoder_tokenizer(prompt.format(s) if prompt else s, add_special_tokens=False)["input_ids"])
            for s in sentences
        ]
        for pool in ("mean", "last"):
            out[f"SmolLM2, {pool}{label}"] = retrieval_scores(eq[pool], ed[pool], gold)
            out[f"SmolLM2, {pool}{label}"]["flops"] = flops(decoder, dec_len)
    return out
