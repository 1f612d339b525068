"""The cohort's aligned adapter on the drafting/tailoring endpoint (``drafting_adapter_serving``).

Contract: an align job writes a PEFT adapter to ``data_dir/adapters/<cohort>/<job>``; :func:`publish`
makes it usable by the endpoint under :func:`served_name` (``arte-<cohort>-<job>``: a new name per align
job, so an endpoint never confuses two versions), and :func:`ensure_served` checks it again before a job
sends requests with ``model=<served name>`` (an endpoint may have restarted since). Kinds:

* ``vllm`` — vLLM's dynamic LoRA API (vLLM started with ``--enable-lora`` and
  ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``): ``POST /v1/load_lora_adapter`` with ``{"lora_name",
  "lora_path"}`` (the adapter directory: vLLM must see the server's ``data_dir`` at the same path), then
  ``POST /v1/unload_lora_adapter`` with ``{"lora_name"}`` of the cohort's previous adapter (a 404 there
  means it is gone already). ``ensure_served`` reads ``GET /v1/models`` (vLLM lists loaded adapters as
  models) and loads the adapter again when it is missing.
* ``llama-cpp`` — llama.cpp servers load adapters when they start, not over HTTP. The adapter is
  exported as a GGUF LoRA (``adapter.gguf`` beside the PEFT files, :func:`arte.export.export_gguf_lora`)
  and ``llama_server_config`` (a llama-cpp-python server config file: ``python -m llama_cpp.server
  --config_file FILE``) is rewritten: the drafting base under ``drafting_endpoint_model``, each cohort's
  newest adapter under its served name (``lora_path``), host and port from ``drafting_endpoint``,
  ``llama_server_options`` in every model. Restart the server with it (llama.cpp's ``llama-server``:
  ``--lora adapter.gguf``). ``ensure_served`` fails, saying so, until ``GET /v1/models`` lists the name:
  llama-cpp-python answers an unknown model name with its default model, which would silently tailor
  with the base.
* ``none`` — nothing is published; tailoring on an endpoint then uses the base model.

Failures raise :class:`~server.errors.JobError` naming the endpoint and what it answered; an endpoint that
cannot be reached is worth a retry.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from arte.backends.hf import model_config
from arte.export import export_gguf_lora
from arte.home import convert_dir
from server.errors import JobError
from server.settings import SERVING_KINDS, ServerSettings

__all__ = ["SERVING_KINDS", "served_name", "publish", "ensure_served", "export_gguf", "llama_server_config",
           "GGUF_ADAPTER_FILE"]

log = logging.getLogger(__name__)

GGUF_ADAPTER_FILE = "adapter.gguf"
_PREFIX = "arte-"


def served_name(adapter_dir: str | Path) -> str:
    """The name a cohort's adapter is served under: ``arte-<cohort>-<align job>`` (from its directory)."""
    p = Path(adapter_dir)
    return f"{_PREFIX}{p.parent.name}-{p.name}"


def _root(settings: ServerSettings) -> str:
    if not settings.drafting_endpoint:
        raise JobError(f"drafting_adapter_serving={settings.drafting_adapter_serving} needs drafting_endpoint")
    root = settings.drafting_endpoint.rstrip("/")
    return root[:-3] if root.endswith("/v1") else root


def _client(settings: ServerSettings) -> httpx.Client:
    key = settings.drafting_api_key.get_secret_value() if settings.drafting_api_key else None
    return httpx.Client(timeout=httpx.Timeout(settings.drafting_timeout_s),
                        headers={"Authorization": f"Bearer {key}"} if key else {})


def _call(client: httpx.Client, method: str, url: str, body: dict[str, Any] | None = None) -> httpx.Response:
    try:
        return client.request(method, url, json=body)
    except httpx.TransportError as e:
        raise JobError(f"{method} {url}: could not reach the endpoint ({type(e).__name__}: {e})", retry=True) from e


def _served(client: httpx.Client, root: str) -> set[str]:
    r = _call(client, "GET", f"{root}/v1/models")
    if r.status_code != 200:
        raise JobError(f"GET {root}/v1/models answered HTTP {r.status_code}: {r.text[:300]}", retry=True)
    try:
        return {m["id"] for m in r.json()["data"]}
    except (ValueError, KeyError, TypeError) as e:
        raise JobError(f"GET {root}/v1/models: not an OpenAI model list: {r.text[:300]}") from e


