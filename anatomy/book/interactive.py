"""Interactive figures: precomputed frames with a slider in the static book, live ipywidgets in Jupyter."""

from __future__ import annotations

import base64
import html
import io
import itertools
import json
import math
import numbers
import textwrap
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from matplotlib.figure import Figure

from anatomy.book import _in_kernel

__all__ = ["MAX_FRAMES", "drive_live", "explore", "explore_html", "explore_live"]


# ------------------------------------------------------------------------------ interactive figures

MAX_FRAMES = 60


def _check_params(render: Callable[..., Figure], params: Mapping[str, Sequence[Any]]) -> list[list[Any]]:
    if not callable(render):
        raise TypeError(f"render must be a callable returning a matplotlib Figure, got {render!r}")
    if not params:
        raise ValueError("explore needs at least one parameter, e.g. explore(render, depth=[1, 2, 4])")
    values: list[list[Any]] = []
    for pname, options in params.items():
        if isinstance(options, (str, bytes)) or not isinstance(options, Sequence):
            raise TypeError(
                f"parameter {pname!r}: expected a list of values, got {type(options).__name__} {options!r}"
            )
        if len(options) == 0:
            raise ValueError(f"parameter {pname!r}: the list of values is empty")
        values.append(list(options))
    n = math.prod(len(v) for v in values)
    if n > MAX_FRAMES:
        sizes = " x ".join(f"{p}: {len(v)}" for p, v in zip(params, values))
        raise ValueError(
            f"explore would render {n} figures ({sizes}); at most {MAX_FRAMES} fit in a page. "
            "Use fewer values per parameter."
        )
    return values


def _is_numeric(options: Sequence[Any]) -> bool:
    return all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in options)


def _render_png(render: Callable[..., Figure], kwargs: dict[str, Any]) -> str:
    """Call `render(**kwargs)`, encode the figure as base64 PNG, close it."""
    import matplotlib.pyplot as plt

    fig = render(**kwargs)
    try:
        if not isinstance(fig, Figure):
            raise TypeError(
                f"render({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) returned "
                f"{type(fig).__name__}; it must return a matplotlib Figure"
            )
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return base64.b64encode(buf.getvalue()).decode("ascii")
    finally:
        if isinstance(fig, Figure):
            plt.close(fig)


def explore_html(render: Callable[..., Figure], **params: Sequence[Any]) -> str:
    """Render `render` for every combination of `params`; return one self-contained HTML explorer.

    Args:
        render: ``render(**kwargs) -> matplotlib.figure.Figure``, called once per combination.
        **params: parameter name -> list of values. Numeric lists become sliders, others drop-downs.

    The HTML holds every frame as a base64 PNG (at most `MAX_FRAMES` combinations, else ValueError) and a
    few lines of plain JavaScript that show the frame matching the controls. Ids are unique per call, so
    several explorers can share a page. Without JavaScript the first frame is shown.
    """
    values = _check_params(render, params)
    names = list(params)
    uid = "anatomy-explore-" + uuid.uuid4().hex[:12]

    frames = []
    for combo in itertools.product(*values):
        kwargs = dict(zip(names, combo))
        label = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        frames.append((label, _render_png(render, kwargs)))

    controls = []
    for i, (pname, options) in enumerate(zip(names, values)):
        cid = f"{uid}-p{i}"
        shown = [html.escape(str(v)) for v in options]
        if _is_numeric(options) and len(options) > 1:
            widget = (
                f'<input type="range" id="{cid}" min="0" max="{len(options) - 1}" step="1" value="0" '
                f'style="vertical-align:middle;width:12em"> '
                f'<output id="{cid}-value" style="font-family:monospace">{shown[0]}</output>'
            )
        else:
            opts = "".join(f'<option value="{j}">{s}</option>' for j, s in enumerate(shown))
            widget = f'<select id="{cid}">{opts}</select>'
        controls.append(
            f'<label for="{cid}" style="margin-right:1.5em;white-space:nowrap">'
            f"<code>{html.escape(pname)}</code> {widget}</label>"
        )

    images = "".join(
        f'<img class="anatomy-explore-frame" src="data:image/png;base64,{png}" alt="{html.escape(label)}" '
        f'style="max-width:100%;height:auto;{"" if j == 0 else "display:none"}">'
        for j, (label, png) in enumerate(frames)
    )
    # JSON inside a <script>: "</" must not appear, or the browser would end the script there.
    sizes_js = json.dumps([len(v) for v in values])
    labels_js = json.dumps([[str(v) for v in options] for options in values]).replace("</", "<\\/")
    script = textwrap.dedent(
        f"""\
        <script>
        (function () {{
          var root = document.getElementById("{uid}");
          if (!root) return;
          var sizes = {sizes_js}, labels = {labels_js};
          var frames = root.querySelectorAll("img.anatomy-explore-frame");
          function update() {{
            var index = 0;
            for (var i = 0; i < sizes.length; i++) {{
              var control = document.getElementById("{uid}-p" + i);
              var k = parseInt(control.value, 10);
              index = index * sizes[i] + k;
              var out = document.getElementById("{uid}-p" + i + "-value");
              if (out) out.textContent = labels[i][k];
            }}
            for (var j = 0; j < frames.length; j++) frames[j].style.display = (j === index) ? "" : "none";
          }}
          for (var i = 0; i < sizes.length; i++) {{
            var control = document.getElementById("{uid}-p" + i);
            control.addEventListener("input", update);
            control.addEventListener("change", update);
          }}
          update();
        }})();
        </script>"""
    )
    return (
        f'<div class="anatomy-explore" id="{uid}" style="background:white;color:#222;padding:0.5em 0">'
        f'<div class="anatomy-explore-controls" style="margin-bottom:0.5em">{"".join(controls)}</div>'
        f"{images}</div>\n{script}"
    )


