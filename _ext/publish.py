"""Sphinx extension: what the published book needs beyond Jupyter Book's defaults, done at build time.

Nothing here needs an edit of the chapters' notebooks:

* **One address.** ``html_baseurl`` (canonical links, the sitemap, social previews) is derived from
  ``_config.yml``'s ``repository.url`` (``https://github.com/OWNER/REPO`` -> ``https://OWNER.github.io/REPO/``,
  GitHub Pages' address), unless ``html.baseurl`` is set there. `pages_url` is also what
  ``scripts/set_repository.py`` writes into the files that cannot read ``_config.yml``.
* **Search engines and social previews.** ``sitemap.xml`` and ``robots.txt`` are written after the build
  (a few lines here instead of sphinx-sitemap, which pulls in sphinx-last-updated-by-git: that runs git on
  every source file and warns about untracked ones, which the strict build turns into errors), and every
  page gets Open Graph tags (title, description from its first paragraph, URL, site name, and
  ``docs/screenshot.png`` as the preview picture).
* **The Colab setup cell** (the first code cell, which installs the package when the notebook runs in
  Colab) is removed from the web page; the notebook keeps it.
* **The download button** serves the executed notebook (outputs included) instead of the stripped source.
* **Chapter cross-references**: "chapter 6", "Chapter 2", "chapters 6 and 7" in the prose become links to
  those chapters (the numbers are the table of contents' own, so they follow ``_toc.yml``).
* **Figures.** A cell's figure (its image outputs, or its ``book.explore`` figure) becomes a numbered figure
  with a caption: the cell's ``mystnb.figure.caption`` metadata (myst-nb makes that figure itself), or else
  the paragraph right after the cell when it reads as a caption (all in italics, or with a "*What to see:*"
  part), which the chapters write under their figures: that paragraph moves into the figure. An image's
  alt text is the cell's ``mystnb.image.alt``, or else the caption's first sentence, instead of the
  image's file path. The frames of a ``book.explore`` figure (alt text: a Python repr of the parameters)
  get that alt text followed by the frame's parameters in words.
* **A PDF of the whole book**, ``why-decoder-only.pdf`` beside ``index.html`` (linked from the introduction):
  every page's article in the order of the table of contents, printed by the system's headless Chromium
  (Debian's ``chromium``; nothing downloaded) after MathJax has typeset the math. Skipped, with a note,
  when there is no Chromium or with ``ANATOMY_PDF=0``.
* ``_ext/static/anatomy-publish.css``: captions set flush left, like text.
* **Bibliography labels** in the author-year form of the citations ("Devlin et al., 2019", not "DCLT19"):
  the pybtex style ``authoryear`` registered here (``bibtex_default_style: authoryear`` in _config.yml).
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import headless_chromium  # the executable and the flags, shared with scripts/chromium_cdp.py
from book_address import pages_url, repository_parts  # noqa: F401 - _ext/ is on sys.path (local_extensions)
from docutils import nodes
from sphinx.util import logging

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------- the one address


def _repository_url(config) -> str:
    return str((config.html_theme_options or {}).get("repository_url", "") or "")


def _config_inited(app, config) -> None:
    url = _repository_url(config)
    if not config.html_baseurl and url:
        try:
            config.html_baseurl = pages_url(url)
        except ValueError as exc:
            logger.warning(f"publish: no html_baseurl derived from repository.url: {exc}")


# ------------------------------------------------------------------------- Colab setup cell (hidden)

_SETUP_MARK = '"google.colab" in sys.modules'


def _cells(doctree) -> list[nodes.container]:
    return [n for n in doctree.findall(nodes.container) if n.get("nb_element") == "cell_code"]


def _remove_setup_cell(doctree) -> None:
    cells = _cells(doctree)
    if cells and _SETUP_MARK in cells[0].astext():
        cells[0].parent.remove(cells[0])


# ---------------------------------------------------------------------------------------- figures

_EXPLORE_ALT = re.compile(r'(<img class="anatomy-explore-frame"[^>]*?\salt=")([^"]*)(")')


def _frame_words(label: str) -> str:
    """The explorer's frame label (``depth=1, mask='causal'``) in words: ``depth 1, mask causal``."""
    label = html.unescape(label)
    return re.sub(r"(\w+)=", r"\1 ", label.replace("'", "").replace('"', ""))


