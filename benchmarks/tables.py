"""The tables of a benchmark run (bench.py --report): ratios ours/TRL, per-run figures, the gold judge, the
ablations and the pipeline timings, as markdown."""
from __future__ import annotations

import statistics

def med(runs: list[dict], key: str):
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def welch_interval(a: list[float], b: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """mean(a) - mean(b) and its two-sided ``level`` interval (Welch's t, unequal variances, from the runs' spread)."""
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    d, se = statistics.mean(a) - statistics.mean(b), (va + vb) ** 0.5
    df = (va + vb) ** 2 / ((va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)) or 1e-300)
    try:
        from scipy.stats import t as student_t       # installed with the project's stack; normal quantile if not
        q = float(student_t.ppf(0.5 + level / 2, df))
    except ImportError:
        q = statistics.NormalDist().inv_cdf(0.5 + level / 2)
    return d, d - q * se, d + q * se


def ratio(x, y):
    return x / y if x and y else None


def fmt(v, spec=".3g"):
    return "n/a" if v is None else format(v, spec)


def report(res: dict) -> str:
    """The figures as a Markdown table (printed and written to --markdown)."""
    L = []
    add = L.append
    machine_line(res, add)
    speed_table(res["runs"], add)
    if res.get("matmul") and res["runs"].get("ppo"):
        add("")
        mfu_table(res, add)
    if res.get("gold", {}):
        gold_table(res["gold"], add)
    ab = res.get("ablations") or {}
    if ab.get("ppo", {}).get("speedup_is") or ab.get("sft", {}).get("speedup_is"):
        ablation_table(ab, add)
    elif ab.get("ppo"):                     # an earlier run's format: ablations of PPO only, speedup = default/variant
        ppo_slowdown_table(ab["ppo"], add)
    if res.get("proposals"):                # an earlier run's format (before the proposals were applied to the core)
        proposals_table(res["proposals"], add)
    if res.get("pipeline"):
        pipeline_table(res["pipeline"], add)
    return "\n".join(L)


def machine_line(res: dict, add) -> None:
    m = res["machine"]
    add(f"Machine: {m['nproc']} CPUs ({m['cpu']}), torch threads {m['torch_threads']} per process, "
        f"load average at start {tuple(round(x, 2) for x in m['load_avg_start'])}, "
        f"at end {tuple(round(x, 2) for x in res.get('load_avg_end', (0, 0, 0)))}.")
    add("")


def speed_row(add, label, ours, trl, target=None, spec=".3g", goal=None, runs=None) -> None:
    """One row of the ours-vs-TRL table: both medians, their ratio, the per-run ratios (``runs`` = (our runs, TRL
    runs, key): the i-th run of each side, run side by side) and whether the ratio meets ``goal``."""
    r = ratio(ours, trl)
    met = "" if goal is None or r is None else ("yes" if goal(r) else "NO")
    per = ""
    if runs:
        o, t, key = runs
        per = ", ".join(fmt(ratio(x.get(key), y.get(key)), ".2f") for x, y in zip(o, t))
    add(f"| {label} | {fmt(ours, spec)} | {fmt(trl, spec)} | {fmt(r, '.2f')} | {per} | {target or ''} | {met} |")


