"""The shared MFU of docs/metrics.md: the device's peak by name, and the FLOPs per token."""

from __future__ import annotations

import pytest

from trainer.reporting.mfu import mfu, peak_flops


@pytest.mark.parametrize(
    "device_name, precision, peak",
    [
        ("NVIDIA H100 80GB HBM3", "bf16", 989e12),
        ("NVIDIA H100 PCIe", "bf16", 756e12),
        ("NVIDIA H200", "fp32", 67e12),
        ("NVIDIA A100-SXM4-80GB", "bf16", 312e12),
        ("NVIDIA L4", "bf16", 121e12),
        ("NVIDIA L40S", "bf16", None),  # not an L4: names match as whole words
        ("NVIDIA GeForce RTX 4090", "bf16", None),
        (None, "fp32", None),  # a CPU
    ],
)
def test_peak_by_device_name(device_name, precision, peak):
    assert peak_flops(device_name, precision) == peak


def test_mfu_of_gpt2_medium_on_an_h100():
    # 6 N + 12 L C T with N = 353,774,592 (gpt2-medium without wpe), L 24, C 1024, T 512.
    flops_per_token = 6 * 353_774_592 + 12 * 24 * 1024 * 512
    tokens_per_s = 200_000.0
    assert mfu(tokens_per_s, 353_774_592, 24, 1024, 512, "NVIDIA H100 80GB HBM3", "bf16") == pytest.approx(
        flops_per_token * tokens_per_s / 989e12, rel=1e-12
    )
    assert mfu(tokens_per_s, 353_774_592, 24, 1024, 512, None, "bf16") is None
