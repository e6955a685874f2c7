import torch

from vice.ops.precision import at_least_float32


def test_low_precision_is_raised_and_float64_kept():
    for dtype, want in [
        (torch.bfloat16, torch.float32),
        (torch.float16, torch.float32),
        (torch.float32, torch.float32),
        (torch.float64, torch.float64),
    ]:
        x = torch.ones(2, dtype=dtype)
        y = at_least_float32(x)
        assert y.dtype == want and torch.equal(y, torch.ones(2, dtype=want))
    x = torch.ones(3)
    assert at_least_float32(x) is x  # no copy when nothing changes
