"""The GPU DPO benchmark's FLOP/MFU arithmetic (benchmarks/dpo.py; the benchmark itself is not a test)."""

import pytest

from benchmarks.dpo import flops_per_token, gpu_peak_flops, mfu, model_shape


def test_mfu_arithmetic_matches_the_published_shapes_and_issue_anchors():
    # The random configs have the published parameter counts (counted on the meta device, no weights).
    n = {c: model_shape(c, None)["n_params"] for c in ("135m", "1b", "8b")}
    assert n == {"135m": 134_515_008, "1b": 1_235_814_400, "8b": 8_030_261_248}
    assert model_shape("135m", 2)["layers"] == 2
    # 8N per token: 6N policy forward + backward, 2N reference forward.
    assert flops_per_token(1_000_000) == 8_000_000
    # Issue 17's H100 anchors (1B: 27.1k tok/s at 27.1 % MFU; 135M: 46.5k tok/s at 5.1 %) use the same count.
    h100 = gpu_peak_flops("NVIDIA H100 80GB HBM3")
    assert h100 == gpu_peak_flops("NVIDIA H200") == 989e12
    assert mfu(n["1b"], 27.1e3, h100) == pytest.approx(0.271, abs=0.001)
    assert mfu(n["135m"], 46.5e3, h100) == pytest.approx(0.051, abs=0.001)
    # --peak-tflops wins; an unknown GPU or a CPU gives no MFU.
    assert gpu_peak_flops("NVIDIA H100 80GB HBM3", 500.0) == 500e12
    assert gpu_peak_flops("Some Accelerator") is None
    assert mfu(n["1b"], 1e3, None) is None
