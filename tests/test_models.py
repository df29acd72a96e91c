"""Tests for anymask.models: shapes, exact sizes, and the conventions the recipe and pruners rely on."""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch
from torch import nn

from anymask.errors import AnymaskError
from anymask.models import MODELS, create_model, ghost_skip_sites
from anymask.models.base import discover_ghost_skip_sites

# name: (parameters, ReLU modules, ghost-skip sites) for 10 classes on 3x32x32, width 1.
# Literature checks: ResNet-18 (kuangliu) 11,173,962; ResNet-34 21,282,122; MobileNetV2 (kuangliu)
# 2,296,922. He et al. give 0.27M / 0.46M / 0.85M for ResNet-20/32/56 with zero-pad shortcuts
# (269,722 / 464,154 / 853,018); our projection shortcuts add 2,752 (conv 16->32, 32->64 + BNs).
# VGG-16 is kuangliu's 14,728,266 minus the 4,224 conv biases we drop (every conv feeds a BN).
EXPECTED = {
    "cnn": (57_130, 3, 2),
    "mobilenetv2": (2_296_922, 36, 51),  # 17 blocks x 3 sites; stem and 1280-channel head are not sites
    "resnet104": (1_055_002, 100, 99),  # 33 Bottlenecks x 3 sites
    "resnet18": (11_173_962, 17, 16),
    "resnet20": (272_474, 19, 18),
    "resnet32": (466_906, 31, 30),
    "resnet34": (21_282_122, 33, 32),
    "resnet56": (855_770, 55, 54),
    "vgg16": (14_724_042, 13, 12),
}
NAMES = MODELS.names()
DIGITS = (1, 8, 8)


@functools.cache
def _built(name: str) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name).eval()


def model(name: str) -> nn.Module:
    """A seed-0, eval-mode model; a private copy, so tests may change it freely."""
    return copy.deepcopy(_built(name))


def image(shape: tuple[int, int, int] = (3, 32, 32), batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(1))


def convs(net: nn.Module) -> list[nn.Conv2d]:
    return [m for m in net.modules() if isinstance(m, nn.Conv2d)]


def test_registry_lists_every_model() -> None:
    assert set(NAMES) == set(EXPECTED)


@pytest.mark.parametrize("name", NAMES)
@torch.no_grad()
def test_forward_shape_cifar(name: str) -> None:
    assert model(name)(image()).shape == (2, 10)


@pytest.mark.parametrize("name", NAMES)
def test_forward_and_backward_on_digits(name: str) -> None:
    """1-channel 8x8 input: every model builds and trains (train-mode BN) without a pool to nothing."""
    net = create_model(name, num_classes=7, input_shape=DIGITS, width=0.25)
    out = net(image(DIGITS))
    assert out.shape == (2, 7)
    out.sum().backward()
    assert convs(net)[0].weight.grad is not None


def test_vgg_skips_pools_that_would_empty_the_map() -> None:
    def pools(shape: tuple[int, int, int]) -> int:
        return sum(
            isinstance(m, nn.MaxPool2d) for m in create_model("vgg16", input_shape=shape, width=0.1).modules()
        )

    assert (pools((3, 32, 32)), pools(DIGITS), pools((3, 1, 1))) == (4, 3, 0)


# Synaptic-Flow's lottery_vgg.vgg16_bn for CIFAR: its plan, conv 3x3 padding 1 + BN + ReLU, max-pool 2x2
# where the plan says 'M', then AvgPool2d(2) and Linear(512, classes).
SYNFLOW_VGG16_PLAN = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]


def test_vgg16_is_synaptic_flows_vgg16_bn() -> None:
    net = model("vgg16")
    leaves = [m for m in net.modules() if isinstance(m, nn.Conv2d | nn.MaxPool2d)]
    plan = ["M" if isinstance(m, nn.MaxPool2d) else m.out_channels for m in leaves]
    assert plan == SYNFLOW_VGG16_PLAN
    conv_layers = [m for m in leaves if isinstance(m, nn.Conv2d)]
    assert all((c.kernel_size, c.padding, c.stride) == ((3, 3), (1, 1), (1, 1)) for c in conv_layers)
    assert all((p.kernel_size, p.stride) == (2, 2) for p in leaves if isinstance(p, nn.MaxPool2d))
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 13
    assert (net.classifier.in_features, net.classifier.out_features) == (512, 10)
    with torch.no_grad():  # the map before pooling is 512 x 2 x 2; our pool equals their AvgPool2d(2)
        x = image()
        features = net.head(net.body(net.stem(x)))
        assert features.shape == (2, 512, 2, 2)
        theirs = net.classifier(nn.AvgPool2d(2)(features).flatten(1))
        torch.testing.assert_close(net(x), theirs)


