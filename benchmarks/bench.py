"""Issue 8: our pipeline against TRL on the same work, measured side by side in ONE run.

    .venv/bin/python benchmarks/bench.py [--threads 2] [--episodes 1280] [--repeats 1] [--pipeline] [--only ...]

Every measured stage runs in its own subprocess (ours with the project's venv, TRL's with benchmarks/.venv-trl or
.venv-trl112), with the same thread count, on the same models, tokens and sizes; peak memory is each process's RSS
high-water mark as the kernel reports it to its parent (os.wait4 -> ru_maxrss). Ours and TRL's alternate (ours
first on even repeats, TRL first on odd ones) so that load from other processes on a shared machine hits both.
Every ratio printed is ours/TRL of the quantity named; the target column says which side of 1 is good.

Artifacts: ``--artifacts DIR`` (an artifacts/ folder of a pipeline run), else the working tree's artifacts/ when it
holds models/{base,sft,reward} and preferences/, else a throwaway project under --work is built and run up to the
reward stage (`dvc repro reward`), or fully when --pipeline is given (then its run is also the timed pipeline run).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import project  # noqa: E402
from project import env, make_project, project_env, sh, snapshot  # noqa: E402
from tables import report  # noqa: E402

OUR_PY = ROOT / ".venv" / "bin" / "python"
# Our PPO in the comparison: like TRL's PPO, a separate critic initialised from the reward model; it trains in the
# first 2 of the 4 epochs (ppo.value_epochs). params.yaml's demo keeps the shared value head (faster, more diverse,
# less gold per episode); it runs too, as side "ours-shared".
OURS_PPO_SET = ["value_model=separate", "value_epochs=2"]
# Equal work (issue 18): the critic trains in all 4 epochs, as TRL's PPO does; side "ours-equal".
EQUAL_PPO_SET = ["value_model=separate", "value_epochs=4"]
TRL_PY = HERE / ".venv-trl" / "bin" / "python"
TRL112_PY = HERE / ".venv-trl112" / "bin" / "python"


# -- running one measured process ---------------------------------------------------------------------------------
def measured(cmd: list[str], log: Path, threads: int, cwd: Path = ROOT, extra_env: dict | None = None) -> dict:
    """Run ``cmd``; returns {wall_s, peak_rss_mb (kernel's ru_maxrss of that child alone), rc}."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, env=env(threads, **(extra_env or {})))
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
    out = {"wall_s": time.perf_counter() - t0, "peak_rss_mb": ru.ru_maxrss / 1024, "rc": p.returncode}
    if p.returncode != 0:
        tail = log.read_text()[-4000:]
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({p.returncode}); log {log}:\n{tail}")
    return out


def run_side(name: str, py: Path, script: str, command: str, a, work: Path, art: Path, extra: list[str]) -> dict:
    out = work / "results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [str(py), str(HERE / script), command, "--artifacts", str(art), "--work", str(work), "--out", str(out),
           "--threads", str(a.threads), *extra]
    print(f"  running {name} ...", flush=True)
    proc = measured(cmd, work / "logs" / f"{name}.log", a.threads)
    res = json.loads(out.read_text())
    res.update(proc)
    print(f"  {name}: {summary(res)}", flush=True)
    return res


def summary(r: dict) -> str:
    keys = ("tokens_per_s", "pairs_per_s", "episodes_per_s", "s_per_iter", "peak_rss_mb", "wall_s")
    return ", ".join(f"{k}={r[k]:.4g}" for k in keys if k in r)


# -- artifacts ------------------------------------------------------------------------------------------------------
def have_artifacts(art: Path) -> bool:
    return all((art / p).exists() for p in ("models/base", "models/sft", "models/reward/model.safetensors",
                                            "preferences/rankings_train.jsonl", "data/prompts_ppo.jsonl"))


def find_artifacts(a, work: Path) -> tuple[Path, Path | None]:
    if a.artifacts:
        return Path(a.artifacts).resolve(), None
    if have_artifacts(ROOT / "artifacts") and not a.pipeline:
        return ROOT / "artifacts", None
    proj = work / "project"
    if a.pipeline or not have_artifacts(proj / "artifacts"):
        print(f"building a throwaway project in {proj} ...", flush=True)
        make_project(proj, a.threads, project.CODE_DIR)
        if not a.pipeline:
            sh(["dvc", "repro", "reward"], proj, a.threads, **project_env(proj))
    return proj / "artifacts", proj


# -- pipeline and orchestration overhead --------------------------------------------------------------------------------
def measure_pipeline(proj: Path, a, work: Path) -> dict:
    """`make pipeline` end to end in the throwaway project (stage compute timed by hooks/sitecustomize.py), the
    parent MLflow run's seconds/<stage>, then the no-op `dvc repro` and no-op `make pipeline`."""
    timings = work / "stage_timings.jsonl"
    timings.unlink(missing_ok=True)
    extra = {**project_env(proj), "RLHF_BENCH_TIMINGS": str(timings), "PYTHONPATH": str(HERE / "hooks")}
    # The project's venv is shared with everyone working in the tree: `-o` tells make never to remake its install
    # marker (else `$(VENV)/.installed: pyproject.toml` would re-run `pip install -e .` FROM THE THROWAWAY PROJECT when
    # pyproject.toml is newer than the marker, re-pointing the shared editable install). A dry run checks it first.
    venv = ROOT / ".venv"
    make = ["make", "pipeline", f"VENV={venv}", "-o", f"{venv}/.installed"]
    plan = subprocess.run([*make, "-n"], cwd=proj, capture_output=True, text=True, env=env(a.threads, **extra)).stdout
    if "pip install" in plan or "-m venv" in plan:
        raise RuntimeError(f"`make pipeline` would (re)install the shared venv; refusing:\n{plan}")
    print("  make pipeline (full run) ...", flush=True)
    full = measured(make, work / "logs" / "make_pipeline.log", a.threads, proj, extra)
    stages = [json.loads(line) for line in timings.read_text().splitlines() if line.strip()]
    compute: dict[str, float] = {}
    for s in stages:                       # a stage once; the promotion gates' evaluations possibly several times
        compute[s["stage"]] = compute.get(s["stage"], 0.0) + s["seconds"]
    gate = compute.pop("promote-gate-evaluation", 0.0)
    parent = parent_stage_seconds(proj / "mlflow.db")
    noop_dvc = [measured(["dvc", "repro"], work / "logs" / f"dvc_repro_noop{i}.log", a.threads, proj,
                         project_env(proj))["wall_s"] for i in range(3)]
    noop_make = measured(make, work / "logs" / "make_pipeline_noop.log", a.threads, proj, extra)["wall_s"]
    status = subprocess.run(["dvc", "status"], cwd=proj, capture_output=True, text=True, env=env(a.threads, **project_env(proj)))
    wall = full["wall_s"]
    sc = sum(compute.values())
    # Orchestration = wall - compute, where compute = the stages' own compute + the promotion gates' model
    # evaluations (sampling/scoring with challenger and champion: model work, though not a dvc.yaml stage).
    return {"make_pipeline_s": wall, "peak_rss_mb": full["peak_rss_mb"], "stage_compute_s": compute,
            "stage_compute_total_s": sc, "gate_evaluation_s": gate,
            "orchestration_s": wall - sc - gate, "orchestration_share": (wall - sc - gate) / wall,
            "orchestration_incl_gate_evaluation_share": (wall - sc) / wall,
            "parent_seconds": parent, "parent_total_s": sum(parent.values()),
            "flow_overhead_s": wall - sum(parent.values()),
            "dvc_repro_noop_s": statistics.median(noop_dvc), "dvc_repro_noop_runs": noop_dvc,
            "make_pipeline_noop_s": noop_make, "dvc_status_after": status.stdout.strip()[-300:]}


def parent_stage_seconds(db: Path) -> dict:
    """seconds/<stage> logged on the pipeline's parent MLflow run (flows/pipeline.py)."""
    if not db.exists():
        return {}
    con = sqlite3.connect(str(db))
    try:
        rows = con.execute(
            "SELECT m.key, m.value FROM metrics m JOIN tags t ON m.run_uuid = t.run_uuid "
            "WHERE t.key = 'mlflow.runName' AND t.value = 'rlhf_pipeline' AND m.key LIKE 'seconds/%'").fetchall()
    finally:
        con.close()
    return {k.split("/", 1)[1]: v for k, v in rows}


# -- the machine ---------------------------------------------------------------------------------------------------
def machine(threads: int) -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    versions = {}
    for name, py in (("ours", OUR_PY), ("trl", TRL_PY), ("trl112", TRL112_PY)):
        if py.exists():
            code = ("import importlib.metadata as m; print({p: m.version(p) for p in "
                    "('torch','transformers','accelerate','datasets','trl') if __import__('importlib').util.find_spec(p)})")
            versions[name] = subprocess.run([str(py), "-c", code], capture_output=True, text=True).stdout.strip()
    return {"nproc": os.cpu_count(), "cpu": cpu, "torch_threads": threads, "python": platform.python_version(),
            "load_avg_start": os.getloadavg(), "versions": versions}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="/tmp/rlhf-bench")
    ap.add_argument("--artifacts")
    ap.add_argument("--episodes", type=int, default=1280, help="PPO/RLOO episode budget, the same for every side")
    ap.add_argument("--sft-steps", type=int, default=0, help="default: one epoch of the SFT set")
    ap.add_argument("--reward-steps", type=int, default=0, help="default: one epoch of the rankings")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each PPO/RLOO measurement")
    ap.add_argument("--short-repeats", type=int, default=3, help="runs of each SFT/reward measurement")
    ap.add_argument("--ablation-rounds", type=int, default=7, help="rotated A/B rounds of the ablations")
    ap.add_argument("--only", default="sft,reward,ppo,rloo,gold,ablations",
                    help="comma list of: sft, reward, ppo, rloo, gold, ablations")
    ap.add_argument("--code", choices=["head", "worktree"], default="head",
                    help="measure the committed code (default) or the working tree as it is at the start")
    ap.add_argument("--pipeline", action="store_true", help="also time `make pipeline` and a no-op `dvc repro` (minutes)")
    ap.add_argument("--ppo-set", action="append", default=[], metavar="KEY=VALUE",
                    help="a ppo: key for every side (ours via --set, TRL's through the workload's manifest), e.g. "
                         "sampling={...} from size_artifacts.py's bench_args.txt")
    ap.add_argument("--json", help="raw results (default: WORK/results.json)")
    ap.add_argument("--markdown", help="the tables (default: WORK/results.md)")
    ap.add_argument("--report", metavar="RESULTS_JSON", help="only print the tables of an earlier run's results.json")
    ap.add_argument("--pipeline-from", metavar="RESULTS_JSON",
                    help="with --report: take the pipeline figures from another run's results.json")
    return ap.parse_args(argv)