def explore(render: Callable[..., Figure], **params: Sequence[Any]) -> None:
    """Display a self-contained interactive figure: controls for `params`, one precomputed frame each.

    Works in the static book, in Jupyter and in Colab alike; see `explore_html` for the arguments. For a
    live version that calls `render` on demand, use `explore_live` in a cell tagged ``remove-cell``.
    """
    from IPython.display import HTML
    from IPython.display import display as ipy_display

    ipy_display(HTML(explore_html(render, **params)))


_LIVE: list[Any] = []  # explore_live widgets of this kernel not yet driven by `drive_live`


def explore_live(render: Callable[..., Any], **params: Sequence[Any]) -> Any:
    """Show an `ipywidgets` version of `explore` when running in a Jupyter or Colab kernel.

    Does nothing (returns None) outside a kernel or without ipywidgets. Returns the widget otherwise.
    Works with ipywidgets 7 (Colab) and 8 (JupyterLab). Put it in a cell tagged ``remove-cell``: the
    static book has no kernel, and shows `explore` instead. Tests drive its controls with `drive_live`.
    """
    values = _check_params(render, params)
    try:
        import ipywidgets
        from IPython.display import display as ipy_display
    except ImportError:
        return None
    if not _in_kernel():
        return None

    import matplotlib.pyplot as plt

    renders: list[dict[str, Any]] = []  # every call: its arguments, and the error if it failed

    def show(**kwargs: Any) -> None:
        try:
            fig = render(**kwargs)
            if not isinstance(fig, Figure):
                raise TypeError(f"render returned {type(fig).__name__}; it must return a matplotlib Figure")
        except Exception as exc:
            renders.append({"kwargs": kwargs, "error": f"{type(exc).__name__}: {exc}"})
            raise
        renders.append({"kwargs": kwargs, "error": None})
        ipy_display(fig)
        plt.close(fig)

    controls = {}
    for pname, options in zip(params, values):
        if _is_numeric(options) and len(options) > 1:
            controls[pname] = ipywidgets.SelectionSlider(options=options, value=options[0], description=pname)
        else:
            controls[pname] = ipywidgets.Dropdown(options=options, value=options[0], description=pname)
    widget = ipywidgets.interactive(show, **controls)
    widget._anatomy_renders = renders
    widget._anatomy_options = dict(zip(params, values))
    ipy_display(widget)
    _LIVE.append(widget)
    return widget


def drive_live() -> list[dict[str, Any]]:
    """Move every control of the `explore_live` widgets shown since the last call, as a reader would.

    For a test in a kernel: each control is set to its last option and back to its first (one render each,
    through the widget's own callback), and any render that raised is reported. Returns one record per
    widget (the parameters set, the number of renders); raises RuntimeError naming the failing
    parameters if a render failed, or if a widget never rendered.
    """
    records = []
    widgets, _LIVE[:] = list(_LIVE), []
    for widget in widgets:
        renders = widget._anatomy_renders
        before = len(renders)
        for control in widget.kwargs_widgets:
            options = widget._anatomy_options[control.description]
            for value in (options[-1], options[0]) if len(options) > 1 else (options[0],):
                control.value = value
            if len(options) == 1:
                widget.update()
        failed = [r for r in renders if r["error"]]
        if failed:
            raise RuntimeError(f"explore_live: render failed for {failed[0]['kwargs']}: {failed[0]['error']}")
        if not renders or len(renders) == before:
            raise RuntimeError("explore_live: moving the controls rendered nothing")
        records.append({"params": list(widget._anatomy_options), "renders": len(renders)})
    return records
