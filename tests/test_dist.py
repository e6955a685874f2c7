import os

import pytest
import torch
import torch.multiprocessing as mp

from vice import dist


def test_world_of_one_without_torchrun(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    info = dist.init_distributed("cpu")
    assert (info.rank, info.world_size, info.local_rank, info.backend) == (0, 1, 0, None)
    assert info.is_main and info.device == torch.device("cpu")
    t = torch.tensor([3.0])
    assert dist.all_reduce_sum(t) is t and float(t) == 3.0
    assert dist.all_gather_object({"a": 1}) == [{"a": 1}]


def test_cuda_requested_without_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match=r"trainer.device='cuda': no CUDA device here"):
        dist.pick_device("cuda", 0)


def _worker(rank: int, world: int, init_file: str, out: dict) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1"
    )
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world
    )
    info = dist.init_distributed("cpu")
    s = dist.all_reduce_sum(torch.tensor([float(rank + 1)]))
    m = dist.all_reduce_max(torch.tensor([float(rank * 10)]))
    objs = dist.all_gather_object({"rank": rank})
    out[rank] = (info.backend, float(s), float(m), objs)
    dist.barrier()
    dist.teardown()


@pytest.mark.slow
def test_gloo_collectives_across_two_processes(tmp_path):
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(2, str(tmp_path / "init"), out), nprocs=2)
        results = dict(out)
    for rank in (0, 1):
        assert results[rank] == ("gloo", 3.0, 10.0, [{"rank": 0}, {"rank": 1}])
