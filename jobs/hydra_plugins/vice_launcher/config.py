"""The `hydra.launcher` options of the vice_slurm launcher, and the refusal of every other.

SLURM resources come from the job config (trainer.*, cluster.*), which preflight, the dry
run, resubmission and the status tools read too; `hydra.launcher` holds only how the launcher
itself behaves. hydra-submitit-launcher's options (`hydra.launcher.partition=...`, from its
documentation) would do nothing here, so each is refused, naming the key to set instead.

Hydra's plugin scan imports this module before composing the config, which registers the
schema (conf/hydra/launcher/vice_slurm.yaml names it). No `from __future__ import
annotations`: the scan executes the module before putting it in sys.modules, and dataclasses
look string annotations up there.
"""

from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

LAUNCHER_TARGET = "hydra_plugins.vice_launcher.vice_launcher.ViceSlurmLauncher"


@dataclass
class ViceSlurmConf:
    """`hydra.launcher` of the vice_slurm launcher: what ViceSlurmLauncher.__init__ takes."""

    _target_: str = LAUNCHER_TARGET
    poll_s: float = 5.0  # seconds between job state queries with launch.wait=true


# hydra-submitit-launcher 1.2's options (its SlurmQueueConf) -> what to do instead.
REPLACED = {
    "partition": "set cluster.partition instead",
    "account": "set cluster.account instead",
    "qos": "set cluster.qos instead",
    "constraint": "set cluster.constraint instead",
    "timeout_min": "set cluster.time_min (and cluster.eval_time_min) instead",
    "mem_gb": "set cluster.mem_gb instead",
    "cpus_per_task": "set cluster.cpus_per_task instead",
    "nodes": "set trainer.nodes (and cluster.eval_nodes) instead",
    "gpus_per_node": "set trainer.gpus_per_node instead",
    "tasks_per_node": "set trainer.gpus_per_node (processes per node) instead; "
    "one SLURM task per node starts them",
    "signal_delay_s": "set cluster.signal_delay_s instead",
    "max_num_timeout": "set trainer.max_requeues instead",
    "additional_parameters": "set cluster.additional instead",
    "exclude": "set +cluster.additional.exclude instead",
    "gres": "set +cluster.additional.gres instead",
    "cpus_per_gpu": "set +cluster.additional.cpus-per-gpu instead",
    "gpus_per_task": "set +cluster.additional.gpus-per-task instead",
    "mem_per_gpu": "set +cluster.additional.mem-per-gpu instead",
    "mem_per_cpu": "set +cluster.additional.mem-per-cpu instead",
    "name": "the launcher sets it (vice-pretrain, vice-eval)",
    "comment": "the launcher sets it (the run directory, for squeue -o %k)",
    "submitit_folder": "the launcher sets it (<run dir>/slurm)",
    "setup": "the launcher sets it (the code snapshot on PYTHONPATH)",
    "stderr_to_stdout": "the launcher sets it (a .out and a .err log per node)",
    "array_parallelism": "the launcher sets it (each sweep point is its own job chain)",
}


def check_launcher_options(node: DictConfig) -> None:
    """ValueError naming the first `hydra.launcher` key this launcher does not read, its value
    and what to set instead."""
    known = set(ViceSlurmConf.__dataclass_fields__)
    for key in node:
        if key in known:
            continue
        value = node[key]
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value)
        fix = REPLACED.get(str(key), "its only option is poll_s")
        raise ValueError(
            f"invalid config value hydra.launcher.{key}={value!r}: not read by the vice_slurm "
            f"launcher; {fix}"
        )


def register() -> None:
    # Not struct: `hydra.launcher.mem_gb=4` (no `+`) must reach check_launcher_options, which
    # names the key to set; in a struct node Hydra refuses it first and suggests `+`.
    node: Any = OmegaConf.structured(ViceSlurmConf)
    OmegaConf.set_struct(node, False)
    ConfigStore.instance().store(group="hydra/launcher/schema", name="vice_slurm", node=node)


register()
