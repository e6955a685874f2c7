#!/usr/bin/env python3
"""Bring up a real SLURM cluster (accounting, two partitions, preemption) on this one machine.

    sudo python3 tools/slurm_cluster.py up --nodes 2          # install, configure, start, wait
    python3 tools/slurm_cluster.py status                     # nodes, queue, daemons (exit 0 = up)
    sudo python3 tools/slurm_cluster.py down                  # cancel jobs, stop the daemons

Debian 12 packages (Slurm 22.05), no systemd: every daemon is started directly. Nodes n1..nN are
separate slurmd processes on this host (distinct ports), so multi-node jobs, `sacct`, requeue and
preemption behave as on a real cluster. Partitions over the same nodes:

    batch   Default, PriorityTier=1, PreemptMode=REQUEUE, GraceTime=--grace-time
    urgent  PriorityTier=10, PreemptMode=OFF: its jobs preempt (requeue) batch jobs

`up` is idempotent: on a running cluster with the same settings it returns within seconds;
with other settings it rewrites the configuration and restarts what is needed (jobs on removed
nodes are cancelled). A preempted batch job gets its --signal (or SIGTERM), is requeued after
GraceTime (+ up to ~30 s until the scheduler acts) and waits on BeginTime before it restarts.
Only the Python standard library is used (runs with any python3 >= 3.11).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

PREFIX = "[slurm_cluster]"
# munge first: the slurm packages depend on it anyway, and the order makes apt's errors readable.
PACKAGES = ("munge", "mariadb-server", "slurmdbd", "slurmctld", "slurmd", "slurm-client")
ACCOUNT = "vice"

ETC_SLURM = Path("/etc/slurm")
SLURM_CONF = ETC_SLURM / "slurm.conf"
SLURMDBD_CONF = ETC_SLURM / "slurmdbd.conf"
LOG_DIR = Path("/var/log/slurm")
CTLD_STATE = Path("/var/spool/slurmctld")
SLURMD_SPOOL = Path("/var/spool/slurmd")
CTLD_PID = Path("/run/slurmctld.pid")
DBD_PID = Path("/run/slurmdbd.pid")
CTLD_LOG = LOG_DIR / "slurmctld.log"
DBD_LOG = LOG_DIR / "slurmdbd.log"
# Pid files of the daemons this tool starts that are not configured by a Slurm file (munged,
# mariadbd): `down` stops only what is recorded here, never a database someone else runs.
TOOL_RUN = Path("/run/slurm_cluster")
MUNGE_PID = TOOL_RUN / "munged.pid"
MARIADB_PID = TOOL_RUN / "mariadbd.pid"
MARIADB_LOG = LOG_DIR / "mariadb.log"
# Copy of the slurm.conf the running slurmctld/slurmd were started with: the file in /etc can be
# newer (an `up` that failed after writing it), and then the daemons must still be restarted.
RUNNING_CONF = TOOL_RUN / "slurm.conf.running"
MUNGE_KEY = Path("/etc/munge/munge.key")
HOSTS = Path("/etc/hosts")
HOSTS_MARK = "# slurm_cluster.py node names"
SETTINGS_MARK = "# slurm_cluster.py settings: "

CTLD_PORT = 6817
DBD_PORT = 6819
SLURMD_BASE_PORT = 17000  # n<i> listens on SLURMD_BASE_PORT + i; far from Slurm's 6817-6819
OK_NODE_STATES = {"idle", "mixed", "allocated", "completing"}


class ClusterError(Exception):
    """A failure the user can act on; main() prints it and exits with `code`."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclasses.dataclass(frozen=True)
class Options:
    """Everything that shapes the rendered configuration (so equal options = equal files)."""

    nodes: int
    cpus_per_node: int
    memory_mb: int
    grace_time: int = 20
    kill_wait: int = 30
    cluster_name: str = "vice"
    hostname: str = "localhost"


# ---------------------------------------------------------------- pure rendering (unit-tested)


def node_names(nodes: int) -> list[str]:
    """n1 .. nN."""
    return [f"n{i}" for i in range(1, nodes + 1)]


def node_port(index: int) -> int:
    """Port of slurmd for node n<index> (1-based); every slurmd on this host needs its own."""
    return SLURMD_BASE_PORT + index


def hostlist(nodes: int) -> str:
    """Slurm's compact host list for n1..nN."""
    return "n1" if nodes == 1 else f"n[1-{nodes}]"


def ctld_state_dir(cluster_name: str) -> Path:
    """slurmctld's StateSaveLocation for cluster `cluster_name`."""
    return CTLD_STATE / cluster_name


