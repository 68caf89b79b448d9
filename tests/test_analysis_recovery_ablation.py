"""The beyond-the-paper ablation at toy scale. Synthetic graphs (each child its parent plus an independent delta):
every variant must find the undirected trees exactly and the paper's method the directed ones too; a dropped
node's children share its delta, so the missing-parent search must report every such group and nothing else."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from analysis import stage
from analysis.experiments.recovery_ablation import choose, choose_missing, missing_scores


def test_recovery_ablation_toy(cfg_factory, tmp_path):
    stage.run(cfg_factory(["+experiment=recovery_ablation", "scale=toy"]))
    out = tmp_path / "results" / "recovery_ablation"
    res = json.loads((out / "results.json").read_text())
    rows = res["rows"]
    variants = list(res["variants"])
    assert variants[0] == "paper" and res["chosen"] in variants
    assert res["chosen_by_stages"]["none"] == res["chosen"] and res["chosen_by_stages"]["given"] in variants
    assert {(r["split"], r["graph"]) for r in rows} == {("dev", "FT"), ("eval", "FT"), ("eval", "LoRA-V")}
    assert len(rows) == 3 * 2 * len(variants)          # graphs x stage settings x variants
    for r in rows:
        assert r["undirected_accuracy"] == 1.0 and r["n_edges"] == 12, r       # variants differ in orientation only
        assert round(r["edge_accuracy"] * 12, 9) == round(r["edge_accuracy"] * 12)    # a count of the 12 edges
        if r["variant"] == "paper":
            assert r["edge_accuracy"] == 1.0, r
    table = pd.read_csv(out / "recovery_ablation_eval_none.csv")
    assert list(table["variant"]) == variants and {"FT", "LoRA-V", "mean"} <= set(table.columns)
    assert (out / "recovery_ablation.png").stat().st_size > 10_000
    trials = [m for m in res["missing"] if m["dropped"] is not None and m["split"] == "eval"]
    assert {m["graph"] for m in trials} == {"FT", "LoRA-V"} and all(m["children"] >= 2 for m in trials)
    assert all(m["edge_rel"] > 0 for m in trials)
    grid = res["missing_grid"]                        # every setting scored on the dev trials, one chosen
    assert len(grid) > 1 and sum(g["chosen"] for g in grid) == 1
    for g in grid:   # F1 of precision found / (found + false groups) and recall found / trials, by hand
        p = g["found"] / (g["found"] + g["false_groups"]) if g["found"] + g["false_groups"] else 0.0
        rc = g["found"] / g["trials"]
        assert g["f1"] == pytest.approx(2 * p * rc / (p + rc) if p + rc else 0.0), g
    best = next(g for g in grid if g["chosen"])
    assert best["f1"] == max(g["f1"] for g in grid)
    assert all(m["setting"] == {k: best[k] for k in m["setting"]} for m in res["missing"])
    assert all(m["found"] is True and m["false_groups"] == 0 for m in trials)  # the dropped node's children share
    assert all(m["false_groups"] == 0 for m in res["missing"] if m["dropped"] is None)  # its delta; intact: none
    missing = pd.read_csv(out / "recovery_ablation_missing_parents.csv")
    assert (missing["children_reported"] == 1.0).all() and (missing["false_groups"] == 0).all()
    assert dict(zip(zip(missing["split"], missing["graph"]), missing["dropped"])) == {
        ("dev", "FT"): 3, ("eval", "FT"): 4, ("eval", "LoRA-V"): 4}
    assert "Beyond the paper" in (tmp_path / "results" / "README.md").read_text()


def test_choose_takes_the_best_dev_mean_and_ignores_eval():
    rows = [{"split": "dev", "stages": "none", "variant": v, "graph": g, "edge_accuracy": a}
            for v, g, a in [("paper", "A", 0.5), ("paper", "B", 0.7), ("x", "A", 0.9), ("x", "B", 0.6),
                            ("y", "A", 0.75), ("y", "B", 0.75)]]
    rows += [{"split": "eval", "stages": "none", "variant": "paper", "graph": "A", "edge_accuracy": 1.0}]
    assert choose(rows, "none") == "x"                 # 0.75 (x) ties 0.75 (y): the earlier one wins
    assert choose(rows, "given") == "paper"            # no dev rows for that setting: the baseline


def test_missing_setting_is_chosen_by_dev_f1():
    def trial(setting, found, false_groups, dropped="m"):
        return {"setting": setting, "dropped": dropped, "found": found, "false_groups": false_groups}

    loose, strict = {"missing_ratio": 1.0}, {"missing_ratio": 0.5}
    trials = [trial(loose, True, 3), trial(loose, True, 2), trial(loose, False, 0, dropped=None),
              trial(strict, True, 0), trial(strict, False, 0), trial(strict, False, 0, dropped=None)]
    assert missing_scores([t for t in trials if t["setting"] == loose]) == {
        "found": 2, "trials": 2, "false_groups": 5, "f1": 4 / 9}
    assert missing_scores([t for t in trials if t["setting"] == strict])["f1"] == 2 / 3
    assert choose_missing(trials) == strict and choose_missing([]) == {}
