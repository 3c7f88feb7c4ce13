"""Writing a promotion decision (tasks/promotion.record) against a real MLflow registry (SQLite): the champion is
re-read before it moves, the alias moves before the decision is recorded, and a failure at any step leaves no
version marked decided that is not what the registry says."""
from __future__ import annotations

import pytest
from mlflow import MlflowClient

from tasks.promotion import pending, record
from tasks.registry import CHALLENGER, CHAMPION, RegistryError, history, version_by_alias

NAME = "rlhf-policy"


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """Versions 1 (champion) and 2 (challenger) of one registered model."""
    import mlflow
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient()
    client.create_registered_model(NAME)
    for _ in range(3):
        client.create_model_version(NAME, source=str(tmp_path))
    client.set_registered_model_alias(NAME, CHAMPION, "1")
    client.set_registered_model_alias(NAME, CHALLENGER, "2")
    yield client
    mlflow.set_tracking_uri(None)


def report(decision: str = "promoted", champion_before: str | None = "1") -> dict:
    return {"model": NAME, "challenger": "2", "champion_before": champion_before, "baseline": "champion v1",
            "metrics": {"win_rate": 0.75, "kl_to_ref": 1.5}, "decision": decision, "reason": "all gates pass"}


def test_promoted_moves_the_alias_pushes_history_and_records_the_decision(registry):
    record(report(), "run123")
    assert str(version_by_alias(NAME, CHAMPION).version) == "2"
    assert history(NAME) == ["1"]
    tags = registry.get_model_version(NAME, "2").tags
    assert tags["promotion.decision"] == "promoted" and tags["promotion.run_id"] == "run123"
    assert tags["promotion.win_rate"] == "0.75"


def test_refused_leaves_the_champion(registry):
    record(report("refused"), None)
    assert str(version_by_alias(NAME, CHAMPION).version) == "1"
    assert registry.get_model_version(NAME, "2").tags["promotion.decision"] == "refused"


def test_a_failure_after_the_alias_moved_leaves_no_half_decided_version(registry, monkeypatch):
    """The decision tag is written last: a crash while tagging leaves v2 champion (the alias is the truth) and not
    marked decided; nothing is skipped from then on."""
    real = MlflowClient.set_model_version_tag

    def failing(self, name, version, key, value):
        if key == "promotion.reason":
            raise ConnectionError("tracking server went away")
        return real(self, name, version, key, value)
    monkeypatch.setattr(MlflowClient, "set_model_version_tag", failing)
    with pytest.raises(ConnectionError):
        record(report(), "run123")
    monkeypatch.setattr(MlflowClient, "set_model_version_tag", real)
    assert str(version_by_alias(NAME, CHAMPION).version) == "2"
    assert "promotion.decision" not in registry.get_model_version(NAME, "2").tags
    assert pending(NAME, force=False).unchanged["reason"] == "challenger is already champion"
    record(report(champion_before="1"), "run124")                      # a retry completes the record
    assert registry.get_model_version(NAME, "2").tags["promotion.decision"] == "promoted"
    assert history(NAME) == ["1"]                                     # and does not push v1 twice


def test_a_champion_that_moved_since_it_was_measured_is_not_replaced(registry):
    registry.set_registered_model_alias(NAME, CHAMPION, "3")          # another promotion got there first
    with pytest.raises(RegistryError, match="champion moved from v1 to v3"):
        record(report(), "run123")
    assert str(version_by_alias(NAME, CHAMPION).version) == "3"
    assert "promotion.decision" not in registry.get_model_version(NAME, "2").tags
