"""annotate (demo only): simulated annotators rank the collected responses by the documented gold preference plus
noise, and the rankings are written in Label Studio's JSON export format: exactly what a real campaign produces.
A real campaign replaces this stage by its export (``preferences.inputs`` in params.yaml)."""
from __future__ import annotations

import json
from pathlib import Path

from rlhf.config import AnnotateConfig
from rlhf.demo.annotators import simulate_campaign, write_export
from rlhf.demo.judge import GoldJudge
from rlhf.stages.common import StageResult


def run(cfg: AnnotateConfig, on_log=None) -> StageResult:
    tasks = json.loads(Path(cfg.tasks).read_text(encoding="utf-8"))
    judge = GoldJudge.from_corpus(cfg.corpus)
    export = simulate_campaign(tasks, judge, cfg.seed, cfg.n_annotators, cfg.noise, cfg.overlap)
    write_export(export, cfg.out)
    n_ann = sum(len(t["annotations"]) for t in export)
    cancelled = sum(a["was_cancelled"] for t in export for a in t["annotations"])
    return StageResult({"n_tasks": len(export), "n_annotations": n_ann, "n_cancelled": cancelled},
                       outputs={"export": cfg.out})
