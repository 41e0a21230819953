#!/usr/bin/env python3
"""Check that a built book is a complete site, ready to publish (standard library only).

    python3 scripts/check_site.py [_build/html]

Checks: every chapter of _toc.yml has a page; index.html, sitemap.xml (listing every page, under the base
URL derived from _config.yml's repository.url) and robots.txt exist; the whole-book PDF exists and is a
PDF; the canonical link of the introduction uses the same base URL; the download button's notebooks carry
outputs; every notebook page has its Colab edition, with no MyST left in its
Markdown; the social preview picture exists. Prints one line per problem and exits 1 if there is any.
"""

from __future__ import annotations

import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


sys.path.insert(0, str(ROOT / "_ext"))
import book_address  # noqa: E402  (standard library only: repository_url, pages_url)
import book_toc  # noqa: E402  (standard library only: the pages of _toc.yml)


def problems(site: Path, root: Path = ROOT) -> list[str]:
    out: list[str] = []
    if not (site / "index.html").exists():
        return [f"{site}: no index.html (build the book first)"]
    url = book_address.repository_url(root)
    if url is None:  # without the address there is no base URL to check the sitemap and canonical links by
        return [f"{root / '_config.yml'}: no repository: url: line (the book's one address)"]
    base = book_address.pages_url(url)
    pages = book_toc.pages(root)
    out += [f"no page for {p} (from _toc.yml)" for p in pages if not (site / f"{p}.html").exists()]
    sitemap = site / "sitemap.xml"
    if not sitemap.exists():
        out.append("no sitemap.xml")
    else:
        ns = {"s": "http://www.sitemaps.org/schemas/sitemap/0.9"}
        locs = {e.text for e in ET.parse(sitemap).getroot().findall("s:url/s:loc", ns)}
        out += [f"sitemap.xml lacks {base}{p}.html" for p in pages if f"{base}{p}.html" not in locs]
        out += [f"sitemap.xml lists {u}, outside {base}" for u in sorted(locs) if not u.startswith(base)]
    if not (site / "robots.txt").exists():
        out.append("no robots.txt")
    pdf = site / "why-decoder-only.pdf"
    if not pdf.exists() or pdf.read_bytes()[:5] != b"%PDF-":
        out.append("no why-decoder-only.pdf (the whole-book PDF; needs chromium)")
    home = f"{pages[0]}.html"  # the root page of _toc.yml: the introduction
    intro = (site / home).read_text(encoding="utf-8") if (site / home).exists() else ""
    if f'<link rel="canonical" href="{base}{home}"' not in intro:
        out.append(f"{home} has no canonical link under {base}")
    image = re.search(r'<meta property="og:image" content="([^"]+)"', intro)
    if image and not (site / image.group(1).removeprefix(base)).exists():
        out.append(f"the social preview picture {image.group(1)} is not in the site")
    for p in pages:
        nb = site / "_sources" / f"{p}.ipynb"
        source = root / f"{p}.ipynb"
        if source.exists() and any(
            c.get("cell_type") == "code" and "".join(c.get("source", "")).strip()
            for c in json.loads(source.read_text(encoding="utf-8"))["cells"]
        ):
            if not nb.exists():
                out.append(f"no downloadable notebook _sources/{p}.ipynb")
            elif not any(c.get("outputs") for c in json.loads(nb.read_text(encoding="utf-8"))["cells"]):
                out.append(f"_sources/{p}.ipynb (the download button's notebook) has no outputs")
        if source.exists():  # the Colab button opens colab/<page>.ipynb (_ext/colab_edition.py)
            edition = site / "colab" / f"{p}.ipynb"
            if not edition.exists():
                out.append(f"no Colab edition colab/{p}.ipynb (the page's Colab button opens it)")
                continue
            markdown = "\n".join(
                "".join(c.get("source", ""))
                for c in json.loads(edition.read_text(encoding="utf-8"))["cells"]
                if c.get("cell_type") == "markdown"
            )
            left = re.search(r"\{(glue|cite|ref|numref|doc|dropdown|admonition)[:}]|^\s*:::", markdown, re.M)
            if left:
                out.append(f"colab/{p}.ipynb still holds MyST: {left.group(0).strip()!r}")
    return out


def main(argv: list[str]) -> int:
    site = Path(argv[0]) if argv else ROOT / "_build" / "html"
    found = problems(site)
    for p in found:
        print(f"check_site: {p}")
    if not found:
        print(
            f"check_site: {site} is complete (pages, sitemap.xml, robots.txt, PDF, executed notebooks, "
            "Colab editions)"
        )
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
