"""Colab's runtime, reproduced from its published package list, for testing the chapters' setup cells.

    python scripts/colab_env.py refresh --freeze pip-freeze.txt [--gpu-freeze pip-freeze.gpu.txt] \
        [--os-info os-info.txt] [--source "googlecolab/backend-info@<commit>"]
    python scripts/colab_env.py base          # build (or reuse) the cached Colab-pinned environment
    python scripts/colab_env.py overlay DIR   # a throw-away environment on top of it, for one test run

``refresh`` rewrites ``tests/colab/`` from the files Google publishes in the repository
googlecolab/backend-info (``pip-freeze.txt`` of the CPU runtime, ``pip-freeze.gpu.txt``, ``os-info.txt``):
``colab-cpu.txt`` and ``colab-gpu.txt`` hold one ``name==version`` per line (direct-URL lines such as
``torch @ https://.../torch-2.11.0%2Bcpu-...whl`` become ``torch==2.11.0+cpu``), and the header records the
source and Colab's Python version.

``base`` builds a virtual environment from those pins: the packages in `BASE_PACKAGES` (what the book's
package, its ``colab`` extra and a notebook kernel touch, the kernel stack with ipywidgets 7, and Sphinx and
markdown-it-py, which the old setup cells downgraded), every dependency constrained to Colab's version.
Torch is this machine's CPU build (`TORCH_SPEC`; Colab's ``2.11.0+cpu`` wheel is for Python 3.13 and not
on this machine's indexes), and the Python is this machine's (``sys.executable``; Colab runs 3.13). It is
cached under ``$ANATOMY_COLAB_ENV`` (default ``~/.cache/anatomy/colab-env``), keyed by a hash of the pins,
the package list and this script, so later runs reuse it in a second.

``overlay`` makes an empty virtual environment whose Python also sees the base environment's packages
(a ``.pth`` file), with a ``pip`` of its own: installs land in the overlay, the cached base is never
modified, and a package the overlay installs over a base one shadows it (and shows up as a changed
version). `versions` lists what such an environment's Python sees.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PINS_DIR = ROOT / "tests" / "colab"
CPU_PINS = PINS_DIR / "colab-cpu.txt"
GPU_PINS = PINS_DIR / "colab-gpu.txt"

# Installed into the base environment at Colab's versions (with all their dependencies, also at Colab's
# versions). Torch is handled separately (TORCH_SPEC).
BASE_PACKAGES = [
    # the anatomy package's requirements and its colab extra
    "numpy",
    "matplotlib",
    "tqdm",
    "tokenizers",
    "safetensors",
    "transformers",
    "accelerate",
    "huggingface_hub",
    "ipywidgets",
    "pyyaml",
    "requests",
    # a notebook kernel as Colab runs it (IPython 7, ipykernel 6, ipywidgets 7), and nbclient to drive it
    "ipykernel",
    "ipython",
    "jupyter_client",
    "widgetsnbextension",
    "nbclient",
    "nbformat",
    "psutil",
    # what the old setup cells changed through jupyter-book
    "sphinx",
    "markdown-it-py",
]
TORCH_PACKAGES = {"torch", "torchvision", "torchaudio", "torchcodec"}
# Not constrained to Colab's versions: packaging tools (this machine's torch needs setuptools >= 77, Colab
# has 75.2.0). The setup cell never touches them: pip builds the package in an isolated environment.
UNCONSTRAINED = TORCH_PACKAGES | {"setuptools", "pip", "wheel"}
TORCH_SPEC = os.environ.get("COLAB_TORCH_SPEC", "")  # default: this machine's torch (see _torch_spec)


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# ------------------------------------------------------------------------------------------- refresh


def parse_freeze(text: str) -> dict[str, str]:
    """``pip freeze`` text -> {normalized name: version}; direct-URL wheels give the wheel's version."""
    pins: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or line.startswith("-e "):
            continue
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*(\S+)$", line)
        if m:
            pins[normalize(m.group(1))] = m.group(2)
            continue
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*@\s*(\S+)$", line)
        if m:
            from urllib.parse import unquote

            wheel = unquote(m.group(2).rsplit("/", 1)[-1])
            w = re.match(r"^[^-]+-([^-]+)-", wheel) if wheel.endswith(".whl") else None
            if w:
                pins[normalize(m.group(1))] = w.group(1)
            continue  # a git URL without a version: not reproducible here, left out
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)$", line)
        if m:
            continue  # a name without version (some GPU-runtime lines): left out
    return pins


def read_pins(path: Path = CPU_PINS) -> dict[str, str]:
    return parse_freeze(Path(path).read_text(encoding="utf-8"))


