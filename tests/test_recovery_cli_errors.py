"""Bad files do not sink good ones, and user errors end in one message (issue 13, items 3 and 4), through the
command line exactly as a user runs it: `python run.py +experiment=recover input=DIR ...`."""
from __future__ import annotations

import json

import pytest

from recovery.synthetic import mlp_shapes
from tests.recovery_inputs import bad_folder, forest, run_cli, write_flat, write_truth

SHAPES = mlp_shapes((16, 32, 32, 10))
WIDE = mlp_shapes((16, 48, 48, 10))
CASES = ("truncated", "nan", "width", "duplicate")
REASONS = {"truncated": "truncated file", "nan": "NaN or Inf weights", "width": "different architecture",
           "duplicate": "duplicate of t0_c0_g1 (byte-identical file)"}
GOOD = {"t0_root", "t0_c0", "t0_c0_g0", "t0_c0_g1"}


def _assert_one_message(res, *needles: str) -> None:
    """Exit 2, one `error:` line on stderr naming the problem, no traceback."""
    assert res.returncode == 2, res.stderr[-3000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, res.stderr[-3000:]
    assert "Traceback" not in res.stderr + res.stdout and "Error executing job" not in res.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


def _warning_lines(res, file_id: str) -> list[str]:
    return [line for line in (res.stdout + res.stderr).splitlines()
            if "[WARNING]" in line and f"{file_id}.safetensors" in line]


@pytest.mark.slow
def test_plain_mlp_folder_with_defaults(tmp_path):
    """Acceptance: a folder of plain-MLP checkpoints recovers with default settings."""
    models, edges = forest(SHAPES)
    folder = write_flat(tmp_path / "mlps", models)
    truth = write_truth(tmp_path / "truth.json", models, edges)
    res = run_cli(tmp_path, f"input={folder}", f"ground_truth={truth}", f"output_dir={tmp_path / 'out'}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "14 models -> 2 trees" in res.stdout and "edge accuracy 1.000" in res.stdout
    fallback = [line for line in res.stdout.splitlines() if "[WARNING]" in line and "layers:" in line]
    assert len(fallback) == 1


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_each_bad_file_is_left_out(case, tmp_path):
    bad = bad_folder(tmp_path / "models", SHAPES, WIDE, (case,))[case]
    out = tmp_path / "out"
    res = run_cli(tmp_path, f"input={tmp_path / 'models'}", f"output_dir={out}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "4 models -> " in res.stdout and "1 models excluded" in res.stdout
    lines = _warning_lines(res, bad)
    assert len(lines) == 1 and REASONS[case] in lines[0]
    tree = json.loads((out / "tree.json").read_text())
    assert {n["id"] for n in tree["nodes"]} == GOOD
    assert set(tree["excluded"]) == {bad} and f"{bad}.safetensors" in tree["excluded"][bad]
    if case == "duplicate":   # the same model under two ids: one node, both ids
        node = next(n for n in tree["nodes"] if n["id"] == "t0_c0_g1")
        assert node["ids"] == ["t0_c0_g1", "t0_c0_g1_copy"] and tree["aliases"] == {"t0_c0_g1": ["t0_c0_g1_copy"]}
    # strict, case by case: tests/test_recovery_bad_input.py; through the command line: test_all_bad_files_at_once


@pytest.mark.slow
def test_all_bad_files_at_once(tmp_path):
    """Acceptance: 4 good models + a truncated file, a NaN model, another width and a duplicate: exit 0, the 4
    recovered, each bad file named in one warning line and in `excluded`; strict: exit 2, one message, no traceback;
    debug=true: the traceback."""
    bad = bad_folder(tmp_path / "models", SHAPES, WIDE, CASES)
    out = tmp_path / "out"
    res = run_cli(tmp_path, f"input={tmp_path / 'models'}", f"output_dir={out}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "4 models -> " in res.stdout and "4 models excluded" in res.stdout
    tree = json.loads((out / "tree.json").read_text())
    assert {n["id"] for n in tree["nodes"]} == GOOD and set(tree["excluded"]) == set(bad.values())
    for case, file_id in bad.items():
        lines = _warning_lines(res, file_id)
        assert len(lines) == 1 and REASONS[case] in lines[0], (case, lines)
        assert REASONS[case].split(" (")[0] in tree["excluded"][file_id]
    strict = run_cli(tmp_path, f"input={tmp_path / 'models'}", f"output_dir={tmp_path / 's'}", "recovery.strict=true")
    _assert_one_message(strict, "recovery.strict=true", "cut.safetensors: truncated file")
    debug = run_cli(tmp_path, f"input={tmp_path / 'models'}", f"output_dir={tmp_path / 'd'}", "recovery.strict=true",
                    "debug=true")
    assert debug.returncode not in (0, 2) and "Traceback" in debug.stderr and "CheckpointError" in debug.stderr


@pytest.mark.slow
def test_user_errors_exit_2_without_traceback(tmp_path):
    """Empty folder, missing folder, one usable model, a bad option, a missing ground truth: one message each."""
    (tmp_path / "empty").mkdir()
    _assert_one_message(run_cli(tmp_path, f"input={tmp_path / 'empty'}"), "no models found", "empty")
    _assert_one_message(run_cli(tmp_path, f"input={tmp_path / 'nowhere'}"), "nowhere: folder not found")
    bad_folder(tmp_path / "few", SHAPES, WIDE, ("nan",))
    for f in ("t0_root", "t0_c0", "t0_c0_g0"):
        (tmp_path / "few" / f"{f}.safetensors").unlink()
    _assert_one_message(run_cli(tmp_path, f"input={tmp_path / 'few'}"), "fewer than two usable models",
                        "nan_model.safetensors: NaN or Inf weights")
    models, _ = forest(SHAPES, n_trees=1, children=2, grandchildren=0)
    write_flat(tmp_path / "ok", models)
    _assert_one_message(run_cli(tmp_path, f"input={tmp_path / 'ok'}", "recovery.distance.metric=cosine"),
                        "recovery.distance.metric must be one of")
    _assert_one_message(run_cli(tmp_path, f"input={tmp_path / 'ok'}", f"ground_truth={tmp_path / 'gt.json'}"),
                        "gt.json: file not found")
    full = run_cli(tmp_path, f"input={tmp_path / 'empty'}", env={"HYDRA_FULL_ERROR": "1"})
    assert full.returncode != 0 and "Traceback" in full.stderr
