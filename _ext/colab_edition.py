"""Sphinx extension and script: the Colab edition of every chapter, and Colab buttons that open it.

Colab renders CommonMark/GFM, not MyST, so a chapter notebook opened there as it is would show its glue
references, citation roles and solution dropdowns as raw text. The Colab edition is the same notebook
with its Markdown rewritten:

* ``{glue:text}`name``` (with or without a format spec) becomes the value the published build computed,
  formatted as the build formats it; a note under the title says these are the build's numbers and that the
  reader's run prints its own where they are computed (``anatomy.book.glue`` prints ``name = value`` in a
  kernel without myst-nb);
* ``{cite:p}`` / ``{cite:t}`` become "(Author et al., year)" / "Author et al. (year)", linked to the book's
  bibliography page (authors and years from ``references.bib``);
* ``:::{dropdown}`` (and admonitions of class ``dropdown``) become ``<details><summary>``; other admonitions
  become block quotes with a bold title; other roles become their text; relative links to pages of the book
  become links to the published pages;
* code cells are kept (outputs stripped), without the book-only tags; the setup cell installs the package
  from the commit the build is of (``GITHUB_SHA`` in the workflow, else ``HEAD`` when ``anatomy/`` is
  committed; ``colab_edition_ref`` overrides), not from the branch, so the code a reader runs is the code
  whose numbers the text shows even after the branch has moved on.

When Sphinx builds the book (``sphinx.local_extensions`` in ``_config.yml``), ``build-finished`` writes the
editions to ``<html>/colab/chapters/NN_slug.ipynb``, with the values of this build
(``_build/jupyter_execute/chapters/NN_slug.glue.json``, which myst-nb writes), and every page's Colab button
is pointed at its edition: ``https://colab.research.google.com/github/<org>/<repo>/blob/<branch>/colab/
chapters/NN_slug.ipynb``, where ``<branch>`` is the branch the built site is published from
(``colab_edition_branch``, default ``gh-pages``). Colab opens notebooks from GitHub paths only, so the
editions are published with the site (the edition's values belong to that build), never committed.

    python _ext/colab_edition.py [--build _build] [--out DIR] [chapters/NN_slug.ipynb ...]

writes editions from an existing build without Sphinx.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from ast import literal_eval
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # also when this file is loaded by path (tests)
from book_address import pages_url, repository_parts  # noqa: E402  (the one reading of the address)

ROOT = Path(__file__).resolve().parents[1]
EDITION_DIR = "colab"
BOOK_ONLY_TAGS = {
    "remove-cell",
    "remove-input",
    "remove-output",
    "hide-input",
    "hide-output",
    "hide-cell",
    "skip-execution",
    "full-width",
    "margin",
}

# -------------------------------------------------------------------------------------- configuration


def load_config(root: Path = ROOT) -> dict:
    import yaml

    return yaml.safe_load((root / "_config.yml").read_text(encoding="utf-8"))


def repo_parts(url: str) -> tuple[str, str]:
    """('org', 'repo') of a GitHub URL (book_address.repository_parts, whose ValueError names Colab here)."""
    try:
        return repository_parts(url)
    except ValueError as exc:
        raise ValueError(f"Colab opens notebooks from GitHub only, not {url!r}: {exc}") from None


def site_url(config: dict) -> str:
    """The published book's address: html.baseurl, else the repository's GitHub Pages address."""
    base = ((config.get("html") or {}).get("baseurl") or "").strip()
    if not base:
        base = ((config.get("sphinx") or {}).get("config") or {}).get("html_baseurl", "") or ""
    if not base:
        repo_parts(config["repository"]["url"])  # the Colab-worded error for a non-GitHub address
        base = pages_url(config["repository"]["url"])  # the same derivation as _ext/publish.py's
    return base.rstrip("/") + "/"


def colab_url(config: dict, pagename: str, branch: str = "gh-pages") -> str:
    """The Colab address that opens `pagename`'s edition from the published branch."""
    org, repo = repo_parts(config["repository"]["url"])
    base = (config.get("launch_buttons") or {}).get("colab_url") or "https://colab.research.google.com"
    return f"{base.rstrip('/')}/github/{org}/{repo}/blob/{branch}/{EDITION_DIR}/{pagename}.ipynb"


