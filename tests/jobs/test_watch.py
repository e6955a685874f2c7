"""Following job chains: state changes, causes of failures (SLURM faked)."""

from jobs import submit, watch

from .test_submit import _chain


def test_wait_streams_changes_and_explains_a_cancelled_eval(tmp_path):
    chain = _chain(tmp_path)
    (tmp_path / "slurm").mkdir()
    (tmp_path / "slurm" / "10_0_log.err").write_text(
        "Traceback ...\nValueError: invalid config value data.batch_size=4: too big\n"
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n"
    )
    S = watch.JobState
    polls = iter([
        {"10": S("PENDING", "Resources"), "11": S("PENDING", "Dependency")},
        {"10": S("RUNNING", "None", "n1"), "11": S("PENDING", "Dependency")},
        {"10": S("FAILED", "NonZeroExitCode", "n1", "1:0", "00:00:30"),
         "11": S("CANCELLED", "DependencyNeverSatisfied", "", "0:0", "00:00:00")},
    ])  # fmt: skip
    out: list[str] = []
    results = watch.wait_for([chain], poll_s=0, out=out.append, query=lambda ids: next(polls))
    assert results == {0: False}
    text = "\n".join(line.split("] ", 1)[-1] for line in out)
    assert "#0 pretrain job 10: PENDING [Resources]" in text
    assert "#0 pretrain job 10: RUNNING on n1" in text
    assert "#0 pretrain job 10: FAILED (exit 1:0, 00:00:30) [NonZeroExitCode]" in text
    assert "#0 eval job 11: CANCELLED [DependencyNeverSatisfied]" in text
    assert "cause: ValueError: invalid config value data.batch_size=4: too big" in text
    assert (
        "eval job 11 CANCELLED, never started: DependencyNeverSatisfied "
        "(pretrain job 10 FAILED)" in text
    )


def test_wait_success(tmp_path):
    chains = [_chain(tmp_path, 0, "11"), _chain(tmp_path, 1, None)]
    done = watch.JobState("COMPLETED", "None", "n1", "0:0", "00:01:00")
    out: list[str] = []
    results = watch.wait_for(chains, 0, out.append, lambda ids: dict.fromkeys(ids, done))
    assert results == {0: True, 1: True}
    assert f"eval job 11 COMPLETED: {tmp_path}/eval/metrics.json" in "\n".join(out)


# Recorded logs of a 1-node, 2-process pretrain job 10 with trainer.max_requeues=1 (the
# paths shortened): a task's .out/.err grow by one segment at each (re)start.
def _out_segment(r, steps, end):
    """A segment of a task's .out log: restart `r`, these step lines, then `end`."""
    head = (
        f"submitit INFO (2026-11-22 10:0{r}:01,100) - Starting with JobEnvironment(job_id=10, "
        "hostname=n1, local_rank=0(1), node=0(1), global_rank=0(1))\n"
        f"submitit INFO (2026-11-22 10:0{r}:01,101) - Loading pickle: /runs/0/slurm/"
        "10_submitted.pkl\n"
        f"[vice 2026-11-22 10:0{r}:02] pretrain job 10 node 0/1 (n1), restart {r}; code: vice "
        "from /runs/code/vice, jobs from /runs/code/jobs\n"
        f"[vice 2026-11-22 10:0{r}:02] torchrun: /venv/bin/python -m torch.distributed.run "
        "--nnodes=1 --nproc-per-node=2 /runs/code/jobs/pretrain.py /runs/0\n"
    )
    body = "".join(
        f"step {s}/40 | loss {5 - s / 10:.4f} | lr 0.0005 | 12.0 img/s | data 3% | ETA 1m30s\n"
        for s in steps
    )
    return head + body + end


TIMED_OUT_OUT = (
    "submitit INFO (2026-11-22 10:01:50,000) - Job has timed out. Ran 2 minutes out of "
    "requested 2 minutes.\n"
    "submitit WARNING (2026-11-22 10:01:50,001) - Caught signal SIGUSR2 on n1: this job is "
    "timed-out.\n"
    "submitit INFO (2026-11-22 10:01:50,002) - Calling checkpoint method.\n"
)
REQUEUED_OUT = (
    TIMED_OUT_OUT + "submitit INFO (2026-11-22 10:01:50,300) - Requeued job 10 (0 remaining "
    "timeouts)\n"
    "submitit INFO (2026-11-22 10:01:50,301) - Exiting gracefully after preemption/timeout.\n"
    "stopping at step 10 (SIGUSR2): checkpoint saved, a restart continues here\n"
)
EXHAUSTED_OUT = (
    TIMED_OUT_OUT + "submitit INFO (2026-11-22 10:05:50,300) - Job not requeued because: "
    "timed-out too many times.\n"
    "stopping at step 20 (SIGUSR2): checkpoint saved, a restart continues here\n"
    "submitit ERROR (2026-11-22 10:05:58,000) - Submitted job triggered an exception\n"
)