def colab_python(path: Path = CPU_PINS) -> str:
    m = re.search(r"^# python: (\S+)", Path(path).read_text(encoding="utf-8"), re.M)
    return m.group(1) if m else "unknown"


def write_pins(pins: dict[str, str], out: Path, source: str, python: str) -> None:
    lines = [
        "# Colab's preinstalled packages, from googlecolab/backend-info (generated by scripts/colab_env.py",
        "# refresh; do not edit by hand).",
        f"# source: {source}",
        f"# python: {python}",
    ]
    lines += [f"{name}=={version}" for name, version in sorted(pins.items())]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")


def refresh(freeze: Path, gpu_freeze: Path | None, os_info: Path | None, source: str) -> None:
    python = "unknown"
    if os_info is not None:
        m = re.search(r"Python (\d+\.\d+(?:\.\d+)?)", os_info.read_text(encoding="utf-8"))
        python = m.group(1) if m else python
    write_pins(parse_freeze(freeze.read_text(encoding="utf-8")), CPU_PINS, source, python)
    print(f"wrote {CPU_PINS.relative_to(ROOT)}")
    if gpu_freeze is not None:
        write_pins(parse_freeze(gpu_freeze.read_text(encoding="utf-8")), GPU_PINS, source, python)
        print(f"wrote {GPU_PINS.relative_to(ROOT)}")


# ---------------------------------------------------------------------------------------------- base


def _torch_spec() -> str:
    if TORCH_SPEC:
        return TORCH_SPEC
    import torch

    return f"torch=={torch.__version__}"


def cache_root() -> Path:
    return Path(os.environ.get("ANATOMY_COLAB_ENV", Path.home() / ".cache" / "anatomy" / "colab-env"))


def base_key() -> str:
    h = hashlib.sha256()
    h.update(CPU_PINS.read_bytes())
    h.update(json.dumps([BASE_PACKAGES, _torch_spec(), sys.version]).encode())
    h.update(Path(__file__).read_bytes())
    return h.hexdigest()[:12]


def _site(env: Path) -> Path:
    return next((env / "lib").glob("python3*/site-packages"))


def base_env(log=print) -> Path:
    """The cached Colab-pinned environment (built on first use, ~2-4 min; reused afterwards).

    One process at a time looks, builds and prunes (an exclusive lock on ``.base-env.lock`` in the cache):
    tests/test_colab_env.py's two workers and tests/test_widgets.py ask for it at the same time, and when the
    key had changed two of them once built it side by side, the second replacing the first's while that one
    was in use (a chapter then failed to import NumPy, its shared library deleted under it)."""
    root = cache_root()
    env = root / f"base-{base_key()}"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".base-env.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (env / ".complete").exists():
            os.utime(env / ".complete")  # the age prune_stale goes by is the last use
            prune_stale(root, BASE_NAMES, keep=env)
            return env
        t0 = time.perf_counter()
        _build(env, root, log)
        prune_stale(root, BASE_NAMES, keep=env)
    # venvs record their own path in scripts; this one was built under another name, so use
    # `python -m ...` (never bin/ scripts) with it.
    log(f"colab_env: base environment built in {time.perf_counter() - t0:.0f} s: {env}")
    return env


