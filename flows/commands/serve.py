"""`rlhf serve`: MLflow's scoring server for a registered model, after checking that the version loads as data.

    rlhf serve --model models:/rlhf-policy@champion [--host 127.0.0.1] [--port 5001] [--workers 1]

The alias is resolved once, at start: the server serves that version until it stops, and a promotion or rollback
moves what the next start serves. The version is downloaded and checked (tasks/model_loading.py: a transformers
policy, or a reward model whose stored entry file is this install's), then the checked folder itself is served with
``mlflow models serve --env-manager local``, so nothing downloaded later can differ from what was checked.
Requests and replies are MLflow's (docs/serving.md):

    policy:  POST /invocations {"inputs": ["prompt 1", "prompt 2"], "params": {"max_new_tokens": 24}}
             -> {"predictions": ["completion 1", "completion 2"]}
    chat policy (a chat template): POST /invocations {"messages": [{"role": "user", "content": "..."}],
             "max_tokens": 24} -> an OpenAI-style chat.completion
    reward:  POST /invocations {"dataframe_records": [{"prompt": "p", "response": "r"}]} -> {"predictions": [0.41]}
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile


def serve_command(model: str, host: str, port: int, workers: int) -> list[str]:
    """The scoring-server command line (``python -m mlflow models serve``) for a local, checked model folder."""
    return [sys.executable, "-m", "mlflow", "models", "serve", "-m", model, "--env-manager", "local",
            "--host", host, "--port", str(port), "--workers", str(workers)]


def example_request(kind: str, host: str, port: int, chat: bool = False) -> str:
    body = ('{"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 24}' if chat
            else '{"inputs": ["the acting in this film"], "params": {"max_new_tokens": 24}}' if kind == "policy"
            else '{"dataframe_records": [{"prompt": "the acting in this film", "response": "was superb."}]}')
    return f"curl -s http://{host}:{port}/invocations -H 'Content-Type: application/json' -d '{body}'"


def cmd_serve(args) -> int:
    from pathlib import Path

    from tasks.model_loading import checked, download, pin
    from tasks.registry import connect
    if not 0 < args.port < 65536 or args.workers < 1:
        raise ValueError("--port must be 1-65535 and --workers >= 1")
    local = Path(args.model)
    if not local.is_dir():
        connect()
    with tempfile.TemporaryDirectory(prefix="rlhf-serve-") as dst:
        if local.is_dir():
            root, what = local, str(local)
        else:
            pinned = pin(args.model)
            what = args.model if pinned == args.model else f"{args.model} ({pinned})"
            root = download(pinned, dst)
        kind, flavors = checked(root, args.model)
        chat = (flavors.get("transformers") or {}).get("inference_task") == "llm/v1/chat"
        cmd = serve_command(str(root), args.host, args.port, args.workers)
        print(f"serving {what}, a {'chat ' if chat else ''}{kind} model, at http://{args.host}:{args.port}/invocations"
              f"\ntry: {example_request(kind, args.host, args.port, chat)}", file=sys.stderr, flush=True)
        # MLflow starts `uvicorn` by name: this interpreter's scripts folder first, activated or not.
        path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
        proc = subprocess.Popen(cmd, env={**os.environ, "PATH": path})
        # Forward a stop to the server (same process group for Ctrl-C; SIGTERM reaches only us).
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, lambda s, f: proc.send_signal(signal.SIGTERM))
        try:
            return proc.wait()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)
            return proc.wait()


def register(sub) -> None:
    s = sub.add_parser("serve", help="serve a registered model over HTTP (MLflow's scoring server)")
    s.add_argument("--model", default="models:/rlhf-policy@champion",
                   help="models:/NAME@ALIAS, models:/NAME/VERSION or a local MLflow model folder "
                        "(default: models:/rlhf-policy@champion)")
    s.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=5001, help="default 5001")
    s.add_argument("--workers", type=int, default=1, help="server worker processes (default 1)")
    s.set_defaults(fn=cmd_serve)