def render_slurm_conf(opts: Options) -> str:
    """slurm.conf for `opts`: one slurmd per node on this host, accounting, preemption."""
    if opts.nodes < 1:
        raise ValueError("need at least one node")
    settings = json.dumps(dataclasses.asdict(opts), sort_keys=True)
    nodes = hostlist(opts.nodes)
    lines = [
        "# Written by tools/slurm_cluster.py; `up` rewrites it, edits are lost.",
        SETTINGS_MARK + settings,
        f"ClusterName={opts.cluster_name}",
        # The address form needs no name resolution of this host.
        f"SlurmctldHost={opts.hostname}(127.0.0.1)",
        f"SlurmctldPort={CTLD_PORT}",
        "SlurmUser=slurm",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CryptoType=crypto/munge",
        "MpiDefault=none",
        # No cgroup hierarchy we may use in containers / sandboxes.
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SwitchType=switch/none",
        # Several nodes share one host: let the configured CPUs/memory win over what slurmd sees.
        "SlurmdParameters=config_overrides",
        "ReturnToService=2",
        # One state directory per cluster name: slurmctld refuses state saved under another
        # name, and switching back must not restart job ids at 1 (sacct would mix up jobs).
        f"StateSaveLocation={ctld_state_dir(opts.cluster_name)}",
        f"SlurmctldPidFile={CTLD_PID}",
        f"SlurmctldLogFile={CTLD_LOG}",
        f"SlurmdSpoolDir={SLURMD_SPOOL}/%n",
        "SlurmdPidFile=/run/slurmd-%n.pid",
        f"SlurmdLogFile={LOG_DIR}/slurmd-%n.log",
        "SlurmctldTimeout=30",
        "SlurmdTimeout=60",
        "InactiveLimit=0",
        f"KillWait={opts.kill_wait}",
        # Finished jobs leave squeue quickly; sacct keeps them.
        "MinJobAge=30",
        "Waittime=0",
        "DisableRootJobs=NO",
        "MailProg=/bin/true",  # no mail on test machines; the default is missing and logs errors
        # Scheduling: react within seconds (defaults are tuned for big clusters).
        "SchedulerType=sched/backfill",
        "SchedulerParameters=bf_interval=1,sched_interval=2,bf_continue",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "PriorityType=priority/basic",
        # Preemption: a job of a higher-PriorityTier partition requeues jobs of lower ones.
        "PreemptType=preempt/partition_prio",
        "PreemptMode=REQUEUE",
        "JobRequeue=1",
        # At preemption, send the job's own --signal (e.g. submitit's USR2) instead of SIGTERM at
        # the start of GraceTime. Slurm 22.05 reads this flag from SlurmctldParameters (checked
        # in its debug log); PreemptParameters=send_user_signal is 23.02+ and 22.05 rejects
        # the whole file, and as a SchedulerParameters flag 22.05 ignores it.
        "SlurmctldParameters=preempt_send_user_signal",
        # Accounting through slurmdbd: sacct shows PREEMPTED / REQUEUED / TIMEOUT states.
        "AccountingStorageType=accounting_storage/slurmdbd",
        "AccountingStorageHost=localhost",
        f"AccountingStoragePort={DBD_PORT}",
        "JobAcctGatherType=jobacct_gather/linux",
        "JobAcctGatherFrequency=30",
        "JobCompType=jobcomp/none",
        "",
    ]
    for i, name in enumerate(node_names(opts.nodes), start=1):
        lines.append(
            f"NodeName={name} NodeHostname={opts.hostname} NodeAddr=127.0.0.1 "
            f"Port={node_port(i)} CPUs={opts.cpus_per_node} RealMemory={opts.memory_mb} "
            "State=UNKNOWN"
        )
    lines += [
        f"PartitionName=batch Nodes={nodes} Default=YES MaxTime=INFINITE State=UP "
        f"PriorityTier=1 PreemptMode=REQUEUE GraceTime={opts.grace_time}",
        f"PartitionName=urgent Nodes={nodes} Default=NO MaxTime=INFINITE State=UP "
        "PriorityTier=10 PreemptMode=OFF",
    ]
    return "\n".join(lines) + "\n"


def render_slurmdbd_conf(password: str) -> str:
    """slurmdbd.conf: slurmdbd on this host, storing into MariaDB's slurm_acct_db."""
    return "\n".join(
        [
            "# Written by tools/slurm_cluster.py; `up` rewrites it, edits are lost.",
            "AuthType=auth/munge",
            "DbdHost=localhost",
            f"DbdPort={DBD_PORT}",
            "SlurmUser=slurm",
            f"PidFile={DBD_PID}",
            f"LogFile={DBD_LOG}",
            "StorageType=accounting_storage/mysql",
            "StorageHost=localhost",
            "StorageLoc=slurm_acct_db",
            "StorageUser=slurm",
            f"StoragePass={password}",
            "",
        ]
    )


def render_hosts(current: str, nodes: int) -> str:
    """/etc/hosts with exactly one marked line resolving n1..nN to 127.0.0.1."""
    kept = [line for line in current.splitlines() if not line.rstrip().endswith(HOSTS_MARK)]
    kept.append(f"127.0.0.1 {' '.join(node_names(nodes))} {HOSTS_MARK}")
    return "\n".join(kept) + "\n"


