"""The chapter "In-context learning and zero-shot": the claims it tests."""

from __future__ import annotations

from anatomy.claims import claim


def _dual_form() -> dict:
    from anatomy.experiments.dual_form import dual_form

    r = dual_form(seed=0)
    return {
        "linear_max_diff": r.max_abs_diff_linear,
        "plain_softmax_rel_err": r.rel_err_plain_softmax,
        "rel_err_at_scale_1": r.rel_err_softmax[1.0],
    }


claim(
    "in_context_learning.induction_phase_change",
    seeds=("000", "002"),
    claim="In-context learning emerges from decoder pretraining: a model trained to continue text learns to "
    "use what its prompt shows it.",
    verdict="supported",
    measure="a 2-layer attention-only decoder (RoPE) trained on random sequences shown twice: the loss on "
    "the second copy starts near ln V and stays above 0.9 ln V for longer than it then takes to fall below "
    "0.5 ln V (a steady decay would take 5.6x longer), ending below 0.35 ln V; a previous-token head "
    "(layer 1) and a prefix-matching induction head (layer 2) each get half-way to their final score "
    "within two evaluations of that fall, with no prefix matching in layer 1",
    papers=("olsson2022context",),
)

claim(
    "in_context_learning.encoder_in_context",
    seeds=("002",),
    claim="Only a decoder learns in context: BERT cannot, because it is trained to fill in blanks, not to "
    "continue text.",
    verdict="contradicted",
    measure="the same 2-layer attention-only model trained as a masked LM (BERT's objective, bidirectional "
    "mask) on the same sequences, steps and schedule fills a masked slot of the second copy from the first: "
    "accuracy above 10% (chance 1/64) and loss below 0.8 ln V (a model blind to the first copy: ln V); it "
    "learns more slowly than the decoder, whose loss is lower at the same step and at the same number of "
    "training targets. The toy shows the mechanism only; the claim is refuted at scale by a masked LM "
    "prompted with demonstrations (Samuel 2024) and by encoder-decoders (T0, Flan-T5, UL2)",
    papers=("devlin2019bert", "samuel2024berts", "sanh2022multitask", "chung2022scaling", "tay2023ul2"),
)

claim(
    "in_context_learning.smollm2_in_context",
    seeds=("000", "002"),
    claim="A pretrained decoder learns a task from examples in its prompt, without any training.",
    verdict="supported",
    measure="SmolLM2-135M: accuracy on country -> capital rises by at least 40 points from 0 to 8 examples; "
    "it has induction heads (prefix-matching score > 0.6) and its loss on the second copy of a random "
    "sequence is less than half that on the first",
    papers=("brown2020language", "olsson2022context", "allal2025smollm2"),
)

claim(
    "in_context_learning.icl_is_gradient_descent",
    seeds=("003", "004"),
    claim="In-context learning is implicit fine-tuning: attention over the demonstrations acts as a "
    "gradient-descent update of the model (Dai et al.).",
    verdict="supported with caveats",
    measure="one GD step on in-context linear regression equals one linear-attention layer to float64 "
    "rounding; with a softmax the match holds only to first order in the logits (relative error growing "
    "linearly with them, and about 1 for a plain swap)",
    papers=("dai2023why", "vonoswald2023transformers"),
    quick=_dual_form,
)

claim(
    "in_context_learning.decoders_better_in_context",
    seeds=("003", "004"),
    claim="Decoders learn in context better than encoder-decoders, because the prompt acts directly on "
    "every layer.",
    verdict="not testable here",
    measure="nothing here compares a decoder with an encoder-decoder on in-context learning at a scale "
    "where it matters; the dual form cited for it is the same for every mask, and Dai et al. compare no "
    "architectures. At scale, Wang et al. found masked-LM models with non-causal visibility best after "
    "multitask finetuning, and instruction-tuned encoder-decoders (T0, Flan-T5, UL2) learn in context",
    papers=("dai2023why", "wang2022what", "sanh2022multitask", "chung2022scaling", "tay2023ul2"),
)
