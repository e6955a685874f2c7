"""The checks of a local run, as a Hydra callback: they run before Hydra creates the run
directory (`on_run_start` comes before `run_job`'s mkdir), so a refused run writes nothing.

`jobs/launch.py` registers it (conf/config.yaml, hydra.callbacks); `main()` then only builds
the typed config again, which cannot fail any more.
"""

from __future__ import annotations

import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf


def validate_local(node: DictConfig, run_dir: str | None = None) -> Any:
    """The typed config of a local run, or ValueError naming the key, the value and the fix."""
    from jobs.preflight import check_data, check_environment, check_local
    from vice.hydra_schema import to_config

    config = to_config(node)
    check_local(config)
    check_environment(config, run_dir)
    check_data(config)
    return config


class RunChecks(Callback):
    """Refuses a bad local run (`python jobs/launch.py ...` without -m) before any write."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        task = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
        try:
            validate_local(task, str(config.hydra.run.dir))
        except ValueError as err:
            print(f"config error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