def _vllm_load(client: httpx.Client, root: str, name: str, path: Path) -> None:
    r = _call(client, "POST", f"{root}/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(path)})
    if r.status_code == 400 and "already been loaded" in r.text:
        return
    if r.status_code != 200:
        hint = (" (is vLLM running with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True?)"
                if r.status_code in (404, 405) else "")
        raise JobError(f"POST {root}/v1/load_lora_adapter {name} answered HTTP {r.status_code}: "
                       f"{r.text[:300]}{hint}", retry=r.status_code >= 500)


def _vllm_unload(client: httpx.Client, root: str, name: str) -> None:
    r = _call(client, "POST", f"{root}/v1/unload_lora_adapter", {"lora_name": name})
    if r.status_code not in (200, 404):   # 404: not loaded (any more)
        log.warning("POST %s/v1/unload_lora_adapter %s answered HTTP %s: %s", root, name, r.status_code,
                    r.text[:300])


def llama_server_config(settings: ServerSettings) -> Path:
    """The llama-cpp-python server config file the ``llama-cpp`` kind writes."""
    return Path(settings.llama_server_config or Path(settings.data_dir) / "serving" / "llama_cpp_server.json")


def _write_llama_config(settings: ServerSettings, base_gguf: Path, name: str, gguf: Path) -> Path:
    path = llama_server_config(settings)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        doc = {}
    url = urlsplit(_root(settings))
    cohort = name[:name.rindex("-") + 1]   # arte-<cohort>-: the cohort's older adapters are replaced
    keep = [m for m in doc.get("models", []) if m.get("model_alias") != settings.drafting_endpoint_model
            and not str(m.get("model_alias", "")).startswith(cohort)]
    opts = dict(settings.llama_server_options)
    base = {"model": str(base_gguf), "model_alias": settings.drafting_endpoint_model, **opts}
    doc.update(host=url.hostname or "127.0.0.1", port=url.port or 80,
               models=[base, *keep, {"model": str(base_gguf), "model_alias": name, "lora_path": str(gguf), **opts}])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2), encoding="utf-8")
    os.replace(tmp, path)
    return path


def export_gguf(adapter_dir: Path, teacher_ref: Any) -> Path:
    """The PEFT adapter as a GGUF LoRA beside it, for the base's architecture and head counts."""
    out = adapter_dir / GGUF_ADAPTER_FILE
    export_gguf_lora(adapter_dir, out, model_config(teacher_ref, convert_dir()))
    return out


def publish(settings: ServerSettings, adapter_dir: Path, previous: str | None, *, teacher_ref: Any,
            drafting_ref: Any) -> dict[str, Any]:
    """Make the adapter in ``adapter_dir`` servable (see the module docstring); ``previous`` is the
    cohort's adapter before (its served name is unloaded). Returns what was done, for the job's result."""
    kind = settings.drafting_adapter_serving
    if kind == "none":
        return {"kind": "none"}
    name = served_name(adapter_dir)
    if kind == "vllm":
        root = _root(settings)
        with _client(settings) as client:
            _vllm_load(client, root, name, adapter_dir)
            if previous and served_name(previous) != name:
                _vllm_unload(client, root, served_name(previous))
        return {"kind": kind, "name": name, "endpoint": root,
                "unloaded": served_name(previous) if previous else None}
    if drafting_ref is None or drafting_ref.kind != "gguf":
        raise JobError("drafting_adapter_serving=llama-cpp needs a GGUF drafting model (drafting_model, else "
                       "teacher_model): the base the llama.cpp server runs", retry=False)
    gguf = export_gguf(Path(adapter_dir), teacher_ref)
    config = _write_llama_config(settings, drafting_ref.path, name, gguf)
    return {"kind": kind, "name": name, "gguf": str(gguf), "config": str(config),
            "restart": f"python -m llama_cpp.server --config_file {config}"}


def ensure_served(settings: ServerSettings, adapter_dir: str | Path) -> str:
    """The served name of the cohort's adapter, once the endpoint serves it (vLLM: loaded again when
    missing; llama.cpp: a :class:`JobError` saying to restart the server until it lists the name)."""
    name = served_name(adapter_dir)
    kind = settings.drafting_adapter_serving
    root = _root(settings)
    with _client(settings) as client:
        if name in _served(client, root):
            return name
        if kind == "vllm":
            _vllm_load(client, root, name, Path(adapter_dir))
            return name
    raise JobError(f"the endpoint {root} does not serve the cohort's adapter {name}: llama.cpp servers load "
                   f"adapters at start; restart it with --config_file {llama_server_config(settings)}",
                   retry=True)
