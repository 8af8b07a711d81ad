"""The tables: one definition each. The database is the source of truth for every job's state."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import JSON, BigInteger, DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str, nbytes: int = 12) -> str:
    return f"{prefix}{secrets.token_hex(nbytes)}"


class UTCDateTime(TypeDecorator):
    """Timezone-aware datetimes on PostgreSQL and SQLite alike (SQLite drops tzinfo)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map: ClassVar = {datetime: UTCDateTime(), dict[str, Any]: JSON, list[Any]: JSON}


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("proj_", 8))
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # quotas set by `chatforge quotas set`; None: unlimited
    max_queued_jobs: Mapped[int | None] = mapped_column(Integer, default=None)
    max_storage_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("key_", 8))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    scope: Mapped[str] = mapped_column(String(16), default="full", server_default="full")  # chatforge.keys.SCOPES
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)  # updated at most once a minute
    rpm: Mapped[int | None] = mapped_column(Integer, default=None)  # requests per minute; None: unlimited
    max_streams: Mapped[int | None] = mapped_column(Integer, default=None)  # concurrent generations
    project: Mapped[Project] = relationship()


class StoredFile(Base):
    __tablename__ = "files"
    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("file-"))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    # uploaded (validating in the background) | processed | error
    status: Mapped[str] = mapped_column(String(32), default="uploaded", index=True)
    format: Mapped[str | None] = mapped_column(String(64), default=None)
    kind: Mapped[str | None] = mapped_column(String(32), default=None)  # sft|preference|prompts
    n_examples: Mapped[int | None] = mapped_column(Integer, default=None)
    report: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    storage_key: Mapped[str] = mapped_column(String(512))
    canonical_key: Mapped[str | None] = mapped_column(String(512), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # background validation (large uploads): "line N: message" when status is error; progress 0..1
    status_details: Mapped[str | None] = mapped_column(Text, default=None)
    progress: Mapped[float | None] = mapped_column(default=None)
    forced_format: Mapped[str | None] = mapped_column(String(64), default=None)
    max_length: Mapped[int | None] = mapped_column(Integer, default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    enqueued_at: Mapped[datetime | None] = mapped_column(default=None)


class Model(Base):
    """A servable model: a shared base model (project_id NULL), a fine-tuned model or a checkpoint."""

    __tablename__ = "models"
    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    project_id: Mapped[str | None] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(32))  # base|fine_tuned|checkpoint|reward_model
    parent: Mapped[str | None] = mapped_column(String(255), default=None)
    root: Mapped[str] = mapped_column(String(255))  # the base model id
    storage_key: Mapped[str] = mapped_column(String(512))
    is_adapter: Mapped[bool] = mapped_column(default=False)
    job_id: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    step: Mapped[int | None] = mapped_column(Integer, default=None)
    source: Mapped[str | None] = mapped_column(Text, default=None)  # where a base model came from
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)  # dtype, quantization, method, ...
    # bytes its stored folder takes (a checkpoint: the whole checkpoint folder); NULL until measured
    bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class FineTuningJob(Base):
    __tablename__ = "fine_tuning_jobs"
    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("ftjob-"))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    model: Mapped[str] = mapped_column(String(255))
    method: Mapped[dict[str, Any]] = mapped_column(default=dict)  # {"type": ..., "<type>": {...}} as echoed
    training_file: Mapped[str | None] = mapped_column(String(64), default=None)
    validation_file: Mapped[str | None] = mapped_column(String(64), default=None)
    extra_files: Mapped[dict[str, Any]] = mapped_column(default=dict)  # e.g. reward model / prompts
    suffix: Mapped[str | None] = mapped_column(String(64), default=None)
    seed: Mapped[int] = mapped_column(Integer, default=0)
    user_metadata: Mapped[dict[str, Any] | None] = mapped_column("metadata", default=None)
    status: Mapped[str] = mapped_column(String(32), default="validating_files", index=True)
    requested: Mapped[str | None] = mapped_column(String(16), default=None)  # cancel|pause asked by user
    fine_tuned_model: Mapped[str | None] = mapped_column(String(255), default=None)
    error: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger, default=None)
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int | None] = mapped_column(Integer, default=None)
    result: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    result_files: Mapped[list[Any]] = mapped_column(default=list)
    requires: Mapped[str] = mapped_column(String(16), default="cpu")  # cpu|cuda: which workers may run it
    # training processes (ranks); None: one per GPU of a CUDA worker, else 1
    num_processes: Mapped[int | None] = mapped_column(Integer, default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(255), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    enqueued_at: Mapped[datetime | None] = mapped_column(default=None)
    pipeline_id: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    pipeline_stage: Mapped[int | None] = mapped_column(Integer, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    estimated_finish: Mapped[datetime | None] = mapped_column(default=None)


class JobEvent(Base):
    __tablename__ = "job_events"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    level: Mapped[str] = mapped_column(String(16), default="info")
    type: Mapped[str] = mapped_column(String(16), default="message")  # message|metrics
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(default=None)

    __table_args__ = (Index("ix_job_events_job_seq", "job_id", "seq"),)

    @property
    def public_id(self) -> str:
        return f"ftevent-{self.seq:012d}"


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("ftckpt-"))
    job_id: Mapped[str] = mapped_column(ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    model_id: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Pipeline(Base):
    __tablename__ = "pipelines"
    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("ftpipe-"))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(32), default="running")
    spec: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Worker(Base):
    """Live workers and what they can run; refreshed by heartbeat, so the API can tell a user when
    no worker can take a job."""

    __tablename__ = "workers"
    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    capabilities: Mapped[str] = mapped_column(String(64))  # "cpu" or "cpu,cuda"
    gpu_memory_mb: Mapped[int | None] = mapped_column(Integer, default=None)
    seen_at: Mapped[datetime] = mapped_column(default=utcnow)





