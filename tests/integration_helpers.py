"""What the Lightning and Hugging Face callback tests share: settings, data, the final check."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

SETTINGS: dict[str, Any] = {
    "mask_method": "snip",
    "sparsity": 0.9,
    "recipe": "tost",
    "gradinit_iterations": 1,
    "ghost_epochs": 1.0,
    "dst": "rigl",
    "dst_interval": 2,
}


def images(n: int = 96, shape: tuple[int, int, int] = (1, 8, 8)) -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, *shape, generator=generator), torch.arange(n) % 10)


def assert_plain_with_the_mask(model: nn.Module, plain_keys: set[str], sparse: Any) -> None:
    """The plain architecture (no ghost module, no extra key) holding only the mask's weights."""
    assert set(model.state_dict()) == plain_keys
    assert all(type(m) is not nn.SiLU for m in model.modules())
    for name, keep in sparse.mask.items():
        weight = model.get_parameter(name)
        assert not weight[~keep.to(weight.device)].any()
    assert sparse.mask.kept() == round(0.1 * sparse.mask.total())
    assert sparse.summary()["dst_updates"] > 0
