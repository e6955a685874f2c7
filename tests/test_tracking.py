import pytest

from vice.config import TrackingConfig
from vice.tracking import (
    MAX_PARAM_CHARS,
    RUN_ID_FILE,
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
    assert not (tmp_path / RUN_ID_FILE).exists()


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
