"""Every shipped ``accelerate`` config (configs/accelerate/) loads with accelerate's own reader and says what
its comment promises: bf16 on GPUs, and for the sharded ones the settings that keep a large teacher from
being loaded whole on every rank."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs" / "accelerate").glob("*.yaml"))


def test_the_four_setups_ship() -> None:
    assert [p.stem for p in CONFIGS] == ["ddp", "fsdp", "one_gpu", "zero3"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads(path: Path) -> None:
    pytest.importorskip("accelerate")
    from accelerate.commands.config.config_args import load_config_from_file

    c = load_config_from_file(str(path))
    assert c.mixed_precision == "bf16" and not c.use_cpu
    kind = {"one_gpu": "NO", "ddp": "MULTI_GPU", "fsdp": "FSDP", "zero3": "DEEPSPEED"}[path.stem]
    assert c.distributed_type.value == kind
    assert c.num_processes == (1 if path.stem == "one_gpu" else 8)
    if path.stem == "fsdp":
        assert c.fsdp_config["fsdp_version"] == 2 and c.fsdp_config["fsdp_cpu_ram_efficient_loading"]
    if path.stem == "zero3":
        assert c.deepspeed_config["zero_stage"] == 3 and c.deepspeed_config["zero3_init_flag"]
