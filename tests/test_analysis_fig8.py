"""Fig. 8 experiment: several direction statistics along fine-tuning.

`finetune_panels` is tested on synthetic checkpoints (outliers shrinking: kurtosis falls mechanically); the toy
run fine-tunes random-init stand-in roots a few steps: each statistic at step 0 must equal a direct numpy
computation on the root file, and each panel's rho, direction and consistency must follow from its series.
"""
from __future__ import annotations

import math

import pytest
from omegaconf import open_dict

import analysis.trajectories as tr
from analysis.trends import panel_table
from common.io import read_json
from tests.toy_runs import check_panels, compose_toy, direct_sum, outlier_trajectory, shared_dir, toy_roots


def test_panels_on_synthetic_trajectories(tmp_path, monkeypatch):
    """Synthetic: two 'roots' whose outliers shrink; kurtosis must be consistent and falling."""
    steps = [0, 2, 4, 6, 8]
    runs = [{"root": f"r{i}", "task": "t", "steps_list": steps, "val_accuracy": 0.5,
             "files": outlier_trajectory(tmp_path / f"r{i}", steps, seed=i)} for i in range(2)]
    monkeypatch.setattr(tr, "root_trajectories", lambda cfg: runs)
    out = tr.finetune_panels(None, [("kurtosis", "kurtosis", "dense"), ("variance", "variance", "dense")])
    k = out["panels"]["kurtosis"]
    assert k["consistent"] and k["direction"] == "down" and k["mean_monotone_fraction"] == 1.0
    assert all(r == pytest.approx(-1.0) for r in k["spearman"].values())
    assert len(out["series"]) == 4
    table = panel_table(out["panels"])
    assert list(table["panel"]) == ["kurtosis", "variance"] and table.loc[0, "consistent"] == "yes"


@pytest.mark.slow
def test_fig8_toy_run(tmp_path_factory, saved_figures):
    """Toy scale: 2 stand-in roots, 4 statistics; step 0 against numpy on the roots, summaries against series."""
    from analysis.experiments import fig8_stats

    shared = shared_dir(tmp_path_factory)
    tmp = tmp_path_factory.mktemp("fig8")
    cfg = compose_toy("fig8_stats", tmp, shared)
    with open_dict(cfg):
        cfg.analysis.trajectory.roots = toy_roots(shared, 2)
    results = fig8_stats.run(cfg)
    out = tmp / "results" / "fig8_stats"
    assert {"fig8_stats.png", "fig8_stats.md", "fig8_stats.tex", "fig8_stats_trajectories.csv"} <= {
        p.name for p in out.iterdir()}
    assert results["order"] == ["variance", "skewness", "kurtosis", "entropy"]
    assert len(results["series"]) == 4 * 2
    assert {s["root"] for s in results["series"]} == set(cfg.analysis.trajectory.roots)
    for s in results["series"]:
        assert all(math.isfinite(v) for v in s["values"]) and len(s["values"]) == len(s["steps"])
        # step 0 is the root itself: the statistic summed over attn.proj, mlp.fc1, mlp.fc2 of every block
        assert s["steps"][0] == 0 and s["values"][0] == pytest.approx(direct_sum(s["root"], s["stat"]), rel=1e-6)
    check_panels(results)
    assert "consistently monotone" in read_json(out / "experiment.json")["ours"]
    (fig,) = saved_figures          # one panel per statistic, one line per root: the series' own points
    for ax, stat in zip(fig.axes, results["order"]):
        drawn = sorted(line.get_xydata().tolist() for line in ax.lines)
        assert drawn == sorted([list(map(float, p)) for p in zip(s["steps"], s["values"])]
                               for s in results["series"] if s["stat"] == stat), stat


def test_a_panel_that_is_not_consistent_says_why_in_numbers():
    from analysis.trends import panel_why

    results = {"min_abs_rho": 0.8, "panels": {
        "kurtosis": {"spearman": {"builtin:vit_a1": -0.95, "builtin:vit_b1": -0.47}, "direction": "down",
                     "consistent": False},
        "variance": {"spearman": {"builtin:vit_a1": 1.0, "builtin:vit_b1": 1.0}, "direction": "up",
                     "consistent": True}}}
    assert panel_why(results, "kurtosis") == (": here kurtosis's Spearman rho along fine-tuning is -0.95 (vit_a1), "
                                              "-0.47 (vit_b1) (|rho| >= 0.8 needed on every root, sign down); "
                                              "consistently monotone instead: variance")


def test_repeated_trajectory_root_is_refused():
    """Each root has one fine-tune run (the panels key Spearman rho by root): a root listed twice is a config
    error that names the key and the root, before anything trains."""
    from omegaconf import OmegaConf

    from common.errors import ConfigError

    cfg = OmegaConf.create({"seed": 0, "analysis": {"trajectory": {"roots": ["builtin:vit_a1", "builtin:vit_a1"],
                                                                   "tasks": ["a", "b"], "cache": "x"}}})
    with pytest.raises(ConfigError, match=r"analysis.trajectory.roots lists \['builtin:vit_a1'\] more than once"):
        tr.root_trajectories(cfg)


def test_settled_says_where_a_score_made_its_move():
    """A score that falls early and then wanders on a plateau: where 90% of the move was made, and how far it
    wandered after (the plateau's noise sets its Spearman rho)."""
    from analysis.trends import panel_why, settled

    steps, values = [0, 1, 2, 3, 4, 5], [10.0, 8.1, 8.0, 8.05, 7.98, 8.02]
    assert settled(steps, values) == "made 90% of its -19.8% move by step 1 of 5, then stayed within +-0.74%"
    assert settled([0, 1, 2], [1.0, 1.0, 1.0]) == "moved +0 over the run"
    results = {"min_abs_rho": 0.8, "panels": {
        "kurtosis": {"spearman": {"r0": -1.0, "r1": -0.3}, "direction": "down", "consistent": False},
        "variance": {"spearman": {"r0": 1.0, "r1": 1.0}, "direction": "up", "consistent": True}},
        "series": [{"panel": "kurtosis", "root": "r0", "steps": steps, "values": [10, 9, 8, 7, 6, 5]},
                   {"panel": "kurtosis", "root": "r1", "steps": steps, "values": values}]}
    why = panel_why(results, "kurtosis")
    assert "r1 made 90% of its -19.8% move by step 1 of 5" in why and "r0 made" not in why
    assert why.endswith("consistently monotone instead: variance")