def print_report(a) -> int:
    """--report: the tables of an earlier run (with --pipeline-from, that run's pipeline figures instead)."""
    res = json.loads(Path(a.report).read_text())
    if a.pipeline_from:
        res["pipeline"] = json.loads(Path(a.pipeline_from).read_text())["pipeline"]
    print(report(res))
    return 0


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.report:
        return print_report(a)
    only = set(a.only.split(","))
    work = Path(a.work).resolve()
    a.json, a.markdown = a.json or str(work / "results.json"), a.markdown or str(work / "results.md")
    (work / "logs").mkdir(parents=True, exist_ok=True)
    res: dict = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine(a.threads),
                 "runs": {}, "settings": vars(a)}
    project.CODE_DIR = snapshot(work / "code", a.code)
    res["code"] = {"mode": a.code, "revision": (project.CODE_DIR / "REVISION").read_text().strip()}
    print(json.dumps(res["machine"], indent=1), json.dumps(res["code"]), flush=True)
    art, proj = find_artifacts(a, work)
    if a.pipeline:
        res["pipeline"] = measure_pipeline(proj, a, work)
        print(json.dumps(res["pipeline"], indent=1), flush=True)
    print(f"artifacts: {art}", flush=True)
    corpus = (art.parent / "data" / "corpus.jsonl") if (art.parent / "data" / "corpus.jsonl").exists() \
        else ROOT / "data" / "corpus.jsonl"
    sh([str(OUR_PY), str(HERE / "ours.py"), "prepare", "--artifacts", str(art), "--work", str(work),
        *set_args(a.ppo_set)], ROOT, a.threads)
    if only & {"ppo", "rloo"}:
        res["matmul"] = matmul_rate(art, work, a.threads)
    res["runs"] = run_comparisons(a, work, art, only)
    if "gold" in only:
        res["gold"] = gold_scores(work, corpus, a.threads)
    if "ablations" in only:
        res["ablations"] = run_ablations(a, work, art)
    res["load_avg_end"] = os.getloadavg()
    Path(a.json).write_text(json.dumps(res, indent=1, default=str) + "\n")
    md = report(res)
    Path(a.markdown).write_text(md + "\n")
    print("\n" + md)
    return 0


