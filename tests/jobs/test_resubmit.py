"""Finding job chains, their states, and what a resubmission submits (SLURM faked)."""

import json

import pytest

from jobs import resubmit as rs
from jobs.slurm import PretrainTask
from jobs.watch import JobState


def _record(run_dir, pre="10", ev="11", snapshot=None):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text("{}\n")
    snap = snapshot or run_dir.parent / "code"
    snap.mkdir(exist_ok=True)
    record = {
        "run_dir": str(run_dir),
        "snapshot": str(snap),
        "resources": {"nodes": 2, "procs_per_node": 1},
        "sbatch": {
            "pretrain": {"job_name": "vice-pretrain", "nodes": 2, "additional_parameters": {}},
            "eval": {
                "job_name": "vice-eval",
                "dependency": f"afterok:{pre}",
                "additional_parameters": {"kill-on-invalid-dep": "yes"},
            },
        },
        "pretrain": {"job_id": pre, "logs": []},
        "eval": {"job_id": ev, "dependency": f"afterok:{pre}", "logs": []},
    }
    (run_dir / "jobs.json").write_text(json.dumps(record))
    return run_dir / "jobs.json"


def _query(states):
    return lambda ids: {i: JobState(states[i]) for i in ids if i in states}


def test_records_are_found_under_sweep_dirs_but_not_in_the_snapshot(tmp_path):
    a = _record(tmp_path / "sweep" / "0")
    b = _record(tmp_path / "sweep" / "1", "20", "21")
    (tmp_path / "sweep" / "code" / "x").mkdir(parents=True)
    (tmp_path / "sweep" / "code" / "x" / "jobs.json").write_text("{}")
    assert rs.find_records([tmp_path]) == [a.resolve(), b.resolve()]
    assert rs.find_records([tmp_path / "sweep" / "1"]) == [b.resolve()]


@pytest.mark.parametrize(
    ("pre", "ev", "action"),
    [
        ("RUNNING", "PENDING", None),
        ("PENDING", "PENDING", None),
        ("COMPLETED", "COMPLETED", None),
        ("COMPLETED", "FAILED", "eval"),
        ("PREEMPTED", "PENDING", "pretrain+eval"),
        ("TIMEOUT", "CANCELLED", "pretrain+eval"),
        ("NODE_FAIL", "CANCELLED", "pretrain+eval"),
        ("FAILED", "CANCELLED", "pretrain+eval"),
        ("OUT_OF_MEMORY", "CANCELLED", "pretrain+eval"),
        ("CANCELLED", "CANCELLED", "pretrain+eval"),
    ],
)
def test_what_each_state_gets(tmp_path, pre, ev, action):
    (chain,) = rs.chain_states([_record(tmp_path / "r")], _query({"10": pre, "11": ev}))
    assert (chain.pretrain, chain.eval) == (pre, ev)
    assert chain.action()[0] == action


def test_refusal_says_why(tmp_path):
    (chain,) = rs.chain_states([_record(tmp_path / "r")], _query({"10": "RUNNING"}))
    assert chain.action() == (None, "pretrain job 10 is RUNNING")
    assert "none (pretrain job 10 is RUNNING)" in rs.format_table([chain])


def test_resubmission_chains_a_new_eval_and_keeps_history(tmp_path):
    path = _record(tmp_path / "r")
    (chain,) = rs.chain_states([path], _query({"10": "PREEMPTED", "11": "CANCELLED"}))
    submitted = []

    def fake_submit(params, task, run_dir):
        submitted.append((params, task))
        return str(100 + len(submitted))

    new = rs.resubmit(chain, "pretrain+eval", submit=fake_submit)
    (_, pre_task), (ev_params, _) = submitted
    assert isinstance(pre_task, PretrainTask) and pre_task.nnodes == 2 and pre_task.eval_follows
    assert pre_task.run_dir == str(tmp_path / "r")
    assert ev_params["dependency"] == "afterok:101"
    assert ev_params["additional_parameters"]["kill-on-invalid-dep"] == "yes"
    on_disk = json.loads(path.read_text())
    assert on_disk == new
    assert new["pretrain"]["job_id"] == "101" and new["eval"]["job_id"] == "102"
    assert new["history"][0]["pretrain"] == {"job_id": "10", "state": "PREEMPTED"}
    assert new["history"][0]["eval"] == {"job_id": "11", "state": "CANCELLED"}


def test_eval_only_resubmission_has_no_dependency(tmp_path):
    path = _record(tmp_path / "r")
    (chain,) = rs.chain_states([path], _query({"10": "COMPLETED", "11": "FAILED"}))
    submitted = []
    new = rs.resubmit(chain, "eval", submit=lambda p, t, d: submitted.append(p) or "200")
    assert len(submitted) == 1 and "dependency" not in submitted[0]
    assert "kill-on-invalid-dep" not in submitted[0]["additional_parameters"]
    assert new["pretrain"]["job_id"] == "10" and new["eval"]["job_id"] == "200"


def test_a_lost_snapshot_is_a_clear_error(tmp_path):
    path = _record(tmp_path / "r")
    (chain,) = rs.chain_states([path], _query({"10": "FAILED", "11": "CANCELLED"}))
    (tmp_path / "code").rmdir()
    with pytest.raises(ValueError, match=r"code snapshot .* is gone"):
        rs.resubmit(chain, "pretrain+eval", submit=lambda *a: "1")


def test_tags_name_the_current_jobs_and_every_attempt(tmp_path):
    path = _record(tmp_path / "r")
    (chain,) = rs.chain_states([path], _query({"10": "FAILED", "11": "CANCELLED"}))
    assert rs.job_tags(chain.record) == {
        "slurm.pretrain_job_id": "10",
        "slurm.eval_job_id": "11",
        "slurm.pretrain_job_ids": "10",
        "slurm.eval_job_ids": "11",
        "slurm.resubmissions": "0",
    }
    ids = iter(["20", "21"])
    new = rs.resubmit(chain, "pretrain+eval", submit=lambda *a: next(ids))
    assert rs.job_tags(new) == {
        "slurm.pretrain_job_id": "20",
        "slurm.eval_job_id": "21",  # the new eval, not the cancelled one
        "slurm.pretrain_job_ids": "10,20",
        "slurm.eval_job_ids": "11,21",
        "slurm.resubmissions": "1",
    }
    # no mlflow_run_id in the run dir (tracking.enabled=false): nothing to tag
    assert rs.tag_run(new) is None


def test_tags_of_a_run_the_server_never_saw_wait_in_its_journal(tmp_path, caplog):
    """With the server down, the tool's one warning line says it all (no tracker noise)."""
    import socket

    from vice.config import TrackingConfig
    from vice.pipeline import write_config
    from vice.tracking_journal import Journal

    from ..train.test_trainer import tiny_config

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{s.getsockname()[1]}"
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    cfg = tiny_config()
    cfg.tracking = TrackingConfig(uri=uri, experiment="t")
    write_config(cfg, run_dir)
    Journal(run_dir).append({"op": "tags", "items": {"overrides": ""}})  # opened while down
    record = {"run_dir": str(run_dir), "pretrain": {"job_id": "20"}, "eval": {"job_id": "21"}}
    warning = rs.tag_run(record)
    assert warning == (
        f"{run_dir}: MLflow ({uri}) does not answer; the new job ids wait in the run's journal, "
        f"sent when it answers (or by python tools/mlflow_sync.py {run_dir})"
    )
    assert caplog.records == []
    (op,) = [op for op in Journal(run_dir).pending() if "slurm.pretrain_job_id" in op["items"]]
    assert op["items"]["slurm.eval_job_id"] == "21"