# ------------------------------------------------------------------------------------------- values


def format_plain_text(text: str, fmt_spec: str) -> str:
    """As myst-nb's ``{glue:text}`` formats a value's text/plain (myst_nb.core.variables)."""
    try:
        value = literal_eval(text)
    except (SyntaxError, ValueError):
        value = text
    if fmt_spec == "":
        return str(value)
    kind = fmt_spec[-1]
    if kind == "s":
        value = str(value)
    elif kind in "bcdoxX":
        value = int(value)
    elif kind in "eEfFgGn%":
        value = float(value)
    return format(value, fmt_spec)


def build_values(glue_json: Path) -> dict[str, str]:
    """name -> text/plain of the values a build glued (myst-nb's ``NN_slug.glue.json``)."""
    stored = json.loads(Path(glue_json).read_text(encoding="utf-8"))
    return {name: out.get("data", {}).get("text/plain") for name, out in stored.items()}


def executed_values(nb: dict) -> dict[str, str]:
    """name -> text/plain of the values glued in an executed notebook (myst-nb's scrapbook outputs)."""
    values = {}
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []):
            name = out.get("metadata", {}).get("scrapbook", {}).get("name")
            if name is not None:
                data = out.get("data", {})
                values[name] = next((v for k, v in data.items() if k.endswith("text/plain")), None)
    return values


# ------------------------------------------------------------------------------------------ citations

_LATEX_ACCENTS = {
    '\\"': "\u0308",
    "'": "\u0301",
    "`": "\u0300",
    "^": "\u0302",
    "~": "\u0303",
    "c": "\u0327",
    "v": "\u030c",
    "=": "\u0304",
    ".": "\u0307",
    "u": "\u0306",
    "H": "\u030b",
}


def _latex_text(text: str) -> str:
    import unicodedata

    def accent(m):
        mark = _LATEX_ACCENTS.get(m.group(1))
        return unicodedata.normalize("NFC", m.group(2) + mark) if mark else m.group(2)

    text = re.sub(r"\\([\"'`^~cv=.uH])\s*\{?\\?([A-Za-z])\}?", accent, text)
    text = re.sub(
        r"\\(ss|o|O|l|L|ae|AE|aa|AA)\b",
        lambda m: {
            "ss": "ß",
            "o": "ø",
            "O": "Ø",
            "l": "ł",
            "L": "Ł",
            "ae": "æ",
            "AE": "Æ",
            "aa": "å",
            "AA": "Å",
        }[m.group(1)],
        text,
    )
    text = text.replace("\\&", "&").replace("~", " ")
    return re.sub(r"[{}]", "", text).strip()


def _field(body: str, name: str) -> str | None:
    m = re.search(rf"\b{name}\s*=\s*", body, re.I)
    if not m:
        return None
    i = m.end()
    if i < len(body) and body[i] in '{"':
        close = "}" if body[i] == "{" else '"'
        depth, j = 0, i
        while j < len(body):
            ch = body[j]
            if close == "}" and ch == "{":
                depth += 1
            elif ch == close and (close == '"' and j > i or close == "}"):
                if close == "}":
                    depth -= 1
                    if depth == 0:
                        return body[i + 1 : j]
                else:
                    return body[i + 1 : j]
            j += 1
        return None
    m2 = re.match(r"[^,\n}]+", body[i:])
    return m2.group(0).strip() if m2 else None