def set_args(kvs: list[str]) -> list[str]:
    """``["k=v", ...]`` -> ``["--set", "k=v", ...]`` (ours.py's ppo: overrides)."""
    return [x for kv in kvs for x in ("--set", kv)]


def matmul_rate(art: Path, work: Path, threads: int) -> dict:
    """The machine's fp32 matmul rate at the policy's shapes and a PPO mini-batch's tokens (benchmarks/mfu.py, its own
    process, the benchmark's thread count), with the mean prompt length: what the report's MFU rows divide by."""
    manifest = json.loads((work / "manifest.json").read_text())
    rows = manifest["ppo"]["rollout_batch_size"] // manifest["ppo"]["num_mini_batches"]
    tokens = rows * (manifest["mean_prompt_tokens"] + manifest["ppo"]["sampling"]["max_new_tokens"])
    out = work / "matmul.json"
    sh([str(OUR_PY), str(HERE / "mfu.py"), "--model", str(art / "models" / "sft"), "--tokens", str(int(tokens)),
        "--threads", str(threads), "--json", str(out)], ROOT, threads)
    return {**json.loads(out.read_text()), "mean_prompt_tokens": manifest["mean_prompt_tokens"],
            "ppo_epochs": manifest["ppo"]["ppo_epochs"]}


