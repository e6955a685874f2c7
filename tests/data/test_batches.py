import dataclasses

import torch

from vice.data.batches import Batch, ViceBatch


def _batch() -> ViceBatch:
    V, B, S = 3, 2, 4
    return ViceBatch(
        skipped=1,
        views=torch.zeros(V, B, 3, S, S),
        ids=torch.zeros(V, B, S, S, dtype=torch.int64),
        num_regions=torch.tensor([2, 3]),
        regions=[torch.tensor([0, 4]), torch.tensor([1, 2, 5])],
        flips=torch.zeros(V, B, dtype=torch.bool),
        boxes=torch.zeros(V, B, 3),
        masked=torch.zeros(V, B, S, S, dtype=torch.bool),
        keys=[(0, 0), (0, 1)],
        indices=torch.tensor([0, 1]),
    )


def test_to_moves_every_tensor_field_and_keeps_the_rest():
    batch = _batch()
    moved = batch.to(torch.device("meta"))
    assert isinstance(moved, ViceBatch) and isinstance(moved, Batch)
    for f in dataclasses.fields(moved):
        value = getattr(moved, f.name)
        if isinstance(value, torch.Tensor):
            assert value.device.type == "meta", f.name
    assert moved.keys == batch.keys and moved.skipped == 1
    assert moved.regions is batch.regions  # lists stay where the loader put them
    assert batch.views.device.type == "cpu"  # the original is untouched
