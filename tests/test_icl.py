"""Tests for anatomy.experiments.icl, dual_form and few_shot:
the attention-only decoder, induction scores, the dual form, few-shot prompting."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from anatomy import Config, Transformer
from anatomy.data import CharTokenizer
from anatomy.experiments.dual_form import dual_form
from anatomy.experiments.few_shot import few_shot_accuracy
from anatomy.experiments.icl import (
    AttentionOnly,
    InductionRun,
    copy_losses,
    fill_losses,
    head_scores,
    induction_batches,
    induction_experiment,
    masked_induction_batches,
    masked_induction_experiment,
    repeated_sequences,
)


def small_config(**kw) -> Config:
    base = dict(vocab_size=16, d_model=32, n_layers=2, n_heads=4, max_seq_len=40, pos="learned")
    return Config(**{**base, **kw})


# ------------------------------------------------------------------------------------- the model


def test_attention_only_is_causal_and_returns_maps():
    torch.manual_seed(0)
    model = AttentionOnly(small_config())
    assert not any("mlp" in name for name, _ in model.named_parameters())
    ids = torch.randint(16, (2, 20))
    out = model(ids, return_attn=True)
    assert out.logits.shape == (2, 20, 16) and len(out.attentions) == 2
    for a in out.attentions:
        assert a.shape == (2, 4, 20, 20)
        assert torch.allclose(a.sum(-1), torch.ones(2, 4, 20), atol=1e-5)
        assert float(a.triu(1).abs().max()) == 0.0  # causal: nothing above the diagonal
    changed = ids.clone()
    changed[:, 15] = (changed[:, 15] + 1) % 16
    assert torch.allclose(model(ids)[:, :15], model(changed)[:, :15], atol=1e-6)
    assert not torch.allclose(model(ids)[:, 15:], model(changed)[:, 15:])


def test_attention_only_validation():
    with pytest.raises(TypeError, match="Config"):
        AttentionOnly({"vocab_size": 3})
    model = AttentionOnly(small_config())
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 41, dtype=torch.long))


# ------------------------------------------------------------------------------ task and scores


def test_repeated_sequences_and_batches():
    seqs = repeated_sequences(5, 7, 10, torch.Generator().manual_seed(0))
    assert seqs.shape == (5, 14) and torch.equal(seqs[:, :7], seqs[:, 7:])
    batches = induction_batches(4, (6, 9), 10, seed=3)
    lengths = set()
    for step in range(30):
        x, y = batches(step)
        L = (x.shape[1] + 1) // 2
        lengths.add(L)
        assert torch.equal(x[:, : L - 1], x[:, L:])  # x holds 2L - 1 tokens: the second copy lacks its last
        assert (y[:, :L] == -100).all() and torch.equal(y[:, L:], x[:, 1:L])  # second copy only
    assert lengths == {6, 7, 8, 9}
    assert torch.equal(batches(2)[0], batches(2)[0])
    x, y = induction_batches(4, (6, 6), 10, supervise="all")(0)
    assert torch.equal(x[:, 1:], y[:, :-1])
    with pytest.raises(ValueError, match="supervise"):
        induction_batches(4, (6, 6), 10, supervise="none")


class Copier(torch.nn.Module):
    """Predicts the token after the previous occurrence of the current one (a perfect induction head)."""

    def __init__(self, V: int):
        super().__init__()
        self.V = V

    def forward(self, ids):
        B, N = ids.shape
        logits = torch.zeros(B, N, self.V)
        for b in range(B):
            for i in range(N):
                earlier = [j for j in range(i) if ids[b, j] == ids[b, i]]
                if earlier and earlier[-1] + 1 < N:
                    logits[b, i, ids[b, earlier[-1] + 1]] = 50.0
        return logits


def test_copy_losses_on_a_perfect_copier():
    V, L = 50, 10
    g = torch.Generator().manual_seed(1)
    first = torch.stack([torch.randperm(V, generator=g)[:L] for _ in range(3)])  # no repeats inside a copy
    seqs = torch.cat([first, first], 1)
    first_loss, second_loss = copy_losses(Copier(V), seqs)
    assert first_loss == pytest.approx(math.log(V), rel=1e-6)  # uniform logits: ln V
    assert second_loss < 1e-10
    with pytest.raises(ValueError, match="halves"):
        copy_losses(Copier(V), torch.randint(V, (2, 9)))


def test_head_scores_recognise_ideal_patterns():
    L, B = 8, 3
    g = torch.Generator().manual_seed(2)
    first = torch.stack([torch.randperm(30, generator=g)[:L] for _ in range(B)])
    toks = torch.cat([first, first], 1)
    N = 2 * L
    induction = torch.zeros(B, 1, N, N)
    previous = torch.zeros(B, 1, N, N)
    for i in range(N):
        induction[:, 0, i, i - L + 1 if i >= L else 0] = 1.0
        previous[:, 0, i, max(i - 1, 0)] = 1.0
    attn = [torch.cat([induction, previous], 1)]  # one layer, two heads
    pm = head_scores(attn, toks, "prefix_matching", start=L)
    pt = head_scores(attn, toks, "previous_token", start=1)
    assert pm.shape == (1, 2)
    assert pm[0, 0] == pytest.approx(1.0) and pm[0, 1] < 0.01
    assert pt[0, 1] == pytest.approx(1.0) and pt[0, 0] < 0.2
    with pytest.raises(ValueError, match="kind"):
        head_scores(attn, toks, "other")
    with pytest.raises(ValueError, match="return_attn"):
        head_scores([None], toks)


def test_induction_experiment_records_everything():
    run = induction_experiment(
        length=6, train_lengths=(4, 6), vocab_size=12, steps=20, batch_size=8, eval_every=10, n_eval=8
    )
    assert run.steps == [0, 10, 20]
    assert len(run.first_copy) == len(run.second_copy) == len(run.prefix_matching) == 3
    assert run.prefix_matching[0].shape == (2, 2) and run.attention[0].shape == (2, 2, 11, 11)
    assert all(0.0 <= float(s.min()) and float(s.max()) <= 1.0 + 1e-6 for s in run.prefix_matching)
    layer, head = run.best_head(layer=1)
    assert layer == 1 and 0 <= head < 2
    assert run.phase_change_step(threshold=-1.0) == -1


def test_attention_only_rope_is_relative():
    """Shifting the input leaves the first layer's attention logits unchanged (all models: test_rope.py)."""
    torch.manual_seed(0)
    model = AttentionOnly(small_config(pos="rope", init_std=0.5, mask="bidirectional")).eval()
    ids = torch.randint(1, 16, (1, 10))
    shifted = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], 1)
    with torch.no_grad():
        a = model(ids, return_attn=True).attentions[0].log()
        b = model(shifted, return_attn=True).attentions[0].log()[..., 3:, 3:]
    # log-probabilities differ by a per-row constant (the keys 0..2 of the shifted input): compare differences
    torch.testing.assert_close(a - a[..., :1], b - b[..., :1], atol=1e-4, rtol=0)


