"""Tests for anatomy.objectives: batch builders, signal counts, losses, exact Bayes losses, predict_token."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict

import numpy as np
import pytest
import torch

from anatomy import Config, EncoderDecoder, Transformer
from anatomy.data import MarkovSource
from anatomy.experiments.equal_compute import (
    DEFAULT_RUNS,
    compare_objectives,
    masking_tradeoff,
    plot_comparison,
    plot_masking_tradeoff,
    predict_token,
    token_cross_entropy,
)
from anatomy.experiments.signal_density import (
    DensityRun,
    bayes_loss,
    label_density_experiment,
    plot_density,
    show_example,
)
from anatomy.objectives import (
    IGNORE,
    OBJECTIVES,
    PrefixLMBatch,
    Seq2SeqBatch,
    SpecialTokens,
    causal_lm_batch,
    loss_fn,
    make_batch,
    masked_lm_batch,
    objective_batches,
    prefix_lm_batch,
    random_spans_noise_mask,
    signal,
    span_corruption_batch,
    span_corruption_reconstruct,
    span_counts,
    text_windows,
    train_step_flops,
)
from anatomy.train import train


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------ builders


def test_special_tokens_layout():
    sp = SpecialTokens(10, 4)
    ids = [sp.mask_id, sp.decoder_start_id, sp.eos_id, *sp.sentinel_ids]
    assert ids == list(range(10, 17)) and sp.vocab_size == 17
    with pytest.raises(ValueError, match="n_text"):
        SpecialTokens(0)
    with pytest.raises(TypeError, match="n_sentinels"):
        SpecialTokens(5, 1.5)


def test_causal_batch_shifts_and_label_fraction():
    seqs = torch.randint(7, (6, 41), generator=gen())
    x, y = causal_lm_batch(seqs)
    assert torch.equal(x, seqs[:, :-1]) and torch.equal(y, seqs[:, 1:])
    for f in (0.5, 0.15):
        x, y = causal_lm_batch(seqs, label_fraction=f, generator=gen(1))
        kept = (y != IGNORE).sum(1)
        assert (kept == round(f * 40)).all()
        assert torch.equal(y[y != IGNORE], seqs[:, 1:][y != IGNORE])
    # different rows keep different positions
    assert not torch.equal((y[0] != IGNORE), (y[1] != IGNORE))
    with pytest.raises(ValueError, match="label_fraction"):
        causal_lm_batch(seqs, label_fraction=0.0)


def test_masked_lm_80_10_10_statistics():
    V, B, N = 50, 400, 100
    sp = SpecialTokens(V)
    seqs = torch.randint(V, (B, N), generator=gen(2))
    x, labels = masked_lm_batch(seqs, sp, generator=gen(3))
    selected = labels != IGNORE
    assert (selected.sum(1) == 15).all()  # exact count: round(0.15 * 100)
    assert torch.equal(x[~selected], seqs[~selected])  # unselected positions are untouched
    assert torch.equal(labels[selected], seqs[selected])
    n = int(selected.sum())
    masked = (x == sp.mask_id) & selected
    changed = (x != seqs) & (x != sp.mask_id) & selected
    same = (x == seqs) & selected
    # expected shares: 0.8 masked; 0.1 random, of which 1/V hit the original token
    for count, p in ((masked, 0.8), (changed, 0.1 * (1 - 1 / V)), (same, 0.1 + 0.1 / V)):
        share = int(count.sum()) / n
        assert abs(share - p) < 5 * math.sqrt(p * (1 - p) / n), (share, p)
    assert int(x[changed].max()) < V  # random replacements are text tokens
    # Bernoulli selection: about 15% selected, varying per row
    x2, l2 = masked_lm_batch(seqs, sp, selection="bernoulli", generator=gen(4))
    share = float((l2 != IGNORE).float().mean())
    assert abs(share - 0.15) < 5 * math.sqrt(0.15 * 0.85 / (B * N))
    assert (l2 != IGNORE).sum(1).unique().numel() > 1


def test_masked_lm_validation():
    sp = SpecialTokens(5)
    seqs = torch.randint(5, (2, 8))
    with pytest.raises(ValueError, match="replace"):
        masked_lm_batch(seqs, sp, replace=(0.5, 0.1, 0.1))
    with pytest.raises(ValueError, match="selection"):
        masked_lm_batch(seqs, sp, selection="some")
    with pytest.raises(ValueError, match="text token ids"):
        masked_lm_batch(seqs + 5, sp)
    with pytest.raises(TypeError, match="integer"):
        masked_lm_batch(seqs.float(), sp)


def test_span_counts_follow_t5():
    assert span_counts(512) == (77, 26)  # round(76.8), round(77 / 3)
    assert span_counts(64) == (10, 3)
    assert span_counts(10) == (2, 1)
    with pytest.raises(ValueError, match="noise_density"):
        span_counts(64, noise_density=1.5)


@pytest.mark.parametrize("length", [8, 20, 64, 101])
def test_noise_mask_shape_and_counts(length):
    n_noise, n_spans = span_counts(length)
    for seed in range(20):
        mask = random_spans_noise_mask(length, generator=gen(seed))
        assert int(mask.sum()) == n_noise
        starts = int((mask[1:] & ~mask[:-1]).sum()) + int(mask[0])
        assert starts == n_spans
        assert not mask[0] and mask[-1]  # T5: starts with text, ends with noise


def test_noise_mask_is_uniform_over_compositions():
    # length 10: 2 noise tokens in 1 span; 8 text tokens in 1 segment -> always the last two... use 20
    counts = defaultdict(int)
    for seed in range(3000):
        m = random_spans_noise_mask(12, 0.25, 1.5, generator=gen(seed))  # 3 noise tokens, 2 spans
        first_span = int(m.int().argmax())
        counts[(first_span, int(m[first_span + 1]))] += 1
    # noise composition (1,2) or (2,1) equally likely
    long_first = sum(v for (s, nxt), v in counts.items() if nxt == 1)
    assert abs(long_first / 3000 - 0.5) < 0.05


@pytest.mark.parametrize("roll", [False, True])
def test_span_corruption_round_trip(roll):
    sp = SpecialTokens(30, 40)
    for N in (12, 64, 130):
        seqs = torch.randint(30, (8, N), generator=gen(N))
        b = span_corruption_batch(seqs, sp, generator=gen(N + 1), random_roll=roll)
        for i in range(8):
            rebuilt = span_corruption_reconstruct(b.encoder_input_ids[i], b.labels[i], sp)
            assert rebuilt == seqs[i].tolist()
        # decoder input = labels shifted right behind the start token
        assert (b.decoder_input_ids[:, 0] == sp.decoder_start_id).all()
        real = b.labels[:, :-1] != IGNORE
        assert torch.equal(b.decoder_input_ids[:, 1:][real], b.labels[:, :-1][real])
        if not roll:
            n_noise, n_spans = span_counts(N)
            assert b.labels.shape[1] == n_noise + n_spans + 1
            assert b.encoder_input_ids.shape[1] == N - n_noise + n_spans + 1
            assert (b.labels[:, 0] == sp.sentinel_ids[0]).all() and (b.labels[:, -1] == sp.eos_id).all()


def _parse_t5(enc: list[int], labels: list[int], sp: SpecialTokens) -> tuple[list[int], list[bool], int]:
    """Written here from T5's format, not with the package: (text, noise mask, spans) of one example."""
    spans: dict[int, list[int]] = {}
    current = None
    for t in labels:
        if t == IGNORE or t == sp.eos_id:
            break
        if t in sp.sentinel_ids:
            current = t
            spans[current] = []
        else:
            spans[current].append(t)
    text, noise = [], []
    for t in enc:
        if t == sp.eos_id:
            break
        if t in sp.sentinel_ids:
            text += spans[t]
            noise += [True] * len(spans[t])
        else:
            text.append(t)
            noise.append(False)
    return text, noise, len(spans)