def bib_entries(path: Path) -> dict[str, tuple[str, str]]:
    """key -> (short author text as the book prints it, year), from a BibTeX file."""
    text = Path(path).read_text(encoding="utf-8")
    entries = {}
    starts = [m for m in re.finditer(r"^@(\w+)\s*\{\s*([^,\s]+)\s*,", text, re.M)]
    for k, m in enumerate(starts):
        body = text[m.end() : starts[k + 1].start() if k + 1 < len(starts) else len(text)]
        year = _field(body, "year") or "n.d."
        people = _field(body, "author") or _field(body, "editor")
        if people:
            names = [n.strip() for n in re.split(r"\s+and\s+", people) if n.strip()]
            surnames = []
            for n in names:
                if n.lower() == "others":
                    surnames.append("others")
                elif n.startswith("{") and n.endswith("}"):
                    surnames.append(_latex_text(n))
                elif "," in n:
                    surnames.append(_latex_text(n.split(",")[0]))
                else:
                    surnames.append(_latex_text(n.split()[-1]))
            if len(surnames) == 1:
                who = surnames[0]
            elif len(surnames) == 2 and surnames[1] != "others":
                who = f"{surnames[0]} and {surnames[1]}"
            else:
                who = f"{surnames[0]} et al."
        else:
            who = _latex_text(
                _field(body, "organization")
                or _field(body, "institution")
                or _field(body, "publisher")
                or _field(body, "title")
                or m.group(2)
            )
        entries[m.group(2)] = (who, _latex_text(year))
    return entries


def cite_text(kind: str, keys: list[str], bib: dict[str, tuple[str, str]], refs_url: str) -> str:
    parts = []
    for key in keys:
        if key not in bib:
            raise KeyError(f"citation key {key!r} is not in references.bib")
        who, year = bib[key]
        parts.append((who, year))
    if kind.startswith("t"):
        return ", ".join(f"[{who} ({year})]({refs_url})" for who, year in parts)
    return "(" + "; ".join(f"[{who}, {year}]({refs_url})" for who, year in parts) + ")"


# ------------------------------------------------------------------------------------------ Markdown

_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})(.*)$")
_DIRECTIVE = re.compile(r"^(\s*)(:{3,}|`{3,})\s*\{([\w:-]+)\}\s*(.*?)\s*$")
_ROLE = re.compile(r"\{([A-Za-z][\w:-]*)\}`([^`]*)`")
_ADMONITION_TITLES = {
    "note": "Note",
    "tip": "Tip",
    "warning": "Warning",
    "important": "Important",
    "caution": "Caution",
    "attention": "Attention",
    "danger": "Danger",
    "error": "Error",
    "hint": "Hint",
    "seealso": "See also",
}


