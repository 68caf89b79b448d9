"""Fig. 16 experiment: direction score vs learning rate (toy run: 2 lrs x 2 seeds on a random-init stand-in
root, a few steps; step 0 against numpy on the root, accuracy as a count of validation images, the convergence
rule and the trends recomputed by hand)."""
from __future__ import annotations

import pytest
from omegaconf import open_dict

from analysis.experiments.fig16_lr import by_lr, describe
from tests.toy_runs import BUILTIN_VAL, compose_toy, direct_sum, is_count_of, shared_dir, spearman_np, toy_roots


def test_by_lr_aggregates_synthetic_runs():
    """Synthetic run records: counts and means per learning rate."""
    def s(lr, acc, rho, conv):
        return {"lr": lr, "val_accuracy": acc, "converged": conv,
                "trend": {"spearman": rho, "monotone_fraction": 0.5, "agrees": rho < 0}}
    rows = by_lr([s(1e-2, 0.1, 0.3, False), s(1e-2, 0.2, -0.1, False), s(1e-4, 0.9, -0.9, True)])
    assert [r["lr"] for r in rows] == [1e-2, 1e-4]
    assert rows[0]["converged"] == 0 and rows[0]["trend_down"] == 1 and abs(rows[0]["mean_val_acc"] - 0.15) < 1e-12
    assert rows[1]["converged"] == 1 and rows[1]["mean_spearman"] == -0.9


def test_note_says_how_far_a_converged_run_against_the_trend_moved():
    """The note names each converged run that does not trend down, with its score's relative move, against the
    median fall of those that do; runs that did not converge are not in it."""
    def s(lr, i, first, last, agrees, conv=True):
        return {"lr": lr, "seed_index": i, "val_accuracy": 0.8, "converged": conv,
                "trend": {"first": first, "last": last, "agrees": agrees}}
    series = [s(1e-3, 0, 100.0, 90.0, True), s(1e-3, 1, 100.0, 94.0, True), s(1e-3, 2, 100.0, 98.0, True),
              s(5e-6, 0, 100.0, 100.02, False), s(1e-2, 0, 100.0, 130.0, False, conv=False)]
    notes = describe({"series": series})["notes"]
    assert "1 converged run does not trend down: lr 5e-06 seed 0 (val acc 0.80) moved its score by +0.020%" in notes
    assert notes.endswith("against a median fall of 6.00% in the converged runs that trend down.")
    assert "lr 0.01" not in notes
    assert "does not trend down" not in describe({"series": series[:3]})["notes"]


@pytest.mark.slow
def test_fig16_toy_run(tmp_path_factory):
    from analysis.experiments import fig16_lr

    shared = shared_dir(tmp_path_factory)
    tmp = tmp_path_factory.mktemp("fig16")
    cfg = compose_toy("fig16_lr", tmp, shared)
    with open_dict(cfg):
        cfg.analysis.fig16_lr.root = toy_roots(shared, 1)[0]
    results = fig16_lr.run(cfg)
    out = tmp / "results" / "fig16_lr"
    assert {"fig16_lr.png", "fig16_lr.md", "fig16_lr.tex", "fig16_lr_runs.csv"} <= {p.name for p in out.iterdir()}
    assert len(results["series"]) == 2 * 2
    assert len({s["seed"] for s in results["series"]}) == 4  # a unique seed per run
    for s in results["series"]:
        assert is_count_of(s["val_accuracy"], BUILTIN_VAL) and s["chance"] == 0.5   # builtin/cells: 2 classes
        assert s["steps"][0] == 0 and s["values"][0] == pytest.approx(direct_sum(cfg.analysis.fig16_lr.root,
                                                                                  "kurtosis"), rel=1e-6)
        assert s["converged"] == (s["val_accuracy"] >= s["chance"] + results["min_gain"] * (1 - s["chance"]))
        assert s["dashed"] == (not s["converged"])
        assert s["trend"]["spearman"] == pytest.approx(spearman_np(s["steps"], s["values"]), abs=1e-9)
    assert sum(r["runs"] for r in results["by_lr"]) == 4
