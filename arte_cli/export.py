"""``arte export gguf-lora`` (any PEFT LoRA adapter → GGUF adapter for llama.cpp) and the model-conversion
commands ``arte models converter`` / ``arte models convert`` (llama.cpp's own HF → GGUF converter)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from arte.convert import LLAMA_CPP_SDIST, convert_hf_to_gguf
from arte.errors import ArteError, ConfigError, ModelError
from arte.export import export_gguf_lora as export_adapter
from arte.families import gguf_model_config
from arte.home import arte_home, model_dir
from arte.models import resolve_model, sha256_file
from arte_cli.fetch import fetch_converter
from arte_cli.output import emit, fail

__all__ = ["export", "models_converter", "models_convert", "base_config"]


def base_config(model: str) -> dict[str, Any]:
    """The transformers config of ``model`` ('default', a GGUF file or an HF directory) that the export
    needs: an HF directory's ``config.json``, or a GGUF's own metadata."""

    ref = resolve_model(model, model_dir())
    if ref.kind == "gguf":
        return gguf_model_config(ref.path)
    cfg = json.loads((ref.path / "config.json").read_text())
    if "text_config" in cfg and "num_attention_heads" not in cfg:
        raise ConfigError("base", f"{ref.path} is a multimodal model ({cfg.get('model_type')}); export against "
                                  "its text model")
    return cfg


@click.group("export")
def export() -> None:
    """Export trained adapters to the formats their runtimes load."""


@export.command("gguf-lora")
@click.argument("adapter_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--base", "base", required=True,
              help="The base model the adapter was trained on: 'default', a GGUF file or an HF directory.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Output file (default: ADAPTER_DIR/adapter.gguf).")
@click.option("--dtype", type=click.Choice(["f32", "f16"]), default="f32", show_default=True,
              help="Tensor type of the adapter (f16: half the size, slightly less exact).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def export_gguf_lora(adapter_dir: Path, base: str, out: Path | None, dtype: str, as_json: bool) -> None:
    """Write the PEFT LoRA adapter in ADAPTER_DIR as a GGUF LoRA adapter llama.cpp loads (lora_path=) on the
    GGUF of --base made by llama.cpp's converter. Families: llama, qwen2, qwen3, gemma2, gemma3, phi3."""

    try:
        cfg = base_config(base)
        info = export_adapter(adapter_dir, out or adapter_dir / "adapter.gguf", cfg, dtype=dtype)
    except ArteError as e:
        fail(e)
    emit({**info.__dict__, "base": base, "model_type": cfg.get("model_type")}, as_json,
             f"wrote {info.path} ({info.n_tensors} tensors, rank {info.rank}, alpha {info.alpha:g}, "
             f"{info.bytes} bytes) for a {cfg.get('model_type')} base")


@click.command("converter")
@click.option("--sdist", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Use this local llama-cpp-python source distribution instead of downloading it.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def models_converter(sdist: Path | None, as_json: bool) -> None:
    """Install llama.cpp's HF -> GGUF converter from the llama-cpp-python sdist (sha256-checked, cached)."""

    try:
        path, fetched = fetch_converter(arte_home() / "tools", sdist=sdist)
    except ArteError as e:
        fail(e)
    emit({"path": str(path), "version": LLAMA_CPP_SDIST.version, "fetched": fetched}, as_json,
             f"{'installed' if fetched else 'already installed'}: llama.cpp converter "
             f"({LLAMA_CPP_SDIST.package} {LLAMA_CPP_SDIST.version}) at {path}")


@click.command("convert")
@click.argument("hf_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Output GGUF (default: HF_DIR/model-OUTTYPE.gguf).")
@click.option("--outtype", type=click.Choice(["f32", "f16", "bf16", "q8_0"]), default="f16", show_default=True,
              help="Weight type of the GGUF.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def models_convert(hf_dir: Path, out: Path | None, outtype: str, as_json: bool) -> None:
    """Convert a Hugging Face model directory to GGUF with llama.cpp's own converter (installed on first use)."""

    try:
        converter, _ = fetch_converter(arte_home() / "tools")
        path = convert_hf_to_gguf(hf_dir, out or hf_dir / f"model-{outtype}.gguf", converter, outtype=outtype)
    except (ArteError, OSError) as e:
        fail(e if isinstance(e, ArteError) else ModelError(str(e)))
    emit({"path": str(path), "sha256": sha256_file(path), "outtype": outtype}, as_json, f"wrote {path}")