def speed_table(R: dict, add) -> None:
    """SFT and reward throughput, then PPO against TRL's PPO and RLOO, phase by phase."""
    add("| measure (median over runs) | ours | TRL | ours/TRL | per-run ratios | target | met |")
    add("|---|---|---|---|---|---|---|")
    for stage, label, unit in (("sft", "SFT", "tokens"), ("reward", "reward", "pairs")):
        if stage not in R:
            continue
        o, t = R[stage]["ours"], R[stage]["trl"]
        speed_row(add, f"{label} {unit}/s", med(o, f"{unit}_per_s"), med(t, f"{unit}_per_s"), ">= 1.2x",
                  goal=lambda r: r >= 1.2, runs=(o, t, f"{unit}_per_s"))
        speed_row(add, f"  {label} {unit} per CPU-second", per_cpu(o, unit), per_cpu(t, unit))
        speed_row(add, f"{label} peak RSS (MiB, max over runs)", max_of(o), max_of(t), "<= 1.0x",
                  goal=lambda r: r <= 1.0)
    for key, name, target, goal, equal_goal in (
            ("ppo", "TRL 1.12 PPO", ">= 1.5x", lambda r: r >= 1.5, (">= 1.5x", lambda r: r >= 1.5)),
            ("rloo", "TRL RLOO", "> 1.0x", lambda r: r > 1.0, (">= 1.2x", lambda r: r >= 1.2))):
        if key in R:
            policy_rows(R[key]["ours"], R[key]["trl"], name, target, goal, R.get("ppo", {}).get("ours-shared"), add,
                        R.get("ppo", {}).get("ours-equal"), equal_goal)


def policy_rows(o: list, t: list, name: str, target: str, goal, shared: list | None, add,
                equal: list | None = None, equal_goal=None) -> None:
    """Our PPO runs ``o`` against TRL's runs ``t`` (of the trainer ``name``): speed, then each phase's time; with
    ``equal`` (ours with the critic in every epoch, TRL's work) its speed first, against ``equal_goal``."""
    row = lambda *args, **kw: speed_row(add, *args, **kw)  # noqa: E731
    if equal:
        row(f"PPO episodes/s at equal work (critic every epoch) vs {name}", med(equal, "episodes_per_s"),
            med(t, "episodes_per_s"), equal_goal[0], goal=equal_goal[1], runs=(equal, t, "episodes_per_s"))
        row("  peak RSS at equal work (MiB)", max_of(equal), max_of(t), "<= 1.0x", goal=lambda r: r <= 1.0)
    row(f"PPO episodes/s vs {name}", med(o, "episodes_per_s"), med(t, "episodes_per_s"), target, goal=goal,
        runs=(o, t, "episodes_per_s"))
    row("  episodes per CPU-second", per_cpu(o, "episodes"), per_cpu(t, "episodes"))
    po, pt = pct_iter(o, 0.2), pct_iter(t, 0.2)
    B = o[0]["episodes"] / o[0]["iterations"] if o else 64
    row("  episodes/s at the 20th-percentile iteration time", B / po if po else None, B / pt if pt else None,
        target, goal=goal)
    row(f"  s/iteration (vs {name})", med(o, "s_per_iter"), med(t, "s_per_iter"))
    row("    generation s", med(o, "generation_s"), med(t, "generation_s"))
    row("    scoring s", med(o, "scoring_s"), med(t, "scoring_s"))
    so, st = split_med(o), split_med(t)
    for part in sorted(set(so) | set(st)):
        row(f"      {part} forward s", so.get(part), st.get(part))
    row("    optimisation s", med(o, "optimization_s"), med(t, "optimization_s"))
    row("  rollout tokens/s", med(o, "rollout_tokens_per_s"), med(t, "rollout_tokens_per_s"))
    row("  decode steps per rollout", med(o, "decode_steps"), med(t, "decode_steps"))
    row("  generation ms per decode step", med(o, "generation_ms_per_step"), med(t, "generation_ms_per_step"))
    row("  mean response tokens", med(o, "response_length"), med(t, "response_length"))
    row("  peak RSS (MiB)", max_of(o), max_of(t), "<= 1.0x", goal=lambda r: r <= 1.0)
    if shared:
        row(f"  ours with the shared value head (the demo's params.yaml), episodes/s vs {name}",
            med(shared, "episodes_per_s"), med(t, "episodes_per_s"), runs=(shared, t, "episodes_per_s"))


