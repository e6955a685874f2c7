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
    """The typed config of a local run, or LaunchRefusedError naming the key, the value, the fix
    and the class of the mistake (its exit code, `jobs.exit_codes`)."""
    from jobs import exit_codes
    from jobs.preflight import check_data, check_environment, check_local
    from vice.hydra_schema import to_config

    with refused_as(exit_codes.CONFIG):
        config = to_config(node)
        check_local(config)
    with refused_as(exit_codes.ENVIRONMENT):
        check_environment(config, run_dir)
    with refused_as(exit_codes.DATA):
        check_data(config)
    return config


class LaunchRefusedError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class refused_as:  # noqa: N801 (a context manager used like a function)
    """Turns a ValueError of the block into LaunchRefusedError with exit code `code`."""

    def __init__(self, code: int) -> None:
        self.code = code

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, err, tb) -> bool:
        if kind is not None and issubclass(kind, ValueError):
            raise LaunchRefusedError(str(err), self.code) from None
        return False


class RunChecks(Callback):
    """Refuses a bad local run (`python jobs/launch.py ...` without -m) before any write."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from jobs.exit_codes import NAMES

        task = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
        try:
            validate_local(task, str(config.hydra.run.dir))
        except LaunchRefusedError as err:
            print(f"{NAMES[err.code]}: {err}", file=sys.stderr)
            raise SystemExit(err.code) from None
