"""/v1/fine_tuning/pipelines: the one-call InstructGPT pipeline (SFT -> reward model -> PPO).

Creates three ordinary jobs chained by chatforge.pipelines; each is also visible through the job API.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.deps import ProjectDep, SessionDep
from api.errors import APIError, Conflict, NotFound
from api.pagination import paginate
from api.routes.fine_tuning import job_object
from api.services import jobs as svc
from chatforge.db.models import Pipeline, utcnow
from chatforge.jobconfig import schema_ref
from chatforge.jobstate import add_event, finish
from chatforge.pipelines import STAGES, stage_jobs

router = APIRouter(prefix="/v1/fine_tuning", tags=["pipelines"])


class Stages(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sft: Annotated[dict[str, Any], WithJsonSchema(schema_ref("supervised"))] = Field(
        default_factory=dict, description="body of method.supervised")
    reward_model: Annotated[dict[str, Any], WithJsonSchema(schema_ref("reward_model"))] = Field(
        default_factory=dict, description="body of method.reward_model")
    ppo: Annotated[dict[str, Any], WithJsonSchema(schema_ref("ppo"))] = Field(
        default_factory=dict, description="body of method.ppo (its reward_model is the pipeline's)")


class CreatePipeline(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    sft_file: str
    preference_file: str
    prompts_file: str
    sft_validation_file: str | None = None
    preference_validation_file: str | None = None
    suffix: str | None = None
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    metadata: dict[str, str] | None = None
    stages: Stages = Field(default_factory=Stages)


def pipeline_object(session: Session, p: Pipeline) -> dict:
    jobs = stage_jobs(session, p.id)
    current = next((STAGES[j.pipeline_stage - 1] for j in jobs if j.status in ("queued", "running", "paused")), None)
    return {
        "id": p.id, "object": "fine_tuning.pipeline", "created_at": int(p.created_at.timestamp()),
        "status": p.status, "error": p.error, "model": p.spec.get("model"), "current_stage": current,
        "stages": [{"name": STAGES[j.pipeline_stage - 1], "job_id": j.id, "status": j.status,
                    "fine_tuned_model": j.fine_tuned_model, "job": job_object(j)} for j in jobs],
        "fine_tuned_model": jobs[-1].fine_tuned_model if jobs and p.status == "succeeded" else None,
    }


STAGE_FIELDS = {"supervised": "sft", "reward_model": "reward_model", "ppo": "ppo"}


@router.post("/pipelines")
def create_pipeline(body: CreatePipeline, session: SessionDep, project: ProjectDep) -> dict:
    pipe = Pipeline(project_id=project.id, status="running", spec=body.model_dump())
    session.add(pipe)
    session.flush()
    common = {"suffix": body.suffix, "seed": body.seed, "metadata": {**(body.metadata or {}), "pipeline": pipe.id}}
    stages = (
        (1, "sft", "supervised", body.sft_file, body.sft_validation_file, body.stages.sft),
        (2, "preference", "reward_model", body.preference_file, body.preference_validation_file,
         body.stages.reward_model),
        (3, "prompts", "ppo", body.prompts_file, None, body.stages.ppo),
    )
    for stage, files, mtype, train, valid, settings in stages:
        # an error names the pipeline's own field (sft_file, stages.ppo.x), not the stage job's
        names = {"training_file": f"{files}_file", "validation_file": f"{files}_validation_file",
                 f"method.{mtype}": f"stages.{STAGE_FIELDS[mtype]}"}
        try:
            svc.create_job(session, project, {**common, "model": body.model, "training_file": train,
                                              "validation_file": valid, "method": {"type": mtype, mtype: settings}},
                           pipeline_id=pipe.id, stage=stage, waiting=stage > 1)
        except APIError as e:
            for job_name, own in names.items():
                if e.param and (e.param == job_name or e.param.startswith(job_name + ".")):
                    e.param = own + e.param[len(job_name):]
                    e.message = e.message.replace(job_name, own, 1)
                    break
            raise
    session.flush()
    return pipeline_object(session, pipe)


def owned_pipeline(session: Session, project, pipeline_id: str) -> Pipeline:
    p = session.get(Pipeline, pipeline_id)
    if p is None or p.project_id != project.id:
        raise NotFound(f"No such pipeline: {pipeline_id}", param="pipeline_id", code="pipeline_not_found")
    return p


@router.get("/pipelines")
def list_pipelines(session: SessionDep, project: ProjectDep, after: str | None = None,
                   limit: Annotated[int, Query()] = 20) -> dict:
    q = select(Pipeline).where(Pipeline.project_id == project.id)
    return paginate(session, q, Pipeline, after, limit, lambda p: pipeline_object(session, p))


@router.get("/pipelines/{pipeline_id}")
def retrieve_pipeline(pipeline_id: str, session: SessionDep, project: ProjectDep) -> dict:
    return pipeline_object(session, owned_pipeline(session, project, pipeline_id))


@router.post("/pipelines/{pipeline_id}/cancel")
def cancel_pipeline(pipeline_id: str, session: SessionDep, project: ProjectDep) -> dict:
    p = owned_pipeline(session, project, pipeline_id)
    if p.status != "running":
        raise Conflict(f"Pipeline {pipeline_id} has already {p.status}.", param="pipeline_id")
    for j in stage_jobs(session, p.id):
        if j.status == "running":
            j.requested = "cancel"
            add_event(session, j.id, "Cancellation requested (pipeline cancelled).")
        elif j.status in ("queued", "waiting", "paused", "validating_files"):
            finish(session, j, "cancelled", message="Cancelled with its pipeline.")
    p.status = "cancelled"
    p.error = {"stage": None, "job_id": None, "message": f"cancelled by the user at {utcnow():%Y-%m-%d %H:%M:%S}"}
    return pipeline_object(session, p)