def parse_settings(conf_text: str) -> Options | None:
    """The Options a slurm.conf written by this tool was rendered from (None if not ours)."""
    for line in conf_text.splitlines():
        if line.startswith(SETTINGS_MARK):
            try:
                return Options(**json.loads(line[len(SETTINGS_MARK) :]))
            except (ValueError, TypeError):
                return None
    return None


def parse_storage_pass(dbd_text: str) -> str | None:
    """StoragePass of an existing slurmdbd.conf, so the database password stays stable."""
    match = re.search(r"^StoragePass=(\S+)\s*$", dbd_text, re.MULTILINE)
    return match.group(1) if match else None


# ---------------------------------------------------------------- small system helpers


def log(message: str) -> None:
    """One progress line."""
    try:
        print(f"{PREFIX} {message}", flush=True)
    except BrokenPipeError:
        # The reader went away (`up | head`): finish the work silently, not half-way through.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (kept open until exit)


def run(
    cmd: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 60,
    input_text: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a short command and capture its output; `check` turns failures into ClusterError."""
    try:
        proc = subprocess.run(
            list(cmd),
            input=input_text,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except FileNotFoundError as exc:
        if check:
            raise ClusterError(f"command not found: {cmd[0]}") from exc
        return subprocess.CompletedProcess(list(cmd), 127, "", str(exc))
    except subprocess.TimeoutExpired as exc:
        if check:
            raise ClusterError(f"timed out after {timeout:.0f} s: {' '.join(cmd)}") from exc
        return subprocess.CompletedProcess(list(cmd), 124, "", "timeout")
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()
        raise ClusterError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}): {detail}")
    return proc


def start_daemon(cmd: Sequence[str], logfile: Path) -> None:
    """Start a self-daemonizing program; its early output goes to `logfile`.

    Never to a pipe: a forked daemon would hold the pipe open and we would wait forever.
    """
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with logfile.open("a") as out:
        proc = subprocess.run(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            timeout=60,
            check=False,
        )
    if proc.returncode != 0:
        raise ClusterError(f"`{' '.join(cmd)}` exited {proc.returncode}; see {logfile}")


def read_pid(path: Path) -> int | None:
    """The pid in a pid file, or None."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def pid_alive(pid: int | None, names: Iterable[str]) -> bool:
    """Whether `pid` runs one of the programs `names` (pids get reused; zombies are dead)."""
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # Format: pid (comm) state ...; comm may hold spaces, so split at the last ')'.
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    state = stat[stat.rindex(")") + 2 :].split()[0]
    return state != "Z" and any(comm.startswith(name[:15]) for name in names)


def daemon_alive(pidfile: Path, names: Iterable[str]) -> bool:
    """Whether the daemon recorded in `pidfile` runs."""
    return pid_alive(read_pid(pidfile), names)


def stop_pidfile(pidfile: Path, names: Iterable[str], label: str, timeout: float = 60) -> bool:
    """SIGTERM the daemon of `pidfile`, SIGKILL after `timeout`; True if one was running."""
    pid = read_pid(pidfile)
    if not pid_alive(pid, names):
        pidfile.unlink(missing_ok=True)
        return False
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid, names):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
            break
        time.sleep(0.2)
    pidfile.unlink(missing_ok=True)
    log(f"stopped {label} (pid {pid})")
    return True


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, logfile: Path) -> None:
    """Poll `predicate` until true; after `timeout` a ClusterError with the end of `logfile`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise ClusterError(
                f"{what} not ready after {timeout:.0f} s; see {logfile}:\n{tail(logfile)}"
            )
        time.sleep(0.5)


def tail(path: Path, lines: int = 8) -> str:
    """Last lines of a log file, indented, for error messages."""
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return f"    ({path} not readable)"
    return "\n".join(f"    {line}" for line in text) or f"    ({path} is empty)"


def write_if_changed(path: Path, text: str, mode: int, owner: str | None = None) -> bool:
    """Write `text` to `path` (mode, owner) unless it is already there; True if written."""
    try:
        if path.read_text() == text:
            return False
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    if owner:
        shutil.chown(tmp, owner, owner)
    tmp.replace(path)
    return True


def chown_tree(path: Path, owner: str, mode: int | None = None) -> None:
    """mkdir -p `path` and give it (not its contents) to `owner`."""
    path.mkdir(parents=True, exist_ok=True)
    shutil.chown(path, owner, owner)
    if mode is not None:
        os.chmod(path, mode)


def default_memory_mb() -> int:
    """90 % of this host's memory: every node claims it (nodes share the host, like CPUs)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(int(line.split()[1]) / 1024 * 0.9)
    return 1024


def default_cpus() -> int:
    """CPUs this process may use (the cores of the host, or of its container)."""
    return len(os.sched_getaffinity(0))


def short_hostname() -> str:
    """This host's short name, which slurmctld compares with SlurmctldHost."""
    return socket.gethostname().split(".")[0]


# ---------------------------------------------------------------- steps of `up`


