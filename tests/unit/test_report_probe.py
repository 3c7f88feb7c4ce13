"""PPO's over-optimisation probe (plots/ppo/probe.json) on the report and in MLflow's figures: proxy and judge drawn
against the KL to the reference (not the step), the rows as a table, and a sentence on where the judge peaked."""
from __future__ import annotations

import pytest

from report.data import load_run_files
from report.model import Charts
from report.sections import XY_CURVES, build_page
from tests.unit.test_report_render import images, make_run, render, section, write

# Gao et al.'s picture: the proxy keeps rising with KL, the judge peaks at iteration 20 and falls.
PROBE = [{"step": s, "probe/kl": kl, "probe/proxy": proxy, "probe/judge": judge, "probe/distinct2": d,
          "probe/eos_rate": e, "probe/n_prompts": 64.0}
         for s, kl, proxy, judge, d, e in ((0, 0.0, -0.25, -0.5, 0.75, 0.875), (10, 2.5, 0.5, 0.125, 0.75, 1.0),
                                           (20, 9.5, 1.25, 0.375, 0.625, 1.0), (30, 21.0, 1.5, 0.0625, 0.5, 1.0))]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = make_run(tmp_path_factory.mktemp("probe_run"))
    write(root / "plots" / "ppo" / "probe.json", PROBE)
    return load_run_files(root)


def test_proxy_and_judge_are_drawn_against_kl(run):
    page = build_page(run, None, generated="now")
    charts = {c.title: c for s in page.sections if s.id == "stage-ppo" for b in s.blocks if isinstance(b, Charts)
              for c in b.items}
    over = charts[XY_CURVES[0][0]]
    assert over.x == "probe/kl"
    assert dict(over.series) == {"probe/proxy": [(r["probe/kl"], r["probe/proxy"]) for r in PROBE],
                                 "probe/judge": [(r["probe/kl"], r["probe/judge"]) for r in PROBE]}
    assert charts[XY_CURVES[1][0]].x == "probe/kl" and charts[XY_CURVES[2][0]].x == "step"


def test_the_page_embeds_the_probe_figures_table_and_peak(run):
    page = render(run)
    ppo = section(page, "stage-ppo")
    for title, _, _ in XY_CURVES:
        assert f'alt="{title}"' in ppo
    assert len(images(ppo)) == 7 + len(XY_CURVES)                # the PPO panels, then the probe's
    assert ("The judge peaked at iteration 20 (KL 9.5, judge 0.375, proxy 1.25); by the last probe (iteration 30, "
            "KL 21) the proxy rose to 1.5 while the judge fell to 0.0625.") in ppo
    assert "<td class=\"num\">0.0625</td>" in ppo and "distinct-2" in ppo


def test_no_probe_rows_no_probe_blocks(tmp_path):
    root = make_run(tmp_path / "off")
    write(root / "plots" / "ppo" / "probe.json", [])             # ppo.probe.every: 0
    ppo = section(render(load_run_files(root)), "stage-ppo")
    assert "no curve in plots/ppo/probe.json (no rows)" in ppo and "judge peaked" not in ppo
    assert not any(f'alt="{title}"' in ppo for title, _, _ in XY_CURVES)


def test_a_judge_still_rising_is_said_so(tmp_path):
    root = make_run(tmp_path / "rising")
    write(root / "plots" / "ppo" / "probe.json", PROBE[:3])
    assert "iteration 20 (KL 9.5, judge 0.375, proxy 1.25), the last probe: no sign of over-optimisation yet" in \
        section(render(load_run_files(root)), "stage-ppo")


def test_mlflow_gets_the_probe_against_kl(monkeypatch):
    import mlflow

    from rlhf.stages.common import StageResult
    from tasks import figures
    logged = {}
    monkeypatch.setattr(mlflow, "log_figure", lambda fig, name: logged.__setitem__(name, fig))
    figures.log_figures("ppo", StageResult({}, plots={"ppo": [{"step": 1, "objective/kl": 0.5}], "probe": PROBE}))
    assert sorted(logged) == ["figures/ppo_ppo.png", "figures/ppo_probe.png", "figures/ppo_probe_vs_kl.png"]
    top, bottom = logged["figures/ppo_probe_vs_kl.png"].axes
    assert [ln.get_label() for ln in top.lines] == ["probe/proxy", "probe/judge"]
    assert list(top.lines[1].get_xdata()) == [r["probe/kl"] for r in PROBE]
    assert list(top.lines[1].get_ydata()) == [r["probe/judge"] for r in PROBE]
    assert [ln.get_label() for ln in bottom.lines] == ["probe/distinct2", "probe/eos_rate"]
    assert bottom.get_xlabel() == "probe/kl"
