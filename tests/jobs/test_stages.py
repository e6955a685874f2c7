"""The stages both paths run: outcomes of pretraining, their order, what never fails a run."""

import sys

import pytest

from jobs import local, slurm, stages
from vice.hydra_schema import to_config
from vice.pipeline import load_config, write_config
from vice.run_dir import RunDir
from vice.train.stop import StopEvent, read_stops, record_stop


class Recorder:
    """A tracker that remembers what it was asked."""

    run_id = None

    def __init__(self, calls):
        self.calls = calls

    def log_artifact(self, path, artifact_path=None):
        self.calls.append(("artifact", str(path), artifact_path))

    def set_tags(self, tags):
        self.calls.append(("tags", tags))

    def finish(self, status="FINISHED"):
        self.calls.append(("finish", status))


def _python(code):
    return [sys.executable, "-c", code]


def test_pretrain_tells_completed_failed_and_stopped(tmp_path):
    done = stages.pretrain(tmp_path, _python("pass"), {})
    assert (done.outcome, done.exit_code, done.stop) == ("completed", 0, None)
    failed = stages.pretrain(tmp_path, _python("raise SystemExit(3)"), {})
    assert (failed.outcome, failed.exit_code) == ("failed", 3)
    assert failed.describe() == "failed (torchrun exit code 3)"
    # An earlier stop (a previous job of the run) does not count; a new one does.
    record_stop(tmp_path, StopEvent("SIGTERM", 2, 1.0, 1))
    assert stages.pretrain(tmp_path, _python("pass"), {}).outcome == "completed"
    write_stop = (
        "from vice.train.stop import StopEvent, record_stop; "
        f"record_stop({str(tmp_path)!r}, StopEvent('SIGUSR2', 6, 2.0, 2))"
    )
    stopped = stages.pretrain(tmp_path, _python(write_stop), {})
    assert stopped.outcome == "stopped" and stopped.stop == read_stops(tmp_path)[-1]
    assert stopped.describe() == "stopped by SIGUSR2 at step 6, checkpoint saved"


def test_a_signal_before_training_took_it_is_a_stop_not_a_failure():
    """torchrun ended by a stop signal in its rendezvous records no stop; the supervisor that
    saw the signal calls it a stop, so the requeue goes on from the newest checkpoint."""
    failed = stages.Pretrained("failed", 140)
    early = failed.stopped_by("SIGUSR2")
    assert (early.outcome, early.exit_code, early.stop, early.signal) == (
        "stopped",
        140,
        None,
        "SIGUSR2",
    )
    assert early.describe() == (
        "stopped by SIGUSR2 before training started (torchrun exit code 140); its newest "
        "checkpoint stands"
    )
    assert failed.stopped_by(None) is failed  # no signal: a failure stays one
    done = stages.Pretrained("completed", 0)
    assert done.stopped_by("SIGTERM") is done  # training finished before the signal mattered
    stop = StopEvent("SIGTERM", 4, 1.0, 1)
    saved = stages.Pretrained("stopped", 0, stop)
    assert saved.stopped_by("SIGUSR2") is saved


def test_figure_failure_is_logged_not_raised(tmp_path, monkeypatch, capsys):
    def broken(cfg, run_dir):
        raise ValueError("invalid config value figure.indices: 9 is past the 2 images")

    monkeypatch.setattr("vice.pipeline.render_views", broken)
    calls = []
    assert stages.figures(to_config({}), tmp_path, Recorder(calls)) == []
    assert calls == []
    assert "views figure failed (the run goes on): ValueError: invalid config value" in (
        capsys.readouterr().out
    )


def test_figures_are_logged_as_artifacts(tmp_path, monkeypatch):
    paths = [RunDir(tmp_path).views_figure(0), RunDir(tmp_path).views_figure(3)]
    monkeypatch.setattr("vice.pipeline.render_views", lambda cfg, run_dir: paths)
    calls = []
    assert stages.figures(to_config({}), tmp_path, Recorder(calls)) == paths
    assert calls == [("artifact", str(p), "views") for p in paths]


def test_sweep_summary_is_a_no_op_outside_a_sweep(tmp_path):
    cfg = to_config({"tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db"}})
    (tmp_path / "run").mkdir()
    assert stages.sweep_summary(cfg, tmp_path / "run") is None
    assert not (tmp_path / "mlflow.db").exists()
    assert stages.sweep_summary(to_config({"tracking": {"enabled": False}}), tmp_path) is None


def test_evaluate_is_skipped_when_disabled(tmp_path):
    assert stages.evaluate(to_config({"eval": {"enabled": False}}), tmp_path, Recorder([])) == {}


@pytest.fixture
def run_dir(tmp_path):
    write_config(to_config({}), tmp_path)
    return tmp_path


def _record_stages(monkeypatch, calls, fail_eval=False):
    def evaluate(cfg, run_dir, tracker):
        calls.append("evaluate")
        if fail_eval:
            raise RuntimeError("no weights")
        return {"linear.miou": 0.5}

    monkeypatch.setattr("vice.tracking.build_tracker", lambda *a, **k: Recorder(calls))
    monkeypatch.setattr(stages, "evaluate", evaluate)
    monkeypatch.setattr(stages, "log_model", lambda *a: calls.append("model"))
    monkeypatch.setattr(stages, "figures", lambda *a: calls.append("figures"))
    monkeypatch.setattr(stages, "sweep_summary", lambda *a: calls.append("sweep_summary"))


