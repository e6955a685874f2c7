"""Submitting the SLURM jobs of one run: pretraining, then its evaluation.

The evaluation is submitted at the same time as pretraining, with `afterok:<pretrain job>`,
so SLURM starts it only after pretraining succeeded and cancels it when it failed. What the
jobs run is `jobs/slurm.py`, from the code snapshot of the launch (`jobs/snapshot.py`), which
the sbatch setup lines put first on their PYTHONPATH. `jobs.json` in the run directory records
what was submitted (for `jobs/watch.py` and `tools/resubmit.py`).

Imported by the submitting process only (the Hydra launcher plugin, the resubmission tool);
submitit is imported lazily.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from jobs.preflight import Partition
from jobs.slurm import EvalTask, PretrainTask, submitit_signal
from vice.config import Config
from vice.run_dir import RunDir


def stamp() -> str:
    return time.strftime("%H:%M:%S")


@dataclass
class Resources:
    """What one pretrain -> eval chain asks SLURM for."""

    partition: str
    nodes: int
    procs_per_node: int
    gpus_per_node: int  # 0: the processes are CPU processes
    cpus_per_task: int  # one task per node: all CPUs of the node's processes and loaders
    mem_gb: float | None
    time_min: int
    eval_nodes: int
    eval_gpus: int
    eval_cpus: int
    eval_time_min: int

    def describe(self) -> str:
        per_node = f"{self.procs_per_node} processes"
        per_node += f" + {self.gpus_per_node} GPUs" if self.gpus_per_node else " (CPU)"
        mem = f", {self.mem_gb:g} GB" if self.mem_gb else ""
        return (
            f"pretrain {self.nodes} nodes x {per_node}, {self.cpus_per_task} CPUs{mem} per "
            f"node, {self.time_min} min; eval {self.eval_nodes} node, "
            f"{self.eval_gpus} GPUs, {self.eval_cpus} CPUs, {self.eval_time_min} min; "
            f"partition {self.partition}"
        )


def plan_resources(cfg: Config, part: Partition) -> Resources:
    """Resources from the config and the partition (`jobs.preflight` checked they fit)."""
    gpus = part.has_gpus and cfg.trainer.device != "cpu"
    procs = cfg.trainer.gpus_per_node
    node_cpus = min((n.cpus for n in part.nodes), default=1)
    loaders = 1 + cfg.data.num_workers  # each process and its loader workers want a core
    cpus = cfg.cluster.cpus_per_task or min(node_cpus, procs * loaders)
    return Resources(
        partition=part.name,
        nodes=cfg.trainer.nodes,
        procs_per_node=procs,
        gpus_per_node=procs if gpus else 0,
        cpus_per_task=cpus,
        mem_gb=cfg.cluster.mem_gb,
        time_min=cfg.cluster.time_min,
        eval_nodes=cfg.cluster.eval_nodes,
        eval_gpus=1 if gpus else 0,
        eval_cpus=cfg.cluster.cpus_per_task or min(node_cpus, loaders),
        eval_time_min=cfg.cluster.eval_time_min,
    )


def setup_lines(snapshot: str | Path) -> list[str]:
    """Shell lines before srun: the snapshot first on PYTHONPATH (ahead of the editable
    install's .pth entries), unbuffered logs, and no inherited MLflow run."""
    return [
        f"export PYTHONPATH={shlex.quote(str(snapshot))}${{PYTHONPATH:+:$PYTHONPATH}}",
        "export PYTHONUNBUFFERED=1",
        "unset MLFLOW_RUN_ID",  # children would log into that run (mlflow issue 15713)
    ]


def sbatch_parameters(
    cfg: Config,
    res: Resources,
    run_dir: str | Path,
    snapshot: str | Path,
    stage: str,
    dependency: str | None = None,
) -> dict[str, Any]:
    """submitit SlurmExecutor parameters of the `stage` ("pretrain" or "eval") job."""
    pretrain = stage == "pretrain"
    params: dict[str, Any] = {
        "job_name": f"vice-{stage}",
        "partition": res.partition,
        "time": res.time_min if pretrain else res.eval_time_min,
        "nodes": res.nodes if pretrain else res.eval_nodes,
        "ntasks_per_node": 1,  # one submitit task per node; torchrun starts the processes
        "cpus_per_task": res.cpus_per_task if pretrain else res.eval_cpus,
        "signal_delay_s": cfg.cluster.signal_delay_s,
        "comment": str(run_dir),  # `squeue -o "%i %j %k"` maps jobs to runs
        "setup": setup_lines(snapshot),
        # Jobs must not run in the submitter's directory: `python -m` puts the working
        # directory first on sys.path, ahead of the snapshot.
        "additional_parameters": {"chdir": str(run_dir), **cfg.cluster.additional},
    }
    gpus = res.gpus_per_node if pretrain else res.eval_gpus
    if gpus:
        params["gpus_per_node"] = gpus
    if res.mem_gb:
        mem = res.mem_gb
        params["mem"] = f"{int(mem)}GB" if mem == int(mem) else f"{int(mem * 1024)}MB"
    for name in ("account", "qos", "constraint"):
        value = getattr(cfg.cluster, name)
        if value:
            params[name] = value
    if dependency:
        params["dependency"] = dependency
        # A dependency that can never be met (pretraining failed) cancels the job at once
        # instead of leaving it pending forever.
        params["additional_parameters"]["kill-on-invalid-dep"] = "yes"
    return params


def absolute_tracking_uri(uri: str, base: Path) -> str:
    """A tracking URI that names the same store from any working directory."""
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///") :]
        if path and not path.startswith(("/", ":memory:")):
            return f"sqlite:///{(base / path).resolve()}"
        return uri
    if uri.startswith("file:") and not uri.startswith("file:/"):
        return f"file:{(base / uri[len('file:') :]).resolve()}"
    if "://" not in uri and not uri.startswith("file:"):  # a plain path: MLflow's file store
        return str((base / uri).resolve())
    return uri


def make_paths_absolute(cfg: Config, base: Path) -> None:
    """Jobs run in their run directory: relative paths of the config are resolved against
    the launch directory `base` at submission (they would mean something else later)."""
    cfg.tracking.uri = absolute_tracking_uri(cfg.tracking.uri, base)
    if cfg.data.root and not Path(cfg.data.root).is_absolute():
        cfg.data.root = str((base / cfg.data.root).resolve())
    for caches in (cfg.data.superpixels, cfg.data.mask_prior):
        if caches.cache_dir and not Path(caches.cache_dir).is_absolute():
            caches.cache_dir = str((base / caches.cache_dir).resolve())
    # data.mask_prior.directory needs nothing: relative, it is read under data.root
    if cfg.model.init_weights and not Path(cfg.model.init_weights).is_absolute():
        cfg.model.init_weights = str((base / cfg.model.init_weights).resolve())


def make_executor(run_dir: str | Path, params: dict[str, Any], max_requeues: int) -> Any:
    import submitit

    executor = submitit.SlurmExecutor(folder=RunDir(run_dir).slurm, max_num_timeout=max_requeues)
    executor.update_parameters(**params)
    return executor


# SlurmExecutor parameters that are not #SBATCH options, and the defaults submitit 1.5 writes
# when a parameter is not given (submitit/slurm/slurm.py, _make_sbatch_string).
_NOT_OPTIONS = ("setup", "signal_delay_s", "additional_parameters", "array_parallelism")
_SUBMITIT_DEFAULTS = {"job_name": "submitit", "time": 5, "nodes": 1, "wckey": "submitit"}
# Parameters sbatch_parameters never sets, so sbatch_options does not render them.
_NOT_RENDERED = ("teardown", "srun_args", "use_srun", "stderr_to_stdout", "map_count")


def sbatch_options(folder: Path, params: dict[str, Any]) -> dict[str, Any]:
    """The #SBATCH options (name as submitit spells it: value; True: a bare flag) of a job
    that SlurmExecutor(folder).update_parameters(**params) submits.

    Written here rather than taken from submitit's private `_make_sbatch_string`, which an
    upgrade may change; tests/jobs/test_submit.py compares the two."""
    unrendered = sorted(set(params) & set(_NOT_RENDERED))
    if unrendered:
        raise ValueError(f"sbatch parameters the dry run cannot render: {unrendered}")
    options: dict[str, Any] = {**_SUBMITIT_DEFAULTS}
    options.update({k: v for k, v in params.items() if k not in _NOT_OPTIONS and v is not None})
    # The signal submitit asks for before the time limit, and requeues on.
    signal_name = submitit_signal().name.removeprefix("SIG")
    options["signal"] = f"{signal_name}@{params.get('signal_delay_s', 90)}"
    # Task 0's log pair; srun gives every task its own (%t).
    stdout, stderr = job_log_patterns(folder)
    options["output"] = stdout.replace("%t", "0")
    options["error"] = stderr.replace("%t", "0")
    options["open-mode"] = "append"  # a requeued job logs on in the same files
    options.update(params.get("additional_parameters") or {})
    return options


def job_log_patterns(folder: Path) -> tuple[str, str]:
    """stdout and stderr of a submitit task (%j: job id, %t: task), as submitit names them."""
    from submitit.core.utils import JobPaths  # without ids: the patterns sbatch fills in

    paths = JobPaths(folder)
    return str(paths.stdout), str(paths.stderr)


def render_script(run_dir: str | Path, params: dict[str, Any]) -> str:
    """The sbatch script `make_executor(run_dir, params, ...)` submits, as submitit 1.5 writes
    it: the options sorted by name, the setup lines, then srun running the pickled task."""
    folder = Path(RunDir(run_dir).slurm).expanduser().absolute()
    options = sbatch_options(folder, params)
    lines = ["#!/bin/bash", "", "# Parameters"]
    for name in sorted(options):
        value = options[name]
        text = "" if value is True else f"={shlex.quote(str(value))}"
        lines.append(f"#SBATCH --{name.replace('_', '-')}{text}")
    setup = params.get("setup")
    if setup is not None:
        lines += ["", "# setup", *setup]
    stdout, stderr = job_log_patterns(folder)
    srun = shlex.join(["srun", "--unbuffered", "--output", stdout, "--error", stderr])
    # SlurmExecutor's own command for running the pickled task of the job
    task = f"{shlex.quote(sys.executable)} -u -m submitit.core._submit {shlex.quote(str(folder))}"
    lines += ["", "# command", "export SUBMITIT_EXECUTOR=slurm", f"{srun} {task}", ""]
    return "\n".join(lines)


def log_paths(run_dir: str | Path, job_id: str, tasks: int) -> list[dict[str, str]]:
    from submitit.core.utils import JobPaths

    out = []
    for task in range(tasks):
        paths = JobPaths(RunDir(run_dir).slurm, job_id=job_id, task_id=task)
        out.append({"stdout": str(paths.stdout), "stderr": str(paths.stderr)})
    return out


@dataclass
class Chain:
    """The submitted jobs of one sweep point."""

    num: int
    label: str  # the point's sweep overrides
    run_dir: str
    resources: Resources
    pretrain_id: str
    eval_id: str | None = None
    mlflow_run_id: str | None = None
    logs: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    sbatch: dict[str, dict[str, Any]] = field(default_factory=dict)  # parameters per stage

    def describe(self) -> str:
        lines = [
            f"#{self.num} {self.label}".rstrip(),
            f"  run_dir: {self.run_dir}",
            f"  pretrain job: {self.pretrain_id} ({self.resources.nodes} nodes x "
            f"{self.resources.procs_per_node} processes, partition {self.resources.partition})",
            f"  eval job: {self.eval_id} (afterok:{self.pretrain_id})"
            if self.eval_id
            else "  eval job: none (eval.enabled=false)",
        ]
        for stage, entries in self.logs.items():
            for i, entry in enumerate(entries):
                lines.append(f"  {stage} log (task {i}): {entry['stdout']}  (+ .err)")
        if self.mlflow_run_id:
            lines.append(f"  mlflow_run_id: {self.mlflow_run_id}")
        return "\n".join(lines)


def submit_chain(
    cfg: Config,
    res: Resources,
    run_dir: Path,
    snapshot: Path,
    num: int,
    label: str,
) -> Chain:
    """Submits pretraining, then the evaluation depending on it."""
    import submitit

    pre_params = sbatch_parameters(cfg, res, run_dir, snapshot, "pretrain")
    task = PretrainTask(
        str(run_dir), str(snapshot), res.nodes, res.procs_per_node, cfg.eval.enabled
    )
    # Submitting from inside a job (a pipeline step) must not leak its SLURM_* variables.
    with submitit.helpers.clean_env():
        job = make_executor(run_dir, pre_params, cfg.trainer.max_requeues).submit(task)
        chain = Chain(num, label, str(run_dir), res, job.job_id)
        chain.logs["pretrain"] = log_paths(run_dir, job.job_id, res.nodes)
        chain.sbatch["pretrain"] = pre_params
        if cfg.eval.enabled:
            eval_params = sbatch_parameters(
                cfg, res, run_dir, snapshot, "eval", dependency=f"afterok:{job.job_id}"
            )
            executor = make_executor(run_dir, eval_params, cfg.trainer.max_requeues)
            try:
                eval_job = executor.submit(EvalTask(str(run_dir)))
            except Exception:
                job.cancel(check=False)  # a chain is queued whole or not at all
                raise
            chain.eval_id = eval_job.job_id
            chain.logs["eval"] = log_paths(run_dir, eval_job.job_id, 1)
            chain.sbatch["eval"] = eval_params
    return chain


def write_job_record(chain: Chain, extra: dict[str, Any]) -> Path:
    """`<run_dir>/jobs.json`: what was submitted, for status and resubmission tools."""
    record = {
        "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "cwd": os.getcwd(),
        "run_dir": chain.run_dir,
        "job_num": chain.num,
        "overrides": chain.label,
        "partition": chain.resources.partition,
        "nodes": chain.resources.nodes,
        "resources": asdict(chain.resources),
        "mlflow_run_id": chain.mlflow_run_id,
        # submitit SlurmExecutor parameters: what a resubmission asks SLURM for again
        "sbatch": chain.sbatch,
        "pretrain": {"job_id": chain.pretrain_id, "logs": chain.logs.get("pretrain", [])},
        "eval": None,
        **extra,
    }
    if chain.eval_id:
        record["eval"] = {
            "job_id": chain.eval_id,
            "dependency": f"afterok:{chain.pretrain_id}",
            "logs": chain.logs.get("eval", []),
        }
    path = RunDir(chain.run_dir).jobs
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)
    return path
