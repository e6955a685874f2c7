import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The eval tests use tiny tensors: a second intra-op thread only adds synchronisation,
    which costs whole scheduler time slices (tens of ms per op) on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class RandomConvEmbed(torch.nn.Module):
    """Stand-in for the segmentation model: a fixed random 5x5 conv to D channels,
    L2-normalised per pixel, at input resolution."""

    def __init__(self, d: int = 16, seed: int = 0):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, d, 5, padding=2)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.conv.weight.copy_(0.2 * torch.randn(self.conv.weight.shape, generator=g))
            self.conv.bias.zero_()

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self.conv(x_BCHW), dim=1)


@pytest.fixture
def stand_in_model() -> torch.nn.Module:
    return RandomConvEmbed()
