"""`rlhf promote`, `rlhf rollback`, `rlhf generate`, `rlhf score`, `rlhf lineage`: the model registry from the
command line. Models are named by ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or a local folder; the store is
MLFLOW_TRACKING_URI (default: the project's embedded ``mlflow.db``)."""
from __future__ import annotations

import json


def _load(uri: str, kind: str, trust_remote_code: bool):
    from pathlib import Path

    from tasks.model_loading import load_model
    from tasks.registry import connect
    if not Path(uri).exists():
        connect()
    return load_model(uri, kind=kind, trust_remote_code=trust_remote_code)


def cmd_promote(args) -> int:
    from flows.promote import promote, summary
    result = promote(args.params, dry_run=args.dry_run, force=args.force, report_path=args.report)
    print(json.dumps(result, indent=1, default=str) if args.json else summary(result))
    if result.get("run_id"):
        print(f"report: MLflow run {result['run_id']} (artifacts promotion/report.md, promotion/report.json)")
    return 0


def cmd_rollback(args) -> int:
    from flows.promote import rollback_champion
    r = rollback_champion(args.model)
    print(f"{r['model']}: champion v{r['rolled_back']} -> v{r['champion']} "
          f"(previous champion now: {('v' + r['previous_champion']) if r['previous_champion'] else 'none'})")
    return 0


def cmd_generate(args) -> int:
    import pandas as pd
    if args.n < 1 or args.temperature <= 0 or args.max_new_tokens < 1:
        raise ValueError("--n and --max-new-tokens must be >= 1 and --temperature > 0")
    model = _load(args.model, "policy", args.trust_remote_code)
    prompts = [p for p in args.prompt for _ in range(args.n)]
    texts = model.predict(pd.DataFrame({"prompt": prompts}), params={
        "temperature": float(args.temperature), "seed": int(args.seed), "max_new_tokens": int(args.max_new_tokens)})
    if args.json:
        print(json.dumps([{"prompt": p, "response": t} for p, t in zip(prompts, texts)], indent=1))
    else:
        for p, t in zip(prompts, texts):
            print(f"{p} -> {t}" if len(args.prompt) > 1 else t)
    return 0


def cmd_score(args) -> int:
    import pandas as pd
    model = _load(args.model, "reward", args.trust_remote_code)
    df = pd.DataFrame({"prompt": [args.prompt] * len(args.response), "response": args.response,
                       "ended": [not args.unfinished] * len(args.response)})
    scores = model.predict(df)
    if args.json:
        print(json.dumps([{"response": r, "score": float(s)} for r, s in zip(args.response, scores)], indent=1))
    else:
        for r, s in zip(args.response, scores):
            print(f"{float(s):+.4f}\t{r}")
    return 0


def cmd_lineage(args) -> int:
    from tasks.registry import connect, resolve
    connect()
    mv = resolve(args.model)
    tags = mv.tags or {}
    if args.json:
        print(json.dumps({"name": mv.name, "version": mv.version, "aliases": list(mv.aliases or []), "tags": tags},
                         indent=1))
        return 0
    print(f"{mv.name} v{mv.version} aliases: {', '.join(mv.aliases or []) or 'none'}")
    for k in sorted(tags):
        if k.startswith(("lineage.", "promotion.decision", "promotion.reason")) and k != "lineage.params":
            print(f"  {k} = {tags[k]}")
    commit = tags.get("lineage.git_commit") or "<commit>"
    print(f"reproduce: git checkout {commit} && dvc checkout && dvc repro {tags.get('lineage.stage', '')}".rstrip())
    return 0


def register(sub) -> None:
    p = sub.add_parser("promote", help="gate the challengers and move alias 'champion' where the gates pass")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--dry-run", action="store_true", help="measure and decide, change nothing")
    p.add_argument("--force", action="store_true", help="re-evaluate a challenger that was already decided")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.add_argument("--report", metavar="PATH", help="also write the report as JSON (e.g. metrics/promote.json)")
    p.set_defaults(fn=cmd_promote)

    r = sub.add_parser("rollback", help="point alias 'champion' back at the previous champion")
    r.add_argument("--model", default="rlhf-policy", help="registered model name (default: rlhf-policy)")
    r.set_defaults(fn=cmd_rollback)

    g = sub.add_parser("generate", help="sample responses from a policy (registry URI or local folder)")
    g.add_argument("--model", default="models:/rlhf-policy@champion")
    g.add_argument("--prompt", action="append", required=True, help="repeat for several prompts")
    g.add_argument("--n", type=int, default=1, help="responses per prompt")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--max-new-tokens", type=int, default=24)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--trust-remote-code", action="store_true", help="allow model code from the checkpoint")
    g.add_argument("--json", action="store_true")
    g.set_defaults(fn=cmd_generate)

    s = sub.add_parser("score", help="score responses to a prompt with a reward model (registry URI or folder)")
    s.add_argument("--model", default="models:/rlhf-reward-model@champion")
    s.add_argument("--prompt", required=True)
    s.add_argument("--response", action="append", required=True, help="repeat for several responses")
    s.add_argument("--unfinished", action="store_true", help="the responses were cut before end-of-sequence")
    s.add_argument("--trust-remote-code", action="store_true", help="allow model code from the checkpoint")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_score)

    lin = sub.add_parser("lineage", help="where a model version came from: commit, data and stage hashes, runs")
    lin.add_argument("--model", default="models:/rlhf-policy@champion")
    lin.add_argument("--json", action="store_true")
    lin.set_defaults(fn=cmd_lineage)
