"""tools/slurm_cluster.py: config rendering, error paths and (on a live cluster) end to end.

The end-to-end tests need the local cluster (`sudo python3 tools/slurm_cluster.py up --nodes 2`).
They skip when it is not up, unless VICE_CLUSTER_TESTS=1 (CI after `up`): then they must run.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "slurm_cluster.py"


def _load_tool():
    """Import the tool from its path (tools/ is not a package; it must stay stdlib-only)."""
    spec = importlib.util.spec_from_file_location("slurm_cluster", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules["slurm_cluster"] = module  # dataclasses looks its module up
    spec.loader.exec_module(module)
    return module


sc = _load_tool()


def _opts(**kw):
    base = dict(nodes=2, cpus_per_node=2, memory_mb=4000, hostname="host1")
    return sc.Options(**{**base, **kw})


def _settings(conf: str) -> dict[str, str]:
    """Top-level Key=Value lines of a slurm.conf (node and partition lines excluded)."""
    out: dict[str, str] = {}
    for line in conf.splitlines():
        if not line or line.startswith("#") or line.startswith(("NodeName=", "PartitionName=")):
            continue
        key, _, value = line.partition("=")
        assert key not in out, f"{key} set twice"
        out[key] = value
    return out


def _records(conf: str, kind: str) -> dict[str, dict[str, str]]:
    """{name: {key: value}} of the NodeName= or PartitionName= lines."""
    out = {}
    for line in conf.splitlines():
        if line.startswith(f"{kind}="):
            fields = dict(f.split("=", 1) for f in line.split())
            out[fields[kind]] = fields
    return out


# ---------------------------------------------------------------- rendering


def test_one_node_line_per_node_on_this_host_with_distinct_ports():
    conf = sc.render_slurm_conf(_opts(nodes=3, cpus_per_node=4, memory_mb=1234))
    nodes = _records(conf, "NodeName")
    assert list(nodes) == ["n1", "n2", "n3"]
    assert len({n["Port"] for n in nodes.values()}) == 3
    for n in nodes.values():
        assert n["NodeHostname"] == "host1" and n["NodeAddr"] == "127.0.0.1"
        assert (n["CPUs"], n["RealMemory"]) == ("4", "1234")
        assert int(n["Port"]) not in (6817, 6818, 6819)  # slurmctld / slurmd / slurmdbd
    settings = _settings(conf)
    # %n: every slurmd on the host needs its own spool, pid and log file.
    for key in ("SlurmdSpoolDir", "SlurmdPidFile", "SlurmdLogFile"):
        assert "%n" in settings[key], key
    assert settings["SlurmctldHost"] == "host1(127.0.0.1)"


def test_two_partitions_over_the_same_nodes():
    conf = sc.render_slurm_conf(_opts(nodes=2, grace_time=45))
    parts = _records(conf, "PartitionName")
    assert set(parts) == {"batch", "urgent"}
    batch, urgent = parts["batch"], parts["urgent"]
    assert batch["Nodes"] == urgent["Nodes"] == "n[1-2]"
    assert batch["Default"] == "YES" and urgent["Default"] == "NO"
    assert (batch["PriorityTier"], batch["PreemptMode"], batch["GraceTime"]) == (
        "1",
        "REQUEUE",
        "45",
    )
    assert (urgent["PriorityTier"], urgent["PreemptMode"]) == ("10", "OFF")
    single = _records(sc.render_slurm_conf(_opts(nodes=1)), "PartitionName")
    assert single["batch"]["Nodes"] == "n1"


def test_preemption_and_accounting_settings():
    settings = _settings(sc.render_slurm_conf(_opts(kill_wait=12, cluster_name="c7")))
    assert settings["PreemptType"] == "preempt/partition_prio"
    assert settings["PreemptMode"] == "REQUEUE"
    assert settings["JobRequeue"] == "1"
    # Slurm 22.05 (Debian 12) rejects the whole file on PreemptParameters (23.02+) and ignores
    # preempt_send_user_signal in SchedulerParameters; SlurmctldParameters is what it reads.
    assert "PreemptParameters" not in settings
    assert "preempt_send_user_signal" in settings["SlurmctldParameters"].split(",")
    assert "preempt_send_user_signal" not in settings["SchedulerParameters"]
    assert settings["AccountingStorageType"] == "accounting_storage/slurmdbd"
    assert settings["ClusterName"] == "c7"
    assert settings["StateSaveLocation"].endswith("/c7")  # switching names keeps each state
    assert settings["KillWait"] == "12"
    assert settings["JobAcctGatherType"] in ("jobacct_gather/linux", "jobacct_gather/none")
    assert settings["ProctrackType"] == "proctrack/linuxproc"
    assert settings["TaskPlugin"] == "task/none"
    assert settings["SelectType"] == "select/cons_tres"
    assert settings["SlurmUser"] == "slurm"
    assert settings["MpiDefault"] == "none"
    assert settings["ReturnToService"] == "2"


def test_rendering_is_deterministic_and_records_its_settings():
    opts = _opts(nodes=3, grace_time=7)
    conf = sc.render_slurm_conf(opts)
    assert conf == sc.render_slurm_conf(_opts(nodes=3, grace_time=7))  # idempotence relies on it
    assert conf != sc.render_slurm_conf(_opts(nodes=2, grace_time=7))
    assert sc.parse_settings(conf) == opts
    assert sc.parse_settings("ClusterName=other\n") is None


def test_zero_nodes_is_rejected():
    with pytest.raises(ValueError):
        sc.render_slurm_conf(_opts(nodes=0))


def test_slurmdbd_conf_keeps_its_password():
    conf = sc.render_slurmdbd_conf("s3cr3t")
    fields = dict(line.split("=", 1) for line in conf.splitlines() if "=" in line)
    assert fields["StorageType"] == "accounting_storage/mysql"
    assert (fields["StorageLoc"], fields["StorageUser"]) == ("slurm_acct_db", "slurm")
    assert fields["DbdPort"] == "6819" and fields["SlurmUser"] == "slurm"
    assert sc.parse_storage_pass(conf) == "s3cr3t"
    assert sc.parse_storage_pass("StorageUser=slurm\n") is None


def test_hosts_line_is_added_once_and_replaced():
    base = "127.0.0.1 localhost\n::1 ip6-localhost\n"
    two = sc.render_hosts(base, 2)
    assert two.startswith(base)
    assert re.search(r"^127\.0\.0\.1 n1 n2 # .*slurm_cluster", two, re.MULTILINE)
    assert sc.render_hosts(two, 2) == two
    three = sc.render_hosts(two, 3)
    assert three.count(sc.HOSTS_MARK) == 1 and "n1 n2 n3" in three


# ---------------------------------------------------------------- error paths


def _forbid_commands(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError(f"ran a command: {args}")

    monkeypatch.setattr(subprocess, "run", boom)
    monkeypatch.setattr(subprocess, "Popen", boom)


@pytest.mark.parametrize("argv", [["up", "--nodes", "2"], ["down"]])
def test_not_root_is_a_clear_error_before_anything_runs(monkeypatch, capsys, argv):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    _forbid_commands(monkeypatch)
    assert sc.main(argv) == 2
    err = capsys.readouterr().err
    assert "root is needed" in err and "sudo" in err and " ".join(argv) in err


def test_uninstallable_package_is_named_with_apt_error(monkeypatch):
    missing = {"munge", "slurmdbd"}
    err = "E: Unable to locate package slurmdbd"
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        if cmd[0] == "dpkg-query":
            status = "" if cmd[-1] in missing else "install ok installed"
            return subprocess.CompletedProcess(cmd, 0, status, "")
        if cmd[:2] == ["apt-get", "update"]:
            return subprocess.CompletedProcess(cmd, 0, "", "")
        simulated = "-s" in cmd
        fails = not simulated or "slurmdbd" in cmd  # the real install, and slurmdbd alone
        return subprocess.CompletedProcess(cmd, 100 if fails else 0, "", err if fails else "")

    monkeypatch.setattr(sc, "run", fake_run)
    monkeypatch.setattr(sc.Path, "exists", lambda self: True)  # leave policy-rc.d alone
    with pytest.raises(sc.ClusterError) as info:
        sc.ensure_packages()
    message = str(info.value)
    assert info.value.code == 2
    assert "package(s) slurmdbd:" in message and "munge" not in message.split(":")[0]
    assert "Unable to locate package" in message
    installs = [c for c in calls if c[:2] == ["apt-get", "install"] and "-s" not in c]
    assert installs == [
        ["apt-get", "install", "-y", "--no-install-recommends", "munge", "slurmdbd"]
    ]


def test_installed_packages_need_no_apt(monkeypatch):
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, "install ok installed", "")

    monkeypatch.setattr(sc, "run", fake_run)
    sc.ensure_packages()
    assert all(c[0] == "dpkg-query" for c in calls) and len(calls) == len(sc.PACKAGES)


def test_bad_cluster_name_is_rejected(capsys):
    with pytest.raises(SystemExit) as info:
        sc.parse_args(["up", "--nodes", "2", "--cluster-name", "../etc"])
    assert info.value.code == 2
    assert "--cluster-name" in capsys.readouterr().err


def test_status_without_slurm_exits_1(monkeypatch, capsys):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert sc.main(["status"]) == 1
    assert "not installed" in capsys.readouterr().out


# ---------------------------------------------------------------- end to end (live cluster)

FORCED = os.environ.get("VICE_CLUSTER_TESTS") == "1"


def _tool(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(TOOL), *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def cluster():
    """The running cluster's settings; skip (unless VICE_CLUSTER_TESTS=1) when it is not up."""
    if not FORCED:
        if shutil.which("sinfo") is None:
            pytest.skip("no SLURM here (run `sudo python3 tools/slurm_cluster.py up --nodes 2`)")
        if _tool("status", timeout=60).returncode != 0:
            pytest.skip("local SLURM cluster not up (tools/slurm_cluster.py status exits 1)")
    opts = sc.parse_settings(sc.SLURM_CONF.read_text())
    assert opts is not None, f"{sc.SLURM_CONF} was not written by tools/slurm_cluster.py"
    return opts


