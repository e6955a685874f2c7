from pathlib import Path

import pytest

from vice.config import TrackingConfig
from vice.run_dir import RunDir
from vice.tracking import (
    MAX_PARAM_CHARS,
    MlflowTracker,
    Tracker,
    build_tracker,
    default_tags,
    flatten,
    read_run_id,
)


def test_flatten_nested_config():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == {
        "a.b": 1,
        "a.c.d": [1, 2],
        "e": None,
    }


def test_disabled_or_not_rank_zero_gives_noop(tmp_path):
    assert type(build_tracker(TrackingConfig(enabled=False), tmp_path)) is Tracker
    assert type(build_tracker(TrackingConfig(), tmp_path, is_main=False)) is Tracker
    assert not RunDir(tmp_path).mlflow_run_id.exists()


@pytest.mark.slow
def test_mlflow_run_is_reopened_from_the_run_dir(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = TrackingConfig(uri=uri, experiment="t")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    first = MlflowTracker(cfg, run_dir, run_name="r")
    first.log_params({"a.b": 1, "long": "x" * (MAX_PARAM_CHARS + 10)})
    first.log_metrics({"loss": 2.0}, step=1)
    first.set_tags(default_tags())
    first.finish()
    assert read_run_id(run_dir) == first.run_id

    second = MlflowTracker(cfg, run_dir)  # a resumed job or the chained eval
    assert second.run_id == first.run_id
    second.log_params({"a.b": 1})  # same value again is accepted
    second.log_metrics({"loss": 1.0}, step=2)
    second.finish()

    client = MlflowClient(uri)
    run = client.get_run(first.run_id)
    assert run.data.params["a.b"] == "1"
    assert run.data.params["long"].endswith("(full value in params_long.txt)")
    assert [m.value for m in client.get_metric_history(first.run_id, "loss")] == [2.0, 1.0]
    assert run.data.tags["host"] and "torch.version" in run.data.tags
    assert run.info.status == "FINISHED"
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    artifacts = [a.path for a in client.list_artifacts(first.run_id)]
    assert "params_long.txt" in artifacts
    assert "--backend-store-uri " + uri in second.ui_command()


@pytest.mark.slow
def test_steps_logged_again_after_a_resume_are_kept_once(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = TrackingConfig(uri=uri, experiment="t")
    first = MlflowTracker(cfg, tmp_path)
    for step in (1, 2, 3):
        first.log_metrics({"loss": 1.0 / step}, step)
    first.close()  # the job stops here; its checkpoint was at step 1

    resumed = MlflowTracker(cfg, tmp_path)
    for step in (2, 3, 4):  # recomputed after the resume, then new
        resumed.log_metrics({"loss": 1.0 / step}, step)
    resumed.finish()

    history = MlflowClient(uri).get_metric_history(first.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 1.0), (2, 0.5), (3, 1 / 3), (4, 0.25)]
    assert not resumed.journal.pending()


@pytest.mark.slow
def test_unreachable_server_never_raises_and_keeps_values_pending(tmp_path, caplog):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = TrackingConfig(uri=f"http://127.0.0.1:{port}", experiment="t")
    tracker = MlflowTracker(cfg, tmp_path, background=False)
    tracker.log_params({"a": 1})
    tracker.log_metrics({"loss": 2.0}, 1)
    assert tracker.run_id is None  # created when the server answers
    assert not tracker.close()
    assert [op["op"] for op in tracker.journal.pending()] == ["params", "metrics"]
    assert "unreachable" in caplog.text and "(1 metric values)" in caplog.text


def test_secrets_never_reach_params_or_tags(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok-12345")
    cfg = TrackingConfig(uri="http://127.0.0.1:1", experiment="t")
    tracker = MlflowTracker.__new__(MlflowTracker)  # journal only: no server contacted
    tracker.run_dir = tmp_path
    from vice.tracking_journal import Journal

    tracker.journal = Journal(tmp_path)
    tracker._wake = __import__("threading").Event()
    tracker.cfg = cfg
    # the secret holds letters no hex run or op id can contain ("abc" once matched an id)
    tracker.log_params({"data.api_key": "qwerty", "cmd": "curl -H tok-12345", "optim.lr": 0.3})
    tracker.set_tags({"aws_secret_access_key": "zzz", "host": "n1"})
    text = tracker.journal.pending_path.read_text()
    assert "qwerty" not in text and "tok-12345" not in text and "zzz" not in text
    assert '"optim.lr": "0.3"' in text and '"host": "n1"' in text


def test_git_info_of_a_code_snapshot_comes_from_its_manifest(tmp_path):
    import json

    from vice.tracking import git_info

    (tmp_path / "SNAPSHOT.json").write_text(
        json.dumps({"git_commit": "a" * 40, "git_dirty": "true"})
    )
    assert git_info(tmp_path) == {"git.commit": "a" * 40, "git.dirty": "true"}
    # a plain directory inside some other checkout is not that checkout's code
    inner = Path(__file__).resolve().parent
    assert git_info(inner) == {}


def test_run_name_is_the_experiment_and_the_overrides_that_distinguish_it():
    from vice.tracking import run_name

    assert run_name("smoke", ["optim.lr=0.3", "trainer.nodes=2"]) == "smoke lr=0.3 nodes=2"
    # experiment=, tracking, hydra and launch overrides do not change what is trained
    overrides = ["experiment=smoke", "tracking.uri=sqlite:///x.db", "hydra.run.dir=/o",
                 "launch.wait=true", "+trainer.foo=1"]  # fmt: skip
    assert run_name("smoke", overrides) == "smoke foo=1"
    # an ambiguous short key keeps its full name
    assert run_name("local", ["optim.lr=0.1", "probe.lr=2"]) == "local optim.lr=0.1 probe.lr=2"
    assert run_name(None, []) == "default" and run_name("local", []) == "local"
    assert len(run_name("x", [f"a.k{i}={'v' * 20}" for i in range(30)])) == 250


def test_run_params_leave_out_unset_values_and_slurm_keys_on_a_local_run():
    from dataclasses import asdict

    from vice.config import Config
    from vice.tracking import run_params

    cfg = Config()
    cfg.run_dir = "/runs/a"
    local = run_params(asdict(cfg), on_slurm=False)
    assert not any(k.startswith(("cluster.", "launch.")) for k in local)
    assert None not in local.values() and "run_dir" not in local
    assert local["optim.lr"] == cfg.optim.lr and local["tracking.experiment"] == "vice"
    slurm = run_params(asdict(cfg), on_slurm=True)
    assert slurm["cluster.time_min"] == 60 and "cluster.account" not in slurm  # None
    assert set(slurm) - set(local) == {k for k in slurm if k.startswith(("cluster.", "launch."))}


def test_ui_command_works_as_printed(tmp_path, monkeypatch):
    import socket
    import sys

    from vice.tracking import ui_command

    monkeypatch.chdir(tmp_path)
    with socket.socket() as taken:  # 5000 is often taken on a login node
        try:
            taken.bind(("127.0.0.1", 5000))
            taken.listen()
        except OSError:  # another process holds it already: the same situation
            pass
        command = ui_command("sqlite:///mlflow.db", "3", "abc")
    exe = Path(sys.executable).parent / "mlflow"
    assert command.startswith(f"{exe} ui --backend-store-uri sqlite:///{tmp_path}/mlflow.db ")
    port = int(command.split("--port ")[1].split()[0])
    assert port != 5000
    assert command.endswith(f"# then open http://127.0.0.1:{port}/#/experiments/3/runs/abc")
    assert ui_command("http://h:5001/", "3") == "open http://h:5001/#/experiments/3"


def _sqlite(tmp_path):
    return TrackingConfig(uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="t")


@pytest.mark.slow
def test_one_run_per_run_dir_when_another_process_created_it(tmp_path):
    """A tracker that started while the server was down (the launcher) connects later and
    finds the run training's tracker created meanwhile: one run, not two."""
    from mlflow.tracking import MlflowClient

    cfg = _sqlite(tmp_path)
    launcher = MlflowTracker.__new__(MlflowTracker)  # as if created while the server was down
    launcher.__init__(TrackingConfig(uri="http://127.0.0.1:9", experiment="t"), tmp_path,
                      run_name="smoke", background=False)  # fmt: skip
    assert launcher.run_id is None
    launcher.set_tags({"overrides": "optim.lr=0.3"})
    training = MlflowTracker(cfg, tmp_path, background=False)  # the server answers now
    launcher.client, launcher.cfg = MlflowClient(cfg.uri), cfg
    assert launcher.flush() and launcher.run_id == training.run_id == read_run_id(tmp_path)
    runs = MlflowClient(cfg.uri).search_runs([training.experiment_id])
    assert [r.data.tags["overrides"] for r in runs] == ["optim.lr=0.3"]


@pytest.mark.slow
def test_run_name_tag_and_statuses_follow_the_journal(tmp_path):
    from mlflow.tracking import MlflowClient

    cfg = _sqlite(tmp_path)
    first = MlflowTracker(cfg, tmp_path)  # created without a name (e.g. by training)
    first.set_tags({"mlflow.runName": "smoke lr=0.3"})
    first.finish("KILLED")  # Ctrl-C
    client = MlflowClient(cfg.uri)
    run = client.get_run(first.run_id)
    assert (run.info.run_name, run.info.status) == ("smoke lr=0.3", "KILLED")
    again = MlflowTracker(cfg, tmp_path, background=False)  # the run is continued
    assert again.flush() and client.get_run(first.run_id).info.status == "RUNNING"
    again.finish("FINISHED")
    quiet = MlflowTracker(cfg, tmp_path, background=False, reopen=False)  # a sync tool
    assert quiet.flush() and client.get_run(first.run_id).info.status == "FINISHED"
    assert first.journal.record()["status"] == "FINISHED"


@pytest.mark.slow
def test_model_and_dataset_inputs_are_logged_and_the_model_loads_and_runs(tmp_path):
    import mlflow.pytorch
    import torch
    from mlflow.tracking import MlflowClient

    from vice.tracking import dataset_input

    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU())
    saved = tmp_path / "mlflow_model"
    requirements = [f"torch=={torch.__version__}"]
    mlflow.pytorch.save_model(network, saved, pip_requirements=requirements,
                              serialization_format="pickle")  # fmt: skip
    cfg = _sqlite(tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    tracker = MlflowTracker(cfg, run_dir, background=False)
    tracker.log_params({"optim.lr": 0.3})
    tracker.log_inputs([dataset_input("coco", "/data/coco", "train2017", 118287, "train")])
    tracker.log_metrics({"eval.linear.miou": 0.25, "miou": 0.2}, step=0)
    tracker.log_model(saved)
    tracker.log_model(saved)  # sent twice (a retry after a lost answer): one model
    tracker.finish()

    client = MlflowClient(cfg.uri)
    run = client.get_run(tracker.run_id)
    (model_output,) = run.outputs.model_outputs
    model = client.get_logged_model(model_output.model_id)
    assert model.name == "model" and model.params["optim.lr"] == "0.3"
    assert {m.key: m.value for m in model.metrics} == {"eval.linear.miou": 0.25, "miou": 0.2}
    assert len(client.get_metric_history(tracker.run_id, "miou")) == 1  # not doubled
    loaded = mlflow.pytorch.load_model(f"models:/{model.model_id}")
    image_B3HW = torch.rand(1, 3, 8, 8)
    assert torch.equal(loaded(image_B3HW), network(image_B3HW))
    (inp,) = run.inputs.dataset_inputs
    assert (inp.dataset.name, inp.dataset.source_type) == ("coco/train2017", "local")
    assert '"num_images": 118287' in inp.dataset.profile
    assert '"/data/coco"' in inp.dataset.source
    assert [(t.key, t.value) for t in inp.tags] == [("mlflow.data.context", "train")]
    assert tracker.journal.record()["models"] == ["model"]


def _down_uri() -> str:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_sweep_parent_opened_with_the_server_down_is_journaled_at_once(
    tmp_path, caplog, monkeypatch
):
    """A `-m` sweep launched while the server is down: the launcher opens the parent and every
    point's run without waiting, says so in one line, and each point will nest under it."""
    import json
    import time

    from vice import tracking
    from vice.run_dir import SweepDir
    from vice.tracking import open_parent_run

    monkeypatch.setattr(tracking, "_LAST_WARNING", {})
    cfg = TrackingConfig(uri=_down_uri(), experiment="sweeps")
    started = time.monotonic()
    assert open_parent_run(cfg, tmp_path, "sweep 10-00-00") is None  # created when it answers
    points = [MlflowTracker(cfg, tmp_path / str(n), background=False) for n in range(2)]
    for point in points:
        point.set_parent_sweep(tmp_path)
        assert not point.flush()
    assert time.monotonic() - started < 20  # minutes before the journal
    sweep = SweepDir(tmp_path)
    assert json.loads(sweep.tracking_config.read_text()) == {
        "uri": cfg.uri, "experiment": "sweeps", "run_name": "sweep 10-00-00"
    }  # fmt: skip
    assert not sweep.parent_run_id.exists()
    assert points[0].journal.record()["parent_sweep"] == str(tmp_path.resolve())
    assert [op["op"] for op in points[1].journal.pending()] == ["parent"]
    unreachable = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(unreachable) == 1 and cfg.uri in unreachable[0].getMessage()


@pytest.mark.slow
def test_the_first_point_to_reach_the_server_creates_the_one_sweep_parent(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from vice.tracking import PARENT_RUN_TAG, SweepTracker, open_parent_run

    cfg = _sqlite(tmp_path)
    sweep = tmp_path / "sweep"
    with monkeypatch.context() as down:  # the launcher meets a server that is down
        down.setattr(SweepTracker, "flush", lambda self: False)
        assert open_parent_run(cfg, sweep, "sweep 10-00-00") is None
    points = []
    for n in range(2):
        point = MlflowTracker(cfg, sweep / str(n), run_name=f"lr=0.{n}", background=False)
        point.set_parent_sweep(sweep)
        assert point.flush()
        points.append(point)
    parent = SweepTracker.read_id(sweep)
    client = MlflowClient(cfg.uri)
    runs = client.search_runs([points[0].experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["lr=0.0", "lr=0.1", "sweep 10-00-00"]
    assert {r.info.run_id: r.data.tags.get(PARENT_RUN_TAG) for r in runs} == {
        parent: None, points[0].run_id: parent, points[1].run_id: parent
    }  # fmt: skip
    assert open_parent_run(cfg, sweep) == parent  # another batch of the sweep: the same run