def _cell_figure_options(cell) -> tuple[str, str]:
    meta = (cell.get("cell_metadata") or {}).get("mystnb") or {}
    image, figure = meta.get("image") or {}, meta.get("figure") or {}
    return str(image.get("alt", "")), str(figure.get("caption", ""))


def _plain(text: str) -> str:
    """Caption text without MyST markup: roles, backticks, emphasis and math delimiters removed."""
    text = re.sub(r"\{[\w:]+\}`([^`]*)`", r"\1", text)
    return re.sub(r"[`*$]", "", text).strip()


def _is_caption(node) -> bool:
    """A paragraph that reads as a figure caption: all in italics, or one with a "*What to see:*" part."""
    if not isinstance(node, nodes.paragraph):
        return False
    parts = [c for c in node.children if not (isinstance(c, nodes.Text) and not str(c).strip())]
    if len(parts) == 1 and isinstance(parts[0], nodes.emphasis):
        return True
    return any(
        isinstance(c, nodes.emphasis) and c.astext().strip().lower().startswith("what to see")
        for c in node.children
    )


def _first_sentence(text: str, limit: int = 250) -> str:
    """A caption's first sentence as plain text for an alt attribute (TeX commands and braces dropped)."""
    text = " ".join(re.sub(r"\\([A-Za-z]+)", r"\1", text).replace("{", "").replace("}", "").split())
    m = re.search(r"(?<=[.;])\s+(?=[A-Z*])", text)
    text = text[: m.start()] if m else text
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0] + "..."
    return text.rstrip(" .;:") + "."


def _figure_outputs(cell) -> list[nodes.Element]:
    """The cell's figure outputs: image nodes and book.explore HTML, outside any figure myst-nb made."""
    found = []
    for node in cell.findall(lambda n: isinstance(n, (nodes.image, nodes.raw))):
        if isinstance(node, nodes.raw) and "anatomy-explore-frame" not in node.astext():
            continue
        if any(isinstance(a, nodes.figure) for a in _ancestors(node)):
            continue
        found.append(node)
    return found


def _output_block(node: nodes.Element) -> nodes.Element:
    """The child of the cell's output container that holds `node` (the node itself if it is one)."""
    while node.parent is not None and not (
        isinstance(node.parent, nodes.container) and node.parent.get("nb_element") == "cell_code_output"
    ):
        node = node.parent
    return node


def _caption_from_next_paragraph(cell) -> nodes.caption | None:
    """Move the caption-like paragraph right after the cell into a caption node (None if there is none)."""
    following = cell.next_node(descend=False, siblings=True)
    if (
        isinstance(following, nodes.container)
        and following.get("nb_element") == "cell_code"
        and not _figure_outputs(following)
    ):
        following = following.next_node(descend=False, siblings=True)  # past one cell that computes numbers
    if not _is_caption(following):
        return None
    children = list(following.children)
    if len(children) == 1 and isinstance(children[0], nodes.emphasis):
        children = list(children[0].children)  # an all-italic caption: the caption style is enough
    caption = nodes.caption(following.rawsource, "", *[c.deepcopy() for c in children])
    following.parent.remove(following)
    return caption