# -- ours against TRL, side by side ---------------------------------------------------------------------------------
def comparison_plans(a) -> dict:
    """stage -> the sides that run it: (side, python, script, command, extra arguments)."""
    common = set_args(a.ppo_set)                # ours; TRL reads them from the workload's manifest
    ours_sets, equal_sets = set_args(a.ppo_set + OURS_PPO_SET), set_args(a.ppo_set + EQUAL_PPO_SET)
    return {
        "sft": [("ours", OUR_PY, "ours.py", "sft", ["--steps", str(a.sft_steps)]),
                ("trl", TRL_PY, "trl_runs.py", "sft", ["--steps", str(a.sft_steps)])],
        "reward": [("ours", OUR_PY, "ours.py", "reward", ["--steps", str(a.reward_steps)]),
                   ("trl", TRL_PY, "trl_runs.py", "reward", [])],
        "ppo": [("ours", OUR_PY, "ours.py", "ppo", ["--episodes", str(a.episodes), *ours_sets]),
                ("trl", TRL112_PY, "trl_runs.py", "ppo", ["--episodes", str(a.episodes)]),
                ("ours-shared", OUR_PY, "ours.py", "ppo", ["--episodes", str(a.episodes), *common]),
                ("ours-equal", OUR_PY, "ours.py", "ppo", ["--episodes", str(a.episodes), *equal_sets])],
        "rloo": [("trl", TRL_PY, "trl_runs.py", "rloo", ["--episodes", str(a.episodes)])],
    }


