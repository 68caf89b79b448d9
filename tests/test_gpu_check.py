"""scripts/gpu_check.py's recovery-kernel section on CPU: the torch path (the one CUDA runs) against numpy, with the
report saying both agree; and the LoRA stack it times has the low ranks it is meant to have."""
import numpy as np

from scripts import gpu_check


def test_lora_stack_has_low_rank_deltas():
    ws = gpu_check.lora_stack(5, 64, np.random.default_rng(0))
    assert ws.shape == (5, 64, 64) and ws.dtype == np.float32
    assert max(np.linalg.matrix_rank(w.astype(np.float64) - ws[0], tol=1e-6) for w in ws[1:]) <= 32


def test_kernel_rows_report_agreement_on_cpu():
    rows, ok = gpu_check.kernel_rows("cpu", (6, (48, 16), 5, 64))
    assert ok, rows
    assert rows[0].startswith("== recovery kernels: torch on cpu")
    assert "6 models x 48x16" in rows[1] and "largest relative l2 difference" in rows[1]
    rel = float(rows[1].rsplit(" ", 1)[-1])
    assert rel < 1e-6
    assert rows[2].endswith("ranks equal: True")
