"""The chapter "Training signal density": the claims it tests."""

from __future__ import annotations

import torch

from anatomy.claims import claim


def _shares() -> dict:
    from anatomy.data import MarkovSource
    from anatomy.objectives import OBJECTIVES, SpecialTokens, make_batch, signal

    source = MarkovSource(32, order=1, alpha=0.1, seed=0)
    special = SpecialTokens(32, 8)
    seqs = source.sample(32, 64, torch.Generator().manual_seed(0))
    out = {}
    for objective in OBJECTIVES:
        batch = make_batch(objective, seqs, special, generator=torch.Generator().manual_seed(1))
        s = signal(batch, seqs.numel(), special)
        out[f"{objective}_share"] = s.share
        out[f"{objective}_text_share"] = s.text_share
    return out


def _difficulty() -> dict:
    from anatomy.data import MarkovSource
    from anatomy.experiments.signal_density import bayes_loss
    from anatomy.objectives import SpecialTokens, causal_lm_batch, masked_lm_batch

    source = MarkovSource(32, order=1, alpha=0.1, seed=0)
    special = SpecialTokens(32, 8)
    seqs = source.sample(32, 64, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    masked = masked_lm_batch(seqs, special, selection="bernoulli", generator=g)
    return {
        "bayes_causal_per_target": float(bayes_loss("causal", source, causal_lm_batch(seqs)).mean()),
        "bayes_masked_per_target": float(bayes_loss("masked", source, masked, special).mean()),
    }


claim(
    "signal_density.signal_share",
    seeds=("002",),
    claim="A decoder gets a training signal from every token, BERT only from the 15% it masks.",
    verdict="supported",
    measure="a definition, not a measurement: the causal LM puts a loss on every position that has a left "
    "context, BERT's masked LM on round(15%) of the positions; the check counts the labels of real batches "
    "of Shakespeare built by anatomy.objectives and requires them to match these definitions",
    papers=("devlin2019bert", "radford2018improving"),
    quick=_shares,
)

claim(
    "signal_density.t5_half_signal",
    seeds=("002",),
    claim="An encoder-decoder such as T5 gets a training signal from about half of the tokens.",
    verdict="contradicted",
    measure="arithmetic on T5's default configuration (15% noise, mean span 3): the decoder predicts the "
    "noise tokens, one sentinel per span and an EOS, far from half of the positions (the check: the labels "
    "of a real span-corruption batch match that arithmetic and cover under 35% of the text); half is what "
    "a prefix LM with a uniformly random split gets",
    papers=("raffel2020exploring", "dong2019unified"),
    quick=_shares,
)

claim(
    "signal_density.task_difficulty",
    seeds=("003", "004"),
    claim="Next-token prediction is a harder task than filling in blanks, because each position sees less.",
    verdict="supported",
    measure="on a Markov source with exact answers, the Bayes-optimal loss per target is higher for the "
    "causal LM than for BERT's masked LM (which sees both sides); whether the harder task teaches more is a "
    "separate question, answered only partly by the experiments below",
    papers=("devlin2019bert",),
    quick=_difficulty,
)

claim(
    "signal_density.density_compute",
    seeds=("002",),
    claim="Because a decoder learns from 100% of tokens and BERT from 15%, a decoder extracts far more "
    "learning from the same data (6.7 times as many training signals).",
    verdict="supported with caveats",
    measure="same model, task and batches, only the share of supervised positions changed: 15% needs "
    "more compute than 100% (over 1.2x) to reach the same excess loss over the exact Bayes optimum, but "
    "less than 6.7 times as much (a power-law fit to each curve), at two budgets of the same runs; 50% "
    "sits in between",
    papers=("devlin2019bert", "clark2020electra", "wettig2023should"),
)

claim(
    "signal_density.equal_compute",
    seeds=("002", "003", "004"),
    claim="At equal compute a decoder learns more from the same data than an encoder (MLM) or a prefix LM.",
    verdict="supported with caveats",
    measure="small models trained on the same Shakespeare windows at equal counted FLOPs, each asked the "
    "same questions with the same visible text; only models that have left their plateau (0.2 nats below "
    "a context-free model) are compared: the decoder has lower held-out continuation and infilling losses "
    "than the encoder and the prefix LM (infilling by more than two standard errors of the paired "
    "difference), and beats a twin that keeps only 15% of its labels; the caveats are a tiny budget and "
    "objectives that differ in more than density",
    papers=("raffel2020exploring", "wang2022what", "tay2023ul2"),
)

claim(
    "signal_density.equal_compute_encoder_decoder",
    seeds=("002", "003", "004"),
    claim="At equal compute a decoder learns more from the same data than an encoder-decoder trained with "
    "span corruption.",
    verdict="not testable here",
    measure="nothing is asserted: at the chapter's budget the small encoder-decoder has not left its "
    "plateau (its continuation loss stays within 0.2 nats of a model that ignores the context), so its "
    "loss measures how far it is from using its context, not what span corruption teaches",
    papers=("raffel2020exploring", "tay2023ul2"),
)