def require_root(argv: Sequence[str]) -> None:
    """ClusterError with exit code 2, before touching anything, when not root."""
    if os.geteuid() != 0:
        raise ClusterError(
            "root is needed (it installs packages, writes /etc/slurm and /etc/hosts and starts "
            f"daemons); run it as root, e.g.: sudo python3 {__file__} {' '.join(argv)}",
            code=2,
        )


def package_installed(name: str) -> bool:
    """`dpkg -s` says the package is installed."""
    proc = run(["dpkg-query", "-W", "-f=${Status}", name], check=False)
    return proc.returncode == 0 and proc.stdout.strip().endswith("ok installed")


def apt_env() -> dict[str, str]:
    """Environment for non-interactive apt."""
    return {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}


def failing_packages(names: Sequence[str]) -> list[str]:
    """Which of `names` apt cannot install (simulated one by one, after a failed install)."""
    bad = []
    for name in names:
        sim = run(
            ["apt-get", "install", "-s", "-y", "--no-install-recommends", name],
            check=False,
            env=apt_env(),
        )
        if sim.returncode != 0:
            bad.append(name)
    return bad or list(names)


def ensure_packages(packages: Sequence[str] = PACKAGES) -> None:
    """Install the missing Debian packages; never start their services (no systemd here)."""
    missing = [p for p in packages if not package_installed(p)]
    if not missing:
        return
    log(f"installing {' '.join(missing)} (apt-get)")
    started = time.monotonic()
    update = run(["apt-get", "update"], check=False, timeout=600, env=apt_env())
    if update.returncode != 0:
        log(f"warning: apt-get update failed: {update.stderr.strip()[-300:]}")
    # Maintainer scripts would start the daemons with default configurations that we would then
    # fight with; policy-rc.d exit 101 ("not allowed") is Debian's way to prevent that.
    policy = Path("/usr/sbin/policy-rc.d")
    added_policy = not policy.exists()
    if added_policy:
        policy.write_text("#!/bin/sh\n# temporary, tools/slurm_cluster.py\nexit 101\n")
        policy.chmod(0o755)
    try:
        proc = run(
            ["apt-get", "install", "-y", "--no-install-recommends", *missing],
            check=False,
            timeout=1200,
            env=apt_env(),
        )
    finally:
        if added_policy:
            policy.unlink(missing_ok=True)
    if proc.returncode != 0:
        bad = failing_packages(missing)
        error = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-6:])
        raise ClusterError(f"cannot install package(s) {', '.join(bad)}: {error}", code=2)
    log(f"installed in {time.monotonic() - started:.0f} s")


def ensure_slurm_user() -> None:
    """The `slurm` user (Debian's packages create it; older ones may not)."""
    try:
        pwd.getpwnam("slurm")
    except KeyError:
        run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "slurm"])


def ensure_hosts(nodes: int) -> None:
    """Node names resolve to 127.0.0.1 (rendezvous code resolves $SLURM_JOB_NODELIST names)."""
    current = HOSTS.read_text()
    wanted = render_hosts(current, nodes)
    if wanted != current:
        # In place, not by rename: /etc/hosts is often a bind mount in containers.
        with HOSTS.open("w") as f:
            f.write(wanted)
        log(f"/etc/hosts: 127.0.0.1 {' '.join(node_names(nodes))}")


def munge_works() -> bool:
    """`munge -n | unmunge` succeeds."""
    cred = run(["munge", "-n"], check=False, timeout=10)
    if cred.returncode != 0:
        return False
    return run(["unmunge"], check=False, input_text=cred.stdout, timeout=10).returncode == 0


def ensure_munge() -> None:
    """A munge key with munge's ownership, and munged running as user munge."""
    if munge_works():
        return
    if not MUNGE_KEY.exists():
        MUNGE_KEY.parent.mkdir(parents=True, exist_ok=True)
        if shutil.which("mungekey"):
            run(["mungekey", "--create", f"--keyfile={MUNGE_KEY}"])
        elif shutil.which("create-munge-key"):
            run(["create-munge-key", "-f"])
        else:
            MUNGE_KEY.write_bytes(os.urandom(1024))
        log(f"created {MUNGE_KEY}")
    for d in ("/etc/munge", "/var/lib/munge", "/var/log/munge"):
        chown_tree(Path(d), "munge", 0o700)
    chown_tree(Path("/run/munge"), "munge", 0o755)
    shutil.chown(MUNGE_KEY, "munge", "munge")
    os.chmod(MUNGE_KEY, 0o400)
    log("starting munged")
    start_daemon(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], LOG_DIR / "munged.out")
    wait_for(munge_works, 20, "munged", Path("/var/log/munge/munged.log"))
    TOOL_RUN.mkdir(parents=True, exist_ok=True)
    pid = read_pid(Path("/run/munge/munged.pid"))
    if pid:
        MUNGE_PID.write_text(f"{pid}\n")


def mariadb_alive() -> bool:
    """The MariaDB server answers on its socket."""
    return (
        run(["mariadb-admin", "--protocol=socket", "ping"], check=False, timeout=10).returncode == 0
    )