def test_span_corruption_matches_t5_format():
    # every row, parsed independently: the text comes back, with T5's counts of noise tokens and spans,
    # sentinels in order, and spans that are maximal runs of noise (two sentinels never touch)
    sp = SpecialTokens(20, 16)
    for N in (20, 40, 64):
        n_noise, n_spans = span_counts(N)
        seqs = torch.randint(20, (6, N), generator=gen(N))
        b = span_corruption_batch(seqs, sp, generator=gen(N + 6))
        for i in range(6):
            enc, lab = b.encoder_input_ids[i].tolist(), b.labels[i].tolist()
            text, noise, k = _parse_t5(enc, lab, sp)
            assert text == seqs[i].tolist()
            assert sum(noise) == n_noise and k == n_spans
            runs = sum(1 for j, x in enumerate(noise) if x and (j == 0 or not noise[j - 1]))
            assert runs == n_spans
            sentinels = [t for t in enc if t in sp.sentinel_ids]
            assert sentinels == sp.sentinel_ids[:n_spans]
            assert [t for t in lab if t in sp.sentinel_ids] == sentinels and lab[-1] == sp.eos_id


def test_span_corruption_needs_sentinels_and_reconstruct_checks():
    sp = SpecialTokens(10, 1)
    seqs = torch.randint(10, (2, 64))
    with pytest.raises(ValueError, match="sentinels"):
        span_corruption_batch(seqs, sp)
    sp = SpecialTokens(10, 4)
    with pytest.raises(ValueError, match="no span"):
        span_corruption_reconstruct([1, 2, sp.sentinel_ids[0]], [sp.sentinel_ids[1], 3], sp)


