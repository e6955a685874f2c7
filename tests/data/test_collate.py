import torch

from vice.data.collate import collate_vice
from vice.data.sample import ViceSample


def _item(n_regions, value, key):
    v, s = 3, 4
    ids = torch.full((v, s, s), -1, dtype=torch.int64)
    ids[:, 0, :n_regions] = torch.arange(n_regions)
    sample = ViceSample(
        views_VCSS=torch.full((v, 3, s, s), float(value)),
        ids_VSS=ids,
        regions_R=torch.arange(n_regions) + 100,
        flips_V=torch.tensor([True, False, value > 1]),
        boxes_V3=torch.zeros(v, 3),
        masked_VSS=torch.zeros(v, s, s, dtype=torch.bool),
    )
    return {"sample": sample, "key": key, "index": key[1], "skipped": value}


def test_view_major_stacking_and_region_lists():
    batch = collate_vice([_item(2, 1, (0, 5)), _item(3, 2, (0, 9))])
    assert batch.views.shape == (3, 2, 3, 4, 4)
    assert torch.equal(batch.views[:, 1], torch.full((3, 3, 4, 4), 2.0))
    assert batch.ids.shape == (3, 2, 4, 4)
    assert batch.num_regions.tolist() == [2, 3]
    assert [r.tolist() for r in batch.regions] == [[100, 101], [100, 101, 102]]
    assert batch.flips.tolist() == [[True, True], [False, False], [False, True]]
    assert batch.keys == [(0, 5), (0, 9)] and batch.indices.tolist() == [5, 9]
    assert batch.skipped == 3