def ensure_mariadb() -> None:
    """MariaDB running (started directly, no systemd), data directory initialised."""
    if mariadb_alive():
        return
    chown_tree(Path("/run/mysqld"), "mysql", 0o755)
    chown_tree(LOG_DIR, "slurm", 0o755)
    if not Path("/var/lib/mysql/mysql").is_dir():
        log("initialising MariaDB's data directory")
        run(["mariadb-install-db", "--user=mysql", "--datadir=/var/lib/mysql"], timeout=300)
    log("starting MariaDB")
    MARIADB_LOG.touch()
    shutil.chown(MARIADB_LOG, "mysql", "mysql")
    server = shutil.which("mariadbd", path="/usr/sbin:/usr/bin") or "/usr/sbin/mysqld"
    proc = subprocess.Popen(
        [server, "--user=mysql", f"--log-error={MARIADB_LOG}", "--innodb-lock-wait-timeout=900"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # survives this tool and the terminal
    )
    TOOL_RUN.mkdir(parents=True, exist_ok=True)
    MARIADB_PID.write_text(f"{proc.pid}\n")
    wait_for(mariadb_alive, 60, "MariaDB", MARIADB_LOG)


def ensure_database(password: str) -> None:
    """slurm_acct_db and its user `slurm` with `password` (re-applied: cheap and self-healing)."""
    sql = (
        "CREATE DATABASE IF NOT EXISTS slurm_acct_db;"
        f"CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '{password}';"
        f"ALTER USER 'slurm'@'localhost' IDENTIFIED BY '{password}';"
        "GRANT ALL PRIVILEGES ON slurm_acct_db.* TO 'slurm'@'localhost';"
    )
    run(["mariadb", "--protocol=socket", "-uroot", "-e", sql])


def database_password() -> str:
    """The password already in slurmdbd.conf, or a new random one."""
    try:
        existing = parse_storage_pass(SLURMDBD_CONF.read_text())
    except OSError:
        existing = None
    return existing or secrets.token_hex(16)


def slurm_dirs(opts: Options) -> None:
    """Log, state and spool directories with the owners the daemons expect."""
    chown_tree(LOG_DIR, "slurm", 0o755)
    chown_tree(CTLD_STATE, "slurm", 0o755)
    chown_tree(ctld_state_dir(opts.cluster_name), "slurm", 0o755)
    TOOL_RUN.mkdir(parents=True, exist_ok=True)
    for name in node_names(opts.nodes):
        (SLURMD_SPOOL / name).mkdir(parents=True, exist_ok=True)


def dbd_ready() -> bool:
    """slurmdbd answers sacctmgr."""
    return run(["sacctmgr", "-n", "-P", "list", "cluster"], check=False, timeout=20).returncode == 0


def ensure_slurmdbd(restart: bool) -> None:
    """slurmdbd running with the current slurmdbd.conf."""
    if restart:
        stop_pidfile(DBD_PID, ["slurmdbd"], "slurmdbd")
    if not daemon_alive(DBD_PID, ["slurmdbd"]):
        log("starting slurmdbd")
        start_daemon(["slurmdbd"], LOG_DIR / "slurmdbd.out")
    wait_for(dbd_ready, 60, "slurmdbd", DBD_LOG)


def ensure_accounting(cluster: str) -> None:
    """Cluster, account `vice` and root's association in the accounting database."""

    def listed(*args: str) -> bool:
        proc = run(["sacctmgr", "-n", "-P", "list", *args], timeout=20)
        return bool(proc.stdout.strip())

    if not listed("cluster", cluster, "format=cluster"):
        run(["sacctmgr", "-i", "add", "cluster", cluster], timeout=30)
        log(f"accounting: added cluster {cluster}")
    # Accounts are global but their associations are per cluster: check the association.
    if not listed("assoc", f"account={ACCOUNT}", f"cluster={cluster}", "format=account"):
        run(
            [
                *("sacctmgr", "-i", "add", "account", ACCOUNT, f"cluster={cluster}"),
                *("description=vice jobs", "organization=vice"),
            ],
            timeout=30,
        )
        log(f"accounting: added account {ACCOUNT}")
    if not listed("assoc", "user=root", f"account={ACCOUNT}", f"cluster={cluster}", "format=user"):
        run(
            ["sacctmgr", "-i", "add", "user", "root", f"account={ACCOUNT}", f"cluster={cluster}"],
            timeout=30,
        )
        log(f"accounting: added user root to account {ACCOUNT}")


def slurmd_pidfile(name: str) -> Path:
    """Pid file of node `name`'s slurmd (SlurmdPidFile with %n expanded)."""
    return Path(f"/run/slurmd-{name}.pid")


def running_slurmd_nodes() -> list[str]:
    """Node names of the slurmd daemons with a live pid file."""
    names = []
    for pidfile in sorted(Path("/run").glob("slurmd-*.pid")):
        if daemon_alive(pidfile, ["slurmd"]):
            names.append(pidfile.name[len("slurmd-") : -len(".pid")])
    return names


def stop_slurmds(names: Iterable[str]) -> None:
    """Stop the slurmd of each node in `names`."""
    for name in names:
        stop_pidfile(slurmd_pidfile(name), ["slurmd"], f"slurmd {name}")


def ctld_ready() -> bool:
    """slurmctld answers."""
    return run(["scontrol", "ping"], check=False, timeout=20).stdout.count("UP") > 0


def cancel_jobs_on(removed: Sequence[str], kill_wait: int) -> None:
    """Cancel the jobs on nodes about to be removed, while slurmctld still knows those nodes.

    Otherwise they end as NODE_FAIL and their processes live on, orphaned, on this host.
    """
    if not removed or not daemon_alive(CTLD_PID, ["slurmctld"]) or not ctld_ready():
        return
    nodes = ",".join(removed)
    if not run(["squeue", "-h", "-w", nodes, "-o", "%i"], check=False).stdout.strip():
        return
    log(f"cancelling the jobs on removed node(s) {nodes}")
    run(["scancel", "-w", nodes], check=False)
    deadline = time.monotonic() + kill_wait + 10
    while run(["squeue", "-h", "-w", nodes, "-o", "%i"], check=False).stdout.strip():
        if time.monotonic() > deadline:
            log(f"warning: jobs still on {nodes}; stopping their slurmd anyway")
            break
        time.sleep(1)


def ensure_slurm_daemons(opts: Options, restart: bool) -> bool:
    """slurmctld and one slurmd per node; True if anything was (re)started."""
    wanted = node_names(opts.nodes)
    cancel_jobs_on([n for n in running_slurmd_nodes() if n not in wanted], opts.kill_wait)
    if restart:
        stop_slurmds(running_slurmd_nodes())
        stop_pidfile(CTLD_PID, ["slurmctld"], "slurmctld")
    else:
        stop_slurmds(n for n in running_slurmd_nodes() if n not in wanted)
    started = False
    if not daemon_alive(CTLD_PID, ["slurmctld"]):
        log("starting slurmctld")
        start_daemon(["slurmctld"], LOG_DIR / "slurmctld.out")
        started = True
    wait_for(ctld_ready, 60, "slurmctld", CTLD_LOG)
    for name in wanted:
        if not daemon_alive(slurmd_pidfile(name), ["slurmd"]):
            start_daemon(["slurmd", "-N", name], LOG_DIR / f"slurmd-{name}.out")
            started = True
    if started:
        log(f"slurmd running for {' '.join(wanted)}")
    return started


def node_states() -> dict[str, str]:
    """{node: state} from sinfo, e.g. {'n1': 'idle'}; {} if slurmctld does not answer."""
    proc = run(["sinfo", "-h", "-N", "-o", "%N %T"], check=False, timeout=20)
    if proc.returncode != 0:
        return {}
    states = {}
    for line in proc.stdout.splitlines():
        if len(parts := line.split()) == 2:
            states[parts[0]] = parts[1]
    return states


def nodes_ok(names: Sequence[str]) -> bool:
    """Every node in `names` is usable (idle, or running jobs)."""
    states = node_states()
    return all(states.get(n, "").rstrip("*") in OK_NODE_STATES for n in names)


def wait_for_nodes(opts: Options, timeout: float) -> None:
    """Wait until sinfo shows all nodes usable; resume nodes left drained by an older run."""
    names = node_names(opts.nodes)
    start = time.monotonic()
    resumed = False
    while not nodes_ok(names):
        bad = {n: s for n, s in node_states().items() if n in names}
        if not resumed and time.monotonic() > start + 10:
            # ReturnToService=2 brings DOWN nodes back, not DRAINED ones (e.g. drained when
            # their slurmd was killed): resume them once.
            stuck = [n for n, s in bad.items() if "drain" in s or s.startswith("down")]
            if stuck:
                run(
                    ["scontrol", "update", f"nodename={','.join(stuck)}", "state=resume"],
                    check=False,
                )
            resumed = True
        if time.monotonic() > start + timeout:
            reasons = run(["sinfo", "-R"], check=False).stdout.strip()
            logs = "\n".join(
                f"  {p}:\n{tail(p, 5)}"
                for p in [CTLD_LOG] + [LOG_DIR / f"slurmd-{n}.log" for n in names]
            )
            raise ClusterError(
                f"nodes not idle after {timeout:.0f} s: {bad or 'sinfo does not answer'}\n"
                f"{reasons}\nlogs:\n{logs}"
            )
        time.sleep(1)


def smoke_test(opts: Options) -> None:
    """One job step on every node, as root, running python3: what users' jobs need."""
    proc = run(
        [
            *("srun", "-N", str(opts.nodes), "--immediate=30", "-t", "1"),
            *("python3", "-c", "import os; print(os.environ['SLURMD_NODENAME'])"),
        ],
        check=False,
        timeout=90,
    )
    seen = sorted(proc.stdout.split(), key=lambda n: int(n[1:]) if n[1:].isdigit() else 0)
    if proc.returncode == 0 and seen == node_names(opts.nodes):
        log(f"srun -N{opts.nodes} python3 ran on {' '.join(seen)}")
        # Let the nodes leave COMPLETING, so the summary shows them idle.
        deadline = time.monotonic() + 10
        while "completing" in node_states().values() and time.monotonic() < deadline:
            time.sleep(0.3)
        return
    busy = run(["squeue", "-h", "-t", "R"], check=False).stdout.strip()
    if busy:
        log("warning: smoke test skipped, the nodes are busy with jobs")
        return
    raise ClusterError(
        f"srun smoke test failed (exit {proc.returncode}): {proc.stderr.strip() or proc.stdout}\n"
        f"see {CTLD_LOG} and {LOG_DIR}/slurmd-n*.log"
    )


def running_conf() -> str | None:
    """The slurm.conf the running Slurm daemons were started with (None: unknown)."""
    try:
        return RUNNING_CONF.read_text()
    except OSError:
        return None


def fast_path(opts: Options) -> bool:
    """Cluster up with exactly these settings: config unchanged, daemons alive, sinfo answers."""
    conf = render_slurm_conf(opts)
    try:
        if SLURM_CONF.read_text() != conf or running_conf() != conf:
            return False
        if not SLURMDBD_CONF.exists():
            return False
        if render_hosts(HOSTS.read_text(), opts.nodes) != HOSTS.read_text():
            return False
    except OSError:
        return False
    alive = (
        daemon_alive(CTLD_PID, ["slurmctld"])
        and daemon_alive(DBD_PID, ["slurmdbd"])
        and all(daemon_alive(slurmd_pidfile(n), ["slurmd"]) for n in node_names(opts.nodes))
        and set(running_slurmd_nodes()) == set(node_names(opts.nodes))
    )
    return alive and munge_works() and nodes_ok(node_names(opts.nodes))


def summary(opts: Options) -> None:
    """The closing lines: partitions and node count."""
    proc = run(["sinfo", "-o", "%P %a %D %T %N"], check=False)
    for line in proc.stdout.strip().splitlines():
        log(f"  {line}")
    log(
        f"cluster {opts.cluster_name} up: {opts.nodes} node(s) {hostlist(opts.nodes)}, "
        f"{opts.cpus_per_node} CPUs and {opts.memory_mb} MB each; partitions: batch (default, "
        f"preemptible, requeue, GraceTime={opts.grace_time} s), urgent (preempts batch)"
    )


def cmd_up(opts: Options, timeout: float) -> int:
    """Install, configure and start everything; wait for idle nodes (root checked by main)."""
    t0 = time.monotonic()
    ensure_packages()
    if fast_path(opts):
        log(f"already up with the same settings ({time.monotonic() - t0:.1f} s)")
        summary(opts)
        return 0
    ensure_slurm_user()
    slurm_dirs(opts)
    ensure_hosts(opts.nodes)
    ensure_munge()
    ensure_mariadb()
    password = database_password()
    ensure_database(password)
    conf = render_slurm_conf(opts)
    conf_changed = write_if_changed(SLURM_CONF, conf, 0o644)
    dbd_changed = write_if_changed(SLURMDBD_CONF, render_slurmdbd_conf(password), 0o600, "slurm")
    if conf_changed:
        log(f"wrote {SLURM_CONF}")
    if dbd_changed:
        log(f"wrote {SLURMDBD_CONF}")
    ensure_slurmdbd(restart=dbd_changed)
    ensure_accounting(opts.cluster_name)
    stale = running_conf() != conf
    if stale and (daemon_alive(CTLD_PID, ["slurmctld"]) or running_slurmd_nodes()):
        log("settings changed: restarting slurmctld and slurmd")
    started = ensure_slurm_daemons(opts, restart=stale)
    RUNNING_CONF.write_text(conf)
    wait_for_nodes(opts, timeout)
    if started:
        smoke_test(opts)
    log(f"ready in {time.monotonic() - t0:.0f} s")
    summary(opts)
    return 0


def daemon_table(nodes: Iterable[str] = ()) -> list[tuple[str, Path, list[str]]]:
    """(label, pid file, program names) of every daemon the tool manages, slurmd first.

    slurmd of `nodes` are listed even without a pid file, so `status` shows them as stopped.
    """
    found = {p.name[len("slurmd-") : -len(".pid")] for p in Path("/run").glob("slurmd-*.pid")}
    names = sorted(found | set(nodes), key=lambda n: (len(n), n))
    slurmds = [(f"slurmd {n}", slurmd_pidfile(n), ["slurmd"]) for n in names]
    return [
        *slurmds,
        ("slurmctld", CTLD_PID, ["slurmctld"]),
        ("slurmdbd", DBD_PID, ["slurmdbd"]),
        ("mariadb", MARIADB_PID, ["mariadbd", "mysqld"]),
        ("munged", MUNGE_PID, ["munged"]),
    ]


def cancel_all_jobs() -> None:
    """Cancel every job and wait for its processes: they would outlive the daemons otherwise."""
    if not daemon_alive(CTLD_PID, ["slurmctld"]) or not ctld_ready():
        return
    jobs = run(["squeue", "-h", "-o", "%i"], check=False).stdout.split()
    if not jobs:
        return
    log(f"cancelling {len(jobs)} job(s)")
    run(["scancel", *jobs], check=False)
    try:
        opts = parse_settings(SLURM_CONF.read_text())
    except OSError:
        opts = None
    deadline = time.monotonic() + (opts.kill_wait if opts else 30) + 10
    while run(["squeue", "-h", "-t", "R,CG", "-o", "%i"], check=False).stdout.strip():
        if time.monotonic() > deadline:
            log("warning: some jobs are still ending; stopping the daemons anyway")
            return
        time.sleep(1)


def cmd_down() -> int:
    """Cancel the jobs, stop every daemon this tool started (pid files); packages, data stay."""
    cancel_all_jobs()
    stopped = [
        label for label, pidfile, names in daemon_table() if stop_pidfile(pidfile, names, label)
    ]
    RUNNING_CONF.unlink(missing_ok=True)
    log("stopped " + (", ".join(stopped) if stopped else "nothing (no daemon was running)"))
    return 0


def cmd_status() -> int:
    """Daemons, nodes and queue; 0 when the cluster is up (does not need root)."""
    if not shutil.which("sinfo"):
        log("slurm is not installed (run `up`)")
        return 1
    try:
        opts = parse_settings(SLURM_CONF.read_text())
    except OSError:
        opts = None
    expected = node_names(opts.nodes) if opts else []
    alive = {
        label: daemon_alive(pidfile, names) for label, pidfile, names in daemon_table(expected)
    }
    # munged and MariaDB may have been started by someone else: ask them, not a pid file.
    alive["munged"] = alive["munged"] or munge_works()
    alive["mariadb"] = alive["mariadb"] or mariadb_alive()
    for label, running in alive.items():
        log(f"{label:<10} {'running' if running else 'stopped'}")
    up = (
        opts is not None
        and all(alive[k] for k in ("slurmctld", "slurmdbd", "mariadb", "munged"))
        and all(alive.get(f"slurmd {n}", False) for n in expected)
    )
    if alive["slurmctld"]:
        sinfo = run(["sinfo", "-N", "-o", "%N %P %T %c %m"], check=False, timeout=20)
        print((sinfo.stdout or sinfo.stderr).rstrip())
        squeue = run(["squeue"], check=False, timeout=20)
        print((squeue.stdout or squeue.stderr).rstrip())
        up = up and sinfo.returncode == 0 and nodes_ok(expected)
    else:
        # sinfo would spend ~10 s retrying a controller that is not there.
        log("no sinfo / squeue: slurmctld is not running")
    if opts is None:
        log(f"{SLURM_CONF} was not written by this tool (run `up`)")
    log("cluster is up" if up else "cluster is NOT up")
    return 0 if up else 1


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="install, configure and start the cluster; wait for it")
    up.add_argument("--nodes", type=int, required=True, help="number of nodes n1..nN")
    up.add_argument("--cpus-per-node", type=int, default=None, help="default: cores of this host")
    up.add_argument("--memory-mb", type=int, default=None, help="default: 90%% of host memory")
    up.add_argument("--grace-time", type=int, default=20, help="batch GraceTime (s), default 20")
    up.add_argument("--kill-wait", type=int, default=30, help="KillWait (s), default 30")
    up.add_argument("--cluster-name", default="vice")
    up.add_argument("--timeout", type=float, default=120, help="seconds to wait for idle nodes")
    sub.add_parser("down", help="stop the daemons started by `up`")
    sub.add_parser("status", help="daemons, nodes and queue; exit 0 when up")
    args = p.parse_args(argv)
    if args.command == "up" and args.nodes < 1:
        p.error("--nodes must be >= 1")
    # Slurm lower-cases cluster names and slurmdbd builds table names from them.
    if args.command == "up" and not re.fullmatch(r"[a-z][a-z0-9_]{0,39}", args.cluster_name):
        p.error("--cluster-name: lower-case letters, digits and _ (at most 40), e.g. vice")
    return args


def options_from(args: argparse.Namespace) -> Options:
    """Options for `up`, with this host's defaults filled in."""
    return Options(
        nodes=args.nodes,
        cpus_per_node=args.cpus_per_node or default_cpus(),
        memory_mb=args.memory_mb or default_memory_mb(),
        grace_time=args.grace_time,
        kill_wait=args.kill_wait,
        cluster_name=args.cluster_name,
        hostname=short_hostname(),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = parse_args(argv)
    try:
        if args.command in ("up", "down"):
            require_root(argv if argv is not None else sys.argv[1:])  # before anything else
        if args.command == "up":
            return cmd_up(options_from(args), args.timeout)
        if args.command == "down":
            return cmd_down()
        return cmd_status()
    except ClusterError as exc:
        print(f"{PREFIX} error: {exc}", file=sys.stderr, flush=True)
        return exc.code


if __name__ == "__main__":
    sys.exit(main())
