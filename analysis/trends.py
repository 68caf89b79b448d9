"""How monotone a score is along training: Spearman rho with the step, monotone fraction, and their tables.

The trajectory figures (Fig. 2, 8, 13, 16) judge every weight statistic by these numbers.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from analysis.finetunes import node_name

EXPECTED = {"generalization": 1, "specialization": -1}  # sign of the paper's kurtosis trend per training stage


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman rank correlation of y with x; None when undefined (fewer than 3 points or a constant series)."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    rho = float(spearmanr(x, y).statistic)
    return None if math.isnan(rho) else rho


def monotone_fraction(values: Sequence[float], sign: int) -> float | None:
    """Fraction of consecutive steps that move in direction `sign` (+1 up, -1 down); None for < 2 points."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return None
    return float(np.mean(np.sign(np.diff(v)) == np.sign(sign)))


def trend(steps: Sequence[int], values: Sequence[float], sign: int = -1) -> dict[str, Any]:
    """Summary of a score along training: points, first/last value, monotone fraction, Spearman rho with step.

    `sign` is the expected direction (+1 generalization, -1 specialization); `agrees` says whether the
    overall trend (rho) has that sign.
    """
    rho = spearman(steps, values)
    return {"n_points": len(values), "first": float(values[0]), "last": float(values[-1]),
            "monotone_fraction": monotone_fraction(values, sign), "spearman": rho,
            "agrees": None if rho is None else bool(np.sign(rho) == np.sign(sign))}


def trend_rows(series: Sequence[Mapping], keys: Sequence[str] = ("panel", "label")) -> "pandas.DataFrame":
    """One table row per series: its identifying `keys` and its trend summary."""
    import pandas as pd

    rows = []
    for s in series:
        t = s["trend"]
        rows.append({**{k: s[k] for k in keys}, "points": t["n_points"], "first": t["first"], "last": t["last"],
                     "monotone_frac": t["monotone_fraction"], "spearman_rho": t["spearman"],
                     "expected": "up" if s["sign"] > 0 else "down", "agrees": t["agrees"]})
    return pd.DataFrame(rows)


def panel_table(summary: Mapping[str, Mapping]) -> "pandas.DataFrame":
    """One row per panel: Spearman rho per root, mean monotone fraction, consistent or not."""
    import pandas as pd

    rows = []
    for panel, s in summary.items():
        row = {"panel": panel, "trend": s["direction"]}
        row.update({f"rho {node_name(r)}": v for r, v in s["spearman"].items()})
        row.update({"monotone_frac": s["mean_monotone_fraction"], "consistent": "yes" if s["consistent"] else "no"})
        rows.append(row)
    return pd.DataFrame(rows)


def panel_why(results: Mapping, panel: str) -> str:
    """Why a panel of a fig8 / fig13-style result is not consistently monotone, in numbers: its Spearman rho along
    fine-tuning per root against the |rho| every root needs, and which panels are consistent instead."""
    p = results["panels"][panel]
    rhos = ", ".join(f"{v:+.2f} ({node_name(k)})" for k, v in p["spearman"].items() if v is not None)
    others = [k for k, v in results["panels"].items() if v["consistent"] and k != panel]
    short = [s for s in results.get("series", []) if s["panel"] == panel and not _passes(s, p, results)]
    settled_runs = [f"{node_name(s['root'])} {settled(s['steps'], s['values'])}" for s in short]
    return (f": here {panel}'s Spearman rho along fine-tuning is {rhos or 'undefined'} (|rho| >= "
            f"{results['min_abs_rho']} needed on every root, sign {p['direction']})"
            + (f"; {'; '.join(settled_runs)}" if settled_runs else "")
            + f"; consistently monotone instead: {', '.join(others) or 'none'}")


def _passes(series: Mapping, panel: Mapping, results: Mapping) -> bool:
    rho = panel["spearman"].get(series["root"])
    want = 1 if panel["direction"] == "up" else -1
    return rho is not None and abs(rho) >= results["min_abs_rho"] and np.sign(rho) == want


def settled(steps: Sequence[int], values: Sequence[float], share: float = 0.9) -> str:
    """Where a score made `share` of its overall move, and how far it wandered after that: a score that moves
    early and then stays flat has a Spearman rho set by the noise of its plateau (the paper's Fig. 16 sees the score
    turn noisy once the validation loss plateaus)."""
    v = np.asarray(values, dtype=np.float64)
    total = v[-1] - v[0]
    if len(v) < 3 or total == 0:
        return f"moved {total:+.3g} over the run"
    k = int(np.argmax((v - v[0]) / total >= share))
    band = (v[k:].max() - v[k:].min()) / 2 / abs(v[k]) if v[k] else float("nan")
    move = f"{total / abs(v[0]):+.1%}" if v[0] else f"{total:+.3g}"
    return (f"made {share:.0%} of its {move} move by step {steps[k]} of {steps[-1]}, then stayed "
            f"within +-{band:.2%}")

