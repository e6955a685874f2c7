import pytest

from vice.data.sampler import ResumableDistributedSampler


def _consume(sampler, n):
    it = iter(sampler)
    got = [next(it) for _ in range(n)]
    sampler.advance(n)
    return got


def test_ranks_partition_each_epoch():
    orders = [ResumableDistributedSampler(103, 4, r, seed=5).epoch_order(2) for r in range(4)]
    assert all(len(o) == 25 for o in orders)
    flat = [i for o in orders for i in o]
    assert len(set(flat)) == 100  # drop_last: 3 images left out, none repeated


def test_order_depends_only_on_seed_and_epoch():
    a = ResumableDistributedSampler(50, seed=1)
    b = ResumableDistributedSampler(50, seed=1)
    assert a.epoch_order(3) == b.epoch_order(3)
    assert a.epoch_order(3) != a.epoch_order(4)
    assert a.epoch_order(3) != ResumableDistributedSampler(50, seed=2).epoch_order(3)


@pytest.mark.parametrize("rank,consumed", [(0, 0), (1, 7), (2, 24), (3, 25)])
def test_resume_reproduces_exact_remaining_order(rank, consumed):
    full = ResumableDistributedSampler(100, 4, rank, seed=9)
    full.set_epoch(3)
    reference = list(full)

    run = ResumableDistributedSampler(100, 4, rank, seed=9)
    run.set_epoch(3)
    seen = _consume(run, consumed)
    state = run.state_dict()
    assert state == {"epoch": 3, "position": consumed, "seed": 9}

    resumed = ResumableDistributedSampler(100, 4, rank, seed=9)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert seen + rest == reference
    assert len(resumed) == 25 - consumed
    assert all(epoch == 3 for epoch, _ in rest)


def test_prefetch_does_not_move_position():
    s = ResumableDistributedSampler(10)
    it = iter(s)
    [next(it) for _ in range(6)]  # a loader prefetching ahead
    s.advance(2)  # the trainer consumed only two
    assert s.state_dict()["position"] == 2


def test_set_epoch_restarts_and_wrong_seed_is_refused():
    s = ResumableDistributedSampler(10, seed=1)
    s.advance(4)
    s.set_epoch(1)
    assert s.state_dict() == {"epoch": 1, "position": 0, "seed": 1}
    with pytest.raises(ValueError, match=r"checkpoint sampler seed 2 != data.seed 1"):
        s.load_state_dict({"epoch": 0, "position": 0, "seed": 2})


def test_no_drop_last_pads_by_wrapping():
    orders = [
        ResumableDistributedSampler(10, 4, r, shuffle=False, drop_last=False).epoch_order(0)
        for r in range(4)
    ]
    assert orders == [[0, 4, 8], [1, 5, 9], [2, 6, 0], [3, 7, 1]]


def test_bad_arguments():
    with pytest.raises(ValueError, match="non-empty"):
        ResumableDistributedSampler(0)
    with pytest.raises(ValueError, match="rank 4 outside"):
        ResumableDistributedSampler(10, 4, 4)
    with pytest.raises(ValueError, match="smaller than the world size"):
        ResumableDistributedSampler(3, 4, 0)
