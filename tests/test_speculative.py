"""anatomy.speculative: greedy output identical to the target's, the exact rejection rule (by enumerating
every random branch of the real sampler, and by sampling with a tolerance that cannot flake), drafters,
cache rollback and Leviathan et al.'s formulas."""

from __future__ import annotations

import math

import pytest
import torch

from anatomy import Config, Transformer, generate
from anatomy import speculative as sp


def _pair(seed: int, vocab: int = 4, std: float = 0.15):
    torch.manual_seed(seed)
    target = Transformer(Config(vocab_size=vocab, d_model=16, n_layers=2, n_heads=2, init_std=std)).eval()
    draft = Transformer(Config(vocab_size=vocab, d_model=16, n_layers=1, n_heads=2, init_std=std)).eval()
    return target, draft


@pytest.fixture(scope="module")
def mid():
    torch.manual_seed(0)
    cfg = Config(vocab_size=50, d_model=32, n_layers=4, n_heads=4, n_kv_heads=2, init_std=0.3)
    return Transformer(cfg).eval()


# ---------------------------------------------------------------------------------------- greedy


@pytest.mark.parametrize("gamma", [0, 1, 3, 6])
def test_greedy_output_is_the_targets(mid, gamma):
    prompt = torch.randint(0, 50, (1, 7), generator=torch.Generator().manual_seed(1))
    want = generate(mid, prompt, 30)
    for draft in (sp.layer_draft(mid, 1), sp.layer_draft(mid, [0, 3]), sp.NgramDrafter(50, 3, 1)):
        out = sp.speculative_generate(mid, draft, prompt, 30, gamma=gamma)
        assert torch.equal(out.ids, want)
        assert out.n_new == 30 and sum(out.accepted) + out.rounds >= 30
        assert out.target_calls == out.rounds


def test_a_perfect_draft_is_always_accepted(mid):
    prompt = torch.tensor([[3, 1, 4, 1, 5]])
    out = sp.speculative_generate(mid, sp.layer_draft(mid, 4), prompt, 25, gamma=4)
    assert out.acceptance_rate == 1.0 and out.alpha == 1.0
    assert out.target_calls == 5 and out.tokens_per_call == 5.0  # 4 accepted + 1 bonus per call
    assert torch.equal(out.ids, generate(mid, prompt, 25))


def test_a_wrong_draft_still_gives_the_targets_output(mid):
    class Wrong:  # always proposes tokens the target never picks first: every round rolls back
        calls = 0

        def propose(self, ids, k, temperature, rng):
            nxt = generate(mid, ids, 1)[0, -1].item()
            toks = [(nxt + 1) % 50] * k
            q = torch.zeros(k, 50, dtype=torch.float64)
            q[torch.arange(k), torch.tensor(toks)] = 1.0
            return toks, q

    prompt = torch.tensor([[2, 7, 1, 8]])
    out = sp.speculative_generate(mid, Wrong(), prompt, 12, gamma=3)
    assert torch.equal(out.ids, generate(mid, prompt, 12))
    assert out.acceptance_rate == 0.0 and out.target_calls == 12


def test_eos_stops_like_generate(mid):
    prompt = torch.tensor([[3, 1, 4, 1, 5]])
    full = generate(mid, prompt, 20)[0, 5:].tolist()
    eos = full[6]
    out = sp.speculative_generate(mid, sp.layer_draft(mid, 2), prompt, 20, gamma=3, eos_token_id=eos)
    assert out.ids[0, 5:].tolist() == full[: full.index(eos) + 1]


# ---------------------------------------------------------------------------------------- exactness


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(4))
def test_exact_rules_give_the_targets_distribution(seed):
    target, draft = _pair(seed)
    prompt = torch.tensor([[1, 2, 3]])
    exact = sp.sequence_distribution(target, prompt, 2)
    got = {}
    for rule in sp.RULES:
        got[rule] = sp.enumerate_distribution(
            lambda rng, rule=rule: sp.speculative_generate(
                target, draft, prompt, 2, gamma=2, temperature=1.0, rng=rng, rule=rule
            ).ids[0, -2:]
        )
        assert math.isclose(sum(got[rule].values()), 1.0, abs_tol=1e-9)
    assert sp.dict_total_variation(got["leviathan"], exact) < 1e-5
    assert sp.dict_total_variation(got["match"], exact) < 1e-5
    assert sp.dict_total_variation(got["argmax"], exact) > 0.01  # the greedy rule is wrong for sampling