def _sh(*cmd: str, timeout: float = 120) -> str:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}: {proc.stdout}{proc.stderr}"
    return proc.stdout


@pytest.mark.cluster
@pytest.mark.slow
def test_status_reports_a_running_cluster(cluster):
    proc = _tool("status", timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "cluster is up" in proc.stdout
    for word in ("slurmctld  running", "slurmdbd   running", "batch", "urgent"):
        assert word in proc.stdout


@pytest.mark.cluster
@pytest.mark.slow
def test_up_again_is_idempotent_and_fast(cluster):
    if os.geteuid() != 0 and not FORCED:
        pytest.skip("`up` needs root")
    o = cluster
    start = time.monotonic()
    proc = _tool(
        *("up", "--nodes", str(o.nodes), "--cpus-per-node", str(o.cpus_per_node)),
        *("--memory-mb", str(o.memory_mb), "--grace-time", str(o.grace_time)),
        *("--kill-wait", str(o.kill_wait), "--cluster-name", o.cluster_name),
        timeout=120,
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "already up with the same settings" in proc.stdout
    assert elapsed < 15, f"second `up` took {elapsed:.1f} s"


@pytest.mark.cluster
@pytest.mark.slow
def test_srun_runs_a_step_on_every_node(cluster):
    assert cluster.nodes >= 2
    out = _sh("srun", "-N2", "--immediate=60", "-t", "1", "bash", "-c", "echo $SLURMD_NODENAME")
    assert sorted(out.split()) == ["n1", "n2"]
    out = _sh("srun", "-N2", "--immediate=60", "-t", "1", "bash", "-c", "getent hosts n2")
    assert out.split()[0] == "127.0.0.1"  # node names resolve (rendezvous needs it)


def _name() -> str:
    """A job name of its own: job ids restart when slurmctld's state is lost, names do not."""
    return f"vice-e2e-{uuid.uuid4().hex[:8]}"


def _sacct_states(job: str, name: str, *flags: str) -> list[str]:
    out = _sh("sacct", "-n", "-X", "-P", *flags, "-j", job, "--name", name, "-o", "State")
    return [s.strip() for s in out.split()]


def _poll(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(1)
    raise AssertionError(f"{what} not within {timeout} s")


@pytest.mark.cluster
@pytest.mark.slow
def test_batch_job_completes_in_sacct(cluster):
    name = _name()
    job = _sh(
        *("sbatch", "--parsable", "-p", "batch", "-J", name, "-o", "/dev/null"),
        *("--wrap", "sleep 1"),
    ).strip()
    _poll(lambda: _sacct_states(job, name) == ["COMPLETED"], 60, f"job {job} COMPLETED in sacct")


@pytest.mark.cluster
@pytest.mark.slow
def test_urgent_job_preempts_and_requeues_a_batch_job(cluster):
    nodes, low_name, high_name = str(cluster.nodes), _name(), _name()
    low = _sh(
        *("sbatch", "--parsable", "-p", "batch", "-N", nodes, "--exclusive", "--requeue"),
        *("-J", low_name),
        *("-o", "/dev/null", "--wrap", "sleep 300"),
    ).strip()
    high = ""
    try:
        _poll(lambda: _sh("squeue", "-h", "-j", low, "-o", "%T").strip() == "RUNNING", 60, "batch")
        high = _sh(
            *("sbatch", "--parsable", "-p", "urgent", "-N", nodes, "-J", high_name),
            *("-o", "/dev/null", "--wrap", "echo urgent"),
        ).strip()
        # GraceTime, then the scheduler's next pass, then KillWait at worst.
        wait = cluster.grace_time + cluster.kill_wait + 90
        _poll(
            lambda: _sacct_states(high, high_name) == ["COMPLETED"],
            wait,
            f"urgent job {high} to run",
        )
        assert "PREEMPTED" in _sacct_states(low, low_name, "-D")
        assert "Restarts=1" in _sh("scontrol", "show", "job", low)
    finally:
        subprocess.run(["scancel", low, *([high] if high else [])], check=False)