def test_prefix_batch_loss_on_suffix_only():
    seqs = torch.randint(9, (3, 33), generator=gen())
    b = prefix_lm_batch(seqs, prefix_len=10)
    assert isinstance(b, PrefixLMBatch) and b.prefix_len == 10
    assert (b.labels[:, :9] == IGNORE).all()
    assert torch.equal(b.labels[:, 9:], seqs[:, 10:])  # the suffix tokens, all of them
    splits = {prefix_lm_batch(seqs, generator=gen(s)).prefix_len for s in range(200)}
    assert min(splits) >= 1 and max(splits) <= 32 and len(splits) > 20
    with pytest.raises(ValueError, match="prefix_len"):
        prefix_lm_batch(seqs, prefix_len=33)


def test_signal_counts_each_objective():
    sp = SpecialTokens(20)
    B, N = 16, 64
    seqs = torch.randint(20, (B, N), generator=gen())
    shares = {}
    for obj in OBJECTIVES:
        opts = {"prefix_len": 32} if obj == "prefix" else {}
        s = signal(make_batch(obj, seqs, sp, generator=gen(1), **opts), B * N, sp)
        shares[obj] = (s.share, s.text_share)
    assert shares["causal"] == (63 / 64, 63 / 64)
    assert shares["masked"] == (10 / 64, 10 / 64)
    assert shares["span"] == (14 / 64, 10 / 64)  # 10 span tokens + 3 sentinels + EOS
    assert shares["prefix"] == (32 / 64, 32 / 64)
    with pytest.raises(TypeError, match="batch"):
        signal("nope", 10)


# ------------------------------------------------------------------------------------- losses, train


def _models(sp: SpecialTokens):
    torch.manual_seed(0)
    cfg = dict(vocab_size=sp.vocab_size, d_model=32, n_layers=1, n_heads=2, max_seq_len=64)
    return {
        "causal": Transformer(Config(**cfg)),
        "masked": Transformer(Config(**cfg, mask="bidirectional")),
        "prefix": Transformer(Config(**cfg, mask="prefix")),
        "span": EncoderDecoder(Config(**cfg)),
    }


def test_losses_train_with_anatomy_train():
    sp = SpecialTokens(12)
    ids = torch.randint(12, (5000,), generator=gen())
    windows = text_windows(ids, 8, 32, seed=1)
    assert windows(3).shape == (8, 32) and torch.equal(windows(3), windows(3))
    for obj, model in _models(sp).items():
        batches = objective_batches(obj, windows, sp, seed=2)
        first = batches(0)
        again = objective_batches(obj, windows, sp, seed=2)(0)
        assert torch.equal(signal_labels(first), signal_labels(again))  # deterministic per (seed, step)
        hist = train(model, batches, steps=3, loss_fn=loss_fn(obj), progress=False, seed=0)
        assert len(hist.loss) == 3 and all(math.isfinite(v) for v in hist.loss)
        assert hist.tokens[-1] == sum(signal(batches(s), 8 * 32, sp).targets for s in range(3))
        flops = train_step_flops(model, loss_fn(obj), first)
        assert flops > 0
        assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="objective"):
        loss_fn("electra")


def signal_labels(batch):
    return batch.labels if isinstance(batch, (PrefixLMBatch, Seq2SeqBatch)) else batch[1]


def test_training_flops_scale_with_tokens():
    sp = SpecialTokens(12)
    model = _models(sp)["causal"]
    small = causal_lm_batch(torch.randint(12, (4, 17)))
    big = causal_lm_batch(torch.randint(12, (8, 17)))
    f_small, f_big = (train_step_flops(model, loss_fn("causal"), b) for b in (small, big))
    assert f_big == 2 * f_small
    assert model.config.attn_backend == "sdpa"  # restored


def test_training_flops_count_without_loading_dynamo():
    """The count bypasses torch's dynamo-disabling wrapper only while counting: in a fresh process
    torch._dynamo stays unloaded, the wrapper's attribute is gone afterwards, and the count equals the one
    made with torch._dynamo loaded (the wrapper's own path)."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    script = """
