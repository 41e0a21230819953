"""Sphinx extension: drop repeated inline <script> blocks from every page.

With Sphinx 7.4, sphinx-thebe 0.3.1 and sphinx-togglebutton, jupyter-book 1.x pages carry their inline
configuration scripts twice: one copy registered before the HTML builder existed (filename "") and one
after (filename None), which Sphinx's own de-duplication treats as two different files. A repeated
``const THEBE_JS_URL = ...`` is a JavaScript SyntaxError ("Identifier 'THEBE_JS_URL' has already been
declared") on every page; tests/test_browser.py checks that pages have no JavaScript errors. The repeats
are exact copies, so keeping the first of each changes nothing else.
"""

from __future__ import annotations


def _dedupe(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, kept = set(), []
    for script in scripts:
        body = None if isinstance(script, str) else getattr(script, "attributes", {}).get("body")
        if not getattr(script, "filename", script) and body:  # inline: filename None or ""
            if body in seen:
                continue
            seen.add(body)
        kept.append(script)
    scripts[:] = kept


def setup(app):
    app.connect("html-page-context", _dedupe, priority=900)  # after the themes have added theirs
    return {"parallel_read_safe": True, "parallel_write_safe": True}
