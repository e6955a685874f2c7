"""Atomic, verified, numbered checkpoints in `<run_dir>/checkpoints/step_<N>/`.

Write: everything goes into a private temporary directory (state.pt, then manifest.json with
sizes and SHA-256 checksums), each file and the directory are fsynced, then the directory is
renamed to its final name and the parent fsynced. A crash at any point leaves either the
complete new checkpoint or none; readers never see half of one.

Read: the newest `step_*` directory whose manifest verifies is used; an incomplete or corrupt
one is reported with a warning and the previous one is tried. Loading uses
`torch.load(weights_only=True)`: a checkpoint can hold tensors and plain containers only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
MANIFEST_FILE = "manifest.json"
_NAME = re.compile(r"^step_(\d{9})$")
# Fault injection: seconds to wait between writing the state and committing the checkpoint,
# so that tests can kill a job in the middle of a write (tests/cluster/test_preemption.py);
# with the steps variable set (comma-separated), only those checkpoints wait.
WRITE_DELAY_ENV = "VICE_TEST_CHECKPOINT_WRITE_DELAY_S"
WRITE_DELAY_STEPS_ENV = "VICE_TEST_CHECKPOINT_WRITE_DELAY_STEPS"


def _write_delay_s(step: int) -> float:
    """The injected delay of checkpoint `step`'s write (0 unless a test set one)."""
    delay = float(os.environ.get(WRITE_DELAY_ENV) or 0)
    steps = os.environ.get(WRITE_DELAY_STEPS_ENV)
    if steps and step not in {int(s) for s in steps.split(",")}:
        return 0.0
    return delay


class CheckpointError(RuntimeError):
    """A checkpoint directory is incomplete or fails verification."""


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    step: int


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointManager:
    """Saves and finds checkpoints of one run; keeps the newest `keep` (>= 2)."""

    def __init__(self, directory: str | Path, keep: int = 2) -> None:
        if keep < 2:
            raise ValueError(
                f"invalid config value trainer.keep_checkpoints={keep}: must be >= 2 (a crash "
                "while writing one must leave a complete older one)"
            )
        self.directory = Path(directory)
        self.keep = keep

    def list(self) -> list[CheckpointInfo]:
        """Numbered checkpoint directories, newest first (complete or not)."""
        if not self.directory.is_dir():
            return []
        found = []
        for entry in self.directory.iterdir():
            m = _NAME.match(entry.name)
            if m and entry.is_dir():
                found.append(CheckpointInfo(entry, int(m.group(1))))
        return sorted(found, key=lambda c: c.step, reverse=True)

    def save(self, state: dict[str, Any], step: int) -> Path:
        """Writes `state` as checkpoint `step` atomically and prunes old ones."""
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / f"step_{step:09d}"
        tmp = self.directory / f".tmp-step_{step:09d}-{os.getpid()}-{time.time_ns()}"
        tmp.mkdir()
        try:
            state_path = tmp / STATE_FILE
            with open(state_path, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
            time.sleep(_write_delay_s(step))
            manifest = {
                "step": step,
                "time": time.time(),
                "files": {
                    STATE_FILE: {
                        "bytes": state_path.stat().st_size,
                        "sha256": sha256_file(state_path),
                    }
                },
                "complete": True,
            }
            with open(tmp / MANIFEST_FILE, "w") as f:
                json.dump(manifest, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            _fsync_path(tmp)
            if final.exists():  # a re-save of the same step (e.g. stop right after a save)
                shutil.rmtree(final)
            os.rename(tmp, final)
            _fsync_path(self.directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.prune()
        return final

    def prune(self) -> None:
        """Keeps the newest `keep` verified checkpoints; drops older ones and stale temps."""
        kept = 0
        for info in self.list():
            if kept < self.keep:
                if self.verify(info.path, quick=True):
                    kept += 1
                continue
            shutil.rmtree(info.path, ignore_errors=True)
        for entry in self.directory.glob(".tmp-step_*"):
            # Temps of a dead writer (the pid in the name no longer runs) are garbage.
            try:
                pid = int(entry.name.split("-")[2])
            except (IndexError, ValueError):
                continue
            if pid != os.getpid() and not _pid_alive(pid):
                shutil.rmtree(entry, ignore_errors=True)

    @staticmethod
    def verify(path: Path, quick: bool = False) -> bool:
        try:
            CheckpointManager.check(path, quick=quick)
            return True
        except CheckpointError:
            return False

    @staticmethod
    def check(path: Path, quick: bool = False) -> dict[str, Any]:
        """Returns the manifest, or raises CheckpointError saying what is wrong."""
        manifest_path = path / MANIFEST_FILE
        try:
            manifest = json.loads(manifest_path.read_text())
        except FileNotFoundError as err:
            raise CheckpointError(f"{path}: no {MANIFEST_FILE} (incomplete write)") from err
        except (OSError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{path}: unreadable {MANIFEST_FILE}: {err}") from err
        if not manifest.get("complete"):
            raise CheckpointError(f"{path}: manifest not marked complete")
        for name, meta in manifest.get("files", {}).items():
            file = path / name
            if not file.is_file():
                raise CheckpointError(f"{path}: {name} is missing")
            if file.stat().st_size != meta["bytes"]:
                raise CheckpointError(
                    f"{path}: {name} has {file.stat().st_size} bytes, manifest says {meta['bytes']}"
                )
            if not quick and sha256_file(file) != meta["sha256"]:
                raise CheckpointError(f"{path}: {name} checksum mismatch (corrupt)")
        return manifest

    def load_latest(self, map_location: str | torch.device = "cpu") -> tuple[dict, Path] | None:
        """The newest checkpoint that verifies and loads, or None when there is none."""
        for info in self.list():
            try:
                self.check(info.path)
                with open(info.path / STATE_FILE, "rb") as f:
                    state = torch.load(f, map_location=map_location, weights_only=True)
                return state, info.path
            except (
                CheckpointError,
                RuntimeError,
                OSError,
                EOFError,
                pickle.UnpicklingError,
            ) as err:
                log.warning(
                    "checkpoint %s is unusable (%s); trying the previous one", info.path.name, err
                )
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