import sys, torch
from anatomy import Config, Transformer
from anatomy.objectives import causal_lm_batch, loss_fn, train_step_flops
from torch.utils.flop_counter import _FlopCounterMode
torch.manual_seed(0)
model = Transformer(Config(vocab_size=16, d_model=16, n_layers=1, n_heads=2, max_seq_len=32))
batch = causal_lm_batch(torch.randint(16, (2, 9)))
first = train_step_flops(model, loss_fn("causal"), batch)
raw = _FlopCounterMode.__dict__["__torch_dispatch__"].__wrapped__
print("torch._dynamo" in sys.modules, hasattr(raw, "__dynamo_disable"))
import torch._dynamo
print(first == train_step_flops(model, loss_fn("causal"), batch) > 0)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "False", "True"], out.stdout + out.stderr


# ----------------------------------------------------------------------------- exact Bayes losses


def tiny_source(V: int = 3, seed: int = 0) -> MarkovSource:
    return MarkovSource(V, order=1, alpha=0.7, seed=seed)


def test_bayes_causal_and_prefix_are_next_token_losses():
    src = tiny_source(5)
    seqs = src.sample(4, 20, gen())
    ref = src.bayes_next_token_loss(seqs).numpy()  # (4, 19)
    assert np.allclose(bayes_loss("causal", src, causal_lm_batch(seqs)), ref.ravel())
    b = prefix_lm_batch(seqs, prefix_len=7)
    assert np.allclose(bayes_loss("prefix", src, b), ref[:, 6:].ravel())
    x, y = causal_lm_batch(seqs, label_fraction=0.5, generator=gen(1))
    keep = (y != IGNORE).numpy()
    assert np.allclose(bayes_loss("causal", src, (x, y)), ref[keep])
    # the mean over a long sample approaches the entropy rate
    long = src.sample(64, 400, gen(2))
    assert abs(bayes_loss("causal", src, causal_lm_batch(long)).mean() - src.entropy_rate()) < 0.02


def _brute_mlm_posteriors(src, o, rate, replace, sp):
    """P(x_t = v | o, t is a target) for every t, by enumerating clean sequences and corruptions."""
    V, N = src.vocab_size, len(o)
    probs = np.exp(src.log_prob(torch.tensor(list(itertools.product(range(V), repeat=N)))).numpy())
    p_type = {
        "none": 1 - rate,
        "mask": rate * replace[0],
        "rand": rate * replace[1],
        "keep": rate * replace[2],
    }
    post = np.zeros((N, V))
    for xi, x in enumerate(itertools.product(range(V), repeat=N)):
        for types in itertools.product(p_type, repeat=N):
            p = probs[xi]
            for t, c in enumerate(types):  # the probability that this corruption yields o
                if c == "mask":
                    p *= p_type[c] * (o[t] == sp.mask_id)
                elif c == "rand":
                    p *= p_type[c] * (o[t] < V) / V
                else:
                    p *= p_type[c] * (o[t] == x[t])
                if p == 0.0:
                    break
            for t, c in enumerate(types):
                if c != "none":
                    post[t, x[t]] += p
    return post / post.sum(1, keepdims=True).clip(1e-300)


@pytest.mark.parametrize("replace", [(0.8, 0.1, 0.1), (1.0, 0.0, 0.0)])
def test_bayes_masked_matches_brute_force(replace):
    V, N, rate = 3, 4, 0.3
    src, sp = tiny_source(V, 1), SpecialTokens(V)
    for o in ([0, sp.mask_id, 2, sp.mask_id], [sp.mask_id, 1, 1, 0], [2, sp.mask_id, sp.mask_id, 1]):
        post = _brute_mlm_posteriors(src, o, rate, replace, sp)
        for t in range(N):
            if replace == (1.0, 0.0, 0.0) and o[t] != sp.mask_id:
                continue  # with pure masking only [MASK] positions can be targets
            for v in range(V):
                labels = torch.full((1, N), IGNORE)
                labels[0, t] = v
                got = bayes_loss("masked", src, (torch.tensor([o]), labels), sp, rate=rate, replace=replace)
                assert got[0] == pytest.approx(-math.log(post[t, v]), rel=1e-9, abs=1e-12)


