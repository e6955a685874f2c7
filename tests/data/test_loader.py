import torch

from vice.data.datasets import build_source
from vice.data.loader import build_pretrain_loader
from vice.data.pretrain import ViceDataset


def test_workers_do_not_change_samples(small_cfg):
    ds = ViceDataset(build_source(small_cfg), small_cfg)
    batches = {}
    for workers in (0, 2):
        small_cfg.num_workers = workers
        loader, sampler = build_pretrain_loader(ds, small_cfg)
        sampler.set_epoch(1)
        batches[workers] = next(iter(loader))
    torch.testing.assert_close(batches[0].views, batches[2].views, rtol=0, atol=0)
    assert batches[0].keys == batches[2].keys


def test_collated_batch_is_view_major(small_cfg):
    small_cfg.batch_size = 3
    loader, _ = build_pretrain_loader(ViceDataset(build_source(small_cfg), small_cfg), small_cfg)
    batch = next(iter(loader))
    s = small_cfg.views.view_size
    assert batch.views.shape == (5, 3, 3, s, s)
    assert batch.ids.shape == (5, 3, s, s) and batch.ids.dtype == torch.int64
    assert batch.flips.shape == (5, 3) and batch.boxes.shape == (5, 3, 3)
    assert len(batch.regions) == 3
    for b in range(3):
        n = int(batch.num_regions[b])
        assert n == batch.regions[b].numel() > 0
        assert int(batch.ids[:, b].max()) == n - 1
    assert batch.skipped == 0


def test_loader_resumes_mid_epoch_with_identical_batches(small_cfg):
    small_cfg.batch_size = 2
    ds = ViceDataset(build_source(small_cfg), small_cfg)
    loader, sampler = build_pretrain_loader(ds, small_cfg)
    sampler.set_epoch(0)
    it = iter(loader)
    next(it)
    sampler.advance(2)
    expected = next(it)
    state = sampler.state_dict()

    loader2, sampler2 = build_pretrain_loader(
        ViceDataset(build_source(small_cfg), small_cfg), small_cfg
    )
    sampler2.load_state_dict(state)
    got = next(iter(loader2))
    assert got.keys == expected.keys
    torch.testing.assert_close(got.views, expected.views, rtol=0, atol=0)
