"""`rlhf`: the command line. Every error is one clear line on stderr (exit 1), never a traceback
(set RLHF_DEBUG=1 to see one)."""
from __future__ import annotations

import argparse
import json
import os
import sys

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
               "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               "DVC_NO_ANALYTICS": "1", "TOKENIZERS_PARALLELISM": "false"}


def start_prefect_server_early():
    """Start Prefect's temporary server (what the flow would start on its first API call, ~4 s) in a thread while
    the flow's imports (torch, transformers, mlflow, dvc: 3-8 s) load; returns the thread to join before the flow
    runs. Nothing happens when a server is configured (PREFECT_API_URL) or ephemeral mode is off; on any error the
    flow starts the server itself, as without this."""
    import threading

    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED
    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return None

    def start() -> None:
        from prefect.server.api.server import SubprocessASGIServer
        try:
            SubprocessASGIServer().start()        # the same (per-port singleton) server the flow's client uses
        except Exception:  # noqa: BLE001 - the flow retries the start and reports the error
            SubprocessASGIServer().running = False

    thread = threading.Thread(target=start, name="prefect-server-start", daemon=True)
    thread.start()
    return thread


def cmd_run(args) -> int:
    server = start_prefect_server_early()
    from flows.pipeline import rlhf_pipeline
    if server is not None:
        server.join()                             # never let the flow see a half-started server
    results = rlhf_pipeline(params_path=args.params, force=args.force)
    ran = [s for s, r in results.items() if r != "skipped"]
    print(f"\nstages run: {', '.join(ran) or 'none (everything up to date)'}")
    if os.path.exists("metrics/evaluate.json"):
        m = json.load(open("metrics/evaluate.json"))
        keys = ("gold_score_sft", "gold_score_policy", "win_rate_vs_sft", "kl_to_ref", "reward_model_accuracy",
                "eos_rate_policy", "distinct2_sft", "distinct2_policy")
        print("evaluation (metrics/evaluate.json):")
        for k in keys:
            if k in m and m[k] is not None:
                print(f"  {k:24s} {m[k]:.4f}")
    print("results: metrics/*.json, plots/ (`dvc plots show`), artifacts/ (models, datasets)")
    uri = os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    print(f"MLflow: mlflow ui --backend-store-uri {uri}  (registered: rlhf-policy, rlhf-reward-model)")
    return 0


def cmd_stage(args) -> int:
    from tasks.stage import run_stage
    metrics = run_stage(args.name, args.params)[0].metrics
    print(json.dumps(metrics, indent=1, default=str))
    return 0


def cmd_status(args) -> int:
    from flows.dag import configure, stage_order, stale_reasons
    configure()
    for stage in stage_order():
        reasons = stale_reasons(stage)
        print(f"{stage:12s} {'stale: ' + '; '.join(reasons[:3]) if reasons else 'up to date'}")
    return 0


def cmd_demo_data(args) -> int:
    from rlhf.demo.generator import generate_demo_data
    counts = generate_demo_data(args.out, seed=args.seed, n_corpus=args.n_corpus, n_sft=args.n_sft,
                                n_prompts=args.n_prompts)
    print(f"demo data in {args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlhf", description="Reproducible RLHF pipeline: Prefect + MLflow + DVC.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the whole pipeline (stale stages only)")
    r.add_argument("--params", default="params.yaml")
    r.add_argument("--force", action="store_true", help="run every stage even when up to date")
    r.set_defaults(fn=cmd_run)
    s = sub.add_parser("stage", help="run one stage (what dvc.yaml's cmd calls)")
    s.add_argument("name")
    s.add_argument("--params", default="params.yaml")
    s.set_defaults(fn=cmd_stage)
    st = sub.add_parser("status", help="which stages are stale and why")
    st.set_defaults(fn=cmd_status)
    d = sub.add_parser("demo-data", help="generate the demo's raw data (deterministic)")
    d.add_argument("out")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--n-corpus", type=int, default=6000)
    d.add_argument("--n-sft", type=int, default=1500)
    d.add_argument("--n-prompts", type=int, default=2400)
    d.set_defaults(fn=cmd_demo_data)
    register_plugins(sub)
    return p


def register_plugins(sub) -> None:
    """Subcommands contributed by the modules of flows/commands (ingest, promote, report, ...)."""
    import importlib
    import pkgutil

    import flows.commands as commands
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"flows.commands.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)


def main(argv: list[str] | None = None) -> int:
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        print("rlhf: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one clear line for the user; RLHF_DEBUG=1 for the traceback
        if os.environ.get("RLHF_DEBUG"):
            raise
        print(f"rlhf: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