def _figures(app, doctree) -> None:
    """Captions, numbers and alt text for the figures of notebook cells (see the module docstring)."""
    for cell in _cells(doctree):
        alt, caption_text = _cell_figure_options(cell)
        outputs = _figure_outputs(cell)
        caption = None
        if outputs and not caption_text:
            caption = _caption_from_next_paragraph(cell)
        if caption is not None:
            # one numbered figure around the cell's figure outputs, with the caption after the last one;
            # it wraps each output's own wrapper (e.g. myst-nb's div.output.text_html, which dark mode
            # paints light), so that the caption is set on the page's background, like text
            blocks = []
            for node in outputs:
                block = _output_block(node)
                if block not in blocks:
                    blocks.append(block)
            figure = nodes.figure(classes=["anatomy-figure"])
            figure["ids"].append(f"figure-cell-{cell.get('cell_index')}")
            blocks[0].replace_self(figure)
            figure += blocks[0]
            for other in blocks[1:]:
                other.parent.remove(other)
                figure += other
            figure += caption
            alt = alt or _first_sentence(caption.astext())
        alt = alt or (_first_sentence(_plain(caption_text)) if caption_text else "")
        for image in cell.findall(nodes.image):
            if alt and (not image.get("alt") or image["alt"] == image.get("uri")):
                image["alt"] = alt
        for raw in list(cell.findall(nodes.raw)):
            if "anatomy-explore-frame" not in raw.astext():
                continue
            what = (alt or "Interactive figure").rstrip(".")

            def frame_alt(m, what=what):
                words = html.escape(f"{what} (frame for {_frame_words(m.group(2))})")
                return f"{m.group(1)}{words}{m.group(3)}"

            text = _EXPLORE_ALT.sub(frame_alt, raw.astext())
            raw.replace_self(nodes.raw("", text, format=raw.get("format", "html")))


# ------------------------------------------------------------------- chapter cross-references

_CHAPTER_REF = re.compile(
    r"\b([Cc]hapters?)(\s+)(\d{1,2})((?:(?:,\s*|,?\s+and\s+|\s*[-\u2013]\s*)\d{1,2})*)\b"
)
_SKIP_PARENTS = (
    nodes.literal,
    nodes.literal_block,
    nodes.reference,
    nodes.title,
    nodes.math,
    nodes.math_block,
    nodes.raw,
    nodes.comment,
    nodes.target,
)


def chapter_numbers(env) -> dict[int, str]:
    """Chapter number (as the table of contents numbers it) -> docname; from the file prefix NN_ otherwise."""
    numbers: dict[int, str] = {}
    for docname, secnums in getattr(env, "toc_secnumbers", {}).items():
        top = secnums.get("") if secnums else None
        if top and len(top) == 1:
            numbers[top[0]] = docname
    if not numbers:
        for docname in env.found_docs:
            m = re.match(r"chapters/(\d\d)_", docname)
            if m:
                numbers[int(m.group(1))] = docname
    return numbers


def _link_chapters(app, doctree, docname) -> None:
    if app.builder.format != "html":
        return
    numbers = chapter_numbers(app.env)
    if not numbers:
        return
    _merge_texts(doctree)  # "chapter" + soft line break + "10" arrive as three Text nodes
    for text in list(doctree.findall(nodes.Text)):
        parent = text.parent
        if parent is None or any(isinstance(a, _SKIP_PARENTS) for a in _ancestors(text)):
            continue
        value = str(text)
        if not _CHAPTER_REF.search(value):
            continue
        new: list[nodes.Node] = []
        pos = 0
        for m in _CHAPTER_REF.finditer(value):
            new.append(nodes.Text(value[pos : m.start()]))
            new.append(nodes.Text(m.group(1) + m.group(2)))
            rest = m.group(3) + (m.group(4) or "")
            for piece in re.split(r"(\d{1,2})", rest):
                if piece.isdigit() and int(piece) in numbers and numbers[int(piece)] != docname:
                    uri = app.builder.get_relative_uri(docname, numbers[int(piece)])
                    new.append(
                        nodes.reference(piece, piece, refuri=uri, internal=True, classes=["chapter-ref"])
                    )
                elif piece:
                    new.append(nodes.Text(piece))
            pos = m.end()
        new.append(nodes.Text(value[pos:]))
        index = parent.index(text)
        parent.remove(text)
        for offset, node in enumerate(n for n in new if not (isinstance(n, nodes.Text) and not str(n))):
            parent.insert(index + offset, node)


