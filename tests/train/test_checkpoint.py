import json
import logging
import os

import pytest
import torch

from vice.train.checkpoint import CheckpointManager


def _state(step):
    return {"step": step, "w": torch.full((3,), float(step)), "nested": {"a": [1, 2]}}


def test_save_load_roundtrip_and_keep_last_k(tmp_path):
    mgr = CheckpointManager(tmp_path, keep=2)
    for step in (10, 20, 30):
        mgr.save(_state(step), step)
    assert [c.step for c in mgr.list()] == [30, 20]
    state, path = mgr.load_latest()
    assert path.name == "step_000000030" and state["step"] == 30
    torch.testing.assert_close(state["w"], torch.full((3,), 30.0))
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["complete"] and len(manifest["files"]["state.pt"]["sha256"]) == 64


def test_keep_must_be_at_least_two(tmp_path):
    with pytest.raises(ValueError, match=r"trainer.keep_checkpoints=1: must be >= 2"):
        CheckpointManager(tmp_path, keep=1)


def test_corrupt_latest_falls_back_with_warning(tmp_path, caplog):
    mgr = CheckpointManager(tmp_path, keep=3)
    mgr.save(_state(1), 1)
    latest = mgr.save(_state(2), 2)
    data = bytearray((latest / "state.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes
    (latest / "state.pt").write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        state, path = mgr.load_latest()
    assert state["step"] == 1 and path.name == "step_000000001"
    assert "step_000000002 is unusable" in caplog.text and "checksum mismatch" in caplog.text


def test_incomplete_checkpoint_is_skipped(tmp_path, caplog):
    mgr = CheckpointManager(tmp_path, keep=3)
    mgr.save(_state(1), 1)
    half = tmp_path / "step_000000002"
    half.mkdir()
    (half / "state.pt").write_bytes(b"partial")
    with caplog.at_level(logging.WARNING):
        state, _ = mgr.load_latest()
    assert state["step"] == 1 and "no manifest.json" in caplog.text


def test_truncated_file_is_detected(tmp_path):
    mgr = CheckpointManager(tmp_path, keep=3)
    mgr.save(_state(1), 1)
    p = mgr.save(_state(2), 2) / "state.pt"
    p.write_bytes(p.read_bytes()[:-10])
    assert mgr.load_latest()[0]["step"] == 1


def test_failed_write_leaves_no_partial_checkpoint(tmp_path, monkeypatch):
    mgr = CheckpointManager(tmp_path, keep=2)
    mgr.save(_state(1), 1)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        mgr.save(_state(2), 2)
    assert [c.step for c in mgr.list()] == [1]
    assert not list(tmp_path.glob(".tmp-*"))


def test_stale_temp_of_dead_writer_is_cleaned(tmp_path):
    mgr = CheckpointManager(tmp_path, keep=2)
    stale = tmp_path / ".tmp-step_000000005-999999-1"
    stale.mkdir()
    mine = tmp_path / f".tmp-step_000000006-{os.getpid()}-1"
    mine.mkdir()
    mgr.save(_state(1), 1)
    assert not stale.exists() and mine.exists()


def test_weights_only_refuses_arbitrary_objects(tmp_path):
    mgr = CheckpointManager(tmp_path, keep=2)

    import datetime

    mgr.save({"step": 1, "obj": datetime.datetime(2026, 1, 1)}, 1)
    assert mgr.load_latest() is None  # unpickling code objects is refused


def test_the_injected_write_delay_applies_to_the_steps_named(monkeypatch):
    from vice.train.checkpoint import WRITE_DELAY_ENV, WRITE_DELAY_STEPS_ENV, _write_delay_s

    monkeypatch.delenv(WRITE_DELAY_ENV, raising=False)
    monkeypatch.delenv(WRITE_DELAY_STEPS_ENV, raising=False)
    assert _write_delay_s(8) == 0.0
    monkeypatch.setenv(WRITE_DELAY_ENV, "25")
    assert _write_delay_s(4) == 25.0 and _write_delay_s(8) == 25.0  # every write
    monkeypatch.setenv(WRITE_DELAY_STEPS_ENV, "8,12")
    assert (_write_delay_s(4), _write_delay_s(8), _write_delay_s(12)) == (0.0, 25.0, 25.0)