class Converter:
    """MyST Markdown -> CommonMark/GFM with the book's values, citations and links filled in."""

    def __init__(
        self,
        values: dict[str, str] | None,
        bib: dict[str, tuple[str, str]],
        site: str,
        page_dir: str = "chapters",
        missing: str = "error",
    ):
        self.values = values or {}
        self.bib = bib
        self.site = site
        self.refs_url = site + "references.html"
        self.page_dir = page_dir
        self.missing = missing
        self.glued: list[str] = []  # names of the values written into the prose
        self.unresolved: list[str] = []

    # roles
    def role(self, m: re.Match) -> str:
        name, content = m.group(1), m.group(2)
        if name in ("glue", "glue:", "glue:text", "glue:any", "glue:md"):
            key, _, fmt = content.partition(":")
            if "::" in content:
                raise ValueError(f"glue from another document is not supported: {content!r}")
            key = key.strip()
            if self.values.get(key) is None:
                if self.missing == "error":
                    raise KeyError(f"no glued value named {key!r} in the build")
                self.unresolved.append(key)
                return f"`{key}`"
            self.glued.append(key)
            return format_plain_text(self.values[key], fmt.strip() if name != "glue:md" else "")
        if name.startswith("cite"):
            kind = name.partition(":")[2] or "p"
            keys = [k.strip() for k in content.split(",") if k.strip()]
            return cite_text(kind, keys, self.bib, self.refs_url)
        if name == "math":
            return f"${content}$"
        if name in ("eq", "numref", "ref", "doc", "term", "abbr", "any"):
            text = re.sub(r"\s*<[^>]*>\s*$", "", content).strip()
            return text or content
        return f"`{content}`" if name in ("code", "literal", "file", "kbd", "command") else content

    def inline(self, text: str) -> str:
        # roles everywhere except inside inline code spans (`...` not preceded by a role name)
        out, i = [], 0
        for m in re.finditer(r"(\{[A-Za-z][\w:-]*\})?`([^`]*)`", text):
            out.append(text[i : m.start()])
            out.append(self.role(_ROLE.match(m.group(0))) if m.group(1) else m.group(0))
            i = m.end()
        out.append(text[i:])
        text = "".join(out)
        return self.links(text)

    def links(self, text: str) -> str:
        def fix(m):
            label, target = m.group(1), m.group(2)
            if re.match(r"^[a-z]+:|^#|^mailto:", target):
                return m.group(0)
            path, _, anchor = target.partition("#")
            path = re.sub(r"\.(ipynb|md)$", ".html", path)
            if not path.startswith("/"):
                path = f"{self.page_dir}/{path}" if self.page_dir else path
            path = re.sub(r"[^/]+/\.\./", "", path)
            return f"[{label}]({self.site}{path.lstrip('/')}{'#' + anchor if anchor else ''})"

        return re.sub(r"(?<!!)\[([^\]]*)\]\(([^)\s]+)\)", fix, text)

    # blocks
    def convert(self, source: str) -> str:
        lines = source.split("\n")
        out = self._blocks(lines)
        text = "\n".join(out)
        text = re.sub(r"^\s*\([\w:.-]+\)=\s*$\n?", "", text, flags=re.M)  # MyST targets
        text = re.sub(r"(\$\$)\s*\(([\w:.-]+)\)\s*$", r"\1", text, flags=re.M)  # labelled equations
        return text

    def _blocks(self, lines: list[str]) -> list[str]:
        out: list[str] = []
        i = 0
        while i < len(lines):
            line = lines[i]
            d = _DIRECTIVE.match(line)
            if d:
                indent, fence, name, arg = d.groups()
                j = i + 1
                options = {}
                while j < len(lines) and re.match(r"^\s*:[\w-]+:", lines[j]):
                    k, _, v = lines[j].strip()[1:].partition(":")
                    options[k.strip()] = v.strip()
                    j += 1
                body, depth = [], 0
                char = fence[0]
                while j < len(lines):
                    s = lines[j].strip()
                    opens = re.match(rf"^{re.escape(char)}{{{len(fence)},}}\s*\{{", s)
                    if opens and _DIRECTIVE.match(lines[j]):
                        depth += 1
                    elif re.fullmatch(rf"{re.escape(char)}{{{len(fence)},}}", s):
                        if depth == 0:
                            break
                        depth -= 1
                    body.append(lines[j])
                    j += 1
                out.extend(self._directive(name, arg, options, self._blocks(body)))
                i = j + 1
                continue
            f = _FENCE.match(line)
            if f:  # a plain code block: copy it untouched up to its closing fence
                fence = f.group(2)
                out.append(line)
                i += 1
                while i < len(lines):
                    out.append(lines[i])
                    if lines[i].strip().startswith(fence) and lines[i].strip().strip(fence[0]) == "":
                        break
                    i += 1
                i += 1
                continue
            out.append(self.inline(line))
            i += 1
        return out

    def _directive(self, name: str, arg: str, options: dict, body: list[str]) -> list[str]:
        arg = self.inline(arg)
        classes = options.get("class", "").split()
        if name == "dropdown" or "dropdown" in classes:
            title = arg or ("Show" if name == "dropdown" else _ADMONITION_TITLES.get(name, name.title()))
            return ["<details>", f"<summary>{title}</summary>", "", *body, "", "</details>"]
        if name == "admonition" or name in _ADMONITION_TITLES:
            title = arg if name == "admonition" else (_ADMONITION_TITLES[name] + (f": {arg}" if arg else ""))
            quoted = ["> " + b if b.strip() else ">" for b in body]
            return [f"> **{title}**", ">", *quoted]
        if name in ("math",):
            return ["$$", *body, "$$"]
        if name in ("code-block", "code", "code-cell"):
            return [f"```{arg}", *body, "```"]
        if name in ("figure", "image"):
            return [f"![{' '.join(body).strip()}]({arg})"]
        if name in ("glue:figure", "glue:math", "glue"):
            raise ValueError(f"directive {{{name}}} has no Colab rendering here; use a code cell output")
        return body  # other directives (epigraph, margin, ...): their content as plain Markdown


_SETUP_INSTALL = re.compile(r'(git\+https://[^"@\s]+)@([\w./-]+)"')