def test_bayes_masked_pure_masking_is_the_matrix_power_formula():
    src, sp = tiny_source(4, 2), SpecialTokens(4)
    T, pi = src.P, src.pi
    o = [1, sp.mask_id, sp.mask_id, 3, sp.mask_id]
    x = torch.tensor([o])
    for t, (truth, expected) in {
        1: (2, lambda v: T[1, v] * np.linalg.matrix_power(T, 2)[v, 3]),
        2: (0, lambda v: np.linalg.matrix_power(T, 2)[1, v] * T[v, 3]),
        4: (1, lambda v: T[3, v]),
    }.items():
        labels = torch.full((1, 5), IGNORE)
        labels[0, t] = truth
        q = np.array([expected(v) for v in range(4)])
        got = bayes_loss("masked", src, (x, labels), sp, rate=0.5, replace=(1.0, 0.0, 0.0))
        assert got[0] == pytest.approx(-math.log(q[truth] / q.sum()), rel=1e-10)
    # a [MASK] at the start uses the stationary law: P(x_0 = v | x_1 = b) proportional to pi(v) T[v, b]
    labels = torch.full((1, 2), IGNORE)
    labels[0, 0] = 2
    got = bayes_loss(
        "masked", src, (torch.tensor([[sp.mask_id, 0]]), labels), sp, rate=0.5, replace=(1, 0, 0)
    )
    q = pi * T[:, 0]
    assert got[0] == pytest.approx(-math.log(q[2] / q.sum()), rel=1e-10)
    del pi


def test_bayes_masked_batch_equals_row_by_row():
    # the forward-backward runs on all rows at once; each row's losses must be what the row alone gives
    src = MarkovSource(6, order=1, alpha=0.3, seed=2)
    sp = SpecialTokens(6)
    seqs = src.sample(5, 17, gen(3))
    for selection, replace in (("bernoulli", (0.8, 0.1, 0.1)), ("exact", (1.0, 0.0, 0.0))):
        x, y = masked_lm_batch(seqs, sp, rate=0.4, replace=replace, selection=selection, generator=gen(4))
        y[0, 0] = seqs[0, 0]  # a target at position 0 (the stationary prior), in every case
        x[0, 0] = sp.mask_id
        whole = bayes_loss("masked", src, (x, y), sp, rate=0.4, replace=replace)
        rows = np.concatenate(
            [
                bayes_loss("masked", src, (x[i : i + 1], y[i : i + 1]), sp, rate=0.4, replace=replace)
                for i in range(5)
            ]
        )
        assert len(whole) == int((y != IGNORE).sum())
        np.testing.assert_allclose(whole, rows, rtol=1e-12)


def test_bayes_masked_batch_matches_brute_force():
    # several rows and several targets per row at once, against enumeration of every clean sequence and
    # corruption (written in this file, independent of the package's forward-backward)
    V, N, rate, replace = 3, 4, 0.3, (0.8, 0.1, 0.1)
    src, sp = tiny_source(V, 3), SpecialTokens(V)
    x = torch.tensor([[0, sp.mask_id, 2, sp.mask_id], [sp.mask_id, 1, 1, 0], [2, 2, sp.mask_id, 1]])
    y = torch.tensor([[IGNORE, 1, 2, 0], [2, IGNORE, 1, IGNORE], [IGNORE, 0, 1, IGNORE]])
    got = bayes_loss("masked", src, (x, y), sp, rate=rate, replace=replace)
    want = []
    for i in range(3):
        post = _brute_mlm_posteriors(src, x[i].tolist(), rate, replace, sp)
        want += [-math.log(post[t, int(y[i, t])]) for t in range(N) if y[i, t] != IGNORE]
    np.testing.assert_allclose(got, want, rtol=1e-9)


