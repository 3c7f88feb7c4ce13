"""A simulated annotation campaign, written as Label Studio's JSON export.

Stands in for people ranking sampled responses in Label Studio (the seed's step 2, after HumanSignal's RLHF tutorial):
the pipeline's ``collect`` stage writes import tasks, people rank each task's candidates with a Ranker tag, and the
``preferences`` stage reads the project's JSON export. This module produces that export without people.

Input task (a Label Studio import task as ``collect`` writes it)::

    {"data": {"prompt": str, "candidates": [{"id": "r0", "title": "Response 1", "body": str, "ended": bool}, ...]}}

Annotators. ``n_annotators`` people (ids 1..n, the ``completed_by`` field). Each has
    - a personal noise level: ``noise * U(0.5, 1.5)``, the std of the Gaussian added to every score they judge;
    - a fluency bias ``b ~ U(-0.5, 0.5)``: they judge ``score - b * (1 - fluency)``, so b > 0 weighs fluency more;
    - a working speed (mean seconds per task) that sets ``lead_time``.
An annotator ranks a task's candidates by ``GoldJudge`` score + bias + noise, best first (ties keep input order).

Campaign. Each task gets one annotation, or two from different annotators with probability ``overlap``; about 1 % of
annotations are cancelled (``was_cancelled: true``, empty result), as in a real export. Everything is drawn from one
``random.Random(seed)`` and timestamps run on a simulated clock from 2026-01-01T00:00:00Z, so the same inputs and seed
give the same export byte for byte.

Output: a list of task dicts shaped like Label Studio's JSON export; the ranking is at
``task["annotations"][i]["result"][0]["value"]["ranker"]["rank"]`` (candidate ids, best first; the key ``rank`` is
the Ranker tag's name, ``from_name``).
"""

from __future__ import annotations

import hashlib
import json
import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Sequence

from rlhf.demo.judge import FLUENCY_WEIGHT, GoldJudge

CAMPAIGN_START = datetime(2026, 1, 1, tzinfo=timezone.utc)
CANCEL_RATE = 0.01
PROJECT_ID = 1
FROM_NAME = "rank"          # the Ranker tag's name in the labelling config
TO_NAME = "candidates"      # the List tag's name
_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"


@dataclass(frozen=True)
class Annotator:
    """One simulated person: noise std, fluency bias and mean seconds per task."""

    id: int
    noise: float
    fluency_bias: float
    mean_lead_time: float


def make_annotators(rng: random.Random, n_annotators: int, noise: float) -> list[Annotator]:
    """Draw the annotators' personal noise levels, biases and speeds."""
    return [Annotator(id=i, noise=noise * rng.uniform(0.5, 1.5), fluency_bias=rng.uniform(-0.5, 0.5),
                      mean_lead_time=rng.uniform(8.0, 40.0)) for i in range(1, n_annotators + 1)]


def make_task(prompt: str, responses: Sequence[str], ended: Sequence[bool] | None = None) -> dict[str, Any]:
    """A Label Studio import task in the format of the ``collect`` stage (ids r0, r1, ...)."""
    flags = [True] * len(responses) if ended is None else list(ended)
    candidates = [{"id": f"r{i}", "title": f"Response {i + 1}", "body": body, "ended": bool(flag)}
                  for i, (body, flag) in enumerate(zip(responses, flags))]
    return {"data": {"prompt": prompt, "candidates": candidates}}


def annotator_ranking(annotator: Annotator, judge: GoldJudge, data: dict[str, Any],
                      rng: random.Random) -> list[str]:
    """Candidate ids best first, as this annotator orders them (gold score + personal bias + Gaussian noise)."""
    utilities = []
    for candidate in data["candidates"]:
        judgement = judge.judge(data["prompt"], candidate["body"], bool(candidate.get("ended", True)))
        bias = annotator.fluency_bias * FLUENCY_WEIGHT * (1.0 - judgement.fluency)
        utilities.append(judgement.score - bias + rng.gauss(0.0, annotator.noise))
    order = sorted(range(len(utilities)), key=lambda i: -utilities[i])
    return [data["candidates"][i]["id"] for i in order]


