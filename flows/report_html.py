"""HTML building blocks of the run report: escaping, number formatting, tables and line charts as embedded PNGs."""
from __future__ import annotations

import base64
import html
import io
import math
import re
from dataclasses import dataclass
from typing import Any, Iterable


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


# ----------------------------------------------------------------------------------------------------- formatting
def esc(value: Any) -> str:
    """Text from data, safe in HTML element content and attribute values; control characters made visible."""
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value))
    return html.escape(text, quote=True)


def fmt(value: Any) -> str:
    """A number as the report prints it (integers whole, others 4 significant digits); None/NaN as a dash."""
    if value is None or isinstance(value, bool):
        return "–" if value is None else str(value).lower()
    if isinstance(value, (int, float)):
        v = float(value)
        if not math.isfinite(v):
            return "–"
        if v.is_integer() and abs(v) < 1e15:
            return str(int(v))
        if abs(v) >= 1e6 or abs(v) < 1e-3:
            return f"{v:.3e}"
        return f"{v:.1f}" if abs(v) >= 1000 else f"{v:.4g}"
    return str(value)


def _link(url: str | None, text: str) -> str:
    if url and url.startswith(("http://", "https://")):
        return f'<a href="{esc(url)}">{esc(text)}</a>'
    return f"<code>{esc(text)}</code>"


def table(headers: Iterable[str], rows: Iterable[Iterable[Any]], cls: str = "") -> str:
    """An HTML table; numbers right-aligned and formatted, everything else escaped."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for v in row:
            if isinstance(v, Raw):
                cells.append(f"<td>{v.html}</td>")
            elif isinstance(v, (int, float)) or v is None:
                cells.append(f'<td class="num">{fmt(v)}</td>')
            else:
                cells.append(f"<td>{esc(v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


@dataclass
class Raw:
    """Already-safe HTML for a table cell (built from escaped parts only)."""
    html: str


def metrics_table(metrics: dict, glossary: dict[str, str] | None = None) -> str:
    gl = glossary or {}
    return table(("metric", "value", "meaning") if gl else ("metric", "value"),
                 ((k, v, gl.get(k, "")) if gl else (k, v) for k, v in metrics.items()))


# ------------------------------------------------------------------------------------------------------- figures
def line_chart(rows: list[dict], keys: Iterable[str], title: str, hlines: dict[str, float] | None = None) -> str | None:
    """A PNG line chart of ``keys`` against ``step`` as an <img> with a data: URI; None when there is nothing."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    series = []
    for key in keys:
        pts = [(r.get("step"), r.get(key)) for r in rows]
        pts = [(float(s), float(v)) for s, v in pts if _finite(s) and _finite(v)]
        if pts:
            series.append((key, pts))
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(5.4, 2.9), dpi=90)
    for key, pts in series:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if len(pts) < 30 else None, ms=3, label=key)
    for label, y in (hlines or {}).items():
        if _finite(y):
            ax.axhline(float(y), ls="--", lw=1, color="grey", label=label)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step", fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    if len(series) + len(hlines or {}) > 1:
        ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return (f'<figure><img alt="{esc(title)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{esc(title)}</figcaption></figure>")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def figures(items: list[str | None], missing: str) -> str:
    imgs = [i for i in items if i]
    return f'<div class="figs">{"".join(imgs)}</div>' if imgs else f'<p class="muted">{esc(missing)}</p>'


