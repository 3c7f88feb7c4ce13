"""Training curves as MLflow figures (the same data dvc.yaml declares as plots)."""
from __future__ import annotations

import mlflow

from rlhf.stages.common import StageResult


def log_figures(stage: str, result: StageResult, max_series: int = 8) -> None:
    """One PNG per plot table: every numeric column against step."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for name, rows in result.plots.items():
        keys = [k for k in rows[0] if k != "step"][:max_series] if rows else []
        if not keys:
            continue
        fig, axes = plt.subplots(len(keys), 1, figsize=(6, 1.8 * len(keys)), sharex=True, squeeze=False)
        steps = [r["step"] for r in rows]
        for ax, key in zip(axes[:, 0], keys):
            ax.plot(steps, [r.get(key) for r in rows])
            ax.set_ylabel(key, fontsize=7)
        axes[-1, 0].set_xlabel("step")
        fig.tight_layout()
        mlflow.log_figure(fig, f"figures/{stage}_{name}.png")
        plt.close(fig)
