"""The page as data: sections of typed blocks (tables, charts as numbers, samples, notes) that the template
(report/templates/) draws. Nothing here is HTML; every string is plain text that Jinja2 escapes when it renders."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from rlhf.finite import finite_or_none


def finite(v: Any) -> bool:
    return finite_or_none(v) is not None


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


@dataclass
class Link:
    """A run id or file name; a link only when ``url`` is http(s), else shown as code."""
    text: str
    url: str | None = None

    @property
    def href(self) -> str | None:
        return self.url if self.url and self.url.startswith(("http://", "https://")) else None


@dataclass
class Text:
    text: str
    css: str = ""                   # "muted", "note" or "" (a plain paragraph)
    kind: ClassVar[str] = "text"


@dataclass
class Heading:
    text: str
    kind: ClassVar[str] = "heading"


@dataclass
class Table:
    """Rows of cells: numbers and None are right-aligned and formatted, Link cells linked, the rest text."""
    headers: tuple[str, ...]
    rows: list[list[Any]]
    kind: ClassVar[str] = "table"


@dataclass
class Cards:
    items: list[tuple[str, str]]    # (label, value)
    kind: ClassVar[str] = "cards"


@dataclass
class Chart:
    """A line chart: each series is (name, [(x, value), ...]) in row order; reference lines are (label, value);
    ``x`` names the horizontal axis (``step``, or a metric such as ``probe/kl``)."""
    title: str
    series: list[tuple[str, list[tuple[float, float]]]]
    hlines: list[tuple[str, float]] = field(default_factory=list)
    x: str = "step"


@dataclass
class Charts:
    items: list[Chart]
    kind: ClassVar[str] = "charts"


@dataclass
class SampleRow:
    prompt: Any
    sft: Any
    gold_sft: Any
    rm_sft: Any
    policy: Any
    gold_policy: Any
    rm_policy: Any
    outcome: str = ""               # "win" / "loss": the PPO response scores higher / lower with the gold judge


@dataclass
class Samples:
    rows: list[SampleRow]
    total: int
    path: str
    kind: ClassVar[str] = "samples"


@dataclass
class Decision:
    """The promotion decision and where it was read (a file or an MLflow run)."""
    text: str
    source: Link
    via: str = ""                   # "MLflow run " when the record comes from one
    kind: ClassVar[str] = "decision"


@dataclass
class TrackingLine:
    """Which MLflow store and pipeline run the page comes from."""
    uri: str
    parent: Link | None
    hint: str
    kind: ClassVar[str] = "tracking"


Block = Text | Heading | Table | Cards | Charts | Samples | Decision | TrackingLine


@dataclass
class Section:
    id: str
    title: str
    blocks: list[Block] = field(default_factory=list)
    nav: str = ""                   # the link text in the page's navigation (default: the title)


@dataclass
class Page:
    title: str
    generated: str
    root: str
    provenance: dict[str, str]
    notes: list[str]
    sections: list[Section]

    def charts(self) -> list[Chart]:
        return [c for s in self.sections for b in s.blocks if isinstance(b, Charts) for c in b.items]