ERR_START = (
    "I1122 10:00:03.000000 4242 torch/distributed/launcher/api.py:258] Starting "
    "elastic_operator with launch configs:\n"
    "I1122 10:00:03.000000 4242 torch/distributed/launcher/api.py:258]   entrypoint"
    "               : /runs/code/jobs/pretrain.py\n"
    "I1122 10:00:03.000000 4242 torch/distributed/launcher/api.py:258]   nproc_per_node"
    "           : 2\n"
)
# torchrun's own traceback after the trainer handled the stop and saved.
SIGUSR2_ERR = (
    "submitit WARNING (2026-11-22 10:01:50,001) - Caught signal SIGUSR2 on n1: this job is "
    "timed-out.\n"
    "W1122 10:01:50.002000 4242 torch/distributed/elastic/agent/server/api.py:719] Received "
    "12 death signal, shutting down workers\n"
    "Traceback (most recent call last):\n"
    '  File "<frozen runpy>", line 198, in _run_module_as_main\n'
    '  File "/venv/lib/python3.11/site-packages/torch/distributed/run.py", line 936, in main\n'
    "    run(args)\n"
    '  File "/venv/lib/python3.11/site-packages/torch/distributed/elastic/multiprocessing/'
    'api.py", line 86, in _terminate_process_handler\n'
    '    raise SignalException(f"Process {os.getpid()} got signal: {sigval}", sigval=sigval)\n'
    "torch.distributed.elastic.multiprocessing.api.SignalException: Process 4242 got signal: "
    "12\n"
)
EXHAUSTED_ERR = (
    SIGUSR2_ERR + "submitit ERROR (2026-11-22 10:05:58,000) - Submitted job triggered an "
    "exception\n"
    "Traceback (most recent call last):\n"
    '  File "/venv/lib/python3.11/site-packages/submitit/core/job_environment.py", line 227, '
    "in checkpoint_and_try_requeue\n"
    "    raise utils.UncompletedJobError(message)\n"
    "submitit.core.utils.UncompletedJobError: Job not requeued because: timed-out too many "
    "times.\n"
)
OOM_ERR = (
    "[rank1]: Traceback (most recent call last):\n"
    '[rank1]:   File "/runs/code/jobs/pretrain.py", line 60, in <module>\n'
    "[rank1]:     main()\n"
    "[rank1]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 1 "
    "has a total capacity of 79.10 GiB of which 1.50 GiB is free.\n"
    "E1122 10:04:10.000000 4242 torch/distributed/elastic/multiprocessing/api.py:882] failed "
    "(exitcode: 1) local_rank: 1 (pid: 4251) of binary: /venv/bin/python\n"
    "Traceback (most recent call last):\n"
    "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n"
    "============================================================\n"
    "/runs/code/jobs/pretrain.py FAILED\n"
    "------------------------------------------------------------\n"
    "Root Cause (first observed failure):\n"
    "[0]:\n"
    "  time      : 2026-11-22_10:04:10\n"
    "  host      : n1\n"
    "  rank      : 1 (local_rank: 1)\n"
    "  exitcode  : 1 (pid: 4251)\n"
    "  error_file: /tmp/torchelastic_x/none_y/attempt_0/1/error.json\n"
    "  traceback : Traceback (most recent call last):\n"
    "============================================================\n"
    "RuntimeError: pretraining failed: torchrun exited with code 1 on node 0 (n1); "
    "run_dir: /runs/0\n"
)


def _sigkill_err(rank, host):
    return (
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n"
        "============================================================\n"
        "/runs/code/jobs/pretrain.py FAILED\n"
        "------------------------------------------------------------\n"
        "Failures:\n"
        "  <NO_OTHER_FAILURES>\n"
        "------------------------------------------------------------\n"
        "Root Cause (first observed failure):\n"
        "[0]:\n"
        "  time      : 2026-11-22_10:03:00\n"
        f"  host      : {host}\n"
        f"  rank      : {rank} (local_rank: 0)\n"
        "  exitcode  : -9 (pid: 4250)  (SIGKILL)\n"
        "  error_file: <N/A>\n"
        "  traceback : Signal 9 (SIGKILL) received by PID 4250\n"
        "============================================================\n"
        "RuntimeError: pretraining failed: torchrun exited with code 1 on node 1 (n2); "
        "run_dir: /runs/0\n"
    )