def _timestamp(seconds: float) -> str:
    return (CAMPAIGN_START + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _result_id(rng: random.Random) -> str:
    return "".join(rng.choice(_ID_ALPHABET) for _ in range(10))


def _unique_id(seed: int, annotation_id: int) -> str:
    digest = hashlib.sha256(f"{seed}:{annotation_id}".encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def _annotation(annotation_id: int, task_id: int, annotator: Annotator, ranking: list[str], cancelled: bool,
                created: float, lead_time: float, result_id: str, seed: int) -> dict[str, Any]:
    """One annotation as Label Studio exports it."""
    result = [] if cancelled else [{
        "id": result_id, "type": "ranker", "from_name": FROM_NAME, "to_name": TO_NAME, "origin": "manual",
        "value": {"ranker": {FROM_NAME: ranking}},
    }]
    return {
        "id": annotation_id, "completed_by": annotator.id, "result": result, "was_cancelled": cancelled,
        "ground_truth": False, "created_at": _timestamp(created), "updated_at": _timestamp(created),
        "draft_created_at": None, "lead_time": lead_time, "prediction": {}, "result_count": 0,
        "unique_id": _unique_id(seed, annotation_id), "import_id": None, "last_action": None,
        "bulk_created": False, "task": task_id, "project": PROJECT_ID, "updated_by": annotator.id,
        "parent_prediction": None, "parent_annotation": None, "last_created_by": None,
    }


def _task(task_id: int, data: dict[str, Any], annotations: list[dict[str, Any]], created: float) -> dict[str, Any]:
    """One exported task with its annotations and Label Studio's bookkeeping fields."""
    cancelled = sum(a["was_cancelled"] for a in annotations)
    return {
        "id": task_id, "data": data, "annotations": annotations, "drafts": [], "predictions": [], "meta": {},
        "created_at": _timestamp(created), "updated_at": annotations[-1]["updated_at"], "inner_id": task_id,
        "total_annotations": len(annotations) - cancelled, "cancelled_annotations": cancelled,
        "total_predictions": 0, "comment_count": 0, "unresolved_comment_count": 0,
        "last_comment_updated_at": None, "project": PROJECT_ID, "updated_by": annotations[-1]["completed_by"],
        "file_upload": None, "comment_authors": [],
    }


def simulate_campaign(tasks: list[dict], judge: GoldJudge, seed: int, n_annotators: int = 5, noise: float = 0.15,
                      overlap: float = 0.2) -> list[dict]:
    """Annotate every task (1 annotation, or 2 with probability overlap) and return Label Studio's JSON export."""
    if n_annotators < 1 or (overlap > 0 and n_annotators < 2):
        raise ValueError("need at least one annotator, and two when overlap > 0")
    rng = random.Random(seed)
    annotators = make_annotators(rng, n_annotators, noise)
    clock = 0.0
    annotation_id = 0
    export: list[dict] = []
    for task_id, task in enumerate(tasks, 1):
        if "data" not in task:
            raise ValueError(f"task {task_id} has no 'data' (expected a Label Studio import task)")
        data = json.loads(json.dumps(task["data"]))          # a deep copy: the export never aliases the input
        n_annotations = 2 if rng.random() < overlap else 1
        annotations = []
        for annotator in (annotators[i] for i in rng.sample(range(n_annotators), n_annotations)):
            annotation_id += 1
            ranking = annotator_ranking(annotator, judge, data, rng)
            lead_time = round(rng.expovariate(1.0 / annotator.mean_lead_time) + 2.0, 3)
            clock += lead_time + rng.uniform(1.0, 20.0)
            annotations.append(_annotation(annotation_id, task_id, annotator, ranking, rng.random() < CANCEL_RATE,
                                           clock, lead_time, _result_id(rng), seed))
        export.append(_task(task_id, data, annotations, created=task_id * 0.001))
    return export


def write_export(export: list[dict], path: str | Path) -> None:
    """Write an export as one JSON document (no indent, sorted keys, UTF-8, trailing newline): deterministic bytes."""
    text = json.dumps(export, sort_keys=True, ensure_ascii=False)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write(text + "\n")