def side_work(stage: str, side: str, run: dict, ppo_epochs: int) -> tuple[int, int]:
    """(epochs a separate critic trains in, forwards in scoring) of one side, from what it ran: ours' critic epochs
    are its ``value_epochs`` override (0 or absent: every epoch); the shared head has no second trunk and takes its
    values with the sampler's states (2 scoring forwards: reference, reward); TRL's PPO trains its critic in every
    epoch, RLOO has none (3 forwards: policy or critic, reference, reward)."""
    if side == "trl":
        return (ppo_epochs if stage == "ppo" else 0), 3
    sets = dict(o.split("=", 1) for o in run.get("overrides") or [])
    if sets.get("value_model") != "separate":
        return 0, 2
    return int(sets.get("value_epochs", 0)) or ppo_epochs, 3


def mfu_table(res: dict, add) -> None:
    """Model FLOPs utilisation per PPO phase and side (benchmarks/mfu.py): analytic FLOPs of the phase per iteration
    / its median seconds / the machine's matmul rate measured in the same run."""
    from mfu import phase_flops
    m, R = res["matmul"], res["runs"]
    labels = {"ours": "ours (value_epochs 2)", "ours-shared": "ours (shared value head)",
              "ours-equal": "ours (equal work)", "trl": "TRL 1.12 PPO"}
    sides = [("ppo", k, labels.get(k, k), runs) for k, runs in R.get("ppo", {}).items()]
    sides += [("rloo", "trl", "TRL RLOO", R["rloo"]["trl"])] if "rloo" in R else []
    add(f"fp32 matmul rate at the policy's shapes: {m['gflops']:.0f} GFLOP/s ({m['threads']} threads, {m['tokens']} "
        f"rows; {m['model']['n_params'] / 1e6:.2f}M parameters, mean prompt {m['mean_prompt_tokens']:.1f} tokens)")
    add("")
    add("| side | phase | GFLOP per iteration | s per iteration | GFLOP/s | MFU (of the matmul rate) |")
    add("|---|---|---|---|---|---|")
    for stage, side, label, runs in sides:
        if not runs:
            continue
        r0 = runs[0]
        critic, scoring = side_work(stage, side, r0, m["ppo_epochs"])
        flops = phase_flops(m["model"]["n_params"], r0["episodes"] // r0["iterations"], m["mean_prompt_tokens"],
                            med(runs, "response_length"), m["ppo_epochs"], critic, scoring)
        for phase in ("generation", "scoring", "optimization"):
            sec = med(runs, f"{phase}_s")
            rate = flops[phase] / sec / 1e9 if sec else None
            add(f"| {label} | {phase} | {flops[phase] / 1e9:.1f} | {fmt(sec)} | {fmt(rate)} | "
                f"{fmt(rate / m['gflops'] if rate else None, '.0%')} |")


def gold_table(g: dict, add) -> None:
    """The gold judge's scores of every side's samples, and the interval on ours - TRL's gain over seeds."""
    add("")
    add("| gold judge (same episodes; mean over runs) | start (first 20%) | end (last 20%) +- se | "
        "gain per 1000 episodes (slope) +- se | per run (run r = seed r) |")
    add("|---|---|---|---|---|")
    for name, v in g.items():
        add(f"| {name} ({len(v.get('runs', [])) or 1} run(s), {int(v.get('iterations', 0))} iterations) | "
            f"{fmt(v.get('gold_first_k'), '.3f')} | {fmt(v.get('gold_last_k'), '.3f')} +- "
            f"{fmt(v.get('gold_last_k_se'), '.3f')} | {fmt(v.get('gold_gain_per_1k_episodes'), '+.3f')} +- "
            f"{fmt(v.get('gold_gain_per_1k_episodes_se'), '.3f')} | "
            f"{', '.join(fmt(r.get('gold_gain_per_1k_episodes'), '.3f') for r in v.get('runs', []))} |")
    gains = {name: [r["gold_gain_per_1k_episodes"] for r in v.get("runs", [])] for name, v in g.items()}
    ours = next((x for n, x in gains.items() if n.startswith("ours PPO (separate")), None)
    trl = gains.get("TRL 1.12 PPO")
    if ours and trl and min(len(ours), len(trl)) >= 2:
        d, lo, hi = welch_interval(ours, trl)
        add("")
        add(f"Gold gain per 1000 episodes, ours (separate critic) - TRL 1.12 PPO: {d:+.3f}, 95% interval "
            f"[{lo:+.3f}, {hi:+.3f}] (Welch, {len(ours)} and {len(trl)} seeds; the seed-to-seed spread, not the "
            f"within-run se): {d / statistics.mean(trl):+.1%} of TRL's gain.")