EXHAUSTED = "time limit reached 2 times: the requeues (trainer.max_requeues=1) are used up"


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _exhausted_logs(tmp_path, task=0):
    out = _write(
        tmp_path,
        f"10_{task}_log.out",
        _out_segment(0, [4, 8], REQUEUED_OUT) + _out_segment(1, [12, 16, 20], EXHAUSTED_OUT),
    )
    err = _write(
        tmp_path, f"10_{task}_log.err", ERR_START + SIGUSR2_ERR + ERR_START + EXHAUSTED_ERR
    )
    return [err, out]


def test_cause_of_exhausted_requeues_is_in_the_last_segment(tmp_path):
    paths = _exhausted_logs(tmp_path)
    assert watch.last_cause(paths) == EXHAUSTED  # max_requeues implied by 2 time limits
    assert watch.last_cause(paths, max_requeues=1) == EXHAUSTED
    assert watch.last_cause(paths[:1]) == EXHAUSTED  # the .err alone says it too
    assert watch.fix_hint(EXHAUSTED, "/runs/0", "10", "FAILED") == (
        "raise trainer.max_requeues, or continue this run with: "
        "python tools/resubmit.py /runs/0 --job 10"
    )


def test_cause_after_a_handled_stop_is_the_workers_exception(tmp_path):
    # First segment: a time limit, handled and requeued; second: a worker runs out of memory.
    err = _write(tmp_path, "10_0_log.err", ERR_START + SIGUSR2_ERR + ERR_START + OOM_ERR)
    out = _write(
        tmp_path,
        "10_0_log.out",
        _out_segment(0, [4, 8], REQUEUED_OUT) + _out_segment(1, [12], ""),
    )
    cause = watch.last_cause([err, out])
    assert cause == (
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 1 has a "
        "total capacity of 79.10 GiB of which 1.50 GiB is free."
    )
    assert watch.fix_hint(cause, "/runs/0", "10", "FAILED") is None


def test_handled_stop_alone_is_no_cause_but_an_unhandled_signal_is(tmp_path):
    handled = _write(tmp_path, "a.err", ERR_START + SIGUSR2_ERR)
    assert watch.last_cause([handled]) is None
    bare = SIGUSR2_ERR.split("\n", 1)[1]  # no sign of submitit or the trainer stopping
    unhandled = _write(tmp_path, "b.err", ERR_START + bare)
    assert watch.last_cause([unhandled]) == (
        "torch.distributed.elastic.multiprocessing.api.SignalException: Process 4242 got signal: 12"
    )


def test_cause_of_a_sigkilled_worker_names_the_rank_not_the_peers_errors(tmp_path):
    # 2 nodes; rank 0 on the second node (task 1) was SIGKILLed, the first node's workers
    # then lost their peer.
    peer = _write(
        tmp_path,
        "10_0_log.err",
        ERR_START + "[rank2]: RuntimeError: [/pytorch/third_party/gloo/gloo/transport/tcp/"
        "pair.cc:534] Connection closed by peer [10.0.0.2]:29500\n",
    )
    killed = _write(tmp_path, "10_1_log.err", ERR_START + _sigkill_err(0, "n2"))
    cause = watch.last_cause([peer, killed])
    assert cause == "rank 0 on n2 was killed by signal 9 (SIGKILL)"
    assert watch.fix_hint(cause, "/runs/0", "10", "FAILED") == (
        "continue this run from its newest checkpoint with: "
        "python tools/resubmit.py /runs/0 --job 10"
    )
    assert watch.fix_hint(None, "/runs/0", "10", "NODE_FAIL") == (
        "continue this run from its newest checkpoint with: "
        "python tools/resubmit.py /runs/0 --job 10"
    )


def test_cause_falls_back_to_the_pretraining_failed_line(tmp_path):
    err = _write(
        tmp_path,
        "10_0_log.err",
        ERR_START + "RuntimeError: pretraining failed: torchrun exited with code 1 on node 0 "
        "(n1); run_dir: /runs/0\n",
    )
    assert watch.last_cause([err]) == (
        "pretraining failed: torchrun exited with code 1 on node 0 (n1); run_dir: /runs/0"
    )


def test_no_cause_in_a_log_without_errors(tmp_path):
    out = _write(
        tmp_path,
        "10_0_log.out",
        _out_segment(0, [4, 8, 12], "pretraining done: 12 steps in 1m02s, 12.0 img/s\n"),
    )
    err = _write(tmp_path, "10_0_log.err", ERR_START)
    assert watch.last_cause([err, out, tmp_path / "missing.err"]) is None
    assert watch.fix_hint(None, "/runs/0", "10", "COMPLETED") is None


