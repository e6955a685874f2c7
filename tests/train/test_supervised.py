import pytest
import torch

from vice.methods import build_method
from vice.train.supervised import train_supervised

from .test_trainer import tiny_config


@pytest.mark.slow
def test_the_labelled_network_learns_within_the_budget():
    cfg = tiny_config(steps=12)
    torch.manual_seed(0)
    network = build_method(cfg).export()
    before = {k: v.clone() for k, v in network.state_dict().items()}
    losses = train_supervised(cfg, network, lr=3e-3, log_every=0)
    assert len(losses) == 12 and sum(losses[-3:]) < sum(losses[:3])
    head = "decoder.head.weight"
    assert not torch.equal(network.state_dict()[head], before[head])
    assert not network.training


def test_a_budget_is_required():
    cfg = tiny_config(steps=0)
    cfg.trainer.max_steps = 0
    with pytest.raises(ValueError, match=r"trainer\.max_steps > 0"):
        train_supervised(cfg, torch.nn.Identity())
