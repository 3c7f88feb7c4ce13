"""`rlhf`: the command line. Every error is one clear line on stderr (exit 1), never a traceback
(set RLHF_DEBUG=1 to see one)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
               "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               "DVC_NO_ANALYTICS": "1", "TOKENIZERS_PARALLELISM": "false"}


def cmd_run(args) -> int:
    from tasks import shutdown
    from tasks.lock import project_lock
    shutdown.install()                             # SIGTERM / SIGINT: stop within seconds, nothing left running
    with project_lock("rlhf run"):                 # before anything starts: a second run fails at once
        return _run(args)


def _run(args) -> int:
    from rlhf.config import load_params
    from tasks import prefect_server, shutdown, work_pools
    # Stages on work pools need a Prefect server their workers reach: say so before starting a temporary one.
    work_pools.require_shared_api(load_params(args.params).orchestration)
    server = prefect_server.start_if_needed()      # boots in its own process while the flow's imports load
    from flows.pipeline import rlhf_pipeline
    with prefect_server.using(server):
        results = rlhf_pipeline(params_path=args.params, force=args.force)
    shutdown.check()                               # never report success after a stop was requested
    ran = [s for s, r in results.items() if r != "skipped"]
    print(f"\nstages run: {', '.join(ran) or 'none (everything up to date)'}")
    if os.path.exists("metrics/evaluate.json"):
        m = json.load(open("metrics/evaluate.json"))
        keys = ("gold_score_sft", "gold_score_policy", "judge_score_sft", "judge_score_policy", "win_rate_vs_sft",
                "kl_to_ref", "reward_model_accuracy", "eos_rate_policy", "distinct2_sft", "distinct2_policy")
        print("evaluation (metrics/evaluate.json):")
        for k in keys:
            if k in m and m[k] is not None:
                print(f"  {k:24s} {m[k]:.4f}")
    print("results: metrics/*.json, plots/ (`dvc plots show`), artifacts/ (models, datasets)")
    uri = os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    print(f"MLflow: mlflow ui --backend-store-uri {uri}  (registered: rlhf-policy, rlhf-reward-model)")
    return 0


def cmd_stage(args) -> int:
    from tasks import shutdown
    from tasks.stage import run_stage
    shutdown.install()
    metrics = run_stage(args.name, args.params)[0].metrics
    print(json.dumps(metrics, indent=1, default=str))
    return 0


def cmd_status(args) -> int:
    from tasks.graph import all_stale_reasons, configure, stage_order
    configure()
    order = stage_order()
    stale = all_stale_reasons(order)
    for stage in order:
        reasons = stale[stage]
        print(f"{stage:12s} {'stale: ' + '; '.join(reasons[:3]) if reasons else 'up to date'}")
    return 0


def demo_data_stamp(args) -> tuple[Path, dict]:
    """Where `demo-data` records what it wrote (beside the data folder, outside DVC's view) and what it records:
    the arguments, a hash of the generator's code and each file's size and mtime."""
    import hashlib

    import rlhf.demo.generator as gen
    out = Path(args.out)
    code = hashlib.sha256(Path(gen.__file__).read_bytes()).hexdigest()
    files = {f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(out.glob("*.jsonl"))} if out.is_dir() else {}
    spec = {"seed": args.seed, "n_corpus": args.n_corpus, "n_sft": args.n_sft, "n_prompts": args.n_prompts,
            "generator_sha256": code, "files": files}
    return out.resolve().parent / ".rlhf" / f"demo-data-{out.name}.json", spec


def cmd_demo_data(args) -> int:
    from rlhf.demo.generator import generate_demo_data
    stamp, spec = demo_data_stamp(args)
    if args.skip_if_current and spec["files"] and stamp.exists() and json.loads(stamp.read_text()) == spec:
        print(f"demo data in {args.out}: up to date (as written; {stamp} records it)")
        return 0
    counts = generate_demo_data(args.out, seed=args.seed, n_corpus=args.n_corpus, n_sft=args.n_sft,
                                n_prompts=args.n_prompts)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(demo_data_stamp(args)[1]))
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
    d.add_argument("--skip-if-current", action="store_true",
                   help="do nothing when the files are exactly what an earlier run with the same arguments wrote")
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


def entry() -> None:
    """The `rlhf` console script: ``main`` and a normal interpreter exit (Prefect drains its log and event workers,
    then the atexit handlers stop the temporary server). Tests call ``main`` and keep their interpreter."""
    sys.exit(main())


if __name__ == "__main__":
    entry()
