"""Checks that run before anything is written, tracked or submitted.

Every failure is a `ValueError` in the config's style: the key, its value and the fix. Cluster
checks read `sinfo` once (`read_sinfo`) and work on its parsed form, so they are tested against
captured text without a cluster.
"""

from __future__ import annotations

import functools
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from vice.config import Config

# One line per (node, partition): name | partition (`*` = default) | CPUs | gres | memory MB |
# partition time limit | partition availability.
SINFO_FORMAT = "%N|%P|%c|%G|%m|%l|%a"
SINFO_COMMAND = ("sinfo", "--noheader", "--Node", f"--format={SINFO_FORMAT}")


def _message(key: str, value: object, fix: str) -> str:
    return f"invalid config value {key}={value!r}: {fix}"


def _fail(key: str, value: object, fix: str) -> ValueError:
    return ValueError(_message(key, value, fix))


ROOT = Path(__file__).resolve().parents[1]

# One small SLIC, as a data loader worker would compute it.
SLIC_PROBE = (
    "import numpy as np; from vice.data.superpixels import slic_superpixels; "
    "img = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8); "
    "assert slic_superpixels(img, 8).max() > 0"
)
FAST_SLIC_REINSTALL = (
    "pip install cython numpy setuptools wheel && pip install --no-build-isolation "
    "--force-reinstall --no-cache-dir --no-deps 'fast-slic>=0.4,<0.5'"  # pyproject's range
)


