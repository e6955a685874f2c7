from pathlib import Path

from vice.run_dir import RunDir


def test_every_file_of_a_run_directory_is_named_in_one_place(tmp_path):
    rd = RunDir(tmp_path)
    assert rd.config == tmp_path / "config.yaml"
    assert rd.mlflow_run_id == tmp_path / "mlflow_run_id"
    assert rd.checkpoints == tmp_path / "checkpoints"
    assert rd.final_weights == tmp_path / "model_final.pt"
    assert rd.metrics == tmp_path / "eval" / "metrics.json"
    assert rd.stops == tmp_path / "stops.jsonl"
    assert rd.jobs == tmp_path / "jobs.json"
    assert rd.slurm == tmp_path / "slurm"
    assert rd.views_figure(3) == tmp_path / "views_3.png"
    assert Path(rd) == tmp_path and str(rd) == str(tmp_path)
    assert not list(tmp_path.iterdir())  # asking creates nothing
