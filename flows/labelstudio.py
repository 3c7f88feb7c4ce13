"""The Label Studio round trip as Prefect flows: push the `collect` stage's tasks into a ranking project, pull the
finished annotations back as a full JSON export, which `rlhf.preferences.ingest` reads (format ``labelstudio``).

The flows only compose the tasks of tasks/labelstudio.py (the client, retries of transient errors only, an import
that is not repeated on retry); the tasks are checked against the labelling config by
tasks/labelstudio_inputs.py before anything is sent. The token never appears in a stored Prefect parameter
(``_TokenSafeFlow``). The server is ``url``, else ``$LABEL_STUDIO_URL``, else http://localhost:8080.
"""
from __future__ import annotations

from typing import Any

from prefect import Flow, get_run_logger
from pydantic import SecretStr

from tasks.labelstudio import LabelStudioClient, create_project, export_annotations, import_batch
from tasks.labelstudio_inputs import DEFAULT_TITLE, IMPORT_BATCH, load_tasks


class _TokenSafeFlow(Flow):
    """A flow whose ``token`` parameter Prefect stores obfuscated even when a caller passes a plain str (Prefect
    records a flow run's parameters as given; only a SecretStr is written as '**********')."""

    def serialize_parameters(self, parameters: dict[str, Any]) -> dict[str, Any]:
        if isinstance(parameters.get("token"), str):
            parameters = {**parameters, "token": SecretStr(parameters["token"])}
        return super().serialize_parameters(parameters)


def _flow(name: str):
    return lambda fn: _TokenSafeFlow(fn, name=name)


@_flow("push_to_label_studio")
def push_to_label_studio(tasks_path: str, url: str | None = None, token: SecretStr | None = None,
                         title: str = DEFAULT_TITLE, label_config_path: str | None = None,
                         batch_size: int = IMPORT_BATCH) -> dict:
    """Create a ranking project from the collect stage's tasks.json (+ label_config.xml) and import the tasks."""
    tasks, label_config = load_tasks(tasks_path, label_config_path)
    client = LabelStudioClient(url, token)
    project_id = create_project(client, title, label_config)
    count = 0
    for start in range(0, len(tasks), batch_size):
        count = import_batch(client, project_id, tasks[start:start + batch_size], count)
    get_run_logger().info("project %s: %s tasks imported", project_id, count)
    return {"project_id": project_id, "tasks": count, "url": f"{client.url}/projects/{project_id}"}


@_flow("pull_from_label_studio")
def pull_from_label_studio(project_id: int, out_path: str, url: str | None = None,
                           token: SecretStr | None = None) -> dict:
    """Export a project's annotated tasks (full JSON, cancelled annotations included) to ``out_path``."""
    client = LabelStudioClient(url, token)
    counts = export_annotations(client, project_id, out_path)
    get_run_logger().info("project %s: %s tasks, %s annotations (%s cancelled) -> %s", project_id,
                          counts["tasks"], counts["annotations"], counts["cancelled"], counts["path"])
    return counts
