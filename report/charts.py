"""A ``Chart`` (numbers only) drawn as a PNG, base64-encoded for a data: URI: the page stays one self-contained
file with nothing fetched. Matplotlib's object API (no pyplot state)."""
from __future__ import annotations

import base64
import io

from report.model import Chart


def png_base64(chart: Chart) -> str:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(5.4, 2.9), dpi=90)
    ax = fig.subplots()
    for key, pts in chart.series:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if len(pts) < 30 else None, ms=3, label=key)
    for label, y in chart.hlines:
        ax.axhline(y, ls="--", lw=1, color="grey", label=label)
    ax.set_title(chart.title, fontsize=10)
    ax.set_xlabel(chart.x, fontsize=8)
    if chart.x == "step":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    if len(chart.series) + len(chart.hlines) > 1:
        ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")