class Eval(Base):
    """An eval (OpenAI's Evals API): a data source config and testing criteria; runs grade models on it."""

    __tablename__ = "evals"
    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("eval_"))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(255), default="")
    data_source_config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    testing_criteria: Mapped[list[Any]] = mapped_column(default=list)
    user_metadata: Mapped[dict[str, Any] | None] = mapped_column("metadata", default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class EvalRun(Base):
    """One run of an eval against a model: a job on the worker queue (leased like fine-tuning jobs)."""

    __tablename__ = "eval_runs"
    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("evalrun_"))
    eval_id: Mapped[str] = mapped_column(ForeignKey("evals.id", ondelete="CASCADE"), index=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(255), default="")
    model: Mapped[str] = mapped_column(String(255), default="")
    data_source: Mapped[dict[str, Any]] = mapped_column(default=dict)
    user_metadata: Mapped[dict[str, Any] | None] = mapped_column("metadata", default=None)
    status: Mapped[str] = mapped_column(String(32), default="queued", index=True)  # queued|in_progress|...
    requested: Mapped[str | None] = mapped_column(String(16), default=None)  # cancel
    error: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    total_items: Mapped[int | None] = mapped_column(Integer, default=None)
    completed_items: Mapped[int] = mapped_column(Integer, default=0)
    summary: Mapped[dict[str, Any] | None] = mapped_column(default=None)  # counts, per criterion, pairwise
    requires: Mapped[str] = mapped_column(String(16), default="cpu")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(255), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    enqueued_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class EvalOutputItem(Base):
    """One graded item of a run; written once, so a resumed run skips items already stored."""

    __tablename__ = "eval_output_items"
    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("outputitem_"))
    run_id: Mapped[str] = mapped_column(ForeignKey("eval_runs.id", ondelete="CASCADE"))
    eval_id: Mapped[str] = mapped_column(String(64))
    datasource_item_id: Mapped[int] = mapped_column(Integer)
    datasource_item: Mapped[dict[str, Any]] = mapped_column(default=dict)
    sample: Mapped[dict[str, Any]] = mapped_column(default=dict)
    baseline_sample: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    results: Mapped[list[Any]] = mapped_column(default=list)
    status: Mapped[str] = mapped_column(String(16))  # pass|fail|error
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (UniqueConstraint("run_id", "datasource_item_id", name="uq_eval_output_items_run_item"),)


class Upload(Base):
    """OpenAI's Uploads API: a file assembled from parts (pending -> completed | cancelled | expired)."""

    __tablename__ = "uploads"
    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("upload_"))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(32))
    mime_type: Mapped[str] = mapped_column(String(255), default="")
    bytes: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    file_id: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)


class UploadPart(Base):
    """One part of an upload, stored under uploads/<upload id>/<part id>."""

    __tablename__ = "upload_parts"
    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("part_"))
    upload_id: Mapped[str] = mapped_column(ForeignKey("uploads.id", ondelete="CASCADE"), index=True)
    bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class StoredResponse(Base):
    """A Responses API response (`/v1/responses`) kept for retrieval and `previous_response_id`:
    `context` is everything the model saw before its output (earlier turns + this request's input)."""

    __tablename__ = "responses"
    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("resp_"))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    model: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16))  # completed|incomplete|failed
    previous_response_id: Mapped[str | None] = mapped_column(String(64), default=None)
    instructions: Mapped[str | None] = mapped_column(Text, default=None)
    input_items: Mapped[list[Any]] = mapped_column(default=list)  # this request's input, with ids
    context: Mapped[list[Any]] = mapped_column(default=list)  # earlier turns' items + input_items
    output: Mapped[list[Any]] = mapped_column(default=list)
    usage: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    body: Mapped[dict[str, Any]] = mapped_column(default=dict)  # the response object as answered
    store: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
