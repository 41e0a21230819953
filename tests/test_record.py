"""Chapter 12's record, counts and experiments, the sources page and the answer page
(anatomy.experiments.record, record_runs, answer)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import book_toc  # _ext/ is on sys.path (tests/conftest.py): the one reader of _toc.yml
import pytest
import torch

from anatomy import claims
from anatomy.experiments import answer, record_runs
from anatomy.experiments import record as rec
from anatomy.model import Config

ROOT = Path(__file__).resolve().parents[1]


def bib_keys() -> set[str]:
    text = (ROOT / "references.bib").read_text(encoding="utf-8")
    return set(re.findall(r"^@\w+\s*\{\s*([^,\s]+)\s*,", text, flags=re.M))


def toc_files() -> list[str]:
    return book_toc.pages(ROOT)  # every page of _toc.yml, root first, without suffix


# ------------------------------------------------------------------------------------------- the record


def test_every_record_cites_a_known_paper():
    keys = bib_keys()
    cited = [k for e in rec.SEED002_TABLES for k in e.keys]
    cited += [r[-1] for r in rec.ENCDEC_RECORD] + [c[-1] for c in rec.COMPARISONS]
    cited += [s[-1] for s in rec.PUBLISHED_SHAPES]
    assert not sorted(set(cited) - keys), "record cites keys missing from references.bib"
    assert not sorted(set(cited) - set(rec.SHORT_CITES)), "record cites keys without a short label"


def test_record_html_renders_every_row_and_rejects_unknown_status():
    page = rec.record_html()
    assert page.count("<tr") == len(rec.SEED002_TABLES) + 1
    bad = rec.Entry("x", "y", "z", ("devlin2019bert",), "maybe")
    with pytest.raises(ValueError, match="status"):
        rec.record_html([bad])


def test_counted_sizes_match_the_published_ones():
    sizes = rec.published_sizes()
    assert len(sizes) == len(rec.PUBLISHED_SHAPES)
    for s in sizes:
        assert abs(s["error"]) < 0.05, s


def test_count_params_matches_a_real_model_and_checks_its_arguments():
    from anatomy import EncoderDecoder, Transformer

    cfg = Config(vocab_size=50, d_model=32, n_layers=2, n_heads=4)
    assert rec.count_params(cfg, "decoder") == sum(p.numel() for p in Transformer(cfg).parameters())
    n_encdec = sum(p.numel() for p in EncoderDecoder(cfg).parameters())
    assert rec.count_params(cfg, "encoder-decoder") == n_encdec
    with pytest.raises(ValueError, match="family"):
        rec.count_params(cfg, "decoder-only")
    with pytest.raises(TypeError, match="config"):
        rec.count_params({"d_model": 32}, "decoder")


def test_cross_attention_share_is_a_partition():
    cfg = dict((s[0], s[2]) for s in rec.PUBLISHED_SHAPES)["T5-11B"]
    share = rec.cross_attention_share(cfg, 512, 512)
    parts = ("encoder", "decoder_self_and_mlp", "cross_attention", "head")
    assert sum(share[k] for k in parts) == pytest.approx(1.0)
    assert 0 < share["cross_attention"] < share["encoder"]


def test_gqa_shrinks_both_families_caches_by_the_head_ratio():
    rows = {r["n_kv_heads"]: r for r in rec.cache_bytes_by_family(n_source=12, n_target=5)}
    for hkv, r in rows.items():
        assert r["decoder"] == r["formula_decoder"]
        for f in ("decoder", "encoder_decoder", "encoder_decoder_cross"):
            assert rows[8][f] == (8 // hkv) * r[f]
    with pytest.raises(ValueError, match="n_source"):
        rec.cache_bytes_by_family(n_source=0)


# ------------------------------------------------------------------------------------------- experiments


def test_exposure_bias_runs_and_reports_each_checkpoint():
    run = record_runs.exposure_bias(0, steps=6, n_eval=16, length=12, prompt=4, d_model=16)
    assert len(run.steps) == len(run.kl_teacher) == len(run.kl_free) == len(run.z) == 6
    assert run.curve_teacher.shape == run.curve_free.shape == (12 + 1 - 1 - 4,)
    assert 0.0 <= run.nonargmax_share <= 1.0
    with pytest.raises(ValueError, match="steps"):
        record_runs.exposure_bias(0, steps=2)
    with pytest.raises(ValueError, match="prompt"):
        record_runs.exposure_bias(0, steps=6, prompt=64, length=64)


def test_budget_runs_compare_three_models_on_the_same_task():
    runs = record_runs.budget_runs(0, steps=4, batch=2, n_source=8, n_target=8, d_model=16)
    dec, ed, dec2 = runs
    assert [r.family for r in runs] == ["decoder", "encoder-decoder", "decoder"]
    assert 1.9 < ed.params / dec.params < 2.6
    assert 0.7 < ed.flops_per_step / dec.flops_per_step < 1.4
    assert dec2.flops_per_step > 1.6 * dec.flops_per_step
    assert all(r.excess >= 0 and r.initial > 0 for r in runs)


def test_retrieval_scores():
    docs = torch.eye(4)
    assert record_runs.retrieval_scores(docs, docs, [0, 1, 2, 3]) == {"top1": 1.0, "mrr": 1.0}
    # each query nearest to the other's partner
    scores = record_runs.retrieval_scores(docs[[1, 0]], docs, [0, 1])
    assert scores["top1"] == 0.0 and scores["mrr"] == pytest.approx(0.5)


def test_embedding_set_and_prompt_validation():
    queries, docs, gold = record_runs.embedding_set()
    assert len(queries) == len(gold) == len(record_runs.PARAPHRASES)
    assert len(docs) == len(queries) + len(record_runs.DISTRACTORS)
    assert all(docs[g] == record_runs.PARAPHRASES[i][1] for i, g in enumerate(gold))
    with pytest.raises(ValueError, match="prompt"):
        record_runs.decoder_embeddings(None, None, ["a"], prompt="no placeholder")


# --------------------------------------------------------------------------------- the claims of ch. 12


def test_chapter_12_claims_register_with_quick_checks_that_pass():
    mine = [c for c in claims.all_claims() if c.slug == "record"]
    assert len(mine) >= 8 and all(c.key.startswith("record.") for c in mine)
    assert all(c.verdict in claims.VERDICTS for c in mine)
    assert "not testable here" in {c.verdict for c in mine}
    for c in mine:
        if c.quick is not None:
            numbers = c.quick()
            assert numbers and all(isinstance(v, (int, float, str, bool)) for v in numbers.values())


# ------------------------------------------------------------------------------------- the answer page


@pytest.mark.parametrize("kind", ["points", "failed"])
def test_every_answer_point_links_to_a_chapter_whose_claim_supports_it(kind):
    resolved = answer.answer_points() if kind == "points" else answer.failed_reasons()
    wanted = answer.SUPPORTING if kind == "points" else ("contradicted",)
    assert len(resolved) == (5 if kind == "points" else len(answer.FAILED_REASONS))
    listed = set(toc_files())
    for p in resolved:
        c = claims.get(p["key"])
        assert c.verdict in wanted and p["verdict"] == c.verdict, p["key"]
        assert p["chapter"] == c.chapter and p["slug"] == c.slug
        page = answer.chapter_page(p["slug"])
        assert page is not None and page in listed, f"{p['key']}: chapter {p['slug']} is not in the book"
        html = answer.answer_html([p])
        assert f"href='{page}.html'" in html and p["key"] in html
        assert not re.search(r"\{[a-z_0-9]+(:[^}]*)?\}", p["sentence"]), "a placeholder was not filled"
    if kind == "points":
        assert len({p["key"] for p in resolved}) == len(resolved)


def test_resolve_point_falls_back_to_a_renamed_claim_and_fails_loudly():
    renamed = ("signal_density.renamed_away", ("causal_share",), "lead", "{causal_share:.2f}")
    got = answer.resolve_point([renamed])
    assert got["slug"] == "signal_density" and claims.get(got["key"]).verdict in answer.SUPPORTING
    with pytest.raises(LookupError):
        answer.resolve_point([("signal_density.renamed_away", ("no_such_field",), "lead", "{no_such_field}")])


def test_answer_page_is_generated_from_the_registry():
    nb = json.loads((ROOT / "the_answer.ipynb").read_text(encoding="utf-8"))
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    assert "answer.answer_points()" in code and "answer.failed_reasons()" in code
    files = toc_files()
    assert files.index("the_answer") == files.index("references") - 1, "the answer goes before references"


# ------------------------------------------------------------------------------------- the sources page


def test_sources_page_names_every_chapter_that_tests_each_seed():
    text = (ROOT / "sources.md").read_text(encoding="utf-8")
    sections = dict(re.findall(r"^## Seed (\d{3})(.*?)(?=^## Seed |\Z)", text, flags=re.M | re.S))
    assert sorted(sections) == ["000", "001", "002", "003", "004"]
    tested: dict[str, set[str]] = {}  # seed -> the slugs of the chapters that test it
    for c in claims.all_claims():
        for s in c.seeds:
            tested.setdefault(s, set()).add(c.slug)
    by_number = {ch.number: slug for slug, ch in claims.chapters().items()}
    for seed, body in sections.items():
        named = {claims.slug_of(page) for page in re.findall(r"<(chapters/[a-z0-9_]+)>", body)}
        named |= {by_number.get(int(n)) for n in re.findall(r"chapters?\s+(\d+)", body, flags=re.I)}
        missing = tested.get(seed, set()) - named
        assert not missing, f"sources.md, seed {seed}: chapters {sorted(missing)} test it but are not named"
    for target in re.findall(r"\{doc\}`[^`<]*<([^>]+)>`", text):
        assert (ROOT / f"{target}.ipynb").exists() or (ROOT / f"{target}.md").exists(), target


def test_answer_points_quote_the_chapters_recorded_numbers_when_the_build_has_them(monkeypatch):
    key, fields, lead, template = answer.ANSWER_POINTS[0][0]
    quick = claims.get(key).quick()
    recorded = {
        **quick,
        **{f: (quick[f] * 2 if isinstance(quick[f], float) else quick[f]) for f in fields},
        "passed": True,
    }
    monkeypatch.setattr(claims, "recorded", lambda: {key: recorded})
    point = answer.resolve_point(answer.ANSWER_POINTS[0])
    assert point["source"] == "recorded" and point["sentence"] == template.format(**recorded)
    assert "quick recomputation" not in answer.answer_html([point])
    monkeypatch.setattr(claims, "recorded", lambda: {})  # a page run on its own: quick(), and it says so
    point = answer.resolve_point(answer.ANSWER_POINTS[0])
    assert point["source"] == "quick" and "quick recomputation" in answer.answer_html([point])


def test_scoreboard_rows_table_and_figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    registry = claims.all_claims()[:3]
    key = registry[0].key
    rows, failures = answer.scoreboard_rows(registry, {key: {"passed": True, "ratio": 2.5, "n": 1000}})
    assert [c.key for c, _, _ in rows] == [c.key for c in registry]
    assert rows[0][1] == "check passed: ratio = 2.5, n = 1,000"
    html = answer.scoreboard_table(rows)
    assert html.count("<tr") == 1 + len(rows) and "<br><small>Checked:" in html
    assert answer.VERDICT_COLOURS[registry[0].verdict] in html
    fig = answer.plot_verdicts(registry)
    assert fig.axes[0].get_ylabel() == "claims tested"
    plt.close(fig)
