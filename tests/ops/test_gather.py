"""vice.ops.gather: rows of unequal counts gathered from 2 gloo ranks in rank order, the
padding dropped; a world of one returns its own rows."""

from pathlib import Path

import pytest
import torch

from vice.ops.gather import all_gather_rows

ROOT = Path(__file__).resolve().parents[2]


def _gather_rank(rank: int, init_file: str, out_file: str) -> None:
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=2
    )
    try:
        rows = torch.arange(3 * rank * 2, dtype=torch.float64).view(-1, 2) + 100 * rank
        gathered, offset = all_gather_rows(rows)  # 0 rows on rank 0, 3 on rank 1
        if rank == 1:
            torch.save({"gathered": gathered, "offset": offset}, out_file)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_rows_of_unequal_counts_are_gathered_in_rank_order(tmp_path):
    out = tmp_path / "out.pt"
    torch.multiprocessing.spawn(
        _gather_rank, args=(str(tmp_path / "init"), str(out)), nprocs=2, join=True
    )
    result = torch.load(out)
    assert result["offset"] == 0  # rank 0 held no rows
    assert torch.equal(result["gathered"], torch.arange(6.0, dtype=torch.float64).view(3, 2) + 100)


def test_a_world_of_one_gathers_its_own_rows():
    rows = torch.randn(3, 2)
    gathered, offset = all_gather_rows(rows)
    assert gathered is rows and offset == 0
