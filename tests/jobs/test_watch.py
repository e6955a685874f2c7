"""Following job chains: state changes, causes of failures (SLURM faked)."""

from jobs import watch

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
