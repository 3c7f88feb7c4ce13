"""Seed sweep: does the demo's learning hold for every seed? Runs reward, ppo and evaluate once per seed on the SAME
upstream outputs of a finished ``rlhf run`` (artifacts/models/sft, artifacts/preferences, artifacts/data,
data/corpus.jsonl) and prints every demo target per seed, then the mean, the worst seed and the seed-to-seed spread.

    python benchmarks/seeds.py --seeds 0-4 [--jobs 2] [--set ppo.kl_coef=0.1 ...] [--reuse-reward] [--out DIR]

Run from the project folder (or give --project). Per seed: reward.seed = ppo.seed = the seed; evaluate keeps its own
seed (the same held-out prompts and sampling for every seed). Nothing of the project's own is written: no stage
output, no dvc.lock, no MLflow run or registered model; each seed writes under ``<out>/seed-<s>/`` (reward, policy,
their ``.ckpt`` checkpoints, evaluate, metrics.json, log.txt), ``<out>`` = artifacts/seeds/<tag> by default.

``--set section.key=value`` (reward, ppo or evaluate; YAML values; the loader's checks) applies to every seed, so a
candidate change is swept without editing params.yaml. ``--reuse-reward`` runs only ppo and evaluate, on each seed's
reward model of an earlier sweep (``--reward-from``, default: this --out): for a change of ppo keys only.
Each seed runs in its own process (OMP_NUM_THREADS=--threads), ``--jobs`` at a time; its numbers do not depend on
--jobs. Exit status: 0 every seed meets every target, 1 a seed misses one (or failed), 2 a usage or config error.
The table goes to stdout (markdown), progress to stderr, everything to --json (default <out>/summary.json).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seeds_table import (STAGES, TARGETS, apply_sets, markdown, misses, parse_seeds, parse_sets,  # noqa: E402
                         seed_configs, seed_values, summarize)

from rlhf.config import ConfigError, load_params  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0-4", help='"0-4", "0,2,5" or "0-2,7" (default 0-4)')
    ap.add_argument("--project", default=".", help="the project folder (params.yaml, artifacts/); default .")
    ap.add_argument("--params", default="params.yaml", help="relative to --project")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override for every seed (repeatable), e.g. ppo.kl_coef=0.1")
    ap.add_argument("--stages", default=",".join(STAGES), help="stages to run, in order (default reward,ppo,evaluate)")
    ap.add_argument("--reuse-reward", action="store_true", help="= --stages ppo,evaluate: keep each seed's reward model")
    ap.add_argument("--reward-from", default=None, help="a sweep folder whose seed-<s>/reward models ppo uses "
                    "(default: --out); only when the reward stage does not run")
    ap.add_argument("--tag", default=None, help="names the default --out (default: base, or the --set overrides)")
    ap.add_argument("--out", default=None, help="default artifacts/seeds/<tag> (relative to --project)")
    ap.add_argument("--json", default=None, help="default <out>/summary.json")
    ap.add_argument("--jobs", type=int, default=1, help="seeds run at once, one process each (default 1)")
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each seed's process (default 1)")
    ap.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)   # run one seed in this process
    args = ap.parse_args(argv)
    args.stages = ("ppo", "evaluate") if args.reuse_reward else tuple(s.strip() for s in args.stages.split(",") if s.strip())
    bad = [s for s in args.stages if s not in STAGES]
    if bad or not args.stages or list(args.stages) != [s for s in STAGES if s in args.stages]:
        ap.error(f"--stages: a subsequence of {','.join(STAGES)}, in that order; got {','.join(args.stages)}")
    if args.reward_from and "reward" in args.stages:
        ap.error("--reward-from: only when the reward stage does not run (--reuse-reward or --stages ppo,evaluate)")
    if args.jobs < 1 or args.threads < 1:
        ap.error("--jobs and --threads must be >= 1")
    try:
        args.seed_list = parse_seeds(args.seeds)
        args.overrides = parse_sets(args.sets)
    except ValueError as e:
        ap.error(str(e))
    tag = args.tag or ("base" if not args.sets else re.sub(r"[^A-Za-z0-9._=+-]+", "-", "_".join(args.sets))[:80])
    args.out = Path(args.out or Path("artifacts") / "seeds" / tag)
    args.reward_from = Path(args.reward_from) if args.reward_from else args.out
    args.json = Path(args.json) if args.json else args.out / "summary.json"
    return args


def build_config(args):
    """params.yaml with the --set overrides (ConfigError on an unknown key, a bad value, a managed key)."""
    cfg = apply_sets(load_params(args.params), args.overrides, STAGES)
    stray = sorted(s for s in args.overrides if s not in args.stages)
    if stray:
        raise ConfigError(f"--set {stray[0]}.*: the {stray[0]} stage does not run (--stages {','.join(args.stages)})")
    return cfg


def seed_paths(args, seed: int) -> tuple[Path, Path]:
    return args.out / f"seed-{seed}", args.reward_from / f"seed-{seed}" / "reward"


def check_inputs(args, cfg) -> None:
    """The project's upstream outputs exist, and so do, for every seed, the outputs of the stages that do not run
    (checked before any process starts)."""
    for p in {cfg.reward.model_path, cfg.reward.data_dir, cfg.ppo.policy_path, cfg.ppo.prompts, cfg.evaluate.prompts,
              cfg.evaluate.sft_path}:
        if not Path(p).exists():
            raise ConfigError(f"{p}: not found in {Path.cwd()} (run the pipeline first: `rlhf run` / `make pipeline`)")
    for seed in args.seed_list:
        seed_dir, reward_dir = seed_paths(args, seed)
        need = [] if "reward" in args.stages else [reward_dir]
        need += [] if "ppo" in args.stages else [seed_dir / "policy"]
        for p in need:
            if not (p / "config.json").is_file():
                raise ConfigError(f"seed {seed}: {p} has no model (run the stage that makes it first, "
                                  f"or give --reward-from the folder of a sweep that ran reward)")


# -- one seed, in its own process --------------------------------------------------------------------------------
def run_seed(args, cfg, seed: int) -> dict:
    """Run the stages of one seed in this process; writes and returns <seed_dir>/metrics.json."""
    import importlib
    seed_dir, reward_dir = seed_paths(args, seed)
    cfgs = seed_configs(cfg, seed, seed_dir, reward_dir)
    out = {"seed": seed, "stages": list(args.stages), "metrics": {}, "seconds": {}}
    for stage in args.stages:
        t0 = time.perf_counter()
        print(f"seed {seed}: {stage} ...", flush=True)
        result = importlib.import_module(f"rlhf.stages.{stage}").run(cfgs[stage])    # the core: no MLflow, no registry
        out["metrics"][stage], out["seconds"][stage] = result.metrics, time.perf_counter() - t0
        print(f"seed {seed}: {stage} done in {out['seconds'][stage]:.1f} s: {result.metrics}", flush=True)
    write_text_atomic(seed_dir / "metrics.json", json.dumps(out, indent=1, default=float) + "\n")
    return out


def write_text_atomic(path: Path, text: str) -> None:
    """A killed worker leaves the old file or none, never half a JSON (rlhf.tempdirs.atomic_path)."""
    from rlhf.tempdirs import atomic_path
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


# -- the sweep ---------------------------------------------------------------------------------------------------
def worker_cmd(args, seed: int) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(seed), "--seeds", str(seed),
           "--params", args.params, "--stages", ",".join(args.stages), "--out", str(args.out),
           "--json", str(args.json), "--threads", str(args.threads)]
    if "reward" not in args.stages:
        cmd += ["--reward-from", str(args.reward_from)]
    for s in args.sets:
        cmd += ["--set", s]
    return cmd


def launch(args, seed: int, say) -> dict | None:
    """One seed in a subprocess of this script (stdout and stderr to <seed_dir>/log.txt); its metrics, or None."""
    seed_dir = seed_paths(args, seed)[0]
    seed_dir.mkdir(parents=True, exist_ok=True)
    (seed_dir / "metrics.json").unlink(missing_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    say(f"seed {seed}: start ({', '.join(args.stages)}) -> {seed_dir}")
    t0 = time.perf_counter()
    with open(seed_dir / "log.txt", "w") as log:
        rc = subprocess.call(worker_cmd(args, seed), stdout=log, stderr=subprocess.STDOUT, env=env)
    elapsed = time.perf_counter() - t0
    if rc != 0 or not (seed_dir / "metrics.json").is_file():
        tail = (seed_dir / "log.txt").read_text(errors="replace").strip().splitlines()[-5:]
        say(f"seed {seed}: FAILED (exit {rc}) after {elapsed:.1f} s; log {seed_dir / 'log.txt'}:\n    " + "\n    ".join(tail))
        return None
    say(f"seed {seed}: done in {elapsed:.1f} s")
    return {**json.loads((seed_dir / "metrics.json").read_text()), "elapsed_s": elapsed}


def sweep(args) -> dict[int, dict | None]:
    lock, t_start = threading.Lock(), time.perf_counter()

    def say(line: str) -> None:
        with lock:
            print(f"[{time.perf_counter() - t_start:7.1f} s] {line}", file=sys.stderr, flush=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {seed: pool.submit(launch, args, seed, say) for seed in args.seed_list}
        results = {seed: f.result() for seed, f in futures.items()}
    say(f"{len(args.seed_list)} seeds in {time.perf_counter() - t_start:.1f} s")
    return results


def report(args, results: dict[int, dict | None]) -> int:
    """Print the table, write the JSON; the exit status (0 all targets met by every seed, 1 otherwise)."""
    done = {s: r for s, r in results.items() if r is not None}
    failed = sorted(s for s, r in results.items() if r is None)
    per_seed = {s: seed_values(r["metrics"].get("evaluate", {})) for s, r in done.items()}
    lost = misses(per_seed, failed)
    print(markdown(per_seed, failed))
    print()
    print("every seed meets every target" if not lost else "MISSED:\n" + "\n".join(f"- {m}" for m in lost))
    summary = {"project": str(Path.cwd()), "params": args.params, "overrides": args.sets, "stages": list(args.stages),
               "out": str(args.out), "reward_from": str(args.reward_from), "seeds": args.seed_list, "failed": failed,
               "targets": [{"key": t.key, "label": t.label, "op": t.op, "threshold": t.threshold} for t in TARGETS],
               "per_seed": {str(s): {"targets": per_seed[s], **done[s]} for s in sorted(done)},
               "summary": summarize(per_seed), "misses": lost, "pass": not lost}
    write_text_atomic(args.json, json.dumps(summary, indent=1, default=float) + "\n")
    print(f"\n(per-seed metrics and summary: {args.json})", file=sys.stderr)
    return 1 if lost else 0


def main(argv=None) -> int:
    args = parse_args(argv)
    os.chdir(args.project)
    try:
        cfg = build_config(args)
        if args.worker is None:
            check_inputs(args, cfg)
    except ConfigError as e:
        print(f"seeds: {e}", file=sys.stderr)
        return 2
    if args.worker is not None:
        run_seed(args, cfg, args.worker)
        return 0
    return report(args, sweep(args))


if __name__ == "__main__":
    sys.exit(main())