def pin_setup_cell(source: str, ref: str | None) -> str:
    """The setup cell with its ``git+URL@branch`` install pinned to `ref` (the commit the build is of)."""
    if not ref:
        return source
    if not re.fullmatch(r"[0-9a-f]{7,40}|v?\d+(\.\d+)*", ref):
        raise ValueError(f"ref must be a commit hash or a version tag, got {ref!r}")
    pinned, n = _SETUP_INSTALL.subn(lambda m: f'{m.group(1)}@{ref}"', source, count=1)
    if n != 1:
        raise ValueError("the setup cell has no git+https://...@branch install to pin")
    return pinned


def build_commit(root: Path = ROOT) -> str | None:
    """The commit this build is of, when the package the setup cell installs is exactly that commit.

    ``GITHUB_SHA`` in GitHub Actions (the workflow builds a pushed commit); otherwise ``git rev-parse HEAD``
    when ``anatomy/`` and ``pyproject.toml`` have no uncommitted changes; else None (the edition then
    installs the branch, as the source notebook does).
    """
    import os
    import subprocess

    sha = os.environ.get("GITHUB_SHA", "").strip()
    if re.fullmatch(r"[0-9a-f]{40}", sha):
        return sha
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "anatomy", "pyproject.toml"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head if re.fullmatch(r"[0-9a-f]{40}", head) and not dirty else None


