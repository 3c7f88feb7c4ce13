"""Training curves as MLflow figures (the same data dvc.yaml declares as plots)."""
from __future__ import annotations

import mlflow

from rlhf.stages.common import StageResult

# Plot tables also drawn against a metric rather than the step: name -> (x key, panels of y keys). PPO's
# over-optimisation probe (rlhf/probe.py, Gao et al. 2022): proxy and judge against the KL to the reference.
XY_FIGURES = {"probe": ("probe/kl", (("probe/proxy", "probe/judge"), ("probe/distinct2", "probe/eos_rate")))}


def log_figures(stage: str, result: StageResult, max_series: int = 8) -> None:
    """One PNG per plot table: every numeric column against step; the tables of ``XY_FIGURES`` also against their x
    (``figures/ppo_probe_vs_kl.png``). Matplotlib's object API with fixed margins: no pyplot state to import or
    close, no layout solver (time the pipeline's orchestration overhead counts)."""
    from matplotlib.figure import Figure

    for name, rows in result.plots.items():
        keys = [k for k in rows[0] if k != "step"][:max_series] if rows else []
        if not keys:
            continue
        height = 1.8 * len(keys)
        fig = Figure(figsize=(6, height))
        axes = fig.subplots(len(keys), 1, sharex=True, squeeze=False)
        steps = [r["step"] for r in rows]
        for ax, key in zip(axes[:, 0], keys):
            ax.plot(steps, [r.get(key) for r in rows])
            ax.set_ylabel(key, fontsize=7)
            ax.tick_params(labelsize=7)
        axes[-1, 0].set_xlabel("step")
        fig.subplots_adjust(left=0.16, right=0.97, top=1 - 0.15 / height, bottom=0.45 / height, hspace=0.25)
        mlflow.log_figure(fig, f"figures/{stage}_{name}.png")
        if name in XY_FIGURES:
            x, panels = XY_FIGURES[name]
            mlflow.log_figure(xy_figure(rows, x, panels), f"figures/{stage}_{name}_vs_{x.rsplit('/', 1)[-1]}.png")


def xy_figure(rows: list[dict], x: str, panels: tuple[tuple[str, ...], ...]):
    """One panel per group of keys, each key a line against column ``x`` with a marker per row, in row order."""
    from matplotlib.figure import Figure

    height = 2.4 * len(panels)
    fig = Figure(figsize=(6, height))
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)
    for ax, keys in zip(axes[:, 0], panels):
        for key in keys:
            pts = [(r[x], r[key]) for r in rows if r.get(x) is not None and r.get(key) is not None]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=key)
        ax.legend(fontsize=7)
        ax.tick_params(labelsize=7)
    axes[-1, 0].set_xlabel(x)
    fig.subplots_adjust(left=0.12, right=0.97, top=1 - 0.15 / height, bottom=0.45 / height, hspace=0.2)
    return fig