def test_masked_induction_batches_are_bert_batches_of_the_same_sequences():
    V = 10
    batches = masked_induction_batches(4, (6, 9), V, seed=3)
    plain = induction_batches(4, (6, 9), V, seed=3)
    for step in range(20):
        x, labels = batches(step)
        seqs_x, _ = plain(step)
        L = x.shape[1] // 2
        assert x.shape[1] == seqs_x.shape[1] + 1 and 6 <= L <= 9  # the same L: all 2L tokens here
        selected = labels != -100
        assert (selected.sum(1) == round(0.15 * 2 * L)).all()  # BERT's pipeline: round(15%) per sequence
        assert ((x == V) <= selected).all()  # [MASK] (id V) only where a target is
        assert int(x.max()) <= V and int(labels[selected].max()) < V
        full = torch.cat([seqs_x, seqs_x[:, L - 1 : L]], 1)  # with the second copy's last token
        assert torch.equal(x[~selected], full[~selected])  # unselected positions keep their tokens
        assert torch.equal(labels[selected], full[selected])
    assert torch.equal(batches(5)[0], batches(5)[0])


class FillOracle(torch.nn.Module):
    """An encoder that fills a [MASK] in the second copy from the first copy (or knows nothing)."""

    def __init__(self, V: int, mask_id: int, knows: bool = True):
        super().__init__()
        self.V, self.mask_id, self.knows = V, mask_id, knows

    def forward(self, ids):
        B, N = ids.shape
        logits = torch.zeros(B, N, self.V + 3)
        logits[..., self.V :] = -1e9  # never the special tokens
        if self.knows:
            for b, i in (ids == self.mask_id).nonzero().tolist():
                logits[b, i, ids[b, i - N // 2]] = 50.0
        return logits


def test_fill_losses_on_oracles():
    V, L = 20, 7
    seqs = repeated_sequences(5, L, V, torch.Generator().manual_seed(0))
    loss, acc = fill_losses(FillOracle(V, V), seqs, V)
    assert loss < 1e-6 and acc == 1.0
    loss, acc = fill_losses(FillOracle(V, V, knows=False), seqs, V)
    assert loss == pytest.approx(math.log(V), rel=1e-6)
    with pytest.raises(ValueError, match="2L"):
        fill_losses(FillOracle(V, V), seqs[:, :-1], V)


def test_masked_induction_experiment_records_everything():
    run = masked_induction_experiment(
        length=6,
        train_lengths=(4, 6),
        vocab_size=12,
        steps=20,
        batch_size=8,
        eval_every=10,
        n_eval=8,
        curve_eval=2,
    )
    assert run.steps == [0, 10, 20] and len(run.slot_loss) == len(run.slot_accuracy) == 3
    assert run.targets[0] == 0 and run.targets[1] < run.targets[2]
    assert run.final_slots == 8 * 5 and 0.0 <= run.final_accuracy <= 1.0 and run.final_loss > 0
    assert run.mask_id == 12 and run.model.config.mask == "bidirectional"
    assert run.phase_change_step(threshold=-1.0) == -1
    with pytest.raises(ValueError, match="vocab_size"):
        masked_induction_experiment(config=small_config(vocab_size=12), vocab_size=12, steps=1)


# ------------------------------------------------------------------------------------ dual form


def test_dual_form_linear_attention_is_one_gd_step():
    r = dual_form(seed=3)
    assert r.max_abs_diff_linear < 1e-12
    assert np.allclose(r.gd, r.linear_attention, atol=1e-12)
    # softmax agrees only to first order in the logit scale: the error grows linearly with it
    scales = sorted(r.rel_err_softmax)
    errs = np.array([r.rel_err_softmax[s] for s in scales])
    slope = np.polyfit(np.log(scales), np.log(errs), 1)[0]
    assert 0.8 < slope < 1.2
    assert errs[0] < 0.01 and r.rel_err_plain_softmax > 0.5
    assert r.rel_err_linear < 1e-12  # the relative distance plotted beside the softmax points
    with pytest.raises(ValueError, match="n_examples"):
        dual_form(n_examples=0)


# ------------------------------------------------------------------------------------ few-shot


PAIRS = [
    (w, w.upper()) for w in ["ab", "cde", "f", "ghij", "kl", "mno", "p", "qrst", "uv", "wxy", "z", "abcd"]
]


class Oracle(torch.nn.Module):
    """A 'model' that knows the task: after 'x ->' it predicts the first token of ' X' (or a wrong one)."""

    def __init__(self, tok: CharTokenizer, wrong: bool = False):
        super().__init__()
        self.tok, self.wrong = tok, wrong
        self.dummy = Transformer(Config(vocab_size=tok.vocab_size, d_model=8, n_layers=1, n_heads=1))

    def new_cache(self, batch_size=1, max_len=None):
        return self.dummy.new_cache(batch_size, max_len)

    def forward(self, ids, cache=None):
        start = len(cache)
        self.dummy(ids, cache=cache)  # keep the cache's bookkeeping real
        B, n = ids.shape
        logits = torch.zeros(B, n, self.tok.vocab_size)
        for b in range(B):
            for t in range(n):
                text = self.tok.decode(cache.tokens[b, : start + t + 1].tolist())
                query = text.split("\n")[-1].split(" ->")[0]
                answer = self.tok.encode(" " + query.upper())[0]
                if self.wrong:
                    answer = (answer + 1) % self.tok.vocab_size
                logits[b, t, answer] = 1.0
        return logits


def test_few_shot_accuracy_reads_the_right_answer_token():
    tok = CharTokenizer("".join(x + y for x, y in PAIRS) + " ->\nQ:")
    for wrong, expected in ((False, 1.0), (True, 0.0)):
        r = few_shot_accuracy(Oracle(tok, wrong), tok, PAIRS, ks=(0, 2), n_queries=4, n_prompts=2)
        assert r.accuracy == [expected, expected]
    r = few_shot_accuracy(Oracle(tok), tok, PAIRS, ks=(0, 2), n_queries=4, instruction="Q:\n")
    assert r.example_prompt.startswith("Q:\n") and r.example_prompt.endswith(" ->")


def test_few_shot_accuracy_runs_a_real_model_and_validates():
    tok = CharTokenizer("".join(x + y for x, y in PAIRS) + " ->\n")
    torch.manual_seed(0)
    model = Transformer(Config(vocab_size=tok.vocab_size, d_model=16, n_layers=1, n_heads=2))
    r = few_shot_accuracy(model, tok, PAIRS, ks=(0, 1, 3), n_queries=5, seed=1)
    assert r.ks == [0, 1, 3] and all(0.0 <= a <= 1.0 for a in r.accuracy)
    assert r.accuracy == few_shot_accuracy(model, tok, PAIRS, ks=(0, 1, 3), n_queries=5, seed=1).accuracy
    with pytest.raises(ValueError, match="pairs"):
        few_shot_accuracy(model, tok, PAIRS, ks=(0, 8), n_queries=5)
    with pytest.raises(ValueError, match="template"):
        few_shot_accuracy(model, tok, PAIRS, template="{x} {y}")


def test_few_shot_draws_depend_on_k_only():
    tok = CharTokenizer("".join(x + y for x, y in PAIRS) + " ->\n")
    a = few_shot_accuracy(Oracle(tok), tok, PAIRS, ks=(0, 1, 3), n_queries=4, seed=2)
    b = few_shot_accuracy(Oracle(tok), tok, PAIRS, ks=(3,), n_queries=4, seed=2)
    c = few_shot_accuracy(Oracle(tok), tok, PAIRS, ks=(3,), n_queries=4, seed=2, wrong_labels=True)
    assert a.example_prompt == b.example_prompt  # the same demonstrations at k = 3 whatever the other ks
    inputs = lambda r: [line.split(" -> ")[0] for line in r.example_prompt.split("\n")]  # noqa: E731
    assert inputs(c) == inputs(b)  # wrong labels: the same inputs and query, other outputs


def test_batched_queries_match_one_by_one():
    from anatomy.experiments.few_shot import _batched_queries

    torch.manual_seed(0)
    model = Transformer(Config(vocab_size=20, d_model=16, n_layers=2, n_heads=2, n_kv_heads=1)).eval()
    context = [1, 2, 3, 4, 5]
    queries = [[6], [7, 8, 9], [10, 11]]
    batched = _batched_queries(model, context, queries)
    for i, q in enumerate(queries):
        alone = model(torch.tensor([context + q]))[0, -1]
        assert torch.allclose(batched[i], alone, atol=1e-5)
    no_context = _batched_queries(model, [], queries)
    assert torch.allclose(no_context[1], model(torch.tensor([queries[1]]))[0, -1], atol=1e-5)


def test_few_shot_wrong_labels_shows_no_true_pair_and_scores_the_truth():
    tok = CharTokenizer("".join(x + y for x, y in PAIRS) + " ->\n")
    truth = dict(PAIRS)
    for k in (1, 2, 3):
        r = few_shot_accuracy(
            Oracle(tok), tok, PAIRS, ks=(k,), n_queries=4, n_prompts=3, wrong_labels=True, seed=k
        )
        assert r.accuracy == [1.0]  # the queries are still scored against their true outputs
        demo_lines = r.example_prompt.split("\n")[:-1]
        assert len(demo_lines) == k
        query = r.example_prompt.split("\n")[-1].split(" ->")[0]
        for line in demo_lines:
            x, y = line.split(" -> ")
            assert y != truth[x] and y in truth.values() and y != truth[query]
    right = few_shot_accuracy(Oracle(tok), tok, PAIRS, ks=(3,), n_queries=4, seed=0).example_prompt
    assert all(line.split(" -> ")[1] == truth[line.split(" -> ")[0]] for line in right.split("\n")[:-1])
    with pytest.raises(ValueError, match="pairs"):
        few_shot_accuracy(Oracle(tok), tok, PAIRS, ks=(1,), n_queries=11, wrong_labels=True)


def _run(losses, pm, pt, vocab_size=64):
    run = InductionRun(24, vocab_size, steps=[25 * i for i in range(len(losses))], second_copy=list(losses))
    run.prefix_matching = [torch.tensor([[0.0, 0.0], [0.0, s]]) for s in pm]
    run.previous_token = [torch.tensor([[s, 0.0], [0.0, 0.0]]) for s in pt]
    return run


def test_plateau_then_fall_is_told_apart_from_a_steady_decay():
    ln_v = math.log(64)
    # a phase change: flat near ln V for 6 evaluations, then a fall within 3
    run = _run(
        [
            ln_v,
            0.98 * ln_v,
            0.97 * ln_v,
            0.95 * ln_v,
            0.93 * ln_v,
            0.92 * ln_v,
            0.85 * ln_v,
            0.6 * ln_v,
            0.3 * ln_v,
            0.1 * ln_v,
        ],
        pm=[0.04] * 6 + [0.3, 0.6, 0.7, 0.7],
        pt=[0.07] * 7 + [0.3, 0.4, 0.4],
    )
    assert run.plateau_end() == 150 and run.phase_change_step() == 200
    assert run.phase_change_step() - run.plateau_end() < run.plateau_end()
    assert run.rise_step(1, 1) == 175 and run.rise_step(0, 0, "previous_token") == 175
    # a steady exponential decay from ln V: the fall from 0.9 to 0.5 ln V is 5.6x longer than the start
    decay = _run([ln_v * 0.9 ** (i / 4) for i in range(120)], pm=[0.0] * 120, pt=[0.0] * 120)
    assert decay.phase_change_step() - decay.plateau_end() > 4 * decay.plateau_end()
    with pytest.raises(ValueError, match="fraction"):
        run.plateau_end(1.5)
    with pytest.raises(ValueError, match="kind"):
        run.rise_step(0, 0, "induction")