def _merge_texts(doctree) -> None:
    """Join runs of adjacent Text nodes into one, in every element whose text mentions a chapter."""
    for element in list(doctree.findall(nodes.TextElement)):
        if "hapter" not in element.astext():
            continue
        children, merged, changed = list(element.children), [], False
        for child in children:
            if isinstance(child, nodes.Text) and merged and isinstance(merged[-1], nodes.Text):
                merged[-1] = nodes.Text(str(merged[-1]) + str(child))
                changed = True
            else:
                merged.append(child)
        if changed:
            element.children = []
            element.extend(merged)


def _ancestors(node):
    node = node.parent
    while node is not None:
        yield node
        node = node.parent


# ------------------------------------------------------------- Open Graph tags (social previews)


def _description(doctree) -> str:
    if doctree is None:
        return ""
    for para in doctree.findall(nodes.paragraph):
        if any(
            isinstance(a, (nodes.container, nodes.admonition, nodes.footnote, nodes.citation))
            for a in _ancestors(para)
        ):
            continue
        text = " ".join(para.astext().split())
        if len(text) > 40:
            return text if len(text) <= 200 else text[:197].rsplit(" ", 1)[0] + "..."
    return ""


PREVIEW_NAME = "social-preview.png"


def _preview_source(app) -> Path:
    """The picture social sites show for a link to the book: the README's screenshot of chapter 1."""
    return Path(app.srcdir) / "docs" / "screenshot.png"


def _page_context(app, pagename, templatename, context, doctree) -> None:
    base = app.config.html_baseurl
    if not base or doctree is None:
        return
    title = html.unescape(re.sub(r"<[^>]+>", "", context.get("title", "") or ""))
    site = app.config.html_title or app.config.project or ""
    tags = {
        "og:title": title if title == site else f"{title} - {site}",
        "og:type": "website" if pagename == app.config.root_doc else "article",
        "og:url": base.rstrip("/") + "/" + pagename + app.builder.out_suffix,
        "og:site_name": site,
        "og:description": _description(doctree),
    }
    if _preview_source(app).exists():
        tags["og:image"] = base.rstrip("/") + "/_static/" + PREVIEW_NAME
    meta = "".join(
        f'<meta property="{k}" content="{html.escape(v, quote=True)}" />\n' for k, v in tags.items() if v
    )
    if "og:image" in tags:
        meta += '<meta name="twitter:card" content="summary_large_image" />\n'
    meta += (
        f'<meta name="description" content="{html.escape(tags["og:description"], quote=True)}" />\n'
        if tags["og:description"]
        else ""
    )
    context["metatags"] = context.get("metatags", "") + meta


# ----------------------------------------------------------------- after the build: files beside it


def _pages(app) -> list[str]:
    skip = {"genindex", "search"}
    return sorted(d for d in app.env.found_docs if d not in skip)


def write_sitemap(outdir: Path, base: str, pages: list[str], suffix: str = ".html") -> Path:
    ns = "http://www.sitemaps.org/schemas/sitemap/0.9"
    ET.register_namespace("", ns)
    root = ET.Element(f"{{{ns}}}urlset")
    for page in pages:
        url = ET.SubElement(root, f"{{{ns}}}url")
        ET.SubElement(url, f"{{{ns}}}loc").text = base.rstrip("/") + "/" + page + suffix
    path = outdir / "sitemap.xml"
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    robots = f"User-agent: *\nAllow: /\n\nSitemap: {base.rstrip('/')}/sitemap.xml\n"
    (outdir / "robots.txt").write_text(robots, encoding="utf-8")
    return path


