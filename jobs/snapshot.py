"""Code snapshot: a queued or requeued SLURM job runs the code as it was at submission.

Jobs can wait in the queue for days and are requeued after preemption; meanwhile the checkout
moves on. The launcher copies the project's code once per launch into `<sweep dir>/code/` and
the jobs put that directory first on their PYTHONPATH.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE_DIRS = ("vice", "jobs", "conf")
MANIFEST = "SNAPSHOT.json"
# Copied trees outside git (a tarball, a container) skip what Python and tools leave behind.
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", ".*_cache", "*.egg-info")


def _git(repo: Path, *args: str) -> str | None:
    try:
        proc = subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def list_code_files(repo: Path = ROOT, dirs: tuple[str, ...] = CODE_DIRS) -> list[str] | None:
    """Relative paths of the files git would commit under `dirs`; None outside a git checkout.

    Untracked files that are not ignored count too: a new module under review must reach the
    jobs as well, while ignored outputs and caches must not.
    """
    top = _git(repo, "rev-parse", "--show-toplevel")
    if top is None or Path(top.strip()).resolve() != repo.resolve():
        return None
    out = _git(repo, "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", *dirs)
    if out is None:
        return None
    # Tracked files deleted in the working tree are still listed by --cached.
    return sorted({p for p in out.split("\0") if p and (repo / p).is_file()})


def git_state(repo: Path = ROOT) -> dict[str, str]:
    commit = _git(repo, "rev-parse", "HEAD")
    if commit is None:
        return {}
    status = _git(repo, "status", "--porcelain", "--untracked-files=no") or ""
    return {"git_commit": commit.strip(), "git_dirty": str(bool(status.strip())).lower()}


def snapshot_code(dest: str | Path, repo: Path = ROOT, dirs: tuple[str, ...] = CODE_DIRS) -> Path:
    """Copies the code under `dirs` of `repo` into `dest` (created); returns `dest`.

    Writes `dest/SNAPSHOT.json` (source, commit, dirty flag, file count, time). A destination
    that already holds a snapshot is kept as is: every job of one launch runs the same code.
    """
    dest = Path(dest)
    if (dest / MANIFEST).is_file():
        return dest
    tmp = dest.with_name(f".{dest.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    files = list_code_files(repo, dirs)
    if files is None:
        count = 0
        for name in dirs:
            if (repo / name).is_dir():
                shutil.copytree(repo / name, tmp / name, ignore=IGNORED)
                count += sum(1 for p in (tmp / name).rglob("*") if p.is_file())
    else:
        for rel in files:
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo / rel, target)
        count = len(files)
    manifest = {
        "source": str(repo),
        "dirs": list(dirs),
        "files": count,
        "method": "copytree" if files is None else "git ls-files",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **git_state(repo),
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    # Renamed into place last, so a half-written snapshot is never taken for a complete one.
    if dest.exists():  # a copy without manifest: an interrupted earlier launch
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest
