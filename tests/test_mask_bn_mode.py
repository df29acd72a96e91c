"""BatchNorm while SNIP and GraSP score (`prune_bn_mode`): each mode equals the computation by hand in
that mode, and 'auto' (the default) is each method's reference mode."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from anymask.data import ImageDataset
from anymask.errors import AnymaskError
from anymask.masks import Mask, MaskConfig, make_mask, mask_from_scores
from mask_models import one_line, quiet_make_mask, synthetic_data


@pytest.fixture(scope="module")
def data() -> ImageDataset:
    return synthetic_data()


class ConvBN(nn.Module):
    """conv -> BN (non-trivial running statistics) -> ReLU -> pool -> Linear: train and eval mode differ."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.bn.running_mean.uniform_(-0.5, 0.5)
        self.bn.running_var.uniform_(0.2, 3.0)
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def hand_snip_mask(net: nn.Module, data: ImageDataset, training: bool, density: float) -> Mask:
    """SNIP by hand on every training image (the prune set when it takes 3 of each of 10 classes)."""
    net = copy.deepcopy(net).train(training)
    mean = torch.tensor(data.mean).view(1, -1, 1, 1) * 255
    std = torch.tensor(data.std).view(1, -1, 1, 1) * 255
    x = (data.train_x.float() - mean) / std
    params = {"conv.weight": net.conv.weight, "fc.weight": net.fc.weight}
    grads = torch.autograd.grad(F.cross_entropy(net(x), data.train_y), list(params.values()))
    scores = {n: (g * p).abs().detach() for (n, p), g in zip(params.items(), grads, strict=True)}
    return mask_from_scores(scores, density, "global")


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_snip_scores_in_the_chosen_batchnorm_mode(mode: str, data: ImageDataset) -> None:
    """prune_bn_mode='eval' (SNIP's default) is SNIP with the model in eval mode, as Synaptic-Flow scores;
    'train' uses batch statistics. Both equal the hand computation in that mode, and they differ."""
    net = ConvBN()
    config = MaskConfig(mask_method="snip", sparsity=0.5, prune_samples_per_class=3, prune_bn_mode=mode)
    mask = quiet_make_mask(net, config, data=data)
    expected = hand_snip_mask(net, data, mode == "train", 0.5)
    assert all(torch.equal(mask[n], expected[n]) for n in expected)
    other = hand_snip_mask(net, data, mode != "train", 0.5)
    assert not all(torch.equal(mask[n], other[n]) for n in other)
    assert MaskConfig().prune_bn_mode == "auto" and MaskConfig(mask_method="snip").bn_mode() == "eval"


def test_grasp_scores_in_train_mode_by_default_as_its_authors(data: ImageDataset) -> None:
    """'auto' is GraSP's reference mode, train: the default mask is the train-mode mask, not the eval one."""
    masks = {
        mode: quiet_make_mask(
            ConvBN(),
            MaskConfig(mask_method="grasp", sparsity=0.5, prune_samples_per_class=3, prune_bn_mode=mode),
            data=data,
        )
        for mode in ("auto", "train", "eval")
    }
    assert all(torch.equal(masks["auto"][n], masks["train"][n]) for n in masks["train"])
    assert not all(torch.equal(masks["auto"][n], masks["eval"][n]) for n in masks["eval"])


def test_unknown_prune_bn_mode_is_one_line(data: ImageDataset) -> None:
    config = MaskConfig(mask_method="grasp", sparsity=0.5, prune_bn_mode="frozen")
    with pytest.raises(AnymaskError, match="prune_bn_mode 'frozen'") as error:
        make_mask(ConvBN(), config, data=data)
    assert one_line(error)
