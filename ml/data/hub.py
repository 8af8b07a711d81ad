"""Importing a dataset through the `datasets` library: a local copy or a Hugging Face Hub id.

Owns resolving the name (a save_to_disk folder, a folder of data files, a single data file, or a hub
id), failing fast with DatasetSourceError when it cannot be reached (offline mode, unknown id,
timeout) instead of hanging, and yielding raw row dicts. The rows then go through the same
converters as uploads (ml.data.inspect_rows).
"""

from __future__ import annotations

import os
import queue
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ml.data.inspect import inspect_rows
from ml.data.report import ValidationReport

DEFAULT_TIMEOUT_S = 60.0
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}


class DatasetSourceError(Exception):
    """The dataset could not be opened; the message is meant for the user."""


def _offline() -> bool:
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes")
        for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def _open_local(path: Path, split: str, data_dir: str | None):
    import datasets

    if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DatasetSourceError(f"split {split!r} not found in {path}; it has {', '.join(ds)}")
            ds = ds[split]
        return ds
    if path.is_dir():
        return datasets.load_dataset(str(path), data_dir=data_dir, split=split, streaming=True)
    builder = _FILE_BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise DatasetSourceError(f"{path.name}: not a dataset file (.json, .jsonl, .csv, .tsv or .parquet)")
    kwargs = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
    return datasets.load_dataset(builder, data_files=str(path), split="train", streaming=True, **kwargs)


def _first_row_in_thread(open_fn, timeout_s: float) -> tuple[Any, Iterator[dict]]:
    """Open the dataset and fetch its first row in a daemon thread, giving up after timeout_s."""
    box: queue.Queue = queue.Queue(maxsize=1)

    def work() -> None:
        try:
            it = iter(open_fn())
            box.put(("ok", next(it, None), it))
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            box.put(("error", e, None))

    threading.Thread(target=work, daemon=True, name="hub-dataset-open").start()
    try:
        status, value, it = box.get(timeout=timeout_s)
    except queue.Empty:
        raise DatasetSourceError(f"timed out after {timeout_s:g} s opening the dataset") from None
    if status == "error":
        raise value
    return value, it


def _explain(name: str, e: BaseException) -> DatasetSourceError:
    text = f"{type(e).__name__}: {e}"
    if _offline() or "offline" in text.lower():
        return DatasetSourceError(
            f"dataset {name!r} is not available offline: the Hugging Face Hub cannot be reached "
            "(HF_HUB_OFFLINE is set) and there is no local copy; give a local dataset folder instead"
        )
    if "doesn't exist" in text or "not found" in text.lower() or "DatasetNotFound" in text:
        return DatasetSourceError(f"dataset {name!r} was not found on the Hugging Face Hub")
    return DatasetSourceError(f"could not load dataset {name!r} ({text})")


def load_hub_dataset(
    name: str, split: str = "train", *, data_dir: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S
) -> Iterator[dict[str, Any]]:
    """Raw row dicts of a dataset; raises DatasetSourceError now (not on first use) if it cannot open.

    `name` may be a folder written by Dataset.save_to_disk / DatasetDict.save_to_disk, a folder of
    data files, one data file, or a hub id ("user/name"). Hub datasets are streamed, never fully
    downloaded first. With HF_HUB_OFFLINE=1 and no local copy it fails immediately.
    """
    path = Path(name).expanduser()
    if path.exists():
        open_fn = lambda: _open_local(path, split, data_dir)
    else:
        if not _HUB_ID.match(name):
            raise DatasetSourceError(
                f"{name!r} is neither a local dataset path nor a hub id like 'user/dataset'"
            )

        def open_fn():
            import datasets

            return datasets.load_dataset(name, data_dir=data_dir, split=split, streaming=True)

    try:
        first, rest = _first_row_in_thread(open_fn, timeout_s)
    except DatasetSourceError:
        raise
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:
        if path.exists():
            raise DatasetSourceError(
                f"could not load the local dataset {path} ({type(e).__name__}: {e})"
            ) from e
        raise _explain(name, e) from e

    def rows() -> Iterator[dict[str, Any]]:
        if first is None:
            return
        yield dict(first)
        n = 1
        try:
            for row in rest:
                n += 1
                yield dict(row)
        except Exception as e:
            raise DatasetSourceError(
                f"reading dataset {name!r} failed after {n - 1} rows ({type(e).__name__}: {e})"
            ) from e

    return rows()


def inspect_hub_dataset(
    name: str,
    split: str = "train",
    *,
    data_dir: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    **inspect_kwargs: Any,
) -> ValidationReport:
    """load_hub_dataset + inspect_rows; the dataset is reopened if a second pass is needed.

    Raises DatasetSourceError when the dataset cannot be opened (that is not a content problem).
    """
    first = load_hub_dataset(name, split, data_dir=data_dir, timeout_s=timeout_s)
    handed_out = False

    def rows() -> Iterator[dict[str, Any]]:
        nonlocal handed_out
        if not handed_out:
            handed_out = True
            return first
        return load_hub_dataset(name, split, data_dir=data_dir, timeout_s=timeout_s)

    return inspect_rows(rows, **inspect_kwargs)
