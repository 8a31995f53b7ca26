import pytest
import torch

from lazydit.core.models.dit import DiT, DiTConfig

torch.set_num_threads(min(2, torch.get_num_threads()))


def tiny_dit(learn_sigma=True, in_channels=4, depth=3, seed=0, std=0.1) -> DiT:
    """A small random DiT whose blocks all matter (adaLN-Zero init would make them identities)."""
    torch.manual_seed(seed)
    model = DiT(DiTConfig(depth=depth, hidden_size=32, num_heads=2, patch_size=2, input_size=8,
                          in_channels=in_channels, num_classes=10, learn_sigma=learn_sigma))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, std)
    return model.eval()


@pytest.fixture
def model():
    return tiny_dit()
