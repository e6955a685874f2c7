"""The status view of job chains, on recorded run directories (SLURM faked)."""

import json
import time

from jobs import status, submit, watch

from .test_watch import (
    ERR_START,
    EXHAUSTED,
    EXHAUSTED_ERR,
    SIGUSR2_ERR,
    _out_segment,
)

S = watch.JobState


def _epoch(text):
    return time.mktime(time.strptime(text, "%Y-%m-%d %H:%M:%S"))


def _record(run_dir, pre="10", ev="11", nodes=2, history=()):
    (run_dir / "slurm").mkdir(parents=True, exist_ok=True)
    record = {
        "run_dir": str(run_dir),
        "job_num": 0,
        "overrides": "optim.lr=0.1",
        "resources": {"nodes": nodes},
        "pretrain": {"job_id": pre, "logs": submit.log_paths(run_dir, pre, nodes)},
        "eval": {"job_id": ev, "logs": submit.log_paths(run_dir, ev, 1)} if ev else None,
        "history": list(history),
    }
    (run_dir / "jobs.json").write_text(json.dumps(record))
    (run_dir / "mlflow_run_id").write_text("4f2a9c\n")
    (run_dir / "config.yaml").write_text("trainer:\n  max_requeues: 1\n")
    return record


def _stop(run_dir, signal, step, when):
    with open(run_dir / "stops.jsonl", "a") as f:
        f.write(json.dumps({"signal": signal, "step": step, "time": _epoch(when), "pid": 1}) + "\n")


PREEMPTED_OUT = (
    "submitit WARNING (2026-11-22 10:00:50,000) - Bypassing signal SIGTERM\n"
    "stopping at step 8 (SIGTERM): checkpoint saved, a restart continues here\n"
)
RESUMED = "resumed from /runs/0/checkpoints/step_000000008 at step 8 (epoch 0)\n"


def _preempted_run(run_dir):
    """2 nodes, rank 0 on the second node's task; preempted at step 8, running again."""
    record = _record(run_dir)
    slurm = run_dir / "slurm"
    (slurm / "10_0_log.out").write_text(
        _out_segment(0, [], PREEMPTED_OUT.split("stopping")[0]) + _out_segment(1, [], "")
    )
    (slurm / "10_1_log.out").write_text(
        _out_segment(0, [4, 8], PREEMPTED_OUT) + _out_segment(1, [], RESUMED + "")
        + "step 12/40 | loss 3.8000 | lr 0.0005 | 14.5 img/s | data 3% | ETA 0m55s\n"
    )  # fmt: skip
    _stop(run_dir, "SIGTERM", 8, "2026-11-22 10:00:52")
    return record


def test_status_of_a_run_preempted_and_running_again(tmp_path):
    record = _preempted_run(tmp_path)
    states = {"10": S("RUNNING", "None", "n[1-2]"), "11": S("PENDING", "Dependency")}
    view = status.build_view(record, states)
    assert not view.ended and view.requeues == 1 and view.cause is None
    assert status.format_view(view).splitlines() == [
        f"#0 {tmp_path}",
        "  overrides: optim.lr=0.1",
        "  pretrain job 10: RUNNING on n[1-2] | step 12/40 (30%) | 14.5 img/s | ETA 0m55s",
        "  eval job 11: PENDING [Dependency]",
        "  restarts: 1 by SLURM, 0 resubmitted; stops: 1 (last: SIGTERM at step 8)",
        "  mlflow run: 4f2a9c",
        f"  progress log: {tmp_path}/slurm/10_1_log.out",
        "  10:00:50 SIGTERM from SLURM (preemption, scontrol requeue or scancel)",
        "  10:00:52 stopped at step 8 by SIGTERM (preemption, scontrol requeue or scancel), saved",
        "  10:01:02 job 10 started again (restart 1)",
        "  10:01:02 resumed at step 8",
    ]


def test_a_requeued_job_waiting_on_begin_time_is_said_so(tmp_path):
    record = _preempted_run(tmp_path)
    view = status.build_view(record, {"10": S("PENDING", "BeginTime"), "11": S("PENDING", "")})
    line = status.format_view(view).splitlines()[2]
    # no ETA for a job that is not running
    assert line == (
        "  pretrain job 10: PENDING: requeued, waiting on SLURM's requeue delay (BeginTime) | "
        "step 12/40 (30%) | 14.5 img/s"
    )
    fresh = status.build_view(_record(tmp_path / "new"), {"10": S("PENDING", "BeginTime")})
    assert status.format_view(fresh).splitlines()[2] == "  pretrain job 10: PENDING [BeginTime]"


