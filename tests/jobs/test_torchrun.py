"""The one torchrun command builder: standalone (local) and c10d rendezvous (SLURM)."""

from jobs.torchrun import PRETRAIN_SCRIPT, Rendezvous, torchrun_command, torchrun_env

SIGNALS = "--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR2"


def test_standalone_command():
    cmd = torchrun_command("/r", 2, python="py")
    assert cmd == [
        "py", "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
        "--nproc-per-node=2", SIGNALS, str(PRETRAIN_SCRIPT), "/r",
    ]  # fmt: skip
    assert PRETRAIN_SCRIPT.name == "pretrain.py" and PRETRAIN_SCRIPT.is_file()


def test_rendezvous_command():
    rdzv = Rendezvous(nnodes=2, endpoint="n1:20019", rdzv_id="19", is_host=False)
    cmd = torchrun_command("/r", 4, rdzv, script="/s/jobs/pretrain.py", python="py")
    assert cmd == [
        "py", "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=4",
        "--rdzv-backend=c10d", "--rdzv-endpoint=n1:20019", "--rdzv-id=19",
        "--rdzv-conf=is_host=0", SIGNALS, "/s/jobs/pretrain.py", "/r",
    ]  # fmt: skip
    host = torchrun_command("/r", 4, Rendezvous(2, "n1:20019", "19", True))
    assert "--rdzv-conf=is_host=1" in host and "--standalone" not in host


def test_env_shares_the_cpus_unless_told(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    env = torchrun_env(nproc_per_node=4, cpus=16)
    assert env["OMP_NUM_THREADS"] == "4" and env["PYTHONUNBUFFERED"] == "1"
    assert torchrun_env(8, 2)["OMP_NUM_THREADS"] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    assert torchrun_env(4, 16)["OMP_NUM_THREADS"] == "7"
