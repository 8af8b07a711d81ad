"""Serving: a continuous-batching, multi-adapter generation engine (pure torch, no HTTP).

Public API: Engine, EnginePool, GenerationRequest (GrammarSpec for constrained decoding), RequestHandle, GenerationEvent, Completion, the
ServeError family (status = HTTP status), and adapter_base_model(). The API layer wraps these.
"""

from ml.serve.architectures import SUPPORTED_MODEL_TYPES
from ml.serve.constrained import GrammarSpec
from ml.serve.engine import Engine, EngineStats
from ml.serve.handle import RequestHandle
from ml.serve.lora import BASE, adapter_base_model
from ml.serve.pool import EnginePool
from ml.serve.request import (
    Completion,
    EngineBusy,
    EngineClosed,
    GenerationEvent,
    GenerationRequest,
    InvalidRequest,
    RequestTooLarge,
    ServeError,
    TokenLogprob,
    UnknownAdapter,
    UnsupportedAdapter,
    Usage,
)

__all__ = [
    "BASE",
    "SUPPORTED_MODEL_TYPES",
    "Completion",
    "Engine",
    "EngineBusy",
    "EngineClosed",
    "EnginePool",
    "EngineStats",
    "GenerationEvent",
    "GenerationRequest",
    "GrammarSpec",
    "InvalidRequest",
    "RequestHandle",
    "RequestTooLarge",
    "ServeError",
    "TokenLogprob",
    "UnknownAdapter",
    "UnsupportedAdapter",
    "Usage",
    "adapter_base_model",
]