def edition(
    nb: dict, converter: Converter, page_url: str, chapter_title: str | None = None, ref: str | None = None
) -> dict:
    """The Colab edition of one chapter notebook (a new dict).

    `ref`: a commit (or tag) the setup cell installs instead of the branch, so that the code a reader
    runs is the code whose numbers the edition's text shows.
    """
    new = copy.deepcopy(nb)
    cells = []
    pinned = False
    for cell in new.get("cells", []):
        src = cell.get("source", "")
        src = "".join(src) if isinstance(src, list) else src
        if ref and not pinned and cell.get("cell_type") == "code" and "google.colab" in src:
            cell["source"] = src = pin_setup_cell(src, ref)
            pinned = True
        if cell.get("cell_type") == "markdown":
            cell["source"] = converter.convert(src)
            cell.pop("attachments", None) if not cell.get("attachments") else None
        elif cell.get("cell_type") == "code":
            cell["outputs"], cell["execution_count"] = [], None
            md = cell.setdefault("metadata", {})
            tags = [t for t in md.get("tags", []) if t not in BOOK_ONLY_TAGS]
            if tags:
                md["tags"] = tags
            else:
                md.pop("tags", None)
            md.pop("execution", None)
        cells.append(cell)
    note = {
        "cell_type": "markdown",
        "id": "colab-edition-note",
        "metadata": {},
        "source": (
            f"> **Colab edition** of [this chapter of *Why Decoder-Only Won*]({page_url}), generated "
            "from the book's notebook. Run the cells from the top: the first installs the book's package "
            "and what the chapter needs; nothing Colab already has is changed.\n>\n"
            "> The numbers in the text are those of the published build. Your run computes its own and "
            "prints each one where it is computed, as `name = value`; timings and anything that depends "
            "on the hardware will differ."
        ),
    }
    first_md = next((k for k, c in enumerate(cells) if c.get("cell_type") == "markdown"), -1)
    cells.insert(first_md + 1, note)
    new["cells"] = cells
    meta = new.setdefault("metadata", {})
    meta["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    meta["colab"] = {"provenance": [], "toc_visible": True}
    if chapter_title:
        meta["colab"]["name"] = chapter_title
    return new


def write_editions(
    chapters: list[Path],
    executed: Path,
    out: Path,
    config: dict,
    bib_path: Path,
    root: Path = ROOT,
    missing: str = "error",
    site: str | None = None,
    ref: str | None = None,
) -> list[Path]:
    """Write the edition of each chapter to `out`/<path relative to root>; return the paths written.

    `ref`: the commit the setup cells install (`edition`); None keeps the branch.
    """
    site = site.rstrip("/") + "/" if site else site_url(config)
    bib = bib_entries(bib_path)
    written = []
    for chapter in chapters:
        rel = chapter.resolve().relative_to(root.resolve()).with_suffix("")
        glue_json = executed / f"{rel}.glue.json"
        executed_nb = executed / f"{rel}.ipynb"
        if glue_json.exists():
            values = build_values(glue_json)
        elif executed_nb.exists():
            values = executed_values(json.loads(executed_nb.read_text(encoding="utf-8")))
        else:
            values = {}
        conv = Converter(values, bib, site, page_dir=str(rel.parent), missing=missing)
        nb = json.loads(chapter.read_text(encoding="utf-8"))
        ed = edition(nb, conv, f"{site}{rel}.html", chapter_title=chapter.name, ref=ref)
        target = out / f"{rel}.ipynb"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(ed, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(target)
    return written


# -------------------------------------------------------------------------------------------- Sphinx


def _notebook_pages(app) -> list[str]:
    return sorted(d for d in app.env.found_docs if str(app.env.doc2path(d)).endswith(".ipynb"))


def _point_colab_button(app, pagename, templatename, context, doctree) -> None:
    """Replace the theme's Colab URL (the source notebook) with the edition's."""
    if pagename not in _notebook_pages(app):
        return
    config = {
        "repository": {
            "url": app.config.html_theme_options.get("repository_url")
            or app.config.html_context.get("github_url", "")
        },
        "launch_buttons": app.config.html_theme_options.get("launch_buttons", {}),
    }
    try:
        url = colab_url(config, pagename, app.config.colab_edition_branch)
    except ValueError:
        return
    for group in context.get("header_buttons", []):
        for button in group.get("buttons", []) if isinstance(group, dict) else []:
            if button.get("text") == "Colab":
                button["url"] = url
                button["tooltip"] = "Launch the Colab edition (numbers shown, solutions folded)"


def _write_editions(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    root = Path(app.srcdir)
    chapters = [root / app.env.doc2path(d, base=False) for d in _notebook_pages(app)]
    executed = Path(app.outdir).parent / "jupyter_execute"
    bibfiles = [root / b for b in getattr(app.config, "bibtex_bibfiles", None) or []]
    config = load_config(root)
    written = write_editions(
        chapters,
        executed,
        Path(app.outdir) / EDITION_DIR,
        config,
        bibfiles[0] if bibfiles else root / "references.bib",
        root=root,
        site=getattr(app.config, "html_baseurl", "") or None,
        missing="placeholder",  # (a missing value already fails the glue role)
        ref=app.config.colab_edition_ref or build_commit(root),
    )
    from sphinx.util import logging

    logging.getLogger(__name__).info(f"colab_edition: wrote {len(written)} Colab editions")


def setup(app):
    app.add_config_value("colab_edition_branch", "gh-pages", "html")
    # the commit (or tag) the editions' setup cells install; "" = the commit being built (build_commit)
    app.add_config_value("colab_edition_ref", "", "html")
    app.connect("html-page-context", _point_colab_button, priority=600)  # after the theme's (501)
    app.connect("build-finished", _write_editions)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


def main() -> int:
    ap = argparse.ArgumentParser(description="Write Colab editions from an existing build.")
    ap.add_argument("chapters", nargs="*", type=Path)
    ap.add_argument("--build", type=Path, default=ROOT / "_build")
    ap.add_argument("--out", type=Path, default=None, help="default: <build>/html/colab")
    ap.add_argument(
        "--missing",
        choices=["error", "placeholder"],
        default="error",
        help="a glue name without a build value: fail, or write the name in code font",
    )
    ap.add_argument(
        "--ref",
        default=None,
        help="commit or tag the setup cells install (default: HEAD if anatomy/ is committed; "
        "'branch': keep the branch)",
    )
    args = ap.parse_args()
    chapters = args.chapters or sorted((ROOT / "chapters").glob("[0-9][0-9]_*.ipynb"))
    out = args.out or args.build / "html" / EDITION_DIR
    ref = None if args.ref == "branch" else (args.ref or build_commit())
    written = write_editions(
        chapters,
        args.build / "jupyter_execute",
        out,
        load_config(),
        ROOT / "references.bib",
        missing=args.missing,
        ref=ref,
    )
    print(f"wrote {len(written)} editions to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