def _segment(start, restart, steps, end=""):
    """One start of job 10's task on n1 (`start`: HH:MM:SS), as its .out log records it."""
    head = (
        f"submitit INFO (2026-11-22 {start},000) - Starting with JobEnvironment(job_id=10, "
        "hostname=n1, local_rank=0(1), node=0(1), global_rank=0(1))\n"
        f"[vice 2026-11-22 {start}] pretrain job 10 node 0/1 (n1), restart {restart}; code: "
        "vice from /runs/code/vice, jobs from /runs/code/jobs\n"
    )
    if restart:
        head += f"resumed from /runs/0/checkpoints/step_{steps[0] - 2:09d} at step "
        head += f"{steps[0] - 2} (epoch 0)\n"
    body = "".join(
        f"step {s}/40 | loss 4.0000 | lr 0.0005 | 12.0 img/s | data 3% | ETA 1m30s\n" for s in steps
    )
    return head + body + end


def _time_limit(at, requeued):
    """submitit's lines when the time limit nears at `at` (HH:MM:SS)."""
    out = (
        f"submitit WARNING (2026-11-22 {at},001) - Caught signal SIGUSR2 on n1: this job is "
        "timed-out.\n"
    )
    if requeued:
        return (
            out + f"submitit INFO (2026-11-22 {at},300) - Requeued job 10 (0 remaining timeouts)\n"
        )
    return out + (
        f"submitit INFO (2026-11-22 {at},300) - Job not requeued because: timed-out too many "
        "times.\n"
    )


def test_status_of_exhausted_requeues_names_the_true_cause_and_the_fix(tmp_path):
    # trainer.max_requeues=1: requeued at the first time limit, not at the second.
    record = _record(tmp_path, nodes=1)
    slurm = tmp_path / "slurm"
    (slurm / "10_0_log.out").write_text(
        _segment("10:00:02", 0, [4, 8, 10], _time_limit("10:01:50", True))
        + _segment("10:04:02", 1, [12, 16, 20], _time_limit("10:05:50", False))
    )
    (slurm / "10_0_log.err").write_text(ERR_START + SIGUSR2_ERR + ERR_START + EXHAUSTED_ERR)
    _stop(tmp_path, "SIGUSR2", 10, "2026-11-22 10:01:51")
    _stop(tmp_path, "SIGUSR2", 20, "2026-11-22 10:05:51")
    states = {
        "10": S("FAILED", "NonZeroExitCode", "n1", "1:0", "00:06:00"),
        "11": S("CANCELLED", "DependencyNeverSatisfied"),
    }
    view = status.build_view(record, states)
    assert view.ended
    why = "(time limit near, or preemption), saved"
    assert status.format_view(view, events=20).splitlines() == [
        f"#0 {tmp_path}",
        "  overrides: optim.lr=0.1",
        "  pretrain job 10: FAILED (exit 1:0, 00:06:00) [NonZeroExitCode] | step 20/40 (50%) "
        "| 12.0 img/s",
        "  eval job 11: CANCELLED [DependencyNeverSatisfied]",
        "  restarts: 1 by SLURM, 0 resubmitted; stops: 2 (last: SIGUSR2 at step 20)",
        "  mlflow run: 4f2a9c",
        f"  progress log: {tmp_path}/slurm/10_0_log.out",
        "  10:01:50 time limit near: SIGUSR2 on n1 (job 10)",
        "  10:01:50 requeued by submitit (0 time-limit requeues left)",
        f"  10:01:51 stopped at step 10 by SIGUSR2 {why}",
        "  10:04:02 job 10 started again (restart 1)",
        "  10:04:02 resumed at step 10",
        "  10:05:50 time limit near: SIGUSR2 on n1 (job 10)",
        "  10:05:50 not requeued: timed-out too many times",
        f"  10:05:51 stopped at step 20 by SIGUSR2 {why}",
        f"  cause: {EXHAUSTED}",
        "  fix: raise trainer.max_requeues, or continue this run with: "
        f"python tools/resubmit.py {tmp_path} --job 10",
        f"  log: {tmp_path}/slurm/10_0_log.err",
    ]
    # the default shows only the newest events
    assert len([x for x in status.format_view(view).splitlines() if x.startswith("  10:")]) == 8