def test_vgg16_starts_from_synaptic_flows_kaiming_fan_in_init() -> None:
    """Conv and classifier weights ~ N(0, 2 / fan_in), as nn.init.kaiming_normal_ with its defaults."""
    net = model("vgg16")
    for layer in [m for m in net.modules() if isinstance(m, nn.Conv2d)] + [net.classifier]:
        fan_in = layer.weight[0].numel()
        assert abs(layer.weight.std().item() / (2 / fan_in) ** 0.5 - 1) < 0.15
    assert not net.classifier.bias.any()


def test_init_option_reinitialises_and_default_keeps_the_model_default() -> None:
    torch.manual_seed(0)
    default = create_model("resnet20", init="default")
    torch.manual_seed(0)
    same = create_model("resnet20", init="kaiming_fan_out")  # resnet20's own default: not drawn twice
    torch.manual_seed(0)
    fan_in = create_model("resnet20", init="kaiming_fan_in")
    assert all(torch.equal(a, b) for a, b in zip(default.parameters(), same.parameters(), strict=True))
    fc = fan_in.classifier.weight
    assert abs(fc.std().item() / (2 / fc.shape[1]) ** 0.5 - 1) < 0.15 and not fan_in.classifier.bias.any()
    with pytest.raises(AnymaskError, match="unknown init 'xavier'"):
        create_model("resnet20", init="xavier")


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count_is_exact(name: str) -> None:
    assert sum(p.numel() for p in model(name).parameters()) == EXPECTED[name][0]