def _build(env: Path, root: Path, log) -> None:
    """Build the base environment in a temporary directory of ``root``, then rename it to ``env`` (called
    with the lock held: an ``env`` that exists here is a crashed build's, never one in use)."""
    tmp = Path(tempfile.mkdtemp(prefix="building-", dir=root))
    t0 = time.perf_counter()
    try:
        subprocess.run([sys.executable, "-m", "venv", str(tmp)], check=True)
        pins = read_pins()
        constraints = tmp / "colab-constraints.txt"
        constraints.write_text(
            "".join(f"{n}=={v}\n" for n, v in sorted(pins.items()) if n not in UNCONSTRAINED)
            + _torch_spec()
            + "\n",
            encoding="utf-8",
        )
        pip = [str(tmp / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
        if "pip" in pins:  # Colab's pip, so the setup cell's installs resolve as they do there
            subprocess.run([*pip, "install", f"pip=={pins['pip']}"], check=False)
        log(f"colab_env: installing {_torch_spec()} and {len(BASE_PACKAGES)} packages at Colab's versions")
        subprocess.run([*pip, "install", _torch_spec(), "-c", str(constraints)], check=True)
        subprocess.run([*pip, "install", "-c", str(constraints), *BASE_PACKAGES], check=True)
        (tmp / ".complete").write_text(f"{time.perf_counter() - t0:.0f} s\n", encoding="utf-8")
        if env.exists():
            shutil.rmtree(env)
        tmp.rename(env)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


STALE_AFTER_S = 6 * 3600.0
# What base_env makes in cache_root(): finished environments, and builds under way (or left by a crash)
BASE_NAMES = r"base-[0-9a-f]{12}|building-[a-z0-9_]{8}"  # tempfile.mkdtemp: 8 of [a-z0-9_]
# What tests/test_triton.py makes beside cache_root(): a set of packages (another Triton and NumPy) per
# Python, Triton and NumPy, and an overlay environment per checkout that puts them first
TRITON_PACKAGES_NAMES = r"triton-[0-9][0-9a-z.+]*-packages-[0-9a-f]{10}"
TRITON_OVERLAY_NAMES = r"triton-[0-9][0-9a-z.+]*-[0-9a-f]{10}"


def orphaned(overlay: Path) -> bool:
    """An overlay whose environment (the second line of its .complete) no longer exists."""
    try:
        lines = (overlay / ".complete").read_text().splitlines()
    except OSError:
        return False
    return len(lines) > 1 and not Path(lines[1]).exists()


def prune_stale(root: Path, names: str, keep: Path, max_age_s: float = STALE_AFTER_S, gone=None) -> list:
    """Delete the cached environments in ``root`` whose names match the regular expression ``names``, other
    than ``keep``, that were last used more than ``max_age_s`` ago (their ``.complete`` file's time, or the
    directory's for a build that never finished), or for which ``gone(path)`` is true. Returns what it
    deleted. Only directories holding a ``.complete`` or a ``pyvenv.cfg``: a file, another directory, or a
    name ``names`` does not match in full, is never touched.

    Each change of the pins, of this script or of Python builds a new base environment (1.5 GB) under a
    new key, and each clone of the repository a new Triton overlay (tests/test_triton.py): nothing else
    removes the old ones, and they once filled this machine's disk until pip failed with "No space left
    on device". An environment used within ``max_age_s`` stays: another checkout's test run may be in it.
    """
    try:
        paths = sorted(p for p in Path(root).iterdir() if re.fullmatch(names, p.name))
    except OSError:  # no cache yet
        return []
    now = time.time()
    removed = []
    for path in paths:
        if path == keep or path.is_symlink() or not path.is_dir():
            continue
        if not ((path / ".complete").exists() or (path / "pyvenv.cfg").exists()):
            continue  # not an environment this cache made (or one whose build has not begun)
        try:
            done = path / ".complete"
            used = (done if done.exists() else path).stat().st_mtime
        except OSError:  # another process removed it meanwhile
            continue
        if now - used > max_age_s or (gone is not None and gone(path)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


# ------------------------------------------------------------------------------------------- overlay


def overlay_env(base: Path, where: Path) -> Path:
    """A fresh environment in `where` that sees `base`'s packages and installs into itself."""
    python = base / "bin" / "python"
    subprocess.run([str(python), "-m", "venv", "--without-pip", str(where)], check=True)
    site = _site(where)
    (site / "_colab_base.pth").write_text(
        f"import site; site.addsitedir({str(_site(base))!r})\n", encoding="utf-8"
    )
    pip = where / "bin" / "pip"
    pip.write_text(f'#!/bin/sh\nexec "{where / "bin" / "python"}" -m pip "$@"\n', encoding="utf-8")
    pip.chmod(0o755)
    return where


VERSIONS_CODE = """\
import importlib.metadata as md, json, re, sys
seen = {}
for path in sys.path:
    for dist in md.distributions(path=[path]):
        name = re.sub(r"[-_.]+", "-", dist.metadata["Name"] or "").lower()
        if name and name not in seen:
            seen[name] = dist.version
print(json.dumps(seen))
"""


def versions(env: Path) -> dict[str, str]:
    """{normalized name: version} of every distribution the environment's Python imports first."""
    out = subprocess.run(
        [str(env / "bin" / "python"), "-c", VERSIONS_CODE], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("refresh", help="rewrite tests/colab/ from Colab's published freeze files")
    r.add_argument("--freeze", type=Path, required=True)
    r.add_argument("--gpu-freeze", type=Path)
    r.add_argument("--os-info", type=Path)
    r.add_argument("--source", default="googlecolab/backend-info")
    sub.add_parser("base", help="build or reuse the cached Colab-pinned environment; print its path")
    o = sub.add_parser("overlay", help="make a throw-away environment on top of the base")
    o.add_argument("dir", type=Path)
    args = ap.parse_args()
    if args.cmd == "refresh":
        refresh(args.freeze, args.gpu_freeze, args.os_info, args.source)
    elif args.cmd == "base":
        print(base_env())
    else:
        print(overlay_env(base_env(), args.dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
