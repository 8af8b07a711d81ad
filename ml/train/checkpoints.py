"""Crash-safe checkpoints for Hugging Face trainers, and finding the newest complete one to resume from.

transformers 5.24's Trainer writes `checkpoint-N` in place (weights, then optimizer, scheduler, RNG,
trainer_state.json), so a kill mid-save leaves a folder that looks like a checkpoint but is not one.
AtomicCheckpointMixin makes it write into a hidden staging folder, marks it complete, and renames it
into place; any Trainer subclass (trl's too) can mix it in. It does not decide when to save.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PREFIX = "checkpoint-"
STAGING = ".staging"
COMPLETE_MARKER = "chatforge_complete.json"
METADATA = "chatforge.json"
_CKPT_RE = re.compile(rf"^{PREFIX}(\d+)$")


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / f"{PREFIX}{step}"


def complete_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint, oldest first. Partial or foreign folders are ignored."""
    out = []
    root = Path(output_dir)
    if not root.is_dir():
        return out
    for p in root.iterdir():
        m = _CKPT_RE.match(p.name)
        if m and p.is_dir() and (p / COMPLETE_MARKER).exists() and (p / "trainer_state.json").exists():
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = complete_checkpoints(output_dir)
    return found[-1][1] if found else None


def first_start_config(output_dir: str | Path) -> dict[str, Any] | None:
    """The resolved config recorded in the newest complete checkpoint (what the run's first start chose
    for every "auto"), or None when there is no checkpoint. A resume reuses those choices, so a run
    resumed on another kind of host (bf16) or after an upgrade of the "auto" rules continues unchanged."""
    found = latest_checkpoint(output_dir)
    if found is None:
        return None
    return json.loads((found / COMPLETE_MARKER).read_text()).get("config")


def _fsync_tree(path: Path) -> None:
    for root, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(staged: Path, final: Path, info: dict[str, Any] | None = None) -> Path:
    """Mark `staged` complete, flush it to disk and rename it to `final` (replacing an older copy)."""
    (staged / COMPLETE_MARKER).write_text(json.dumps(info or {}, indent=1))
    _fsync_tree(staged)
    if final.exists():
        # Same step saved twice (e.g. a pause right on a checkpoint step): swap the old copy out first.
        old = final.with_name(f".old-{final.name}")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        staged.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staged.rename(final)
    _fsync_dir(final.parent)
    return final


@contextmanager
def atomic_dir(final: str | Path, info: dict[str, Any] | None = None) -> Iterator[Path]:
    """Yield a temporary sibling folder to write into; on success it becomes `final`, on error it vanishes."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}.", dir=final.parent))
    try:
        yield tmp
        publish(tmp, final, info)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def clean_partial(output_dir: str | Path) -> list[Path]:
    """Delete leftovers of interrupted saves (staging folders, checkpoint folders without the marker)."""
    removed = []
    root = Path(output_dir)
    if not root.is_dir():
        return removed
    for p in root.iterdir():
        partial_ckpt = _CKPT_RE.match(p.name) and not (p / COMPLETE_MARKER).exists()
        if p.is_dir() and (p.name == STAGING or p.name.startswith((".tmp-", ".old-")) or partial_ckpt):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def rotate(output_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` complete checkpoints."""
    found = complete_checkpoints(output_dir)
    doomed = [p for _, p in found[: max(0, len(found) - keep)]]
    for p in doomed:
        # Rename first so a crash mid-delete leaves no half-deleted folder that still looks complete.
        gone = p.with_name(f".old-{p.name}")
        p.rename(gone)
        shutil.rmtree(gone, ignore_errors=True)
    return doomed


class AtomicCheckpointMixin:
    """Mix into a transformers Trainer (before it in the bases) to write checkpoints atomically.

    The Trainer saves into `<output_dir>/.staging/checkpoint-N`; once everything (weights, optimizer,
    scheduler, RNG, trainer state) is written, this marks it complete and renames it to
    `<output_dir>/checkpoint-N`. Rotation then keeps `args.save_total_limit` complete checkpoints.
    Set `self.checkpoint_info` (a dict) to have it written into the completion marker.
    """

    _staging_active = False
    checkpoint_info: dict[str, Any] | None = None

    def _get_output_dir(self, trial):  # type: ignore[override]
        out = super()._get_output_dir(trial)  # type: ignore[misc]
        return os.path.join(out, STAGING) if self._staging_active else out

    def _save_checkpoint(self, model, trial) -> None:  # type: ignore[override]
        run_dir = Path(super()._get_output_dir(trial))  # type: ignore[misc]
        step = self.state.global_step  # type: ignore[attr-defined]
        staged = run_dir / STAGING / f"{PREFIX}{step}"
        if self.args.should_save:  # type: ignore[attr-defined]
            shutil.rmtree(staged, ignore_errors=True)
        self._staging_active = True
        try:
            super()._save_checkpoint(model, trial)  # type: ignore[misc]
        finally:
            self._staging_active = False
        self.accelerator.wait_for_everyone()  # type: ignore[attr-defined]
        if self.args.should_save:  # type: ignore[attr-defined]
            publish(staged, checkpoint_dir(run_dir, step), {"step": step, **(self.checkpoint_info or {})})
            shutil.rmtree(run_dir / STAGING, ignore_errors=True)
            if self.args.save_total_limit:  # type: ignore[attr-defined]
                rotate(run_dir, self.args.save_total_limit)  # type: ignore[attr-defined]
        self.accelerator.wait_for_everyone()  # type: ignore[attr-defined]


def write_metadata(folder: str | Path, meta: dict[str, Any]) -> Path:
    path = Path(folder) / METADATA
    path.write_text(json.dumps(meta, indent=2, default=str))
    return path


def read_metadata(folder: str | Path) -> dict[str, Any] | None:
    path = Path(folder) / METADATA
    return json.loads(path.read_text()) if path.exists() else None
