"""Process settings of the fleet server (pydantic-settings, environment prefix ``ARTE_SERVER_``).

Everything a deployment tunes lives here and nowhere else: where the state is (``data_dir``,
``database_url``), request limits (body sizes, per-key rate limit), enrollment-token lifetime, the job
queue's timing (heartbeat, dead-worker timeout, attempts) and how job handlers run models, per role:
``drafting_*`` opens the teacher that writes drafts and tailored data (:func:`arte.backends.open_teacher`:
llama.cpp, torch, or an OpenAI-compatible endpoint such as vLLM) and how the cohort's aligned adapter
reaches it (``drafting_adapter_serving``, :mod:`server.serving`); ``teacher_model``, ``align_*`` and
``accelerate_args`` are the alignment's (TRL on the same weights). ``ARTE_SERVER_DATABASE_URL=postgresql+psycopg://user@host/db`` selects
PostgreSQL; without it the server keeps an SQLite file under ``data_dir``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from arte.backends import TEACHER_BACKENDS, TORCH_DTYPES
from arte.backends.openai import STRUCTURED_OUTPUTS
from arte.home import arte_home

__all__ = ["SERVING_KINDS", "ServerSettings"]

# How an align job's cohort adapter reaches the drafting endpoint (server.serving).
SERVING_KINDS = ("none", "vllm", "llama-cpp")


def _default_data_dir() -> Path:
    return arte_home() / "server"


class ServerSettings(BaseSettings):
    """Settings of ``arte-server`` (every field can be set as ``ARTE_SERVER_<NAME>``)."""

    model_config = SettingsConfigDict(env_prefix="ARTE_SERVER_", extra="forbid")

    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="State directory: the SQLite database, adapters, job work dirs.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; None means sqlite:///<data_dir>/arte.db. "
        "PostgreSQL: postgresql+psycopg://user@host:5432/db",
    )
    db_schema: str | None = Field(
        default=None, description="PostgreSQL schema to keep the tables in (search_path); None: the default."
    )
    host: str = Field(default="127.0.0.1", description="Address `serve` binds.")
    port: int = Field(default=8700, ge=0, le=65535, description="Port `serve` binds.")
    max_body_bytes: int = Field(default=1 << 20, gt=0, description="Largest request body (413 above).")
    max_upload_bytes: int = Field(
        default=64 << 20, gt=0, description="Largest admin dataset upload body (413 above)."
    )
    rate_limit_per_s: float = Field(
        default=50.0, ge=0, description="Sustained requests per second per key (0 disables)."
    )
    rate_limit_burst: int = Field(default=100, gt=0, description="Requests a key may make at once.")
    max_concurrent_requests: int = Field(
        default=32,
        ge=0,
        le=39,
        description="Requests one API process works on at once; more wait in arrival order. Must stay "
        "below the 40 threads that run the routes (0: no limit, for tests only).",
    )
    db_pool_size: int = Field(
        default=24,
        ge=1,
        le=1000,
        description="Database connections each API process keeps open (connections above it are closed "
        "when returned: under sustained load they would be opened and closed per request).",
    )
    db_max_overflow: int = Field(
        default=8, ge=0, le=1000, description="Extra connections a process may open under a burst."
    )
    device_fast_path: bool = Field(
        default=True,
        description="Answer the device hot path (drafts, reports, the dataset manifest) without FastAPI's "
        "routing, reports group-committed (server.device_fast_path); the same answers and rows as the routes.",
    )
    device_key_cache_s: float = Field(
        default=5.0,
        ge=0,
        le=300,
        description="Seconds a device key verified by the database is trusted for the fast path's reads "
        "(drafts, dataset manifest) without reading it again (server.keycache). A key revoked by another "
        "API process may still read for this long; reports always check the key. 0: no cache.",
    )
    debug_timings: bool = Field(
        default=False,
        description="Load tests only: an X-Arte-Timing header on every response (time per phase) and "
        "GET /api/v1/debug/timings (GC pauses, event-loop blocked time, commits; server.timings).",
    )
    enroll_token_ttl_s: int = Field(
        default=7 * 24 * 3600, gt=0, description="Default lifetime of an enrollment token."
    )
    dataset_signing_key: SecretStr | None = Field(
        default=None, description="Hex secret; when set, dataset manifests carry hmac-sha256 of the sha256."
    )
    job_heartbeat_s: float = Field(default=10.0, gt=0, description="How often a worker heartbeats a job.")
    job_dead_after_s: float = Field(
        default=60.0, gt=0, description="A running job whose heartbeat is older is re-queued."
    )
    job_max_attempts: int = Field(default=3, ge=1, le=100, description="Attempts before a job fails.")
    job_retry_base_s: float = Field(
        default=30.0, ge=0, description="Wait before a failed job's second attempt; it doubles per attempt."
    )
    job_retry_max_s: float = Field(default=1800.0, ge=0, description="Longest wait between attempts.")
    worker_poll_s: float = Field(default=2.0, gt=0, description="Idle worker's wait between claims.")
    campaign_tick_s: float = Field(
        default=5.0, gt=0, description="How often a worker advances the active campaigns (server.driver)."
    )
    teacher_model: str = Field(
        default="default",
        description="The teacher's base weights: 'default', a GGUF path or an HF dir. Align jobs train a LoRA "
        "adapter on it (TRL); elicit/tailor jobs run it too unless drafting_model or drafting_endpoint is set.",
    )
    drafting_backend: Literal[TEACHER_BACKENDS] = Field(  # type: ignore[valid-type]
        default="auto",
        description="Runtime of the elicit/tailor teacher: llama (GGUF), torch (HF dir or GGUF), openai "
        "(drafting_endpoint) or auto (openai with an endpoint; torch for an HF dir or a cohort's PEFT "
        "adapter; else llama).",
    )
    drafting_model: str | None = Field(
        default=None, description="Local model of the elicit/tailor teacher (None: teacher_model), e.g. a GGUF "
        "of the same weights for llama.cpp; with llama-cpp serving, the base the llama.cpp server runs."
    )
    drafting_endpoint: str | None = Field(
        default=None, description="OpenAI-compatible server root (vLLM, llama-server) for elicit/tailor jobs."
    )
    drafting_endpoint_model: str = Field(default="teacher", description="The base model's name at the endpoint.")
    drafting_api_key: SecretStr | None = Field(
        default=None, description="Bearer key of drafting_endpoint (set ARTE_SERVER_DRAFTING_API_KEY)."
    )
    drafting_structured_output: Literal[STRUCTURED_OUTPUTS] = Field(  # type: ignore[valid-type]
        default="vllm", description="How the endpoint is told the draft format (arte.backends.openai)."
    )
    drafting_timeout_s: float = Field(default=120.0, gt=0, description="Seconds per request to the endpoint.")
    drafting_adapter_serving: Literal[SERVING_KINDS] = Field(  # type: ignore[valid-type]
        default="none",
        description="How an align job's cohort adapter reaches drafting_endpoint (server.serving): vllm "
        "(/v1/load_lora_adapter), llama-cpp (GGUF LoRA + llama_server_config, then a server restart), or "
        "none (tailoring with an adapter runs the teacher locally on torch).",
    )
    llama_server_config: Path | None = Field(
        default=None, description="The llama-cpp-python server config file llama-cpp serving writes (None: "
        "<data_dir>/serving/llama_cpp_server.json)."
    )
    llama_server_options: dict[str, Any] = Field(
        default_factory=dict, description="Model settings of every model in llama_server_config (n_ctx, "
        "n_gpu_layers, ...)."
    )
    drafting_device: str = Field(default="auto", description="torch teacher: auto, cpu, cuda or cuda:N.")
    drafting_dtype: Literal[TORCH_DTYPES] = Field(  # type: ignore[valid-type]
        default="auto", description="torch teacher's weights: auto (bf16 on a GPU, fp32 on a CPU), bf16, fp16, fp32."
    )
    drafting_device_map: str | None = Field(
        default=None, description="torch teacher: 'auto' spreads a model larger than one GPU over all of them."
    )
    drafting_gpu_layers: int = Field(
        default=0, ge=-1, description="llama.cpp teacher: layers offloaded to the GPU (-1: all)."
    )
    align_defaults: dict[str, Any] = Field(
        default_factory=dict,
        description="arte.dpo.AlignConfig fields applied to every align job under its own params['config'] "
        "(e.g. {\"precision\": \"bf16\", \"gradient_checkpointing\": true, \"load_in_4bit\": true}).",
    )
    align_checkpoint_steps: int = Field(
        default=50, ge=0, description="Align jobs save a checkpoint every this many steps (in the job's work "
        "dir) and a retried job resumes from the last one (0: no checkpoints)."
    )
    align_launcher: Literal["inprocess", "accelerate"] = Field(
        default="inprocess", description="Run align jobs in the worker or as `accelerate launch` subprocess."
    )
    accelerate_args: list[str] = Field(
        default_factory=list, description="Extra `accelerate launch` arguments (e.g. --num_processes 4)."
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        description="Bearer token that may read /metrics (for a Prometheus scraper) and nothing else; "
        "the admin key may always read it.",
    )
    check_migrations: bool = Field(
        default=True, description="Refuse to start when the database is not at the head revision."
    )

    @model_validator(mode="after")
    def _drafting_endpoint_needed(self) -> "ServerSettings":
        if self.drafting_adapter_serving != "none" and not self.drafting_endpoint:
            raise ValueError(f"drafting_adapter_serving={self.drafting_adapter_serving} serves adapters on "
                             f"drafting_endpoint: set drafting_endpoint")
        if self.drafting_backend == "openai" and not self.drafting_endpoint:
            raise ValueError("drafting_backend=openai needs drafting_endpoint")
        return self

    def resolved_database_url(self) -> str:
        """The SQLAlchemy URL in use (the SQLite default under ``data_dir`` when none is set)."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(Path(self.data_dir) / 'arte.db').resolve()}"
