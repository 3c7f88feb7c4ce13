"""The promotion decision as markdown (logged beside the JSON report on the ``promote`` MLflow run)."""
from __future__ import annotations


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4g}" if isinstance(x, float) else str(x)


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def report_markdown(reports: list[dict]) -> str:
    """The decision, the gates and the numbers, one section per model."""
    lines = ["# Promotion report", ""]
    for r in reports:
        lines += [f"## {r['model']}: {r['decision']}", "", r["reason"], ""]
        if r.get("serve"):
            lines += [f"serve: `{r['serve']}` (now v{r['serves']}; a rollback moves what the next start serves)"
                      if r.get("serves") else f"serve: `{r['serve']}` once a version is champion", ""]
        if "challenger" not in r:
            continue
        lines += [f"challenger v{r['challenger']} vs {r['baseline']} (champion before: {r['champion_before']})", "",
                  "| gate | value | rule | status |", "|---|---|---|---|"]
        lines += [f"| {x['name']} | {_fmt(x['value'])} | {x['op']} {_fmt(x['threshold'])} | {x['status']} |"
                  for x in r["gates"]]
        lines += ["", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in r["metrics"].items() if k != "examples"]
        examples = r["metrics"].get("examples") or []
        if examples:
            lines += ["", "| prompt | challenger | baseline |", "|---|---|---|"]
            lines += ["| " + " | ".join(_cell(e[k]) for k in ("prompt", "challenger", "baseline")) + " |"
                      for e in examples]
        lines.append("")
    return "\n".join(lines)