@pytest.mark.parametrize(
    "V, N, density, mean_len, counts",
    [(3, 8, 0.375, 1.5, (3, 2)), (2, 10, 0.4, 4 / 3, (4, 3))],  # 3 tokens in 2 spans; 4 tokens in 3 spans
)
def test_bayes_span_matches_brute_force(V, N, density, mean_len, counts):
    n_noise, n_spans = span_counts(N, density, mean_len)
    assert (n_noise, n_spans) == counts
    src, sp = tiny_source(V, 3), SpecialTokens(V, 4)
    # every (clean text, noise composition, text composition) -> (encoder input, targets), with probability
    xs = list(itertools.product(range(V), repeat=N))
    px = np.exp(src.log_prob(torch.tensor(xs)).numpy())
    mass: dict[tuple, float] = defaultdict(float)

    def compositions(total, parts):
        return [c for c in itertools.product(range(1, total + 1), repeat=parts) if sum(c) == total]

    comps_noise = compositions(n_noise, n_spans)
    comps_text = compositions(N - n_noise, n_spans)
    for x, p in zip(xs, px):
        for cn in comps_noise:
            for ct in comps_text:
                mask, pos = [False] * N, 0
                for plain, noise in zip(ct, cn):
                    pos += plain
                    for t in range(pos, pos + noise):
                        mask[t] = True
                    pos += noise
                enc, tgt, j = [], [], -1
                for t in range(N):
                    if mask[t]:
                        if not mask[t - 1]:
                            j += 1
                            enc.append(sp.sentinel_ids[j])
                            tgt.append(sp.sentinel_ids[j])
                        tgt.append(x[t])
                    else:
                        enc.append(x[t])
                enc.append(sp.eos_id)
                tgt.append(sp.eos_id)
                w = p / (len(comps_noise) * len(comps_text))
                for k in range(len(tgt) + 1):
                    mass[(tuple(enc), tuple(tgt[:k]))] += w
    seqs = src.sample(12, N, gen(5))
    b = span_corruption_batch(seqs, sp, noise_density=density, mean_span_length=mean_len, generator=gen(6))
    got = bayes_loss("span", src, b, sp)
    expected = []
    for enc, lab in zip(b.encoder_input_ids.tolist(), b.labels.tolist()):
        for k in range(len(lab)):
            num, den = mass[(tuple(enc), tuple(lab[: k + 1]))], mass[(tuple(enc), tuple(lab[:k]))]
            expected.append(-math.log(num / den))
    assert np.allclose(got, expected, rtol=1e-9, atol=1e-12)


def test_bayes_ordering_on_a_markov_source():
    # seeing both sides makes a target easier: masked < span (text targets) and masked < causal
    src, sp = MarkovSource(16, order=1, alpha=0.2, seed=0), SpecialTokens(16)
    seqs = src.sample(64, 64, gen(7))
    causal = bayes_loss("causal", src, causal_lm_batch(seqs)).mean()
    masked = bayes_loss(
        "masked", src, masked_lm_batch(seqs, sp, replace=(1, 0, 0), generator=gen(8)), sp, replace=(1, 0, 0)
    ).mean()
    assert masked < causal
    with pytest.raises(ValueError, match="first-order"):
        bayes_loss("causal", MarkovSource(4, order=2), causal_lm_batch(seqs % 4))
    with pytest.raises(TypeError, match="PrefixLMBatch"):
        bayes_loss("prefix", src, causal_lm_batch(seqs))


# ----------------------------------------------------------------------------------- predict_token


def test_predict_token_causal_continuation_and_bayes_rule():
    sp = SpecialTokens(6)
    model = _models(sp)["causal"]
    seqs = torch.randint(6, (3, 12), generator=gen())
    logp = predict_token(model, "causal", seqs[:, :7], None, sp)
    assert logp.shape == (3, 6)
    assert torch.allclose(logp, torch.log_softmax(model(seqs[:, :7])[:, -1, :6], -1), atol=1e-6)
    # infilling by Bayes' rule, against an explicit loop over candidates
    left, right = seqs[:, :5], seqs[:, 6:9]
    logp = predict_token(model, "causal", left, right, sp)
    assert torch.allclose(logp.exp().sum(1), torch.ones(3), atol=1e-5)
    for e in range(3):
        scores = []
        for v in range(6):
            s = torch.cat([left[e], torch.tensor([v]), right[e]])[None]
            with torch.no_grad():
                lp = torch.log_softmax(model(s)[0, :, :6], -1)
            scores.append(sum(lp[t - 1, s[0, t]].item() for t in range(5, 9)))
        ref = torch.log_softmax(torch.tensor(scores), 0)
        assert torch.allclose(logp[e], ref, atol=1e-4)