def run_comparisons(a, work: Path, art: Path, only: set) -> dict:
    """Every side of every stage in ``only``, repeated; the sides alternate who goes first. Returns
    stage -> side -> [result of each run]."""
    plans, runs = comparison_plans(a), {}
    for rep in range(max(a.repeats, a.short_repeats)):
        for stage in ("sft", "reward", "ppo", "rloo"):
            if stage not in only or rep >= (a.short_repeats if stage in ("sft", "reward") else a.repeats):
                continue
            order = plans[stage] if rep % 2 == 0 else plans[stage][::-1]
            for side, py, script, cmd, extra in order:
                name = f"{stage}-{side}-{rep}"
                if stage == "reward" and side == "trl":      # the same number of pairs as our run just did / will do
                    extra = ["--pairs", str(reward_pairs(work, a))]
                samples = work / "samples" / f"{name}.jsonl"
                samples.parent.mkdir(parents=True, exist_ok=True)
                if stage in ("ppo", "rloo"):      # run r of every side: seed r (seed spread, not one seed r times)
                    extra = [*extra, "--samples", str(samples),
                             *(["--set", f"seed={rep}"] if side.startswith("ours") else ["--seed", str(rep)])]
                r = run_side(name, py, script, cmd, a, work, art, extra)
                runs.setdefault(stage, {"ours": [], "trl": []}).setdefault(side, []).append(r)
        if "rloo" in runs and "ppo" in runs:
            runs["rloo"]["ours"] = runs["ppo"]["ours"]      # the same PPO runs, the same budget
    return runs


def gold_scores(work: Path, corpus: Path, threads: int) -> dict:
    """The gold judge on every PPO/RLOO run's samples: per run, and the mean over runs, by side."""
    gold = {}
    for label, pattern in (("ours PPO (separate critic, value_epochs 2)", "ppo-ours-[0-9]*"),
                           ("ours PPO (shared value head: the demo's params.yaml)", "ppo-ours-shared-*"),
                           ("TRL 1.12 PPO", "ppo-trl-*"), ("TRL RLOO", "rloo-trl-*")):
        files = sorted((work / "samples").glob(pattern + ".jsonl"))
        if not files:
            continue
        per_run = []
        for f in files:
            out = work / "results" / f"gold-{f.stem}.json"
            sh([str(OUR_PY), str(HERE / "ours.py"), "gold", "--samples", str(f), "--corpus", str(corpus),
                "--out", str(out)], ROOT, threads)
            per_run.append(json.loads(out.read_text()))
        gold[label] = {"runs": per_run, **{k: statistics.mean(r[k] for r in per_run) for k in (
            "gold_first_k", "gold_last_k", "gold_gain_per_1k_episodes", "gold_gain_per_1k_episodes_se",
            "gold_last_k_se", "iterations")}}
    return gold


def run_ablations(a, work: Path, art: Path) -> dict:
    """ablations.py in its own process: what each optimisation of ours buys."""
    out = work / "results" / "ablations.json"
    print("  running ablations (A/B in one process) ...", flush=True)
    proc = measured([str(OUR_PY), str(HERE / "ablations.py"), "--artifacts", str(art), "--work", str(work),
                     "--rounds", str(a.ablation_rounds), "--threads", str(a.threads), "--out", str(out),
                     *set_args(OURS_PPO_SET)],
                    work / "logs" / "ablations.log", a.threads)
    return {**json.loads(out.read_text()), "wall_s": proc["wall_s"]}


def reward_pairs(work: Path, a) -> int:
    """Pairs our reward run trains on: its steps x (groups per step) x (pairs per group), from the manifest."""
    m = json.loads((work / "manifest.json").read_text())
    per_epoch = -(-m["n_groups"] // m["reward_groups_per_step"])
    steps = a.reward_steps or per_epoch
    return round(min(steps * m["reward_groups_per_step"], steps / per_epoch * m["n_groups"]) * m["pairs_per_group"])


if __name__ == "__main__":
    sys.exit(main())