def test_a_resubmitted_chain_lists_its_past_jobs_and_keeps_the_last_progress(tmp_path):
    history = [
        {
            "pretrain": {"job_id": "10", "state": "FAILED"},
            "eval": {"job_id": "11", "state": "CANCELLED"},
            "until": "2026-11-22T10:03:30+0000",
        }
    ]
    record = _record(tmp_path, pre="20", ev="21", nodes=1, history=history)
    (tmp_path / "slurm" / "10_0_log.out").write_text(_out_segment(0, [4, 8], ""))
    view = status.build_view(record, {"20": S("PENDING", "Priority"), "21": S("PENDING", "")})
    lines = status.format_view(view).splitlines()
    assert lines[2] == "  pretrain job 20: PENDING [Priority] | step 8/40 (20%) | 12.0 img/s"
    assert lines[4] == "  restarts: 0 by SLURM, 1 resubmitted; stops: 0"
    assert lines[5] == "  past pretrain jobs: 10 FAILED"
    assert lines[-1].endswith(" job 10 FAILED; resubmitted as 20")
    assert view.cause is None  # the current job has not failed


def test_wait_prints_what_happens_as_it_happens_and_ends_with_the_metrics(tmp_path):
    from .test_submit import _chain

    chain = _chain(tmp_path)  # job 10 on 1 node, eval 11
    chain.mlflow_run_id = "4f2a9c"
    slurm = tmp_path / "slurm"
    slurm.mkdir()
    log = slurm / "10_0_log.out"
    first = _segment("10:00:02", 0, [4, 8], "")

    def preempted():
        log.write_text(first + "submitit WARNING (2026-11-22 10:00:50,000) - Bypassing signal "
                       "SIGTERM\nstopping at step 8 (SIGTERM): checkpoint saved\n")  # fmt: skip
        _stop(tmp_path, "SIGTERM", 8, "2026-11-22 10:00:51")

    def resumed():
        log.write_text(log.read_text() + _segment("10:03:02", 1, [10, 12], ""))

    def done():
        metrics = {"num_classes": 8, "clustering.8.miou": 0.25, "clustering.8.acc": 0.5}
        (tmp_path / "eval").mkdir()
        (tmp_path / "eval" / "metrics.json").write_text(json.dumps(metrics))

    ok = S("COMPLETED", "None", "n1", "0:0", "00:04:00")
    polls = iter([
        (lambda: log.write_text(first), {"10": S("RUNNING", "None", "n1")}),
        (preempted, {"10": S("PENDING", "BeginTime")}),
        (resumed, {"10": S("RUNNING", "None", "n1")}),
        (done, {"10": ok, "11": ok}),
    ])  # fmt: skip

    def query(ids):
        write, states = next(polls)
        write()
        return states

    out: list[str] = []
    assert watch.wait_for([chain], poll_s=0, out=out.append, query=query) == {0: True}
    lines = [line.split("] ", 1)[1] for line in out if line.startswith("[")]
    assert lines == [
        "#0 pretrain job 10: RUNNING on n1",
        "#0 SIGTERM from SLURM (preemption, scontrol requeue or scancel)",
        "#0 stopped at step 8 by SIGTERM (preemption, scontrol requeue or scancel), saved",
        "#0 pretrain job 10: PENDING: requeued, waiting on SLURM's requeue delay (BeginTime)",
        "#0 job 10 started again (restart 1)",
        "#0 resumed at step 8",
        "#0 pretrain job 10: RUNNING on n1",
        "#0 pretrain job 10: COMPLETED (exit 0:0, 00:04:00)",
        "#0 eval job 11: COMPLETED (exit 0:0, 00:04:00)",
    ]
    assert out[-2:] == [
        "  method                       mIoU %    acc %\n"
        "  clustering C=8 (Hungarian)    25.00    50.00",
        "  mlflow_run_id: 4f2a9c",
    ]