def ppo_slowdown_table(ab: dict, add) -> None:
    """An earlier run's ablations (PPO only, speedup = default time / variant time)."""
    add("")
    add(f"Ablations: what each existing optimisation buys (ours, A/B in one process, {ab.get('rounds', '')} "
        "rotated rounds, median s per PPO iteration phase; slowdown = variant time / default time):")
    add("")
    add("| variant (one optimisation off) | generation s | scoring s | optimisation s | iteration s | decode steps | "
        "slowdown |")
    add("|---|---|---|---|---|---|---|")
    for name, v in ab.get("variants", {}).items():
        add(f"| {name} | {fmt(v.get('generation_s'), '.3f')} | {fmt(v.get('scoring_s'), '.3f')} | "
            f"{fmt(v.get('optimization_s'), '.3f')} | {fmt(v.get('iteration_s'), '.3f')} | "
            f"{fmt(v.get('decode_steps'), '.1f')} | {fmt(inv(v.get('speedup')), '.2f')}x |")


def proposals_table(pr: dict, add) -> None:
    """An earlier run's proposed core speed-ups (before they were applied to the core)."""
    add("")
    add(f"Proposed core speed-ups (an earlier run, before they were applied), A/B on the same process "
        f"({pr.get('ppo', pr.get('sft', {})).get('rounds', '')} rotated rounds, median; speed-up = default time / "
        "variant time):")
    add("")
    add("| SFT variant | s per 40 steps | speed-up |")
    add("|---|---|---|")
    for name, v in pr.get("sft", {}).get("variants", {}).items():
        add(f"| {name} | {fmt(v.get('median_s'), '.3f')} | {fmt(v.get('speedup'), '.2f')}x |")
    add("")
    add("| PPO variant | generation s | scoring s | optimisation s | iteration s | speed-up |")
    add("|---|---|---|---|---|---|")
    for name, v in pr.get("ppo", {}).get("variants", {}).items():
        cell = lambda k: f"{fmt(v.get(k + '_s'), '.3f')} ({fmt(v.get(k + '_speedup'), '.2f')}x)"  # noqa: E731
        add(f"| {name} | {cell('generation')} | {cell('scoring')} | {cell('optimization')} | "
            f"{fmt(v.get('iteration_s'), '.3f')} | {fmt(v.get('speedup'), '.2f')}x |")


def pipeline_table(p: dict, add) -> None:
    """`make pipeline` end to end: the stages' compute against the orchestration around it; the no-op runs."""
    add("")
    add("| pipeline | seconds | target | met |")
    add("|---|---|---|---|")
    add(f"| `make pipeline` end to end | {p['make_pipeline_s']:.1f} | | |")
    add(f"| stages' own compute (sum) | {p['stage_compute_total_s']:.1f} | | |")
    if "gate_evaluation_s" in p:
        add(f"| promotion gates' model evaluation (sampling/scoring, not a stage) | {p['gate_evaluation_s']:.1f} | | |")
    add(f"| orchestration overhead | {p['orchestration_s']:.1f} ({100 * p['orchestration_share']:.1f}%) | <= 10% | "
        f"{'yes' if p['orchestration_share'] <= 0.10 else 'NO'} |")
    if "orchestration_incl_gate_evaluation_share" in p:
        add(f"| ... counting the gates' evaluation as overhead too | "
            f"{100 * p['orchestration_incl_gate_evaluation_share']:.1f}% | | |")
    add(f"| ... of which outside the flow's stage tasks (wall - sum seconds/<stage>) | {p['flow_overhead_s']:.1f} | | |")
    add(f"| no-op `dvc repro` (median of 3) | {p['dvc_repro_noop_s']:.1f} | < 10 s | "
        f"{'yes' if p['dvc_repro_noop_s'] < 10 else 'NO'} |")
    add(f"| no-op `make pipeline` | {p['make_pipeline_noop_s']:.1f} | | |")
    add("")
    add("Per stage (compute / task incl. tracking): " + ", ".join(
        f"{s} {p['stage_compute_s'].get(s, 0):.1f}/{p['parent_seconds'].get(s, 0):.1f}" for s in p["parent_seconds"]))