def _has_outputs(path: Path) -> bool:
    import nbformat

    return any(c.get("outputs") for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")


def _from_cache(app, path: Path) -> bool:
    """Put the outputs of the jupyter-cache's record of this notebook into ``path``; False if none matches.

    myst-nb writes the notebook it parsed to ``jupyter_execute/``. When it executes the notebook itself
    that object holds the outputs; when it takes them from the cache (``execute_notebooks: cache``, as
    ``scripts/build_book.sh`` builds after executing the chapters beforehand) it merges them into a copy,
    and the file it writes has none.
    """
    import nbformat
    from jupyter_cache import get_cache

    folder = app.config.nb_execution_cache_path or str(Path(app.outdir).parent / ".jupyter_cache")
    if not Path(folder).exists():
        return False
    try:
        _, merged = get_cache(folder).merge_match_into_notebook(nbformat.read(path, as_version=4))
    except KeyError:  # no cached record matches this notebook's code
        return False
    nbformat.write(merged, path)
    return True


def _executed_notebooks(app, outdir: Path) -> int:
    """Replace the stripped notebooks behind the download button by the executed ones."""
    executed = outdir.parent / "jupyter_execute"
    copied = 0
    for docname in app.env.found_docs:
        if not str(app.env.doc2path(docname)).endswith(".ipynb"):
            continue
        src = executed / f"{docname}.ipynb"
        dest = outdir / "_sources" / f"{docname}.ipynb"
        if src.exists() and dest.parent.exists():
            if app.config.nb_execution_mode == "cache" and not _has_outputs(src):
                _from_cache(app, src)
            shutil.copyfile(src, dest)
            copied += 1
    return copied


PDF_NAME = "why-decoder-only.pdf"
_PRINT_CSS = """<style>
@media print {
  article.bd-article { break-before: page; }
  a.headerlink, .anatomy-explore-controls { display: none !important; }
  figure, img, table, .math { break-inside: avoid; }
  pre { white-space: pre-wrap !important; overflow-wrap: anywhere; }  /* long code lines wrap, not cut */
}
body { background: white; }
</style>"""


def _toc_order(env, root: str) -> list[str]:
    order: list[str] = []

    def walk(doc: str) -> None:
        if doc in order:
            return
        order.append(doc)
        for child in env.toctree_includes.get(doc, []):
            walk(child)

    walk(root)
    return order


def print_page(outdir: Path, pages: list[str], suffix: str = ".html") -> str:
    """One HTML page with every page's article, in order, for printing (links made relative to the root)."""
    head = re.search(r"<head>.*?</head>", (outdir / (pages[0] + suffix)).read_text(encoding="utf-8"), re.S)
    articles = []
    for page in pages:
        text = (outdir / (page + suffix)).read_text(encoding="utf-8")
        article = re.search(r'<article class="bd-article">.*?</article>', text, re.S)
        if not article:
            continue
        body, depth = article.group(0), page.count("/")
        if depth:
            body = re.sub(r'((?:src|href)=")((?:\.\./){' + str(depth) + "})", r"\1", body)
        articles.append(body)
    return (
        '<!DOCTYPE html>\n<html lang="en">'
        + head.group(0).replace("</head>", _PRINT_CSS + "</head>")
        + '<body><main class="bd-main">'
        + "\n".join(articles)
        + "</main></body></html>"
    )


def build_pdf(
    outdir: Path, pages: list[str], chromium: str, suffix: str = ".html", timeout: int = 600
) -> Path:
    """Print the whole book to ``outdir/why-decoder-only.pdf`` with headless Chromium (math typeset first)."""
    source = outdir / "_print.html"
    source.write_text(print_page(outdir, pages, suffix), encoding="utf-8")
    target = outdir / PDF_NAME
    try:
        with tempfile.TemporaryDirectory(prefix="anatomy-pdf-") as profile:
            subprocess.run(
                [
                    chromium,
                    *headless_chromium.flags(profile),
                    "--no-pdf-header-footer",
                    "--virtual-time-budget=120000",
                    f"--print-to-pdf={target}",
                    source.as_uri(),
                ],
                check=True,
                timeout=timeout,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
    finally:
        source.unlink(missing_ok=True)
    if not target.exists() or target.stat().st_size < 10_000:
        raise RuntimeError(f"chromium wrote no PDF to {target}")
    return target


def _pdf(app, outdir: Path) -> None:
    if os.environ.get("ANATOMY_PDF", "1") == "0":
        logger.info("publish: ANATOMY_PDF=0, no PDF")
        return
    chromium = headless_chromium.find_chromium()
    if chromium is None:
        logger.info(f"publish: no chromium, so no {PDF_NAME} (apt-get install chromium)")
        return
    suffix = app.builder.out_suffix
    pages = [d for d in _toc_order(app.env, app.config.root_doc) if (outdir / (d + suffix)).exists()]
    try:
        path = build_pdf(outdir, pages, chromium, app.builder.out_suffix)
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        logger.warning(f"publish: the PDF of the book failed: {exc}")
        return
    logger.info(f"publish: {path.name} ({path.stat().st_size / 1e6:.1f} MB, {len(pages)} pages printed)")


def _build_finished(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    outdir = Path(app.outdir)
    if app.config.html_baseurl:
        write_sitemap(outdir, app.config.html_baseurl, _pages(app), app.builder.out_suffix)
    if _preview_source(app).exists():
        (outdir / "_static").mkdir(exist_ok=True)
        shutil.copyfile(_preview_source(app), outdir / "_static" / PREVIEW_NAME)
    n = _executed_notebooks(app, outdir)
    logger.info(f"publish: sitemap.xml, robots.txt; {n} executed notebooks behind the download buttons")
    _pdf(app, outdir)


# ------------------------------------------------------------------ bibliography labels: author-year


def _register_bibliography_style() -> None:
    from pybtex.plugin import register_plugin
    from pybtex.style.formatting.plain import Style as PlainStyle
    from pybtex.style.labels import BaseLabelStyle

    class AuthorYearLabels(BaseLabelStyle):
        """``Devlin et al., 2019``, as sphinxcontrib-bibtex's author_year citations print it; a, b, ...
        appended when two entries would get the same label."""

        def format_labels(self, sorted_entries):
            labels = [self._label(e) for e in sorted_entries]
            seen: dict[str, int] = {}
            for label in labels:
                seen[label] = seen.get(label, 0) + 1
            count: dict[str, int] = {}
            for label in labels:
                if seen[label] > 1:
                    count[label] = count.get(label, 0) + 1
                    yield label + "abcdefghijklmnopqrstuvwxyz"[count[label] - 1]
                else:
                    yield label

        @staticmethod
        def _label(entry) -> str:
            persons = entry.persons.get("author") or entry.persons.get("editor") or []
            names = [" ".join(p.prelast_names + p.last_names) for p in persons]
            names = [re.sub(r"[{}]", "", n) for n in names]
            if not names:
                who = re.sub(r"[{}]", "", entry.fields.get("organization", entry.key))
            elif len(names) == 1:
                who = names[0]
            elif len(names) == 2:
                who = f"{names[0]} and {names[1]}"
            else:
                who = f"{names[0]} et al."
            return f"{who}, {entry.fields.get('year', 'n.d.')}"

    class AuthorYearStyle(PlainStyle):
        default_label_style = "authoryear"
        default_sorting_style = "author_year_title"

    register_plugin("pybtex.style.labels", "authoryear", AuthorYearLabels, force=True)
    register_plugin("pybtex.style.formatting", "authoryear", AuthorYearStyle, force=True)


def _static(app) -> None:
    """This extension's stylesheet (_ext/static/anatomy-publish.css) on every page."""
    app.config.html_static_path.append(str(Path(__file__).parent / "static"))


def setup(app):
    _register_bibliography_style()
    app.connect("builder-inited", _static)
    app.add_css_file("anatomy-publish.css")
    app.connect("config-inited", _config_inited)
    app.connect("doctree-read", lambda app, doctree: (_remove_setup_cell(doctree), _figures(app, doctree)))
    app.connect("doctree-resolved", _link_chapters)
    app.connect("html-page-context", _page_context)
    app.connect("build-finished", _build_finished)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "1"}