def test_rank_0_on_another_node_after_a_requeue(tmp_path):
    # before the preemption rank 0 ran in task 1 (steps 1-8), after it in task 0
    record = _record(tmp_path)
    slurm = tmp_path / "slurm"
    step_12 = "step 12/40 | loss 3.8000 | lr 0.0005 | 14.5 img/s | data 3% | ETA 0m55s\n"
    (slurm / "10_0_log.out").write_text(
        _out_segment(0, [], PREEMPTED_OUT.split("stopping")[0])
        + _out_segment(1, [], RESUMED + step_12)
    )
    (slurm / "10_1_log.out").write_text(
        _out_segment(0, [1, 2, 3, 4, 5, 6, 7, 8], PREEMPTED_OUT) + _out_segment(1, [], "")
    )
    _stop(tmp_path, "SIGTERM", 8, "2026-11-22 10:00:52")
    view = status.build_view(record, {"10": S("RUNNING", "None", "n[1-2]")})
    assert (view.progress.step, view.progress.log) == (12, str(slurm / "10_0_log.out"))
    assert [e.text for e in view.events][-2:] == [
        "job 10 started again (restart 1)",
        "resumed at step 8",
    ]


def test_ended_status_of_a_chain():
    def view(pre, ev="PENDING"):
        return status.ChainView({"run_dir": "/r"}, S(pre, ""), S(ev, "") if ev else None,
                                None, [], 0, None)  # fmt: skip

    assert status.ended_status(view("RUNNING")) is None
    assert status.ended_status(view("CANCELLED", "CANCELLED")) == "KILLED"  # scancel
    assert status.ended_status(view("FAILED", "CANCELLED")) == "FAILED"
    assert status.ended_status(view("TIMEOUT", None)) == "FAILED"
    assert status.ended_status(view("COMPLETED", "RUNNING")) is None
    assert status.ended_status(view("COMPLETED", "CANCELLED")) == "KILLED"
    assert status.ended_status(view("COMPLETED", "OUT_OF_MEMORY")) == "FAILED"
    assert status.ended_status(view("COMPLETED", "COMPLETED")) is None  # the eval ended it


def test_a_cancelled_chain_ends_its_mlflow_run_killed_once(tmp_path):
    from mlflow.tracking import MlflowClient

    from jobs import stages
    from vice.hydra_schema import to_config

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_dir = tmp_path / "sweep" / "0"
    run_dir.mkdir(parents=True)
    record = _record(run_dir)
    for made_up in ("config.yaml", "mlflow_run_id"):
        (run_dir / made_up).unlink()
    cfg = to_config({"tracking": {"uri": uri}})
    stages.open_run(cfg, run_dir, run_name="smoke").close()
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    client = MlflowClient(uri)
    assert client.get_run(run_id).info.status == "RUNNING"

    running = status.build_view(record, {"10": S("RUNNING", "None", "n1")})
    assert status.settle_run(running) is None
    cancelled = {"10": S("CANCELLED", "None"), "11": S("CANCELLED", "DependencyNeverSatisfied")}
    view = status.build_view(record, cancelled)
    assert status.settle_run(view) == "KILLED"
    assert client.get_run(run_id).info.status == "KILLED"
    assert status.settle_run(view) is None  # once: the journal holds KILLED now


def test_a_held_requeue_and_the_save_time_are_events(tmp_path):
    record = _record(tmp_path, nodes=1)
    (tmp_path / "slurm" / "10_0_log.out").write_text(
        _out_segment(0, [4], "[vice 2026-11-22 10:01:50] SIGUSR2 received: training saves and "
                     "exits first; the requeue follows the save\n")
    )  # fmt: skip
    with open(tmp_path / "stops.jsonl", "a") as f:
        stop = {"signal": "SIGUSR2", "step": 4, "time": _epoch("2026-11-22 10:02:32"),
                "pid": 1, "since_signal_s": 41.6, "save_s": 40.2}  # fmt: skip
        f.write(json.dumps(stop) + "\n")
    texts = [e.line() for e in status.chain_events(record)]
    assert "10:01:50 SIGUSR2 on task 0 (job 10): the requeue waits for the save" in texts
    assert (
        "10:02:32 stopped at step 4 by SIGUSR2 (time limit near, or preemption), saved 42 s "
        "after the signal"
    ) in texts
    view = status.build_view(record, {"10": S("PENDING", "BeginTime")})
    assert "stops: 1 (last: SIGUSR2 at step 4, saved 42 s after the signal)" in status.format_view(
        view
    )