def test_exact_at_another_temperature_and_with_the_ngram_drafter():
    target, draft = _pair(3)
    prompt = torch.tensor([[0, 1, 0, 1, 0]])
    for drafter in (draft, sp.NgramDrafter(4, 2, 1)):
        got = sp.enumerate_distribution(
            lambda rng, d=drafter: sp.speculative_generate(
                target, d, prompt, 2, gamma=3, temperature=0.7, rng=rng
            ).ids[0, -2:]
        )
        assert sp.dict_total_variation(got, sp.sequence_distribution(target, prompt, 2, 0.7)) < 1e-5


def test_one_step_rule_is_exact_for_arbitrary_distributions():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        p = torch.softmax(3 * torch.randn(2, 6, generator=g, dtype=torch.float64), -1)
        q = torch.softmax(3 * torch.randn(1, 6, generator=g, dtype=torch.float64), -1)

        def one(rng, p=p, q=q):
            x = rng.categorical(q[0])
            n, nxt = sp.verify(p, q, [x], rng)
            return [x] if n == 1 else [nxt]

        dist = sp.enumerate_distribution(one)
        assert max(abs(dist.get((i,), 0.0) - float(p[0, i])) for i in range(6)) < 1e-12


@pytest.mark.slow
def test_sampling_with_torch_randomness_matches_within_a_bound_that_cannot_flake():
    # 3 tokens, 2 positions: 9 outcomes. For n samples, P(L1 error >= eps) <= (2^9 - 2) exp(-n eps^2 / 2)
    # (Weissman et al. 2003); with n = 1000 and eps = 0.35 that is below 1e-23. The draft alone is far
    # off (checked), so the bound still has teeth.
    target, draft = _pair(1, vocab=3, std=0.3)
    prompt = torch.tensor([[0, 1, 2]])
    exact = sp.sequence_distribution(target, prompt, 2)
    g = torch.Generator().manual_seed(0)
    draft_alone = sp.sequence_distribution(draft, prompt, 2)
    assert sum(abs(draft_alone.get(k, 0) - v) for k, v in exact.items()) > 1.0
    n, counts = 1000, {}
    for _ in range(n):
        seq = tuple(
            sp.speculative_generate(target, draft, prompt, 2, gamma=2, temperature=1.0, generator=g)
            .ids[0, -2:]
            .tolist()
        )
        counts[seq] = counts.get(seq, 0) + 1
    l1 = sum(abs(counts.get(k, 0) / n - v) for k, v in exact.items())
    assert (2**9 - 2) * math.exp(-n * 0.35**2 / 2) < 1e-20
    assert l1 < 0.35


