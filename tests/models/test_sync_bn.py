import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from vice.models.sync_bn import DistributedBatchNorm2d, convert_distributed_bn


def test_single_process_equals_batchnorm():
    torch.manual_seed(0)
    ref = nn.BatchNorm2d(3)
    ours = convert_distributed_bn(nn.Sequential(nn.BatchNorm2d(3)))[0]
    assert isinstance(ours, DistributedBatchNorm2d)
    x = torch.randn(4, 3, 5, 5)
    torch.testing.assert_close(ours(x), ref(x))


def test_conversion_keeps_the_tensors_themselves():
    bn = nn.BatchNorm2d(3).double()
    bn.weight.requires_grad_(False)
    bn.eval()
    model = nn.Sequential(nn.Conv2d(1, 3, 1), bn)
    before = {name: t for name, t in [*bn.named_parameters(), *bn.named_buffers()]}
    ours = convert_distributed_bn(model)[1]
    assert isinstance(ours, DistributedBatchNorm2d) and not ours.training
    after = dict([*ours.named_parameters(), *ours.named_buffers()])
    assert after.keys() == before.keys()
    assert all(after[name] is tensor for name, tensor in before.items())
    assert ours.weight.dtype == torch.float64 and not ours.weight.requires_grad
    assert ours.bias.requires_grad


def _worker(rank, init, out):
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=2)
    x = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(0)) * 3 + 1
    bn = DistributedBatchNorm2d(3)
    xs = x[rank * 2 : rank * 2 + 2].clone().requires_grad_(True)
    w = torch.arange(4 * 3 * 36, dtype=torch.float32).reshape(4, 3, 6, 6)[rank * 2 : rank * 2 + 2]
    (bn(xs) * w).sum().backward()
    out[rank] = (xs.grad.clone(), bn.running_mean.clone(), bn.running_var.clone())
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_equal_one_process_on_the_whole_batch(tmp_path):
    x = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(0)) * 3 + 1
    x.requires_grad_(True)
    ref = nn.BatchNorm2d(3)
    w = torch.arange(4 * 3 * 36, dtype=torch.float32).reshape(4, 3, 6, 6)
    (ref(x) * w).sum().backward()
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(str(tmp_path / "init"), out), nprocs=2)
        got = dict(out)
    grad = torch.cat([got[0][0], got[1][0]])
    torch.testing.assert_close(grad, x.grad, rtol=1e-4, atol=1e-4)
    for r in (0, 1):
        torch.testing.assert_close(got[r][1], ref.running_mean)
        torch.testing.assert_close(got[r][2], ref.running_var)
