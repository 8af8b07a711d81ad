"""Settings from the environment (prefix CHATFORGE_); one instance per process via get_settings()."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHATFORGE_", extra="ignore")

    data_dir: Path = Field(Path("./data"), description="Uploads, checkpoints, models, the embedded broker.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL. Default: SQLite file in the data directory."
    )
    broker_url: str | None = Field(
        None, description="Celery broker. Default: kombu filesystem transport in the data directory."
    )
    api_key: str | None = Field(None, description="If set, accepted as the key of the default project.")
    max_upload_bytes: int = Field(512 * 1024 * 1024, description="Largest accepted upload (413 above).")
    default_base_model: str = Field("smollm2-135m-instruct", description="Base model used when none is named.")
    worker_capabilities: str = Field(
        "auto", description='"auto" (detect CUDA), "cpu" or "cuda": which jobs this worker takes.'
    )
    job_lease_seconds: int = Field(60, description="A running job whose worker misses heartbeats this long is requeued.")
    reconcile_interval_seconds: int = Field(15, description="How often a worker looks for lost or stuck jobs.")
    max_job_attempts: int = Field(3, description="A job that crashed its worker this many times fails.")
    warm_runner: bool = Field(
        True, description="Keep one training process per worker started ahead, with torch and the training "
        "libraries imported, to take the next job (saves their import, seconds per job; costs the idle "
        "process's memory, about 600 MB). Each job still runs in a process of its own.",
    )
    prepare_replay_set: bool = Field(
        True, description="While a worker is idle, its warm training process computes the default base model's "
        "retain_base replay set (its answers to 24 general prompts; about 15 s of CPU for a 135M model) so that the "
        "first LoRA job on it reads them from the cache. It stops as soon as a job arrives. Needs warm_runner.",
    )
    serve_dtype: str = Field("auto", description="Default dtype for serving base models: float32, bfloat16, or "
                             "auto (bfloat16 on GPUs and CPUs with native bf16, AVX512-BF16 or AMX; float32 "
                             "elsewhere, where emulated bf16 is slower).")
    serve_max_batch: int = Field(8, description="Most sequences decoded together by the serving engine.")
    serve_max_queue: int = Field(64, description="Waiting requests before the API answers 429.")
    malloc_trim_seconds: float = Field(
        10, ge=0, description="How often the API process gives free memory back to the system (glibc "
        "malloc_trim), which keeps resident memory flat under sustained serving; 0 never.",
    )
    adapter_cache_size: int = Field(8, description="Fine-tuned adapters kept loaded per base model (LRU).")
    serve_prefix_cache_mb: float = Field(
        256, ge=0, description="Memory per served base model for keys and values of prompt prefixes reused "
        "by later requests (shared system prompts, continued conversations); 0 turns prefix caching off.",
    )
    import_dirs: str = Field(
        "", description="Server folders that POST /v1/files/import may read local datasets from, separated by "
        "the OS path separator (':'); empty: only hub ids, no server paths.",
    )
    http_header_timeout_seconds: float = Field(
        10, ge=0, description="A client must send a whole request head (request line and headers) within this "
        "many seconds of opening the connection, or of the first byte of a later request on it; otherwise the "
        "connection is answered 408 and closed (slow clients holding connections). 0 turns the limit off.",
    )
    http_keep_alive_seconds: int = Field(
        75, ge=1, description="An idle keep-alive connection is closed after this many seconds. Longer than "
        "HTTP clients keep idle connections pooled (httpx and the openai SDK 5 s, aiohttp 15 s, nginx "
        "upstreams 60 s): with the two equal, a client reusing a connection just as the server closes it "
        "gets a connection error.",
    )
    log_format: str = Field("json", description='"json" for structured logs, "text" for humans.')
    sync_validation_max_bytes: int = Field(
        16 * 1024 * 1024,
        description="Uploads up to this size are validated inside the request (400 with line numbers); "
        'larger ones are answered at once with status "uploaded" and validated on a worker.',
    )
    max_chunked_upload_bytes: int = Field(
        8 * 1024**3, description="Largest file assembled through /v1/uploads (parts of up to 64 MB each)."
    )
    upload_expiry_seconds: int = Field(3600, description="An upload not completed this long expires; its parts are deleted.")
    file_validation_lease_seconds: int = Field(
        60, description="A file being validated whose worker stops renewing this long is validated again."
    )
    storage_url: str | None = Field(
        None, description="s3://bucket/prefix: keep every artifact in an S3-compatible store (endpoint and "
        "credentials from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION). "
        "Unset: the storage folder of the data directory.",
    )
    storage_cache_bytes: int = Field(
        20 * 1024**3, description="Local read-through cache of an object store (models, adapters, datasets); "
        "least recently used entries are evicted above this size.",
    )
    storage_part_bytes: int = Field(8 * 1024**2, description="Multipart upload part size for an object store (>= 5 MiB).")

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'chatforge.db').resolve()}"

    @property
    def celery_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def embedded_broker(self) -> bool:
        return self.celery_broker_url.startswith("filesystem://")

    @property
    def broker_dir(self) -> Path:
        return (self.data_dir / "broker").resolve()

    @property
    def storage_dir(self) -> Path:
        return (self.data_dir / "storage").resolve()

    @property
    def cache_dir(self) -> Path:
        """This host's read-through cache of the object store."""
        return (self.data_dir / "cache").resolve()

    @property
    def scratch_dir(self) -> Path:
        """Where this host's jobs write before publishing to the object store."""
        return (self.data_dir / "scratch").resolve()


@lru_cache
def get_settings() -> Settings:
    return Settings()


def reset_settings() -> None:
    """Forget the cached settings (tests and the CLI change the environment)."""
    get_settings.cache_clear()
