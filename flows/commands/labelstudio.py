"""`rlhf label-studio push|pull`: the Label Studio round trip of the preference campaign (flows/labelstudio.py).

    rlhf label-studio push --tasks artifacts/collect/tasks.json [--title T]      -> a ranking project, tasks imported
    rlhf label-studio pull --project ID --out exports/campaign.json             -> full JSON export for `rlhf ingest`

The server is ``--url`` (default ``$LABEL_STUDIO_URL``, else http://localhost:8080); the token is ``--token`` or
``$LABEL_STUDIO_API_KEY`` (prefer the variable: a command-line argument is visible to other users in `ps`).
Inputs and the server (reachable, token accepted, project exists) are checked before the Prefect flow starts, so
the usual mistakes are one line on stderr (exit 1) and cost no flow run. Heavy imports happen only when a
subcommand runs (every `rlhf` invocation imports this module; tasks/labelstudio_inputs.py is standard library only).
"""
from __future__ import annotations

import os
import sys

from tasks.labelstudio_inputs import DEFAULT_TITLE, DEFAULT_URL, IMPORT_BATCH, TOKEN_ENV, URL_ENV


def register(subparsers) -> None:
    p = subparsers.add_parser("label-studio", help="push collected tasks to Label Studio, pull annotations back",
                              description="The annotation round trip with a Label Studio server.")
    sub = p.add_subparsers(dest="ls_command", required=True, metavar="{push,pull}")
    push = sub.add_parser("push", help="create a ranking project and import the collect stage's tasks",
                          description="Create a project with the ranking labelling config (label_config.xml beside "
                                      "the tasks, as the collect stage writes it) and import the tasks.")
    push.add_argument("--tasks", required=True, metavar="PATH", help="Label Studio import tasks (collect's tasks.json)")
    push.add_argument("--label-config", default=None, metavar="PATH",
                      help="labelling config XML (default: label_config.xml beside --tasks)")
    push.add_argument("--title", default=DEFAULT_TITLE, help=f"project title (default: '{DEFAULT_TITLE}')")
    push.add_argument("--batch-size", type=int, default=IMPORT_BATCH, metavar="N",
                      help=f"tasks per import request (default: {IMPORT_BATCH})")
    pull = sub.add_parser("pull", help="export a project's finished annotations (full JSON) to a file",
                          description="Download the annotated tasks of a project as Label Studio's full JSON export "
                                      "(cancelled annotations included: `rlhf ingest` rejects them with a reason).")
    pull.add_argument("--project", required=True, type=int, metavar="ID", help="project id (printed by push)")
    pull.add_argument("--out", required=True, metavar="PATH", help="export file to write (.json)")
    for sp in (push, pull):
        sp.add_argument("--url", default=None,
                        help=f"Label Studio base URL (default: ${URL_ENV}, else {DEFAULT_URL})")
        sp.add_argument("--token", default=None,
                        help=f"API token: legacy or personal access token (default: ${TOKEN_ENV})")
    push.set_defaults(fn=cmd_push)
    pull.set_defaults(fn=cmd_pull)


def _fail(message: str) -> int:
    print(f"rlhf label-studio: error: {message}", file=sys.stderr)
    return 1


def _connect(args, project_id: int | None = None):
    """(client, token as SecretStr), the server reachable, the token accepted and the project there (else
    LabelStudioError)."""
    from pydantic import SecretStr

    from tasks.labelstudio import connect
    from tasks.labelstudio_inputs import resolve_token
    token = SecretStr(resolve_token(args.token))
    return connect(args.url, token, project_id), token


def cmd_push(args) -> int:
    from flows.labelstudio import push_to_label_studio
    from tasks.labelstudio_inputs import LabelStudioError, load_tasks
    if args.batch_size < 1:
        return _fail(f"--batch-size must be >= 1, got {args.batch_size}")
    try:
        tasks, _ = load_tasks(args.tasks, args.label_config)
        client, token = _connect(args)
        result = push_to_label_studio(args.tasks, client.url, token, args.title,
                                      label_config_path=args.label_config, batch_size=args.batch_size)
    except LabelStudioError as e:
        return _fail(str(e))
    print(f"project {result['project_id']}: {result['tasks']} tasks imported ({len(tasks)} in {args.tasks})")
    print(f"label them at {result['url']}; then: rlhf label-studio pull --project {result['project_id']} "
          f"--out <export.json>")
    return 0


def cmd_pull(args) -> int:
    from flows.labelstudio import pull_from_label_studio
    from tasks.labelstudio_inputs import LabelStudioError
    if os.path.isdir(args.out):
        return _fail(f"{args.out}: --out is a folder; give a file name such as {args.out.rstrip('/')}/export.json")
    try:
        client, token = _connect(args, args.project)                    # a missing project: HTTP 404, one line
        counts = pull_from_label_studio(args.project, args.out, client.url, token)
    except LabelStudioError as e:
        return _fail(str(e))
    except OSError as e:
        return _fail(f"{e.filename or args.out}: {e.strerror or e}")
    print(f"{counts['path']}: {counts['tasks']} annotated tasks, {counts['annotations']} annotations "
          f"({counts['cancelled']} cancelled)")
    if counts["tasks"]:
        print(f"next: rlhf ingest {counts['path']} --out <folder>")
    else:
        print("nothing is annotated yet in this project", file=sys.stderr)
    return 0
