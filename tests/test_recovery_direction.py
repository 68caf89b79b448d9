"""Direction statistics on synthetic arrays with known moments, and per-layer scores from analyze_folder."""
import numpy as np
import pytest
from scipy import stats

from recovery.direction import STATS, weight_stat
from recovery.synthetic import vit_shapes, write_tree
from recovery.weights import analyze_folder


def test_stats_match_scipy():
    """kurtosis is Pearson's (Eq. 3, Gaussian ~3), skewness and variance match scipy/numpy."""
    x = np.random.default_rng(0).standard_t(5, size=(50, 40)).astype(np.float32)
    v = x.astype(np.float64).ravel()
    assert weight_stat(x, "kurtosis") == pytest.approx(stats.kurtosis(v, fisher=False), rel=1e-10)
    assert weight_stat(x, "skewness") == pytest.approx(stats.skew(v), rel=1e-10)
    assert weight_stat(x, "variance") == pytest.approx(v.var(), rel=1e-10)


def test_entropy_histogram_and_constant_layers():
    """Entropy of a uniform spread over 256 bins is log(256); constant layers give NaN; bad names error."""
    x = np.repeat(np.linspace(0, 1, 256, endpoint=False), 4)
    assert weight_stat(x, "entropy") == pytest.approx(np.log(256))
    for s in ("kurtosis", "skewness", "entropy"):
        assert np.isnan(weight_stat(np.ones(10), s))
    with pytest.raises(ValueError, match="unknown direction statistic"):
        weight_stat(x, "median")


@pytest.mark.parametrize("stat", STATS)
def test_per_layer_values_sum_to_score(tmp_path, stat):
    """analyze_folder keeps per-layer values (dense layers by default) and the score is their sum."""
    write_tree(tmp_path, vit_shapes(16, 2), {"r": ["c"]}, ["r"], scale=1e-2)
    res = analyze_folder(tmp_path, direction={"stat": stat}, progress=False)
    assert res.direction_stat == stat and len(res.direction_layers) == 6  # 2 blocks x (proj, fc1, fc2)
    np.testing.assert_allclose(res.direction_per_layer.sum(axis=1), res.direction)
    if stat == "kurtosis":  # the synthetic fine-tune shrinks outliers: the parent scores higher
        assert res.direction[res.ids.index("r")] > res.direction[res.ids.index("c")]


def test_direction_kinds_and_regex(tmp_path):
    """direction.kinds / regex choose the layers the score is summed over."""
    write_tree(tmp_path, vit_shapes(16, 2), {"r": ["c"]}, ["r"])
    res = analyze_folder(tmp_path, direction={"kinds": ["all"], "regex": r"blocks\.0\.mlp"}, progress=False)
    assert res.direction_layers == ["blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc2.weight"]
