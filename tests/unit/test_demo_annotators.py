"""The simulated annotation campaign: determinism, Label Studio export structure, realistic noise."""

from __future__ import annotations

import copy
import json
import random
import re
from pathlib import Path

import pytest

from rlhf.demo.annotators import make_task, simulate_campaign, write_export
from rlhf.demo.generator import build_demo_data
from rlhf.demo.judge import GoldJudge

TIMESTAMP = re.compile(r"2026-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


@pytest.fixture(scope="module")
def setup():
    data = build_demo_data(seed=0, n_corpus=2000, n_sft=400, n_prompts=300)
    judge = GoldJudge.from_texts(r.text for r in data.corpus)
    rng = random.Random(0)
    tasks = []
    for prompt, _ in data.prompts:
        responses = [r.completion for r in rng.sample(data.sft, 4)]
        tasks.append(make_task(prompt, responses, [rng.random() > 0.1 for _ in responses]))
    return judge, tasks * 4   # 1200 tasks


def judge_top(judge: GoldJudge, data: dict) -> str:
    candidates = data["candidates"]
    best = judge.rank(data["prompt"], [c["body"] for c in candidates], [c["ended"] for c in candidates])[0]
    return candidates[best]["id"]


def rankings(task: dict) -> list[list[str]]:
    return [a["result"][0]["value"]["ranker"]["rank"] for a in task["annotations"] if not a["was_cancelled"]]


def top_agreement(export: list[dict], judge: GoldJudge) -> float:
    tops = [(r[0], judge_top(judge, t["data"])) for t in export for r in rankings(t)]
    return sum(a == b for a, b in tops) / len(tops)


def test_same_seed_same_bytes_other_seed_differs(setup, tmp_path: Path) -> None:
    judge, tasks = setup
    write_export(simulate_campaign(tasks[:200], judge, seed=1), tmp_path / "a.json")
    write_export(simulate_campaign(tasks[:200], judge, seed=1), tmp_path / "b.json")
    write_export(simulate_campaign(tasks[:200], judge, seed=2), tmp_path / "c.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert (tmp_path / "a.json").read_bytes() != (tmp_path / "c.json").read_bytes()
    text = (tmp_path / "a.json").read_text(encoding="utf-8")
    assert text.count("\n") == 1 and json.dumps(json.loads(text), sort_keys=True) + "\n" == text


def test_export_has_label_studio_structure(setup) -> None:
    judge, tasks = setup
    original = copy.deepcopy(tasks[:300])
    export = simulate_campaign(tasks[:300], judge, seed=3)
    assert tasks[:300] == original                                   # the input is not mutated
    assert [t["id"] for t in export] == list(range(1, 301))
    annotation_ids = [a["id"] for t in export for a in t["annotations"]]
    assert len(set(annotation_ids)) == len(annotation_ids)
    for task, source in zip(export, original):
        assert task["data"] == source["data"] and task["predictions"] == [] and task["project"] == 1
        assert TIMESTAMP.fullmatch(task["created_at"]) and TIMESTAMP.fullmatch(task["updated_at"])
        cancelled = sum(a["was_cancelled"] for a in task["annotations"])
        assert (task["total_annotations"], task["cancelled_annotations"]) == (len(task["annotations"]) - cancelled,
                                                                             cancelled)
        assert len({a["completed_by"] for a in task["annotations"]}) == len(task["annotations"])
        for annotation in task["annotations"]:
            assert 1 <= annotation["completed_by"] <= 5 and annotation["ground_truth"] is False
            assert TIMESTAMP.fullmatch(annotation["created_at"]) and annotation["lead_time"] > 0
            assert annotation["task"] == task["id"]
            if annotation["was_cancelled"]:
                assert annotation["result"] == []
                continue
            (result,) = annotation["result"]
            assert (result["type"], result["from_name"], result["to_name"], result["origin"]) == (
                "ranker", "rank", "candidates", "manual")
            assert len(result["id"]) == 10
            assert sorted(result["value"]["ranker"]["rank"]) == ["r0", "r1", "r2", "r3"]


def test_overlap_and_cancellation_rates(setup) -> None:
    judge, tasks = setup
    export = simulate_campaign(tasks, judge, seed=4)
    doubled = sum(len(t["annotations"]) == 2 for t in export) / len(export)
    assert 0.15 < doubled < 0.25
    annotations = [a for t in export for a in t["annotations"]]
    cancelled = sum(a["was_cancelled"] for a in annotations)
    assert 1 <= cancelled <= 0.03 * len(annotations)
    times = [a["created_at"] for a in sorted(annotations, key=lambda a: a["id"])]
    assert times == sorted(times)                                    # a simulated clock that only moves forward
    assert all(len(t["annotations"]) == 1 for t in simulate_campaign(tasks[:100], judge, seed=4, overlap=0.0))


def test_annotators_mostly_agree_with_the_judge_but_not_always(setup) -> None:
    judge, tasks = setup
    export = simulate_campaign(tasks, judge, seed=5)
    agreement = top_agreement(export, judge)
    assert 0.7 < agreement < 1.0
    noisier = top_agreement(simulate_campaign(tasks, judge, seed=5, noise=0.6), judge)
    assert noisier < agreement - 0.1


def test_overlapping_annotations_sometimes_disagree(setup) -> None:
    judge, tasks = setup
    pairs = [r for t in simulate_campaign(tasks, judge, seed=6) if len(r := rankings(t)) == 2]
    assert len(pairs) > 100
    disagreements = sum(a != b for a, b in pairs)
    assert 0 < disagreements < len(pairs)


def test_task_without_data_is_rejected(setup) -> None:
    judge, _ = setup
    with pytest.raises(ValueError):
        simulate_campaign([{"prompt": "x"}], judge, seed=0)
