"""The page (report/model.py) as HTML, from the Jinja2 templates in report/templates/ with autoescaping on: every
value from data (samples, prompts, reject reasons, file names, metric keys, run ids) is escaped by Jinja2, none by
hand; the templates hold the only markup. Sampled text is untrusted."""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from report.charts import png_base64
from report.model import Link, Page, fmt

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _visible(value: Any) -> Any:
    """Every ``{{ }}`` output passes here before it is escaped: control characters in text made visible."""
    if isinstance(value, str) and not isinstance(value, Markup):
        return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", value)
    return value


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("report", "templates"), autoescape=True,
                             finalize=_visible, trim_blocks=True, lstrip_blocks=True,
                             undefined=jinja2.StrictUndefined)
    env.filters["fmt"] = fmt
    env.filters["png"] = png_base64
    env.tests["link"] = lambda v: isinstance(v, Link)
    return env


def render_html(page: Page) -> str:
    """The whole page as one string."""
    return environment().get_template("report.html.j2").render(page=page)


def write_html(page: Page, out: Path) -> Path:
    """Write the page to ``out`` atomically (a temporary file, then a rename); returns ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(render_html(page), encoding="utf-8")
    tmp.replace(out)
    return out