def test_progress_log_is_the_task_log_with_rank_0s_steps(tmp_path):
    task0 = _write(tmp_path, "10_0_log.out", _out_segment(0, [], ""))
    task1 = _write(tmp_path, "10_1_log.out", _out_segment(0, [4, 8, 12], ""))
    assert watch.progress_log([task0, task1, tmp_path / "missing.out"]) == task1
    assert watch.progress_log([task0]) is None


def test_wait_prints_the_true_cause_the_fix_and_the_progress_log(tmp_path):
    chain = _chain(tmp_path)
    chain.logs["pretrain"] = submit.log_paths(tmp_path, "10", 2)  # 2 nodes
    (tmp_path / "slurm").mkdir()
    (tmp_path / "config.yaml").write_text("trainer:\n  max_requeues: 1\n")
    _exhausted_logs(tmp_path / "slurm", task=0)
    # torchrun gave global rank 0 to the second node's task: its steps are in task 1's log.
    (tmp_path / "slurm" / "10_0_log.out").write_text(
        _out_segment(0, [], REQUEUED_OUT) + _out_segment(1, [], EXHAUSTED_OUT)
    )
    (tmp_path / "slurm" / "10_1_log.out").write_text(
        _out_segment(0, [4, 8], "") + _out_segment(1, [12, 16, 20], "")
    )
    (tmp_path / "slurm" / "10_1_log.err").write_text(ERR_START + SIGUSR2_ERR + ERR_START)
    S = watch.JobState
    polls = iter([
        {"10": S("RUNNING", "None", "n[1-2]"), "11": S("PENDING", "Dependency")},
        {"10": S("FAILED", "NonZeroExitCode", "n[1-2]", "1:0", "00:06:00"),
         "11": S("CANCELLED", "DependencyNeverSatisfied", "", "0:0", "00:00:00")},
    ])  # fmt: skip
    out: list[str] = []
    results = watch.wait_for([chain], poll_s=0, out=out.append, query=lambda ids: next(polls))
    assert results == {0: False}
    report = out[out.index("#0 optim.lr=0.1: pretrain job 10 FAILED") + 1 :]
    assert report[:5] == [
        f"  progress log: {tmp_path}/slurm/10_1_log.out",
        f"  cause: {EXHAUSTED}",
        "  fix: raise trainer.max_requeues, or continue this run with: "
        f"python tools/resubmit.py {tmp_path} --job 10",
        f"  log: {tmp_path}/slurm/10_0_log.err",
        f"  log: {tmp_path}/slurm/10_1_log.err",
    ]


def test_cause_of_an_earlier_segment_is_not_reported(tmp_path):
    # The job failed (a worker OOM), was requeued by hand (`scontrol requeue`), and failed
    # again: the cause is the second failure's.
    second = (
        "[rank0]: FileNotFoundError: [Errno 2] No such file or directory: "
        "'/data/coco/train2017/000000000009.jpg'\n"
        "RuntimeError: pretraining failed: torchrun exited with code 1 on node 0 (n1); "
        "run_dir: /runs/0\n"
    )
    err = _write(tmp_path, "10_0_log.err", ERR_START + OOM_ERR + ERR_START + second)
    assert watch.last_cause([err]) == (
        "FileNotFoundError: [Errno 2] No such file or directory: "
        "'/data/coco/train2017/000000000009.jpg'"
    )


def test_a_completed_job_does_not_show_its_stale_pending_reason():
    done = watch.JobState("COMPLETED", "Dependency", "", "0:0", "00:01:37")
    assert done.text() == "COMPLETED (exit 0:0, 00:01:37)"
    failed = watch.JobState("FAILED", "NonZeroExitCode", "", "1:0", "00:06:00")
    assert failed.text() == "FAILED (exit 1:0, 00:06:00) [NonZeroExitCode]"


def test_a_cancelled_jobs_cause_is_said_in_words():
    stopped = (
        "jobs.slurm.TrainingStoppedError: training stopped by SIGTERM at step 3, checkpoint "
        "saved; a restart of job 600 (requeue or tools/resubmit.py) continues from it"
    )
    said = watch.cancelled_cause(stopped, "CANCELLED")
    assert said == "cancelled (scancel); training stopped at step 3 and saved a checkpoint"
    assert watch.cancelled_cause(None, "CANCELLED") == "cancelled (scancel)"
    assert watch.cancelled_cause(stopped, "FAILED") == stopped  # not requeued: a failure
    assert watch.cancelled_cause("OOM", "CANCELLED") == "OOM"  # a real error stays
    assert watch.fix_hint(said, "/r", "600", "CANCELLED") == (
        "continue it with: python tools/resubmit.py /r --job 600"
    )