def test_after_pretraining_runs_the_stages_in_order(run_dir, monkeypatch):
    calls = []
    _record_stages(monkeypatch, calls)
    assert stages.after_pretraining(run_dir) == {"linear.miou": 0.5}
    assert calls == ["evaluate", "model", "figures", "sweep_summary", ("finish", "FINISHED")]


def test_failed_evaluation_fails_the_mlflow_run(run_dir, monkeypatch):
    calls = []
    _record_stages(monkeypatch, calls, fail_eval=True)
    with pytest.raises(RuntimeError, match="no weights"):
        stages.after_pretraining(run_dir)
    assert calls == ["evaluate", ("finish", "FAILED")]


def test_open_run_writes_the_config_and_logs_it(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("vice.tracking.build_tracker", lambda *a, **k: Recorder(calls))
    cfg = to_config({"optim": {"lr": 0.1}, "cluster": {"additional": {"mail-type": "END"}}})
    stages.open_run(cfg, tmp_path)
    assert load_config(tmp_path) == cfg
    assert calls[1:] == [("artifact", str(RunDir(tmp_path).config), None)]


def test_ctrl_c_during_the_evaluation_kills_the_mlflow_run(run_dir, monkeypatch):
    calls = []
    _record_stages(monkeypatch, calls)

    def interrupted(cfg, run_dir, tracker):
        raise KeyboardInterrupt

    monkeypatch.setattr(stages, "evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        stages.after_pretraining(run_dir)
    assert calls == [("finish", "KILLED")]


def test_open_run_names_and_tags_the_run(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("vice.tracking.build_tracker", lambda *a, **k: Recorder(calls))
    monkeypatch.setattr("vice.tracking._user", lambda: "alice")
    overrides = ["experiment=smoke", "optim.lr=0.3", "data.root=/d/my coco"]
    stages.open_run(to_config({}), tmp_path, "smoke lr=0.3", "p1", overrides, on_slurm=True)
    assert calls[0] == (
        "tags",
        {
            "mlflow.source.name": "jobs/launch.py",
            "mlflow.source.type": "JOB",
            "mlflow.user": "alice",
            "overrides": "experiment=smoke optim.lr=0.3 'data.root=/d/my coco'",
            "run_dir": str(tmp_path),
            "mlflow.runName": "smoke lr=0.3",
            "mlflow.parentRunId": "p1",
        },
    )
    calls.clear()
    stages.open_run(to_config({}), tmp_path)  # a local run without overrides or name
    tags = calls[0][1]
    assert tags["mlflow.source.type"] == "LOCAL" and tags["overrides"] == ""
    assert "mlflow.runName" not in tags and "mlflow.parentRunId" not in tags


def test_both_paths_run_the_same_stages(run_dir, monkeypatch):
    """The local launch and the SLURM eval job both hand over to `after_pretraining`."""
    calls = []
    monkeypatch.setattr(stages, "after_pretraining", lambda d: calls.append(str(d)) or {})
    monkeypatch.setattr(stages, "pretrain", lambda *a: stages.Pretrained("completed", 0))
    local.run_local(load_config(run_dir), run_dir)
    slurm.EvalTask(str(run_dir))()
    assert calls == [str(run_dir), str(run_dir)]


def test_local_stop_and_failure_say_what_to_do(run_dir, monkeypatch):
    finished = []
    monkeypatch.setattr(stages, "finish", lambda d, status: finished.append(status))
    stop = StopEvent("SIGINT", 4, 1.0, 1)
    monkeypatch.setattr(stages, "pretrain", lambda *a: stages.Pretrained("stopped", 0, stop))
    with pytest.raises(SystemExit) as err:
        local.run_local(load_config(run_dir), run_dir)
    assert str(err.value) == (
        "stopped by SIGINT at step 4, checkpoint saved; continue with: python jobs/launch.py "
        f"<the same overrides> hydra.run.dir={run_dir}"
    )
    assert finished == ["KILLED"]  # nothing requeues it; continuing reopens it RUNNING
    monkeypatch.setattr(stages, "pretrain", lambda *a: stages.Pretrained("failed", 1))
    with pytest.raises(SystemExit, match=r"pretraining failed \(exit 1\)"):
        local.run_local(load_config(run_dir), run_dir)
    assert finished == ["KILLED", "FAILED"]


def test_exhausted_requeues_fail_the_run_and_a_requeue_does_not(tmp_path, monkeypatch):
    from submitit.core.utils import UncompletedJobError

    finished = []
    monkeypatch.setattr(stages, "finish", lambda d, status: finished.append(status))

    def not_requeued(proc):  # submitit's handler on rank 0, the time limit once too often
        proc.wait()
        raise UncompletedJobError("Job not requeued because: timed-out too many times.")

    monkeypatch.setattr(stages, "_wait", not_requeued)
    with pytest.raises(UncompletedJobError):
        stages.pretrain(tmp_path, _python("pass"), {})
    assert finished == ["FAILED"]

    def requeued(proc):  # submitit requeued the job, then exits this process
        proc.wait()
        raise SystemExit(-1)

    monkeypatch.setattr(stages, "_wait", requeued)
    with pytest.raises(SystemExit):
        stages.pretrain(tmp_path, _python("pass"), {})
    assert finished == ["FAILED"]  # the run goes on after the requeue: still RUNNING