class CountingReLU(nn.Module):
    """Stands in for a ReLU and counts its calls, like the recipe's activation swap does."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x.clamp(min=0)


def _forbid_functional_relu(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("forward used a functional relu instead of an nn.ReLU module")

    for owner, attr in [
        (torch.nn.functional, "relu"),
        (torch.nn.functional, "relu_"),
        (torch, "relu"),
        (torch, "relu_"),
        (torch.Tensor, "relu"),
        (torch.Tensor, "relu_"),
    ]:
        monkeypatch.setattr(owner, attr, forbidden)


@pytest.mark.parametrize("name", NAMES)
@torch.no_grad()
def test_each_relu_is_its_own_module_called_once(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    net = model(name)
    expected = net(image())
    relus = [(n, m) for n, m in net.named_modules(remove_duplicate=False) if isinstance(m, nn.ReLU)]
    assert len(relus) == EXPECTED[name][1]
    assert len({id(m) for _, m in relus}) == len(relus), "a ReLU instance is shared"
    assert not any(m.inplace for _, m in relus)
    counters = {}
    for path, _ in relus:
        parent, _, attr = path.rpartition(".")
        counters[path] = CountingReLU()
        setattr(net.get_submodule(parent), attr, counters[path])
    _forbid_functional_relu(monkeypatch)
    assert torch.allclose(net(image()), expected, atol=1e-6)
    assert {path: c.calls for path, c in counters.items()} == dict.fromkeys(counters, 1)


@pytest.mark.parametrize("name", NAMES)
@torch.no_grad()
def test_ghost_skip_sites_are_main_path_conv_bn_pairs(name: str) -> None:
    net = model(name)
    modules = dict(net.named_modules())
    sites = ghost_skip_sites(net)
    assert len(sites) == EXPECTED[name][2]
    assert len(set(sites)) == len(sites)
    stem = next(n for n, m in modules.items() if isinstance(m, nn.Conv2d))
    for entry, exit_ in sites:
        assert isinstance(modules[entry], nn.Conv2d) and isinstance(modules[exit_], nn.BatchNorm2d)
        assert entry != stem and "shortcut" not in entry.split(".")
        assert modules[entry].out_channels == modules[exit_].num_features
    # Sequential flow: each exit BN consumes exactly the tensor its entry conv produced.
    produced: dict[str, torch.Tensor] = {}
    consumed: dict[str, torch.Tensor] = {}
    for entry, exit_ in sites:
        modules[entry].register_forward_hook(lambda m, i, o, key=entry: produced.__setitem__(key, o))
        modules[exit_].register_forward_pre_hook(lambda m, i, key=exit_: consumed.__setitem__(key, i[0]))
    net(image(batch=1))
    assert all(consumed[exit_] is produced[entry] for entry, exit_ in sites)


@pytest.mark.parametrize("name", sorted(set(NAMES) - {"mobilenetv2"}))
def test_discovery_agrees_with_declared_sites(name: str) -> None:
    """Registration order follows data flow, so discovery finds the same sites. MobileNetV2 differs
    only by its head conv, which discovery cannot tell from a block conv."""
    net = model(name)
    assert discover_ghost_skip_sites(net) == net.ghost_skip_sites()


def test_ghost_skip_sites_discovers_pairs_for_plain_models() -> None:
    class Plain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
            self.block = nn.Sequential(nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 1))
            self.shortcut = nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8))

    assert ghost_skip_sites(Plain()) == [("block.0", "block.1")]
    assert ghost_skip_sites(nn.Linear(2, 2)) == []


@pytest.mark.parametrize("name", NAMES)
def test_structural_conventions(name: str) -> None:
    net = model(name)
    assert isinstance(net.classifier, nn.Linear) and net.classifier.out_features == 10
    assert convs(net)[0] is net.stem.conv and net.stem.conv.in_channels == 3
    for path, module in net.named_modules():
        if path.endswith("shortcut"):
            assert isinstance(module, nn.Sequential)
            if len(module):
                conv, bn = module
                assert conv.kernel_size == (1, 1) and isinstance(bn, nn.BatchNorm2d)
    assert all(c.bias is None for c in convs(net))
    for bn in (m for m in net.modules() if isinstance(m, nn.BatchNorm2d)):
        assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


def test_projection_shortcuts_only_where_shape_changes() -> None:
    net = model("resnet20")
    projections = [n for n, m in net.named_modules() if n.endswith("shortcut") and len(m)]
    assert projections == ["body.layer2.0.shortcut", "body.layer3.0.shortcut"]
    bottlenecks = [n for n, m in model("resnet104").named_modules() if n.endswith("shortcut") and len(m)]
    assert bottlenecks == ["body.layer1.0.shortcut", "body.layer2.0.shortcut", "body.layer3.0.shortcut"]


@pytest.mark.parametrize("name", NAMES)
def test_width_multiplier_scales_every_hidden_channel(name: str) -> None:
    full, half = model(name), create_model(name, width=0.5)
    for big, small in zip(convs(full), convs(half), strict=True):
        assert small.out_channels == big.out_channels // 2
        assert small.groups == max(1, big.groups // 2)
    assert convs(half)[0].in_channels == 3
    assert half.classifier.in_features == full.classifier.in_features // 2
    wide = create_model("cnn", width=2.0)
    assert [c.out_channels for c in convs(wide)] == [64, 128, 128]


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_gives_identical_weights(name: str) -> None:
    torch.manual_seed(0)
    again = create_model(name).state_dict()
    reference = _built(name).state_dict()
    assert all(torch.equal(again[key], value) for key, value in reference.items())
    torch.manual_seed(1)
    other = create_model(name).state_dict()
    assert not torch.equal(other["stem.conv.weight"], reference["stem.conv.weight"])


@pytest.mark.parametrize("name", NAMES)
@torch.no_grad()
def test_channels_last_matches_contiguous(name: str) -> None:
    net = model(name)
    x = image()
    expected = net(x)
    net = net.to(memory_format=torch.channels_last)
    assert torch.allclose(net(x.to(memory_format=torch.channels_last)), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["cnn", "mobilenetv2", "resnet20", "vgg16"])
@torch.no_grad()
def test_compiles_to_one_graph(name: str) -> None:
    """No graph breaks (fullgraph) means no data-dependent Python control flow in forward."""
    net = create_model(name, width=0.25).eval()
    compiled = torch.compile(net, backend="eager", fullgraph=True)
    assert torch.allclose(compiled(image()), net(image()))


def test_unknown_name_lists_valid_models() -> None:
    with pytest.raises(AnymaskError) as error:
        create_model("resnet21")
    assert "resnet21" in str(error.value)
    assert all(name in str(error.value) for name in NAMES)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"width": 0},
        {"width": -1.0},
        {"width": float("nan")},
        {"width": float("inf")},
        {"width": "1"},
        {"num_classes": 0},
        {"num_classes": 2.5},
        {"input_shape": (3, 32)},
        {"input_shape": (0, 32, 32)},
    ],
)
def test_bad_arguments_raise_anymask_error(kwargs: dict) -> None:
    with pytest.raises(AnymaskError):
        create_model("cnn", **kwargs)


def test_accepts_numpy_sizes() -> None:
    net = create_model(
        "cnn", num_classes=np.int64(4), input_shape=tuple(np.array(DIGITS)), width=np.float32(1)
    )
    assert net(image(DIGITS)).shape == (2, 4)


def test_tiny_width_keeps_at_least_one_channel() -> None:
    net = create_model("resnet20", width=0.01)
    assert min(c.out_channels for c in convs(net)) == 1
    assert net(image()).shape == (2, 10)