def test_acceptance_probability_and_residual():
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    q = torch.tensor([0.2, 0.6, 0.2], dtype=torch.float64)
    assert sp.acceptance_probability(p, q, 0) == 1.0
    assert sp.acceptance_probability(p, q, 1) == pytest.approx(0.5)
    r = sp.residual_distribution(p, q)
    assert torch.allclose(r, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    assert torch.equal(sp.residual_distribution(p, p), p)
    with pytest.raises(ValueError, match="probability"):
        sp.acceptance_probability(p, torch.tensor([1.0, 0.0, 0.0]), 1)


# ---------------------------------------------------------------------------------------- pieces


def test_ngram_lookup():
    d = sp.NgramDrafter(10, max_n=2, min_n=1)
    assert d.lookup([1, 2, 3, 4, 1, 2], 3) == [3, 4, 1]  # bigram [1, 2] seen before
    assert d.lookup([5, 6, 7], 2) == []  # nothing repeats
    assert d.lookup([1, 2, 3, 9, 3], 2) == [9, 3]  # falls back to the unigram [3]
    with pytest.raises(ValueError, match="min_n"):
        sp.NgramDrafter(10, max_n=1, min_n=2)


def test_layer_draft_shares_modules(mid):
    d = sp.layer_draft(mid, [0, 2])
    assert d.config.n_layers == 2 and d.layers[1] is mid.layers[2] and d.lm_head is mid.lm_head
    with pytest.raises(ValueError, match="layers"):
        sp.layer_draft(mid, [5])
    with pytest.raises(TypeError, match="model"):
        sp.layer_draft("x", 1)


def test_leviathan_formulas():
    assert sp.expected_tokens_per_call(0.75, 5) == pytest.approx(3.288, abs=1e-3)
    assert sp.expected_speedup(0.75, 5, 0.11) == pytest.approx(3.288 / 1.55, abs=1e-3)
    assert sp.expected_tokens_per_call(1.0, 4) == 5.0
    assert sp.expected_tokens_per_call(0.0, 4) == 1.0
    with pytest.raises(ValueError, match="alpha"):
        sp.expected_tokens_per_call(1.5, 2)
    with pytest.raises(ValueError, match="c must"):
        sp.expected_speedup(0.5, 2, -1)


def test_argument_checks(mid):
    prompt = torch.tensor([[1, 2]])
    with pytest.raises(ValueError, match="one sequence"):
        sp.speculative_generate(mid, sp.layer_draft(mid, 1), prompt.repeat(2, 1), 3)
    with pytest.raises(ValueError, match="gamma"):
        sp.speculative_generate(mid, sp.layer_draft(mid, 1), prompt, 3, gamma=-1)
    with pytest.raises(ValueError, match="rule"):
        sp.speculative_generate(mid, sp.layer_draft(mid, 1), prompt, 3, rule="greedy")
    with pytest.raises(ValueError, match="temperature"):
        sp.speculative_generate(mid, sp.layer_draft(mid, 1), prompt, 3, temperature=-1.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        sp.speculative_generate(mid, sp.layer_draft(mid, 1), prompt, 0)
    with pytest.raises(TypeError, match="draft"):
        sp.speculative_generate(mid, object(), prompt, 3)
    with pytest.raises(TypeError, match="input_ids"):
        sp.speculative_generate(mid, sp.layer_draft(mid, 1), [[1, 2]], 3)
    with pytest.raises(ValueError, match="p must"):
        sp.verify(torch.ones(1, 3) / 3, None, [0], sp.TorchRandom())
    with pytest.raises(RuntimeError, match="max_runs"):
        sp.enumerate_distribution(lambda rng: [rng.categorical(torch.ones(5) / 5)], max_runs=3)


def test_step_costs_on_one_threads_cpu_clock(mid):
    ids = torch.randint(0, mid.config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(0))
    threads = torch.get_num_threads()
    costs = sp.step_costs(mid, sp.layer_draft(mid, 1), ids, 2, repeats=2, threads=1, clock="cpu")
    assert costs["target_step"] > 0 and costs["verify_step"] > 0 and costs["c"] > 0
    assert costs["verify_overhead"] == costs["verify_step"] / costs["target_step"]
    assert torch.get_num_threads() == threads
    lookup = sp.step_costs(mid, sp.NgramDrafter(mid.config.vocab_size), ids, 2, repeats=1)
    assert lookup["c"] == 0.0
    with pytest.raises(ValueError, match="threads=1"):
        sp.step_costs(mid, sp.layer_draft(mid, 1), ids, 2, repeats=1, clock="cpu")


# ---------------------------------------------------------------------------------------- adaptive gamma


@pytest.mark.parametrize("gamma", [1, 2, 4])
def test_adaptive_gamma_gives_the_greedy_output(mid, gamma):
    prompt = torch.randint(0, 50, (1, 7), generator=torch.Generator().manual_seed(2))
    want = generate(mid, prompt, 40)
    for draft in (sp.layer_draft(mid, 2), sp.NgramDrafter(50, 3, 1), sp.NgramDrafter(50, 3, 2)):
        out = sp.speculative_generate(mid, draft, prompt, 40, gamma=gamma, adaptive=True, max_gamma=8)
        assert torch.equal(out.ids, want)
        assert out.n_new == 40 and max(out.drafted) <= 8


def test_adaptive_gamma_grows_after_full_acceptance_and_halves_after_none(mid):
    prompt = torch.tensor([[3, 1, 4, 1, 5]])
    perfect = sp.speculative_generate(
        mid, sp.layer_draft(mid, 4), prompt, 60, gamma=2, adaptive=True, max_gamma=16
    )
    assert perfect.drafted[:4] == [2, 4, 8, 16]  # doubled after every fully accepted round, then capped
    assert (
        perfect.target_calls
        < sp.speculative_generate(mid, sp.layer_draft(mid, 4), prompt, 60, gamma=2).target_calls
    )
    assert torch.equal(perfect.ids, generate(mid, prompt, 60))

    class Wrong:  # never the target's next token: gamma halves to 1 and stays there
        calls = 0

        def propose(self, ids, k, temperature, rng):
            toks = [(generate(mid, ids, 1)[0, -1].item() + 1) % 50] * k
            q = torch.zeros(k, 50, dtype=torch.float64)
            q[torch.arange(k), torch.tensor(toks)] = 1.0
            return toks, q

    wrong = sp.speculative_generate(mid, Wrong(), prompt, 10, gamma=8, adaptive=True)
    assert wrong.drafted[:5] == [8, 4, 2, 1, 1] and wrong.acceptance_rate == 0.0
    assert torch.equal(wrong.ids, generate(mid, prompt, 10))
    fixed = sp.speculative_generate(mid, sp.layer_draft(mid, 4), prompt, 30, gamma=3)
    assert set(fixed.drafted[:-1]) == {3}  # not adaptive: gamma every round (the last one is cut short)


def _adaptive_dist(target, drafter, prompt, gamma, n_tok, rule="leviathan", schedules=None):
    """The exact output distribution of adaptive speculative sampling (max_gamma 2), and the first two
    rounds' draft lengths on every branch (added to ``schedules``)."""

    def sample(rng):
        out = sp.speculative_generate(
            target,
            drafter,
            prompt,
            n_tok,
            gamma=gamma,
            adaptive=True,
            max_gamma=2,
            temperature=1.0,
            rng=rng,
            rule=rule,
        )
        if schedules is not None:
            schedules.add(tuple(out.drafted[:2]))
        return out.ids[0, -n_tok:]

    return sp.enumerate_distribution(sample)


@pytest.mark.slow
def test_adaptive_gamma_keeps_the_targets_distribution():
    # The schedule depends only on earlier rounds, so each round still emits tokens with the target's
    # conditional law. gamma 1 over 5 tokens: a fully accepted first round makes the next one draft 2;
    # gamma 2 over 4 tokens: a rejected first draft makes the next round draft 1 (a fixed gamma drafts 2).
    prompt = torch.tensor([[0, 1, 1, 0]])
    for vocab, gamma, n_tok, adapted, drafters in (
        (2, 1, 5, (1, 2), ["model", "lookup"]),
        (3, 2, 4, (2, 1), ["lookup"]),
    ):
        target, draft = _pair(2, vocab=vocab)
        exact = sp.sequence_distribution(target, prompt, n_tok)
        for name in drafters:
            schedules = set()
            drafter = draft if name == "model" else sp.NgramDrafter(vocab, 2, 1)
            got = _adaptive_dist(target, drafter, prompt, gamma, n_tok, schedules=schedules)
            assert math.isclose(sum(got.values()), 1.0, abs_tol=1e-9)
            assert sp.dict_total_variation(got, exact) < 1e-5
            assert adapted in schedules  # the adaptive path was taken
    target, draft = _pair(2, vocab=2)
    argmax = _adaptive_dist(target, draft, prompt, 1, 5, rule="argmax")
    assert sp.dict_total_variation(argmax, sp.sequence_distribution(target, prompt, 5)) > 0.01  # it can fail


def test_greedy_fast_path_matches_the_general_rule(mid):
    # At temperature 0 the target's argmaxes decide; q only enters beta: sum min(p, q) = q(choice).
    class Soft:  # proposes the target's own next token with q = 0.5 on it (not one-hot)
        calls = 0

        def propose(self, ids, k, temperature, rng):
            toks = generate(mid, ids, k)[0, ids.shape[1] :].tolist()
            q = torch.full((k, 50), 0.5 / 49, dtype=torch.float64)
            q[torch.arange(k), torch.tensor(toks)] = 0.5
            return toks, q

    prompt = torch.tensor([[2, 7, 1, 8]])
    out = sp.speculative_generate(mid, Soft(), prompt, 12, gamma=3)
    assert torch.equal(out.ids, generate(mid, prompt, 12))
    assert out.acceptance_rate == 1.0 and out.alpha == pytest.approx(0.5)
    d = sp.layer_draft(mid, 2)
    drafter = sp.ModelDrafter(d, 32)
    toks = drafter.greedy_tokens(prompt, 5)
    assert toks == sp.ModelDrafter(d, 32).propose(prompt, 5, 0.0, sp.TorchRandom())[0]
    assert toks == generate(d, prompt, 5)[0, 4:].tolist()
    ngram = sp.NgramDrafter(50, 2, 1)
    assert (
        ngram.greedy_tokens([1, 2, 3, 1, 2], 2)
        == ngram.propose(torch.tensor([[1, 2, 3, 1, 2]]), 2, 0.0, None)[0]
        == [3, 1]
    )
    assert ngram.greedy_tokens(torch.tensor([[1, 2, 3, 1, 2]]), 2) == [3, 1]


def test_adaptive_argument_checks(mid):
    prompt = torch.tensor([[1, 2]])
    with pytest.raises(ValueError, match="max_gamma"):
        sp.speculative_generate(mid, sp.layer_draft(mid, 1), prompt, 3, gamma=4, max_gamma=2)
    with pytest.raises(ValueError, match="max_gamma"):
        sp.speculative_generate(mid, sp.layer_draft(mid, 1), prompt, 3, adaptive=True, max_gamma=2.5)
    with pytest.raises(TypeError, match="adaptive"):
        sp.speculative_generate(mid, sp.layer_draft(mid, 1), prompt, 3, adaptive="yes")