def inv(x):
    return 1 / x if x else None


def ablation_table(ab: dict, add) -> None:
    """ablations.py's results: one row per variant (one optimisation switched off); each ratio is variant time /
    default time, i.e. what that optimisation buys (> 1: it helps)."""
    sft, ppo = ab.get("sft", {}).get("variants", {}), ab.get("ppo", {}).get("variants", {})
    rounds = ab.get("ppo", ab.get("sft", {})).get("rounds", "")
    add("")
    add(f"What each optimisation buys (ours, A/B in one process, {rounds} rotated rounds after a warm-up, medians; "
        "each ratio = time with that optimisation off / time of the core as it is; > 1: the optimisation helps):")
    add("")
    add("| variant | optimisation switched off | SFT (40 steps) | PPO generation | PPO scoring | PPO optimisation | "
        "PPO iteration | decode steps |")
    add("|---|---|---|---|---|---|---|---|")
    for name in list(ppo) + [n for n in sft if n not in ppo]:
        s, p = sft.get(name, {}), ppo.get(name, {})
        what = p.get("optimisation") or s.get("optimisation") or ""
        r = lambda key: f"{fmt(p.get(key), '.2f')}x" if p.get(key) is not None else ""  # noqa: E731
        add(f"| {name} | {what} | {fmt(s.get('speedup'), '.2f') + 'x' if s.get('speedup') is not None else ''} | "
            f"{r('generation_speedup')} | {r('scoring_speedup')} | {r('optimization_speedup')} | {r('speedup')} | "
            f"{fmt(p.get('decode_steps'), '.1f') if p else ''} |")
    d = ppo.get("default")
    if d:
        add("")
        add(f"Default (the core) per PPO iteration: generation {d['generation_s']:.3f} s, scoring {d['scoring_s']:.3f} s, "
            f"optimisation {d['optimization_s']:.3f} s, iteration {d['iteration_s']:.3f} s"
            + (f"; SFT {sft['default']['median_s']:.3f} s per 40 steps." if "default" in sft else "."))


def pct_iter(runs, q: float):
    """The q-quantile of the per-iteration times over all runs of one side: robust to other processes' load when it
    comes and goes (a median is not, once load covers half a run)."""
    xs = sorted(x for r in runs for x in r.get("iteration_s", []))
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else None


def per_cpu(runs, work_key):
    """Work per CPU-second of the measured loop (time.process_time, all threads): less sensitive than wall time to
    other processes' load on a shared machine (not immune: cache sharing and OpenMP spin-waits still count)."""
    vals = [r[work_key] / r["cpu_s"] for r in runs if r.get("cpu_s") and r.get(work_key)]
    return statistics.median(vals) if vals else None


def max_of(runs):
    vals = [r["peak_rss_mb"] for r in runs]
    return max(vals) if vals else None


def split_med(runs):
    keys = set().union(*(r.get("scoring_split_s", {}).keys() for r in runs)) if runs else set()
    return {k: statistics.median([r["scoring_split_s"].get(k, 0.0) for r in runs]) for k in keys}


# -- main --------------------------------------------------------------------------------------------------------------
