"""The code snapshot that queued and requeued jobs run."""

import json
import os
import subprocess
import sys
from pathlib import Path

from jobs.snapshot import MANIFEST, snapshot_code

ROOT = Path(__file__).resolve().parents[2]


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def _tree(root: Path) -> None:
    for rel in ("vice/a.py", "vice/sub/b.py", "jobs/c.py", "conf/d.yaml", "other/e.py",
                "vice/__pycache__/a.cpython-311.pyc", "vice/notes.tmp"):  # fmt: skip
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)


def test_git_checkout_copies_what_git_would_commit(tmp_path):
    repo = tmp_path / "repo"
    _tree(repo)
    (repo / ".gitignore").write_text("__pycache__/\n*.tmp\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "vice/a.py", "vice/sub/b.py", "conf/d.yaml", "other/e.py")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    # jobs/c.py stays untracked: a new module under review must still reach the jobs
    dest = snapshot_code(tmp_path / "sweep" / "code", repo=repo)
    assert _files(dest) == {"vice/a.py", "vice/sub/b.py", "jobs/c.py", "conf/d.yaml", MANIFEST}
    manifest = json.loads((dest / MANIFEST).read_text())
    assert manifest["method"] == "git ls-files" and manifest["files"] == 4
    assert len(manifest["git_commit"]) == 40 and manifest["git_dirty"] == "false"
    # once per launch: a second call keeps the first copy
    (repo / "vice" / "a.py").write_text("changed")
    assert (snapshot_code(dest, repo=repo) / "vice" / "a.py").read_text() == "vice/a.py"


def test_plain_directory_is_copied_without_caches(tmp_path):
    repo = tmp_path / "repo"
    _tree(repo)
    dest = snapshot_code(tmp_path / "code", repo=repo)
    assert _files(dest) == {
        "vice/a.py", "vice/sub/b.py", "vice/notes.tmp", "jobs/c.py", "conf/d.yaml", MANIFEST,
    }  # fmt: skip
    assert json.loads((dest / MANIFEST).read_text())["method"] == "copytree"


def test_project_snapshot_imports_ahead_of_the_editable_install(tmp_path):
    dest = snapshot_code(tmp_path / "code")
    files = _files(dest)
    for rel in ("jobs/__init__.py", "jobs/slurm.py", "jobs/pretrain.py", "vice/config.py",
                "conf/config.yaml", "conf/hydra/launcher/vice_slurm.yaml"):  # fmt: skip
        assert rel in files, rel
    assert not any("__pycache__" in f for f in files)
    assert not (dest / "jobs" / "hydra_plugins" / "__init__.py").exists()  # namespace package
    # What the sbatch setup lines do: PYTHONPATH=<snapshot>, working directory elsewhere.
    env = {**os.environ, "PYTHONPATH": str(dest)}
    code = "import vice, jobs.slurm; print(vice.__file__, jobs.slurm.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == [str(dest / "vice" / "__init__.py"), str(dest / "jobs" / "slurm.py")]
