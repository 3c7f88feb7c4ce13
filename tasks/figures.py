"""Training curves as MLflow figures (the same data dvc.yaml declares as plots)."""
from __future__ import annotations

import mlflow

from rlhf.stages.common import StageResult


def log_figures(stage: str, result: StageResult, max_series: int = 8) -> None:
    """One PNG per plot table: every numeric column against step. Matplotlib's object API with fixed margins: no
    pyplot state to import or close, no layout solver (time the pipeline's orchestration overhead counts)."""
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