@functools.lru_cache(maxsize=4)
def slic_problem(python: str = sys.executable, probe: str = SLIC_PROBE) -> str | None:
    """What goes wrong when `python` computes SLIC superpixels, or None when it works.

    fast-slic is a C++ extension built from source on each machine. A bad build segfaults on
    its first image (seen on a Python 3.12 GPU image); inside a job that surfaces only as
    "DataLoader worker ... killed by signal: Segmentation fault" after the job has started, so
    the probe runs in a child process before anything is submitted. Cached: once per sweep.
    """
    try:
        proc = subprocess.run(
            [python, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
    except subprocess.TimeoutExpired:
        return "hung for 120 s on a 48x48 image"
    if proc.returncode == 0:
        return None
    if proc.returncode < 0:
        return f"crashed with {signal.Signals(-proc.returncode).name} on a 48x48 image"
    lines = proc.stderr.strip().splitlines()
    return f"failed: {lines[-1] if lines else f'exit code {proc.returncode}'}"


def check_superpixels(config: Config) -> None:
    """Raises when the configured superpixels cannot be computed by this Python."""
    if config.data.superpixels.method != "slic":
        return  # only the "slic" region source runs fast-slic; the others need no probe
    problem = slic_problem()
    if problem:
        raise _fail(
            "data.superpixels.method",
            "slic",
            f"fast-slic {problem} under {sys.executable}; rebuild it there "
            f"({FAST_SLIC_REINSTALL}), use data.superpixels.method=opencv_slic (OpenCV-contrib's "
            "SLIC, as the published ViCE code) or use data.superpixels.method=grid (the "
            "ablation, not ViCE)",
        )


def check_local(config: Config) -> None:
    """What a run without -m cannot do: torchrun runs standalone, on this machine only."""
    if config.trainer.nodes != 1:
        raise _fail(
            "trainer.nodes",
            config.trainer.nodes,
            "a run without -m uses this machine only; add -m to submit it to SLURM, "
            "or set trainer.nodes=1",
        )


# Tracking URI schemes MLflow can log to from a job (a plain path is its file store).
TRACKING_SCHEMES = ("sqlite", "file", "http", "https", "postgresql", "mysql", "mssql", "databricks")


def check_tracking(config: Config) -> None:
    """An unsupported tracking.uri scheme, or a local store that cannot be written."""
    if not config.tracking.enabled:
        return
    uri = config.tracking.uri
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower() if "://" in uri else ""
    if uri.startswith("file:"):
        scheme = "file"
    if scheme and scheme not in TRACKING_SCHEMES:
        raise _fail(
            "tracking.uri",
            uri,
            f"unsupported scheme {scheme!r}; use one of {list(TRACKING_SCHEMES)} (e.g. "
            "sqlite:///mlflow.db, or http://host:5000 for an mlflow server), or "
            "tracking.enabled=false",
        )
    local = None  # the directory MLflow will write into, for stores on this file system
    if scheme == "sqlite":
        path = uri[len("sqlite:///") :]
        local = Path(path).absolute().parent if path and path != ":memory:" else None
    elif scheme == "file":
        path = uri[len("file:") :]
        local = Path("/" + path.lstrip("/") if path.startswith("//") else path)
    elif not scheme:
        local = Path(uri)
    if local is not None:
        check_output_dir(local, "tracking.uri")


def check_environment(config: Config, run_dir: str | Path | None = None) -> None:
    """What the machine must offer: the device, writable output, cache and tracking stores."""
    import torch

    if config.trainer.device == "cuda" and not torch.cuda.is_available():
        raise _fail(
            "trainer.device",
            "cuda",
            "no CUDA device is visible here; use trainer.device=auto (CPU when there is none) "
            "or run on a GPU node",
        )
    if run_dir is not None:
        check_output_dir(run_dir, "hydra.run.dir")
    check_caches(config)
    check_tracking(config)


def check_caches(config: Config) -> None:
    """The superpixel and mask caches, where set, are writable directories (the data loader
    writes them from the first batch on)."""
    for key, cache in (
        ("data.superpixels.cache_dir", config.data.superpixels.cache_dir),
        ("data.mask_prior.cache_dir", config.data.mask_prior.cache_dir),
    ):
        if cache:
            check_output_dir(cache, key)


def _naming(key: str, build):
    """Runs `build()`; a data set error about the split names `key` (the data sets only know
    they were given a split, and say data.split)."""
    try:
        return build()
    except ValueError as err:
        if key == "data.split":
            raise
        raise ValueError(str(err).replace("data.split=", f"{key}=")) from None


def check_data(config: Config) -> None:
    """Opens every data source the job will use, so a wrong root fails before anything is
    written or tracked (the error names the path and the expected layout), and probes what
    the method's sample builder computes per image: one small set of superpixels the way the
    loader will (check_superpixels), or the mask prior (check_mask_prior)."""
    from vice.data.datasets import build_source
    from vice.data.mask_priors import check_mask_prior
    from vice.data.regions import check_regions
    from vice.methods import METHODS

    builder = METHODS[config.method.name].sample_builder
    if builder == "vice_views":  # the only builder that computes superpixels
        check_superpixels(config)
        source = build_source(config.data)
        # e.g. data.superpixels.method=gt on a data set without instance maps
        check_regions(source, config.data.superpixels)
    elif builder == "mask_crops":  # e.g. a missing saliency directory, maps of another size
        if config.data.mask_prior.source == "superpixel_saliency":
            check_superpixels(config)
        source = build_source(config.data)
        check_mask_prior(source, config.data)
    else:
        source = build_source(config.data)
    past = [index for index in config.figure.indices if index >= len(source)]
    if past:  # the figure stage runs after pretraining: hours later
        raise _fail(
            "figure.indices",
            list(config.figure.indices),
            f"{past[0]} is past the {len(source)} images of data.split={config.data.split!r}; "
            f"use indices below {len(source)}",
        )
    grid = config.data.views.superpixel_grid
    if grid.kind != "none":  # SuperpixelGrid* computes fast-slic superpixels of every view
        problem = slic_problem()
        if problem:
            raise _fail(
                "data.views.superpixel_grid.kind", grid.kind,
                f"it computes superpixels of every view with fast-slic, which {problem} under "
                f"{sys.executable}; rebuild it there ({FAST_SLIC_REINSTALL}) or set "
                "data.views.superpixel_grid.kind=none",
            )  # fmt: skip
    if config.model.init_weights:  # missing file, wrong architecture: named, before any write
        from vice.models.backbones import build_backbone

        build_backbone(config.model.backbone, config.model.output_stride, config.model.init_weights)
    if config.eval.enabled:
        from vice.eval.scan import scan_eval_split

        split = config.data.eval_split
        source = _naming(
            "data.eval_split", lambda: build_source(config.data, split=split, labels=True)
        )
        # a few evenly spread images and labels: unreadable, wrong sizes, no valid class
        scan_eval_split(source, config.eval.max_images)
        if config.eval.linear:  # the probe's training images and labels, checked alike
            split = config.eval.linear_train_split
            train = _naming(
                "eval.linear_train_split",
                lambda: build_source(config.data, split=split, labels=True),
            )
            try:
                scan_eval_split(train, config.eval.linear_train_images)
            except ValueError as err:
                raise ValueError(f"eval.linear_train_split={split!r}: {err}") from None


def check_output_dir(path: str | Path, key: str = "hydra.sweep.dir") -> None:
    """Raises unless `path` exists as a writable directory or can be created as one.

    Probes by writing a file (root passes every permission check, `os.access` would lie), in
    the nearest existing ancestor so that a failed check leaves no directory behind.
    """
    target = Path(path).absolute()
    existing = target
    while not existing.exists():
        existing = existing.parent
    fix = f"set {key} to a writable directory that every node sees"
    if not existing.is_dir():
        raise _fail(key, str(path), f"{existing} is not a directory; {fix}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".vice_write_probe_", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise _fail(key, str(path), f"cannot write in {existing} ({err.strerror}); {fix}") from err


@dataclass
class Node:
    name: str
    cpus: int
    gpus: int
    memory_mb: int


@dataclass
class Partition:
    name: str
    default: bool = False
    state: str = "up"
    time_limit_min: int | None = None  # None: no limit
    nodes: list[Node] = field(default_factory=list)

    @property
    def has_gpus(self) -> bool:
        return any(n.gpus > 0 for n in self.nodes)

    def capacity(self, node: Node) -> int:
        """Processes one node can run: its GPUs on a GPU partition, else its CPUs."""
        return node.gpus if self.has_gpus else node.cpus


def parse_gpus(gres: str) -> int:
    """GPUs in a gres string: 'gpu:8', 'gpu:a100:4(S:0-1)', 'gpu:2,mps:100'; '(null)' -> 0."""
    gres = re.sub(r"\([^)]*\)", "", gres)  # socket affinity "(S:0-1)" may hold commas
    total = 0
    for entry in gres.split(","):
        parts = entry.strip().split(":")
        if parts[0] == "gpu" and len(parts) >= 2 and parts[-1].isdigit():
            total += int(parts[-1])
    return total


def parse_time_limit(text: str) -> int | None:
    """sinfo's %l in minutes: 'infinite' -> None, '1-00:00:00' -> 1440, '30:00' -> 30."""
    text = text.strip().lower()
    if text in ("infinite", "unlimited", "n/a", ""):
        return None
    days = 0
    if "-" in text:
        day_text, text = text.split("-", 1)
        days = int(day_text)
    fields = [int(x) for x in text.split(":")]
    while len(fields) < 3:  # mm:ss, or a bare number of minutes
        fields = [0, *fields] if len(fields) == 2 else [0, fields[0], 0]
    hours, minutes, seconds = fields
    return days * 1440 + hours * 60 + minutes + math.ceil(seconds / 60)


def parse_sinfo(text: str) -> dict[str, Partition]:
    """Partitions from `sinfo` output in SINFO_FORMAT (one line per node and partition)."""
    partitions: dict[str, Partition] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        name, part, cpus, gres, memory, limit, state = (x.strip() for x in line.split("|")[:7])
        default = part.endswith("*")
        part = part.rstrip("*")
        entry = partitions.setdefault(
            part, Partition(part, default, state, parse_time_limit(limit))
        )
        if all(n.name != name for n in entry.nodes):
            mem = int(memory.rstrip("+")) if memory.rstrip("+").isdigit() else 0
            entry.nodes.append(Node(name, int(cpus.rstrip("+")), parse_gpus(gres), mem))
    return partitions


def read_sinfo() -> dict[str, Partition]:
    proc = subprocess.run(SINFO_COMMAND, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(SINFO_COMMAND)} failed: {proc.stderr.strip()}")
    return parse_sinfo(proc.stdout)


def resolve_partition(name: str | None, partitions: dict[str, Partition]) -> Partition:
    """The partition `cluster.partition` names, or the cluster's default for None."""
    names = sorted(partitions)
    default = next((p.name for p in partitions.values() if p.default), None)
    if name is None:
        if default is None:
            raise _fail(
                "cluster.partition",
                None,
                f"the cluster has no default partition; set one of {names}",
            )
        return partitions[default]
    if name not in partitions:
        hint = f" (or null for the default, {default!r})" if default else ""
        raise _fail("cluster.partition", name, f"no such partition; set one of {names}{hint}")
    return partitions[name]


def check_cluster(cfg: Config, partitions: dict[str, Partition]) -> list[str]:
    """Every reason SLURM would refuse the pretrain or eval job, or hold it forever."""
    try:
        part = resolve_partition(cfg.cluster.partition, partitions)
    except ValueError as err:
        return [str(err)]
    tr, cl = cfg.trainer, cfg.cluster
    name, total = repr(part.name), len(part.nodes)
    errors: list[str] = []

    def fail(key: str, value: object, fix: str) -> None:
        errors.append(_message(key, value, fix))

    if tr.nodes > total:
        fail(
            "trainer.nodes",
            tr.nodes,
            f"partition {name} has {total} nodes; set trainer.nodes to at most {total} "
            "or pick another cluster.partition",
        )
    if cl.eval_nodes > total:
        fail(
            "cluster.eval_nodes",
            cl.eval_nodes,
            f"partition {name} has {total} nodes; set cluster.eval_nodes to at most {total}",
        )
    if tr.device == "cuda" and not part.has_gpus:
        fail(
            "trainer.device",
            tr.device,
            f"partition {name} has no GPUs; use trainer.device=auto (CPU processes) "
            "or a GPU cluster.partition",
        )
    best = max((part.capacity(n) for n in part.nodes), default=0)
    unit = "GPUs" if part.has_gpus else "CPUs"
    if tr.gpus_per_node > best:
        what = "GPUs" if part.has_gpus else "CPUs and no GPUs (one process per CPU at most)"
        fail(
            "trainer.gpus_per_node",
            tr.gpus_per_node,
            f"the nodes of partition {name} have at most {best} {what}; "
            f"set trainer.gpus_per_node to at most {best}",
        )
    elif tr.nodes <= total:
        fit = sum(1 for n in part.nodes if part.capacity(n) >= tr.gpus_per_node)
        if fit < tr.nodes:
            fail(
                "trainer.nodes",
                tr.nodes,
                f"only {fit} nodes of partition {name} have {tr.gpus_per_node} {unit} "
                f"(trainer.gpus_per_node); set trainer.nodes to at most {fit} "
                "or lower trainer.gpus_per_node",
            )
    max_cpus = max((n.cpus for n in part.nodes), default=0)
    if cl.cpus_per_task is not None and cl.cpus_per_task > max_cpus:
        fail(
            "cluster.cpus_per_task",
            cl.cpus_per_task,
            f"the nodes of partition {name} have {max_cpus} CPUs; "
            f"set cluster.cpus_per_task to at most {max_cpus} (or null)",
        )
    max_mem_gb = max((n.memory_mb for n in part.nodes), default=0) / 1024
    if cl.mem_gb is not None and max_mem_gb > 0 and cl.mem_gb > max_mem_gb:
        fail(
            "cluster.mem_gb",
            cl.mem_gb,
            f"the nodes of partition {name} have {max_mem_gb:.1f} GB; "
            f"set cluster.mem_gb to at most {math.floor(max_mem_gb)} (or null)",
        )
    limit = part.time_limit_min
    for key, minutes in (
        ("cluster.time_min", cl.time_min),
        ("cluster.eval_time_min", cl.eval_time_min),
    ):
        if limit is not None and minutes > limit:
            fail(
                key,
                minutes,
                f"partition {name} allows at most {limit} min; set {key} to at most {limit}",
            )
    if cl.time_min * 60 < tr.checkpoint_minutes * 60:
        fail(
            "cluster.time_min",
            cl.time_min,
            f"shorter than one checkpoint interval (trainer.checkpoint_minutes="
            f"{tr.checkpoint_minutes:g}), the job would end before its first checkpoint; "
            f"set cluster.time_min to at least {math.ceil(tr.checkpoint_minutes)} "
            f"or trainer.checkpoint_minutes to at most {cl.time_min}",
        )
    return errors


FEATURES_COMMAND = ("sinfo", "--noheader", "--Node", "--format=%N|%P|%f")


def read_features() -> dict[str, set[str]]:
    """Partition -> the node features (`sinfo %f`) any of its nodes has."""
    proc = subprocess.run(FEATURES_COMMAND, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(FEATURES_COMMAND)} failed: {proc.stderr.strip()}")
    features: dict[str, set[str]] = {}
    for line in proc.stdout.splitlines():
        if line.count("|") < 2:
            continue
        _, part, found = (x.strip() for x in line.split("|")[:3])
        names = {f for f in found.split(",") if f and f != "(null)"}
        features.setdefault(part.rstrip("*"), set()).update(names)
    return features


def check_constraint(cfg: Config, part: Partition, features: dict[str, set[str]]) -> list[str]:
    """A `cluster.constraint` naming features no node of the partition has: SLURM would
    refuse the job (or hold it forever)."""
    if not cfg.cluster.constraint:
        return []
    have = features.get(part.name, set())
    # a constraint expression: features joined by & | , and grouped by [ ] ( ), counts *N
    wanted = {w for w in re.split(r"[&|,\[\]()]+", cfg.cluster.constraint) if w}
    wanted = {w.split("*")[0] for w in wanted}
    missing = sorted(wanted - have)
    if not missing:
        return []
    return [
        _message(
            "cluster.constraint",
            cfg.cluster.constraint,
            f"no node of partition {part.name!r} has the feature(s) {missing}; "
            f"its nodes have {sorted(have) or 'no features'}: use those, or null",
        )
    ]


def _sbatch_key(stderr: str) -> str:
    """The config key behind an `sbatch --test-only` refusal, as far as its text tells."""
    option = re.search(r"(?:unrecognized|invalid) option '?--?([\w-]+)", stderr)
    if option:
        return f"cluster.additional.{option.group(1)}"
    lowered = stderr.lower()
    for words, key in (
        (("feature",), "cluster.constraint"),
        (("account",), "cluster.account"),
        (("qos",), "cluster.qos"),
        (("memory", "mem"), "cluster.mem_gb"),
        (("time limit",), "cluster.time_min"),
        (("partition",), "cluster.partition"),
    ):
        if any(w in lowered for w in words):
            return key
    return "cluster.additional"


def check_sbatch(cfg: Config, part: Partition) -> list[str]:
    """Both job scripts as the launcher will submit them, through `sbatch --test-only`
    (SLURM validates every option, submits nothing). Written to a temporary directory, not
    the run directory: nothing of the launch exists yet."""
    from jobs.submit import plan_resources, render_script, sbatch_parameters

    res = plan_resources(cfg, part)
    with tempfile.TemporaryDirectory(prefix="vice-sbatch-test-") as tmp:
        for stage in ("pretrain", "eval"):  # (the eval's dependency is the launcher's own)
            params = sbatch_parameters(cfg, res, Path(tmp) / "run", Path(tmp) / "code", stage)
            script = Path(tmp) / f"{stage}.sh"
            script.write_text(render_script(Path(tmp) / "run", params))
            proc = subprocess.run(
                ["sbatch", "--test-only", str(script)], capture_output=True, text=True, timeout=60
            )
            if proc.returncode == 0:
                continue
            said = " ".join(proc.stderr.strip().splitlines()[-2:]) or f"exit {proc.returncode}"
            key = _sbatch_key(proc.stderr)
            if key.startswith("cluster.additional."):
                value = cfg.cluster.additional.get(key.rsplit(".", 1)[1])
            elif key == "cluster.additional":
                value = dict(cfg.cluster.additional)
            else:
                value = getattr(cfg.cluster, key.split(".", 1)[1], None)
            fix = f"sbatch refuses the {stage} job's options ({said}); fix or remove it"
            return [_message(key, value, fix)]  # the eval job shares them: one message
    return []


# ---------------------------------------------------------------- the save window of a stop

# A stop checkpoint needs the rest of the step it arrives in plus the write. The write is
# measured; the factor covers a busier file system at run time, the allowance the step.
SAVE_MARGIN = 1.5
STEP_ALLOWANCE_S = 10


@dataclass(frozen=True)
class StopTiming:
    """SLURM's side of a stop: how long it waits between its signal and SIGKILL."""

    kill_wait_s: int | None  # `scontrol show config` KillWait
    grace_time_s: int | None  # the partition's GraceTime, when its jobs can be preempted
    preempt_mode: str  # the partition's PreemptMode ("OFF": never preempted)


def parse_kill_wait(text: str) -> int | None:
    """`KillWait = 30 sec` from `scontrol show config`."""
    found = re.search(r"^KillWait\s*=\s*(\d+)", text, re.M)
    return int(found.group(1)) if found else None


def parse_partition_timing(text: str) -> tuple[int | None, str]:
    """(GraceTime s, PreemptMode) from `scontrol show partition <name>`."""
    grace = re.search(r"\bGraceTime=(\d+)", text)
    mode = re.search(r"\bPreemptMode=(\S+)", text)
    return (int(grace.group(1)) if grace else None), (mode.group(1).upper() if mode else "OFF")


def read_stop_timing(partition: str) -> StopTiming:
    def scontrol(*args: str) -> str:  # unreadable: the windows are unknown, not checked
        try:
            proc = subprocess.run(["scontrol", *args], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return ""
        return proc.stdout if proc.returncode == 0 else ""

    grace, mode = parse_partition_timing(scontrol("show", "partition", partition))
    return StopTiming(parse_kill_wait(scontrol("show", "config")), grace, mode)


def measure_save(cfg: Config, directory: str | Path) -> tuple[float, int]:
    """Seconds and bytes of one checkpoint of the configured method and an optimizer state
    of its size, written as training writes it (atomic, fsynced) into a temporary directory
    on `directory`'s file system, then removed."""
    import time

    import torch

    from vice.methods import build_method
    from vice.train.checkpoint import CheckpointManager

    method = build_method(cfg)
    slots = 2 if "adam" in cfg.optim.name.lower() else 1  # moments per parameter
    params = [p.detach() for p in method.parameters() if p.requires_grad]
    state = {
        "method": method.state_dict(),
        "optimizer": [torch.zeros_like(p) for p in params for _ in range(slots)],
    }
    with tempfile.TemporaryDirectory(prefix=".vice-save-probe-", dir=directory) as tmp:
        started = time.monotonic()
        path = CheckpointManager(tmp).save(state, 0)
        seconds = time.monotonic() - started
        size = sum(f.stat().st_size for f in path.iterdir())
    return seconds, size


def save_window_problems(
    cfg: Config, timing: StopTiming, save_s: float, size_bytes: int
) -> tuple[list[str], list[str]]:
    """(errors, warnings) of the windows a stop checkpoint must fit in.

    - the time limit: SIGUSR2 comes cluster.signal_delay_s before it; the job requeues after
      the save (jobs/slurm.py DeferredRequeue), so this is the window, and the user's: an error;
    - a preemption: SLURM SIGKILLs GraceTime after its signal; the cluster's: a warning;
    - `scontrol requeue` by hand, and the SIGTERM at the time limit itself: KillWait; a warning.
    A save that misses its window is lost; the run continues from its last periodic checkpoint.
    """
    needed = math.ceil(SAVE_MARGIN * save_s) + STEP_ALLOWANCE_S
    measured = (
        f"a stop checkpoint ({size_bytes / 2**20:.0f} MB) took {save_s:.1f} s to write here; "
        f"with the rest of a step allow {needed} s"
    )
    lost = (
        "the stop checkpoint is lost and the run continues from its last periodic one "
        f"(trainer.checkpoint_minutes={cfg.trainer.checkpoint_minutes:g} bounds the loss)"
    )
    errors, warnings = [], []
    delay = cfg.cluster.signal_delay_s
    if delay < needed:
        limit_s = cfg.cluster.time_min * 60
        fix = f"set cluster.signal_delay_s to at least {needed}"
        if needed >= limit_s:
            fix += f" and cluster.time_min above {math.ceil(needed / 60)}"
        errors.append(_message("cluster.signal_delay_s", delay, f"{measured}; {fix}"))
    part = cfg.cluster.partition or "the default partition"
    grace = timing.grace_time_s
    if timing.preempt_mode not in ("OFF", "") and grace is not None and grace < needed:
        warnings.append(
            f"{part}: GraceTime={grace} s (PreemptMode={timing.preempt_mode}) is shorter "
            f"than the save: {measured}; on a preemption {lost}. A partition with a longer "
            "GraceTime (cluster.partition) keeps it."
        )
    if timing.kill_wait_s is not None and timing.kill_wait_s < needed:
        warnings.append(
            f"KillWait={timing.kill_wait_s} s is shorter than the save: {measured}; after "
            f"`scontrol requeue` by hand {lost}. Stop with `scancel --signal=USR2 <job>` "
            "instead: the job saves, then requeues itself."
        )
    return errors, warnings
