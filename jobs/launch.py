"""The main job: pretrain, then evaluate, tracked in MLflow.

python jobs/launch.py                          # local, synthetic data (embedded default)
python jobs/launch.py experiment=smoke         # the 3-minute version used by tests
python jobs/launch.py data=coco data.root=/data/coco trainer.gpus_per_node=8

With -m every sweep point is submitted to SLURM as a pretrain -> eval job chain by the
`vice_slurm` launcher (jobs/hydra_plugins/vice_launcher/); this function then never runs:
python jobs/launch.py -m trainer.nodes=2                       # queue and return
python jobs/launch.py -m optim.lr=0.1,0.3 launch.wait=true     # a sweep; wait for the jobs
python jobs/launch.py -m trainer.nodes=2 launch.dry_run=true   # print the sbatch scripts
"""

from __future__ import annotations

import sys
from pathlib import Path

# Hydra finds a launcher only by importing the `hydra_plugins` namespace package from
# sys.path (hydra.searchpath adds config sources, not plugin code), and the editable install
# ships `vice*` only (pyproject.toml): so the checkout (for `jobs.*`) and jobs/ (for
# jobs/hydra_plugins/) go on sys.path here. Python's own script-directory entry covers jobs/
# for `python jobs/launch.py` only: not under `python -P`, PYTHONSAFEPATH=1, `-m jobs.launch`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from vice.hydra_schema import register, to_config

register()


def print_summary(metrics: dict, run_dir: Path, tracker) -> None:
    from vice.eval.evaluate import format_summary

    if metrics:
        print(format_summary(metrics))
    from vice.tracking import read_run_id

    print(f"run_dir: {run_dir}")
    # Read from the run dir, its one owner: training creates the run when the server was
    # down as this launch started.
    run_id = read_run_id(run_dir)
    if run_id:
        print(f"mlflow_run_id: {run_id}")
        print(f"mlflow ui: {tracker.ui_command()}")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> str:
    try:  # already checked by jobs/run_checks.py before Hydra made the run directory
        config = to_config(cfg)
    except ValueError as err:
        print(f"config error: {err}", file=sys.stderr)
        raise SystemExit(2) from err
    run_dir = Path(HydraConfig.get().runtime.output_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    config.run_dir = str(run_dir)

    from jobs.local import run_local
    from jobs.stages import open_run
    from vice.tracking import run_name

    hydra_cfg = HydraConfig.get()
    overrides = list(hydra_cfg.overrides.task)
    name = run_name(hydra_cfg.runtime.choices.get("experiment"), overrides)
    tracker = open_run(config, run_dir, run_name=name, overrides=overrides)
    tracker.close()  # training's rank 0 logs into the same run meanwhile
    metrics = run_local(config, run_dir)
    print_summary(metrics, run_dir, tracker)
    return str(run_dir)


if __name__ == "__main__":
    main()
