"""What the checks before a local run add to its start, on the embedded default or overrides.

    ./dev python bench/preflight.py [override ...]   # e.g. experiment=smoke method=slotcon

Composes the config as `jobs/launch.py` does, then times each class of `jobs/run_checks.py`
`validate_local` (config, environment, data) over a few repeats in this process, after one
warm-up that pays the imports (a launch pays them anyway, for training). The baseline is the
first training step's setup it precedes: building the data set and the model for one rank
(`vice.train.trainer.build_data` + `build_training_method`), timed the same way, so the ratio
says what share of a start the checks are.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return median(times)


def main(overrides: list[str], repeats: int = 3) -> None:
    from hydra import compose, initialize_config_dir

    from jobs.preflight import check_data, check_environment, check_local, slic_problem
    from vice.hydra_schema import register, to_config
    from vice.train.trainer import build_data, build_runtime, build_training_method

    register()  # the structured schemas the config group files extend
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        node = compose("config", overrides)
    run_dir = Path(tempfile.mkdtemp()) / "run"

    def config_checks():
        check_local(to_config(node))

    config = to_config(node)
    stages = {
        "config": config_checks,
        "environment": lambda: check_environment(config, run_dir),
        # the SLIC probe is cached per launching process: a launch pays it once, so each
        # repeat here clears the cache to pay it too
        "data": lambda: (slic_problem.cache_clear(), check_data(config)),
    }
    for fn in stages.values():  # warm-up: imports
        fn()
    seconds = {name: _timed(fn, repeats) for name, fn in stages.items()}
    total = sum(seconds.values())

    def setup():
        rt = build_runtime(config)
        build_data(config, rt)
        build_training_method(config, rt)

    setup()
    baseline = _timed(setup, repeats)
    print(f"overrides: {' '.join(overrides) or '(embedded default)'}; median of {repeats}")
    for name, s in seconds.items():
        print(f"  {name:12s} {s * 1000:8.1f} ms")
    print(f"  {'checks':12s} {total * 1000:8.1f} ms")
    print(f"  {'setup':12s} {baseline * 1000:8.1f} ms  (data set + model of one rank)")
    print(f"checks / setup: {total / baseline:.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
