"""The conda recipe and pyproject.toml must pin the same ranges."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~ \[]", req, maxsplit=1)[0].lower()


def test_environment_yml_lists_the_same_pins_as_pyproject():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    pip_reqs = [r for r in pip if not r.startswith("-")]
    assert {_name(r): r for r in pip_reqs} == {_name(r): r for r in deps}


def test_required_pins():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    by_name = {_name(r): r for r in deps}
    assert by_name["torch"] == "torch>=2.15,<2.16"
    assert by_name["torchvision"] == "torchvision>=0.29,<0.30"
    assert by_name["mlflow"].startswith("mlflow>=3")
    for name in (
        "submitit",
        "hydra-core",
        "fast-slic",
        "numpy",
        "pillow",
        "scipy",
        "pytest",
    ):
        assert name in by_name


def test_required_top_level_exists():
    for name in ("vice", "jobs", "conf", "tools", "tests", "environment.yml", "README.md"):
        assert (ROOT / name).exists(), name


def test_tests_mirror_the_package():
    """Every library module with logic has a test module at the mirrored path."""
    missing = []
    for module in (ROOT / "vice").rglob("*.py"):
        rel = module.relative_to(ROOT / "vice")
        if module.name == "__init__.py" or rel.parts[0] == "viz":
            continue
        expected = ROOT / "tests" / rel.parent / f"test_{module.name}"
        if not expected.exists():
            missing.append(str(rel))
    assert not missing, f"modules without a mirrored test file: {missing}"