@pytest.mark.parametrize("objective", ["causal", "prefix"])
def test_predict_token_bayes_rule_with_cache_matches_full_passes(objective):
    # infilling reuses the left context's keys and values for every candidate; scoring each candidate
    # sequence in one full pass (prefix_len = the left context for the prefix LM) must give the same answer
    sp = SpecialTokens(7)
    model = _models(sp)[objective].eval()
    seqs = torch.randint(7, (5, 16), generator=gen(2))
    L, R = 6, 4
    left, right = seqs[:, :L], seqs[:, L + 1 : L + 1 + R]
    logp = predict_token(model, objective, left, right, sp)
    kwargs = {"prefix_len": L} if objective == "prefix" else {}
    full = torch.cat(
        [left.repeat_interleave(7, 0), torch.arange(7).repeat(5)[:, None], right.repeat_interleave(7, 0)], 1
    )
    with torch.no_grad():
        lp = torch.log_softmax(model(full, **kwargs)[..., :7], -1)
    scores = lp[:, L - 1 : L + R].gather(2, full[:, L : L + R + 1, None])[..., 0].sum(1).view(5, 7)
    assert torch.allclose(logp, torch.log_softmax(scores, -1), atol=1e-5)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_predict_token_every_family(objective):
    sp = SpecialTokens(6)
    model = _models(sp)[objective]
    seqs = torch.randint(6, (4, 20), generator=gen(1))
    for right in (0, 5):
        ce = token_cross_entropy(model, objective, seqs, 10, sp, right=right)
        assert math.isfinite(ce) and ce > 0
    many = token_cross_entropy(model, objective, seqs, [9, 12, 15], sp)
    # the same continuation loss, computed here from each family's interface with plain forward passes
    model.eval()
    losses = []
    with torch.no_grad():
        for t in (9, 12, 15):
            left = seqs[:, :t]
            if objective == "causal":
                logits = model(left)[:, -1]
            elif objective == "prefix":
                logits = model(left, prefix_len=t)[:, -1]
            elif objective == "masked":
                logits = model(torch.cat([left, torch.full((4, 1), sp.mask_id)], 1))[:, -1]
            else:
                s0, eos = torch.full((4, 1), sp.sentinel_ids[0]), torch.full((4, 1), sp.eos_id)
                enc = torch.cat([left, s0, eos], 1)
                dec = torch.tensor([[sp.decoder_start_id, sp.sentinel_ids[0]]]).expand(4, 2)
                logits = model(dec, encoder_input_ids=enc)[:, 1]
            logp = torch.log_softmax(logits[:, :6].double(), -1)
            losses.append(-logp.gather(1, seqs[:, t : t + 1]).mean().item())
    assert many == pytest.approx(sum(losses) / 3, rel=1e-5)
    # per_example: the losses themselves, position by position (windows inside), with the same mean
    each = token_cross_entropy(model, objective, seqs, [9, 12, 15], sp, per_example=True)
    assert each.shape == (12,) and each.mean().item() == pytest.approx(many, rel=1e-5)
    assert each[4:8].mean().item() == pytest.approx(losses[1], rel=1e-5)
    with pytest.raises(TypeError, match="per_example"):
        token_cross_entropy(model, objective, seqs, 10, sp, per_example=1)
    with pytest.raises(ValueError, match="position"):
        token_cross_entropy(model, objective, seqs, 18, sp, right=5)
    with pytest.raises(ValueError, match="rows"):
        predict_token(model, objective, seqs[:2, :5], seqs[:3, 6:8], sp)


# ------------------------------------------------------------------------------------- experiments


def test_label_density_experiment_small():
    src = MarkovSource(8, order=1, alpha=0.2, seed=0)
    cfg = Config(vocab_size=8, d_model=16, n_layers=1, n_heads=2, max_seq_len=16, mlp="gelu", pos="learned")
    run = label_density_experiment(
        src, (1.0, 0.25), config=cfg, steps=40, batch_size=4, seq_len=16, eval_every=10, n_eval=8
    )
    assert run.steps == [0, 10, 20, 30, 40]
    assert run.labels[1.0][-1] == 40 * 4 * 16 and run.labels[0.25][-1] == 40 * 4 * 4
    assert run.excess[1.0][0] == run.excess[0.25][0]  # same initial weights, same evaluation set
    a, b = run.fit(1.0)
    assert a > 0 and math.isfinite(b)
    assert run.flops_per_step > 0 and abs(run.bayes - src.entropy_rate()) < 0.3
    # the first 20 steps of the run are a 20-step run (constant learning rate after a fixed warm-up)
    short = label_density_experiment(
        src, (1.0, 0.25), config=cfg, steps=20, batch_size=4, seq_len=16, eval_every=10, n_eval=8
    )
    cut = run.upto(20)
    assert cut.steps == short.steps == [0, 10, 20]
    for f in (1.0, 0.25):
        assert cut.excess[f] == pytest.approx(short.excess[f], abs=1e-6) and cut.labels[f] == short.labels[f]
    with pytest.raises(ValueError, match="step"):
        run.upto(15)


