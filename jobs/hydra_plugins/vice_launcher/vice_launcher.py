"""`python jobs/launch.py -m ...`: every sweep point becomes a pretrain -> eval job chain.

A plain Hydra launcher, not a subclass of hydra-submitit-launcher's SlurmLauncher: it
replaces all of `launch()`, so none of that plugin's `hydra.launcher.*` options would apply;
config.py refuses them, naming the job config key to set instead. What it does that the
plugin does not (cluster.md): `launch()` returns once the jobs are queued (`launch.wait=true`
blocks and streams state changes), evaluation is chained to pretraining with a SLURM
dependency, jobs run a code snapshot, and nothing is submitted unless every point passes its
checks. Submission lives in `jobs/submit.py` and the jobs in `jobs/slurm.py`; this module
only turns Hydra's sweep into calls to them.

Hydra imports every plugin module on each start, local runs included: imports here are cheap
and everything else is imported inside the methods.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobRuntime, JobStatus, filter_overrides
from hydra.experimental.callback import Callback
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

# Relative: tests import this module as jobs.hydra_plugins.vice_launcher.vice_launcher.
from .config import LAUNCHER_TARGET, check_launcher_options

NO_SBATCH = """\
`python jobs/launch.py -m ...` submits SLURM jobs, but `sbatch` is not on the PATH.
  - a SLURM cluster on this machine: sudo python3 tools/slurm_cluster.py up --nodes 2
  - or run here without SLURM: python jobs/launch.py <the same overrides, without -m>"""


SINFO_HINT = "is the cluster up? (python3 tools/slurm_cluster.py status)"


# The nearest directory above hydra.sweep.dir that existed before Hydra's sweeper created the
# sweep dir and wrote multirun.yaml into it (set by SubmitChecks, before the sweeper runs).
_SWEEP_ROOT: list[Path] = []
# The multirun.yaml of an earlier sweep in the same hydra.sweep.dir, which the sweeper
# overwrites: its bytes and (atime, mtime) in ns. Empty when there was none.
_OLD_MULTIRUN: list[tuple[bytes, tuple[int, int]]] = []


def _existing_dir(path: Path) -> Path:
    """`path`, or its nearest ancestor that exists."""
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def _remember_sweep_dir(sweep_dir: Path) -> None:
    _SWEEP_ROOT[:] = [_existing_dir(sweep_dir)]
    old = sweep_dir / "multirun.yaml"
    if old.is_file():
        stat = old.stat()
        _OLD_MULTIRUN[:] = [(old.read_bytes(), (stat.st_atime_ns, stat.st_mtime_ns))]
    else:
        _OLD_MULTIRUN.clear()


def _undo_sweep_dir(sweep_dir: Path) -> None:
    """Undoes what Hydra's sweeper wrote for a sweep that is refused or only a dry run: its
    multirun.yaml (an earlier sweep's comes back) and the directories it created, nothing
    that existed before."""
    if not _SWEEP_ROOT:
        return
    multirun = sweep_dir / "multirun.yaml"
    if _OLD_MULTIRUN:
        data, times = _OLD_MULTIRUN[0]
        multirun.write_bytes(data)
        os.utime(multirun, ns=times)
        return  # the sweep dir existed: nothing was created around it
    multirun.unlink(missing_ok=True)
    path = sweep_dir.absolute()
    while path != _SWEEP_ROOT[0] and _SWEEP_ROOT[0] in path.parents:
        try:
            path.rmdir()  # only when empty: a file of anyone else stays
        except OSError:
            break
        path = path.parent


def _exit(lines: Sequence[str], code: int = 2, sweep_dir: Path | None = None) -> None:
    if sweep_dir is not None:
        _undo_sweep_dir(sweep_dir)
    for line in lines:
        print(line, file=sys.stderr)
    raise SystemExit(code)


def _is_ours(config: DictConfig) -> bool:
    return OmegaConf.select(config, "hydra.launcher._target_") == LAUNCHER_TARGET


class SubmitChecks(Callback):
    """Checks that must run before Hydra's sweeper creates the sweep directory."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not _is_ours(config):
            return  # e.g. hydra/launcher=basic: a local sweep, no SLURM needed
        from jobs import exit_codes

        try:  # before the sbatch check: fixing the command line comes first
            check_launcher_options(config.hydra.launcher)
        except ValueError as err:
            _exit([f"{exit_codes.NAMES[exit_codes.CONFIG]}: {err}"], code=exit_codes.CONFIG)
        if shutil.which("sbatch") is None:
            _exit([NO_SBATCH], code=5)
        from jobs.preflight import check_output_dir

        try:
            check_output_dir(str(config.hydra.sweep.dir), "hydra.sweep.dir")
        except ValueError as err:
            _exit(
                [f"{exit_codes.NAMES[exit_codes.ENVIRONMENT]}: {err}"], code=exit_codes.ENVIRONMENT
            )
        _remember_sweep_dir(Path(str(config.hydra.sweep.dir)))


class _Point:
    """One sweep point. (No dataclass: Hydra's plugin scan executes this module without
    registering it in sys.modules, which dataclasses need.)"""

    def __init__(
        self,
        num: int,
        label: str,  # the point's task overrides, for humans
        swept: str,  # only the overrides that differ between points: the MLflow run name
        cfg: Any,  # vice.config.Config
        run_dir: Path,
        ret: JobReturn,
    ) -> None:
        self.num, self.label, self.swept = num, label, swept
        self.cfg, self.run_dir, self.ret = cfg, run_dir, ret


def _swept_keys(job_overrides: Sequence[Sequence[str]]) -> set[str]:
    values: dict[str, set[str]] = {}
    for overrides in job_overrides:
        for item in filter_overrides(overrides):
            key, _, value = item.partition("=")
            values.setdefault(key, set()).add(value)
    return {k for k, v in values.items() if len(v) > 1}


class ViceSlurmLauncher(Launcher):
    """Submits each sweep point as a pretrain job plus a dependent eval job."""

    def __init__(self, poll_s: float) -> None:  # config.py ViceSlurmConf
        self.poll_s = float(poll_s)
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self._snapshot: Path | None = None
        self._partitions: dict[str, Any] = {}
        self._save_probes: dict[tuple[str, ...], tuple[Any, float, int]] = {}

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        # task_function is not kept: the jobs run jobs/slurm.py's tasks, not the Hydra task.
        self.config, self.hydra_context = config, hydra_context

    # ----------------------------------------------------------------- compose and check

    def _compose(self, job_overrides: Sequence[Sequence[str]], first: int) -> list[_Point]:
        """Every point's typed config and run dir; exits listing all errors if any fails."""
        from jobs import exit_codes
        from jobs.preflight import (
            check_caches,
            check_cluster,
            check_constraint,
            check_data,
            check_sbatch,
            check_tracking,
            read_features,
            read_sinfo,
            resolve_partition,
        )
        from jobs.run_checks import LaunchRefusedError, refused_as
        from vice.hydra_schema import to_config

        assert self.config is not None and self.hydra_context is not None
        swept = _swept_keys(job_overrides)
        try:
            self._partitions = partitions = read_sinfo()
        except (OSError, RuntimeError, subprocess.SubprocessError) as err:
            _exit(
                [f"cannot read the cluster's partitions: {err}", SINFO_HINT],
                code=5,
                sweep_dir=Path(str(self.config.hydra.sweep.dir)).absolute(),
            )
        points, errors = [], []  # errors: (exit code, line)
        features: dict[str, set[str]] | None = None  # sinfo's node features, read on demand
        original = HydraConfig.instance().cfg
        try:
            for num, overrides in enumerate(job_overrides, start=first):
                sweep_config = self.hydra_context.config_loader.load_sweep_config(
                    self.config, list(overrides)
                )
                with open_dict(sweep_config.hydra.job):
                    sweep_config.hydra.job.num = num
                    sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{num}"
                HydraConfig.instance().set_config(sweep_config)
                run_dir = Path(str(sweep_config.hydra.sweep.dir)) / str(
                    sweep_config.hydra.sweep.subdir
                )
                task_cfg = copy.deepcopy(sweep_config)
                with read_write(task_cfg), open_dict(task_cfg):
                    del task_cfg["hydra"]
                task = list(filter_overrides(overrides))
                label = " ".join(task)
                where = f"#{num} ({label})" if len(job_overrides) > 1 else ""
                at = f" in {where}" if where else ""
                try:
                    with refused_as(exit_codes.CONFIG):
                        cfg = to_config(task_cfg)
                    with refused_as(exit_codes.ENVIRONMENT):
                        check_tracking(cfg)
                        check_caches(cfg)  # on the shared file system the jobs write them
                    with refused_as(exit_codes.DATA):
                        check_data(cfg)
                except LaunchRefusedError as err:
                    errors.append((err.code, f"{exit_codes.NAMES[err.code]}{at}: {err}"))
                    continue
                problems = check_cluster(cfg, partitions)
                if not problems:  # the job fits the partition: would SLURM take its options?
                    part = resolve_partition(cfg.cluster.partition, partitions)
                    if cfg.cluster.constraint:
                        features = features if features is not None else read_features()
                        problems = check_constraint(cfg, part, features)
                    problems = problems or check_sbatch(cfg, part)
                    if not problems:  # would a stop's checkpoint fit in its windows?
                        problems = self._check_save_window(cfg, part.name, at)
                for problem in problems:
                    errors.append((exit_codes.CLUSTER, f"preflight error{at}: {problem}"))
                ret = JobReturn(
                    overrides=list(overrides),
                    cfg=task_cfg,
                    hydra_cfg=copy.deepcopy(HydraConfig.instance().cfg),
                    working_dir=str(Path.cwd()),
                    task_name=JobRuntime.instance().get("name"),
                )
                swept_label = " ".join(o for o in task if o.partition("=")[0] in swept)
                points.append(_Point(num, label, swept_label, cfg, run_dir.absolute(), ret))
        finally:
            HydraConfig.instance().cfg = original
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        if errors:  # the exit code of the first mistake's class (jobs/exit_codes.py)
            lines = [text for _, text in errors]
            _exit([*lines, "nothing was submitted"], code=errors[0][0], sweep_dir=sweep_dir)
        modes = {(p.cfg.launch.wait, p.cfg.launch.dry_run) for p in points}
        if len(modes) > 1:
            _exit(
                ["config error: launch.wait and launch.dry_run must be the same for every point"],
                sweep_dir=sweep_dir,
            )
        return points

    # ----------------------------------------------------------------- launch

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        if shutil.which("sbatch") is None:  # also checked earlier by SubmitChecks
            _exit([NO_SBATCH], code=5)
        assert self.config is not None
        points = self._compose(job_overrides, initial_job_idx)
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        launch = points[0].cfg.launch
        if launch.dry_run:
            self._dry_run(points, sweep_dir)
        else:
            self._submit(points, sweep_dir, many=len(job_overrides) > 1 or initial_job_idx > 0)
        for point in points:
            point.ret.status = JobStatus.COMPLETED
        return [p.ret for p in points]

    def _dry_run(self, points: list[_Point], sweep_dir: Path) -> None:
        from jobs import submit
        from jobs.preflight import resolve_partition
        from vice.run_dir import SweepDir

        partitions = self._partitions
        snapshot = SweepDir(sweep_dir).code
        for point in points:
            cfg = point.cfg
            res = submit.plan_resources(cfg, resolve_partition(cfg.cluster.partition, partitions))
            print(f"#{point.num} {point.label}".rstrip())
            print(f"  run_dir: {point.run_dir} (dry run: not created)")
            print(f"  resources: {res.describe()}")
            stages = [("pretrain", None)]
            if cfg.eval.enabled:
                stages.append(("eval", "afterok:<pretrain job id>"))
            for stage, dependency in stages:
                params = submit.sbatch_parameters(
                    cfg, res, point.run_dir, snapshot, stage, dependency
                )
                print(f"  --- {stage} sbatch script ---")
                print(submit.render_script(point.run_dir, params))
        _undo_sweep_dir(sweep_dir)
        print("dry run: nothing was submitted, nothing was written")

    def _check_save_window(self, cfg: Any, partition: str, at: str) -> list[str]:
        """The stop checkpoint against the windows SLURM and the config give it
        (`jobs.preflight.save_window_problems`): errors returned, warnings printed. One
        checkpoint of the configured model is written and timed per model and partition."""
        from jobs.preflight import measure_save, read_stop_timing, save_window_problems

        key = (partition, repr(cfg.model), repr(cfg.method), cfg.optim.name)
        if key not in self._save_probes:
            # What existed before the sweeper ran (its file system; the sweep dir may be undone)
            sweep_dir = Path(str(self.config.hydra.sweep.dir))
            where = _SWEEP_ROOT[0] if _SWEEP_ROOT else _existing_dir(sweep_dir)
            self._save_probes[key] = (read_stop_timing(partition), *measure_save(cfg, where))
        timing, seconds, size = self._save_probes[key]
        errors, warnings = save_window_problems(cfg, timing, seconds, size)
        for warning in warnings:
            print(f"preflight warning{at}: {warning}", file=sys.stderr)
        return errors

    def _submit(self, points: list[_Point], sweep_dir: Path, many: bool) -> None:
        from jobs import submit, watch
        from jobs.snapshot import snapshot_code
        from vice.run_dir import SweepDir
        from vice.tracking import open_parent_run

        if self._snapshot is None:
            self._snapshot = snapshot_code(SweepDir(sweep_dir).code)
        print(f"sweep_dir: {sweep_dir}")
        print(f"code snapshot: {self._snapshot}")
        for point in points:
            submit.make_paths_absolute(point.cfg, Path.cwd())
        tracking = points[0].cfg.tracking
        parent = None
        if many and tracking.enabled:
            parent = open_parent_run(tracking, sweep_dir, self._parent_name(points, sweep_dir))
            journaled = f"created when MLflow answers (journaled in {sweep_dir}/tracking)"
            print(f"mlflow parent run: {parent or journaled}")
        chains, trackers = [], {}
        for point in points:
            try:
                chain = self._submit_point(point, sweep_dir, parent, trackers)
            except Exception as err:
                if point.num in trackers:
                    trackers[point.num].finish("FAILED")
                queued = ", ".join(f"#{c.num}: {c.pretrain_id}/{c.eval_id}" for c in chains)
                _exit([f"submission of #{point.num} failed: {err}",
                       f"already queued: {queued or 'nothing'}"], code=1)  # fmt: skip
            chains.append(chain)
            print(chain.describe(), flush=True)
        if tracking.enabled:
            from vice.tracking import ui_command

            print(f"mlflow ui: {ui_command(tracking.uri)}")
        if not points[0].cfg.launch.wait:
            ids = ",".join(i for c in chains for i in (c.pretrain_id, c.eval_id) if i)
            print(f"queued; follow with: squeue -j {ids}")
            # The parent stays RUNNING: the job that ends the last point's run ends it, with
            # the worst point's status (jobs/slurm.py close_sweep_parent).
            return
        try:
            results = watch.wait_for(chains, self.poll_s)
        except KeyboardInterrupt:
            _exit(["stopped waiting; the jobs go on (squeue, scancel <job id>)"], code=130)
        # (a point whose jobs SLURM ended without a word was ended KILLED or FAILED by
        # watch.wait_for, through its journal: jobs/status.py settle_run)
        failed = [num for num, ok in results.items() if not ok]
        if many and tracking.enabled:  # every point has ended: the worst point's status
            from jobs.sweep_summary import close_parent_if_done

            close_parent_if_done(sweep_dir, tracking.uri)
        if failed:
            _exit([f"failed sweep points: {', '.join(f'#{n}' for n in failed)}"], code=1)

    def _parent_name(self, points: list[_Point], sweep_dir: Path) -> str:
        """The sweep's run: named like its points, by the experiment and the command line's
        overrides with the swept values as given ("smoke lr=0.1,0.3")."""
        from vice.tracking import run_name

        tracking = points[0].cfg.tracking
        if tracking.run_name:
            return tracking.run_name
        assert self.config is not None
        experiment = points[0].ret.hydra_cfg.hydra.runtime.choices.get("experiment")
        given = [str(o) for o in self.config.hydra.overrides.task]
        name = run_name(experiment, given)
        return name if name != "default" else f"sweep {sweep_dir.parent.name}/{sweep_dir.name}"

    def _submit_point(
        self, point: _Point, sweep_dir: Path, parent: str | None, trackers: dict[int, Any]
    ) -> Any:
        """Run dir, config, MLflow run, the two jobs and jobs.json of one point."""
        from jobs import submit
        from jobs.preflight import resolve_partition
        from jobs.resubmit import job_tags
        from jobs.snapshot import git_state
        from jobs.stages import open_run

        assert self._snapshot is not None
        cfg = point.cfg
        res = submit.plan_resources(cfg, resolve_partition(cfg.cluster.partition, self._partitions))
        point.run_dir.mkdir(parents=True, exist_ok=True)
        cfg.run_dir = str(point.run_dir)
        from vice.tracking import run_name

        # Named after what distinguishes it from the sweep's other points (its swept values).
        experiment = point.ret.hydra_cfg.hydra.runtime.choices.get("experiment")
        name = run_name(experiment, point.swept.split() if point.swept else [])
        tracker = open_run(cfg, point.run_dir, name, parent, point.label.split(), on_slurm=True)
        trackers[point.num] = tracker
        chain = submit.submit_chain(cfg, res, point.run_dir, self._snapshot, point.num, point.label)
        chain.mlflow_run_id = tracker.run_id
        tracker.set_tags(
            {
                # Not git.*: the trainer sets those from inside the snapshot, no git checkout.
                **{f"snapshot.{k}": v for k, v in git_state().items()},
                "snapshot.path": str(self._snapshot),
                # the attempt history's tags, as tools/resubmit.py extends them
                **job_tags(
                    {
                        "pretrain": {"job_id": chain.pretrain_id},
                        "eval": {"job_id": chain.eval_id} if chain.eval_id else None,
                    }
                ),
                "run_dir": str(point.run_dir),
            }
        )
        submit.write_job_record(
            chain,
            {
                "sweep_dir": str(sweep_dir),
                "snapshot": str(self._snapshot),
                "tracking_uri": cfg.tracking.uri,
                "mlflow_parent_run_id": parent,
            },
        )
        return chain