def test_density_multiplier_on_exact_power_laws():
    # excess = a * s**-b exactly: the multiplier has a closed form, computed here without the package
    steps = list(range(0, 401, 25))
    curves = {1.0: (2.0, 0.8), 0.15: (3.0, 0.6)}
    excess = {f: [a * max(s, 1) ** -b for s in steps] for f, (a, b) in curves.items()}
    run = DensityRun((1.0, 0.15), steps, excess, {f: [0] * len(steps) for f in curves}, 1.0, 1)
    (a1, b1), (a15, b15) = curves[1.0], curves[0.15]
    level = a15 * 400**-b15
    assert run.compute_multiplier(0.15) == pytest.approx(400 / (a1 / level) ** (1 / b1), rel=1e-9)
    level150 = a15 * 150**-b15  # 150 is an evaluation point
    want = 150 / (a1 / level150) ** (1 / b1)
    assert run.upto(150).compute_multiplier(0.15) == pytest.approx(want, rel=1e-9)


def test_compare_objectives_small():
    sp = SpecialTokens(10, 4)
    ids = torch.randint(10, (4000,), generator=gen())
    windows = torch.randint(10, (6, 16), generator=gen(1))
    cfg = Config(vocab_size=sp.vocab_size, d_model=16, n_layers=1, n_heads=2, max_seq_len=18)
    res = compare_objectives(
        ids,
        windows,
        sp,
        cfg,
        steps=6,
        batch_size=4,
        seq_len=16,
        positions=[8, 10],
        infill_position=8,
        right=4,
        n_curve=2,
    )
    assert list(res) == list(DEFAULT_RUNS)
    flops = [r.flops for r in res.values()]
    assert max(flops) / min(flops) < 1.35  # equal compute up to one step's rounding
    dec, dec15 = res["decoder (causal LM)"], res["decoder, 15% of labels"]
    assert dec.flops_per_step == dec15.flops_per_step and dec15.targets_seen < dec.targets_seen / 4
    for r in res.values():
        assert math.isfinite(r.continuation) and math.isfinite(r.infill)
        assert r.continuation == r.continuation_curve[-1] and len(r.eval_flops) == len(r.continuation_curve)
        assert len(r.eval_flops) == 2 and r.eval_flops[0] > 0  # n_curve points, the untrained model skipped
    assert res["encoder-decoder (span corruption)"].params > dec.params
    with pytest.raises(ValueError, match="objective"):
        compare_objectives(ids, windows, sp, cfg, runs={"x": ("electra", {})})


def test_show_example_and_masking_tradeoff():
    sp = SpecialTokens(26, 4)
    decode = lambda ids: "".join(chr(97 + i) for i in ids)
    seqs = torch.arange(26)[None].repeat(2, 1)
    for o in OBJECTIVES:
        reads, predicts = show_example(o, make_batch(o, seqs, sp, generator=gen()), sp, decode)
        assert isinstance(reads, str) and isinstance(predicts, str)
    reads, predicts = show_example("causal", causal_lm_batch(seqs), sp, decode)
    assert reads == decode(range(25)) and predicts == decode(range(1, 26))
    reads, _ = show_example("span", span_corruption_batch(seqs, sp, generator=gen()), sp, decode)
    assert "<0>" in reads and reads.endswith("</s>")
    src = MarkovSource(6, order=1, alpha=0.3, seed=1)
    t = masking_tradeoff(src, [0.1, 0.5, 0.9], n=8, seq_len=32)
    assert t["targets_per_token"][0] < t["targets_per_token"][1] < t["targets_per_token"][2]
    assert t["per_target"][0] < t["per_target"][2]  # less context, harder targets
    assert np.allclose(t["per_token"], np.array(t["per_target"]) * np.array(t["targets_per_token"]))


def test_plots_return_figures():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    src = MarkovSource(8, order=1, alpha=0.2, seed=0)
    cfg = Config(vocab_size=8, d_model=16, n_layers=1, n_heads=2, max_seq_len=16, mlp="gelu", pos="learned")
    run = label_density_experiment(
        src, (1.0, 0.25), config=cfg, steps=20, batch_size=4, seq_len=16, eval_every=5, n_eval=4
    )
    assert isinstance(plot_density(run), Figure)
    sp = SpecialTokens(10, 4)
    res = compare_objectives(
        torch.randint(10, (2000,)),
        torch.randint(10, (4, 16)),
        sp,
        Config(vocab_size=sp.vocab_size, d_model=16, n_layers=1, n_heads=2, max_seq_len=18),
        steps=4,
        batch_size=2,
        seq_len=16,
        positions=[8, 10],
        infill_position=8,
        right=4,
        n_curve=2,
    )
    assert isinstance(plot_comparison(res, baseline=2.0), Figure)
    t = masking_tradeoff(src, [0.1, 0.3], n=2, seq_len=16)
    assert isinstance(plot_masking_tradeoff([0.1, 0.3], t, 0.3, "to be"), Figure)
