"""Mask methods: exact counts, scores against by-hand computations, ranking properties, no side effects.

Models are built for 8x8 inputs: ResNet-20 and VGG-16 have the same parameters at any input size (global
pooling), and data-dependent scorers run 16x faster than on 32x32. The fast grid uses VGG-16 at width
0.25 (0.9M weights) to rank quickly; the slow tests use the full-width VGG-16 on 32x32.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from anymask.data import ImageDataset
from anymask.errors import AnymaskError
from anymask.masks import Mask, MaskConfig, make_mask, mask_from_scores, prunable_parameters
from anymask.masks.random_graphs import erk_densities
from anymask.masks.scoring import grasp_scores, make_nonnegative, prune_indices, snip_scores, synflow_scores
from mask_models import SMALL, _built, model, one_line, quiet_make_mask, synthetic_data

SPARSITIES = (0.5, 0.9, 0.98, 0.995)
METHODS = ("random", "er", "erk", "magnitude", "snip", "grasp", "synflow")
MODELS = {"resnet20": 1.0, "vgg16": 0.25}


# -- helpers ------------------------------------------------------------------------------------------
class MLP(nn.Module):
    """Two Linear layers, small enough for Hessians by hand."""

    def __init__(self, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.fc1 = nn.Linear(4, 5).to(dtype)
        self.fc2 = nn.Linear(5, 3).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def mlp_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(4)
    return torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (6,), generator=g)


def weights(net: MLP) -> dict[str, nn.Parameter]:
    return {"fc1.weight": net.fc1.weight, "fc2.weight": net.fc2.weight}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are small: on a shared 2-core CPU, thread hand-offs cost more than they save."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- exact counts: every method x scope x sparsity on ResNet-20 and VGG-16 ---------------------------------
@pytest.fixture(scope="module")
def data() -> ImageDataset:
    return synthetic_data()


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_kept_counts_are_exact(
    name: str, method: str, scope: str, sparsity: float, data: ImageDataset
) -> None:
    net = _built(name, MODELS[name])  # make_mask must not change it (tested below), so share it
    config = MaskConfig(
        mask_method=method, sparsity=sparsity, scope=scope, synflow_iterations=5, prune_samples_per_class=1
    )
    mask = quiet_make_mask(net, config, data=data, seed=1)
    assert_exact_counts(mask, prunable_parameters(net), method, scope, 1 - sparsity)


def assert_exact_counts(
    mask: Mask, params: dict[str, nn.Parameter], method: str, scope: str, density: float
) -> None:
    """Global: round(d * N) overall; layer: round(d * N_l) per layer (ER/ERK: their own d_l)."""
    assert list(mask) == list(params)
    total = sum(p.numel() for p in params.values())
    if scope == "global":
        assert mask.kept() == round(density * total)
    if method in ("er", "erk"):
        rule = reference_erk(params, density, kernel=method == "erk")
        for layer in mask.layers():
            exact = rule[layer.name] * layer.total
            expected = {round(exact)} if scope == "layer" else {math.floor(exact), math.ceil(exact)}
            assert layer.kept in expected, layer
    elif scope == "layer":
        for layer in mask.layers():
            assert layer.kept == round(density * layer.total), layer


def reference_erk(params: dict[str, torch.Tensor], density: float, kernel: bool) -> dict[str, float]:
    """rigl's get_sparsities_erdos_renyi loop, written independently: one densest layer at a time."""

    def raw(shape: tuple[int, ...]) -> float:
        dims = shape if kernel else shape[:2]
        return sum(dims) / math.prod(dims)

    dense: set[str] = set()
    while True:
        rhs = sum(p.numel() * (density if n not in dense else density - 1) for n, p in params.items())
        divisor = sum(raw(tuple(p.shape)) * p.numel() for n, p in params.items() if n not in dense)
        eps = rhs / divisor
        probs = {n: raw(tuple(p.shape)) for n, p in params.items() if n not in dense}
        top = max(probs.values())
        if top * eps <= 1:
            return {n: 1.0 if n in dense else eps * raw(tuple(p.shape)) for n, p in params.items()}
        dense |= {n for n, r in probs.items() if r == top}


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("kernel", [True, False])
@pytest.mark.parametrize("density", [0.5, 0.1, 0.02, 0.005])
def test_erk_densities_follow_rigl(name: str, kernel: bool, density: float) -> None:
    params = prunable_parameters(_built(name, MODELS[name]))
    ours = erk_densities(params, density, kernel=kernel)
    for layer, value in reference_erk(params, density, kernel).items():
        assert ours[layer] == pytest.approx(value, rel=1e-12)
    assert all(0 < d <= 1 for d in ours.values())
    kept = sum(ours[n] * p.numel() for n, p in params.items())
    assert kept == pytest.approx(density * sum(p.numel() for p in params.values()), rel=1e-9)


def test_erk_makes_small_layers_denser() -> None:
    params = prunable_parameters(_built("resnet20", 1.0))
    d = erk_densities(params, 0.1)
    assert d["stem.conv.weight"] > d["body.layer3.2.conv2.weight"]
    assert d["classifier.weight"] > d["body.layer3.2.conv2.weight"]


def test_random_masks_depend_only_on_the_seed(data: ImageDataset) -> None:
    net = _built("resnet20", 1.0)
    config = MaskConfig(mask_method="erk", sparsity=0.9)
    a, b = make_mask(net, config, seed=5), make_mask(net, config, seed=5)
    c = make_mask(net, config, seed=6)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not all(torch.equal(a[n], c[n]) for n in a)


# -- scores against by-hand computations ----------------------------------------------------------------
def test_snip_scores_match_manual_gradients() -> None:
    net = MLP()
    x, y = mlp_batch()
    w1, b1, w2, b2 = net.fc1.weight, net.fc1.bias, net.fc2.weight, net.fc2.bias
    with torch.no_grad():  # backprop of mean cross-entropy through Linear-ReLU-Linear, by hand
        pre = x @ w1.T + b1
        h = pre.clamp(min=0)
        dz = (torch.softmax(h @ w2.T + b2, 1) - F.one_hot(y, 3)) / len(x)
        grad_w2 = dz.T @ h
        grad_w1 = ((dz @ w2) * (pre > 0)).T @ x
    manual = {"fc1.weight": (grad_w1 * w1).abs(), "fc2.weight": (grad_w2 * w2).abs()}
    norm = sum(s.sum() for s in manual.values())
    scores = snip_scores(net, weights(net), [(x, y)])
    for name, s in manual.items():
        torch.testing.assert_close(scores[name], s / norm)


def test_snip_scores_sum_over_batches() -> None:
    net = MLP()
    x, y = mlp_batch()
    halves = [(x[:3], y[:3]), (x[3:], y[3:])]
    loss = sum(F.cross_entropy(net(a), b) for a, b in halves)
    grads = torch.autograd.grad(loss, list(weights(net).values()))
    manual = {n: (g * p).abs() for (n, p), g in zip(weights(net).items(), grads, strict=True)}
    norm = sum(s.sum() for s in manual.values())
    scores = snip_scores(net, weights(net), halves)
    for name, s in manual.items():
        torch.testing.assert_close(scores[name], (s / norm).detach())


def test_grasp_scores_match_explicit_hessian_vector_product() -> None:
    net = MLP()
    x, y = mlp_batch()
    w1, w2 = net.fc1.weight.detach(), net.fc2.weight.detach()
    n1 = w1.numel()

    def loss(flat: torch.Tensor) -> torch.Tensor:
        a, b = flat[:n1].view_as(w1), flat[n1:].view_as(w2)
        out = torch.relu(x @ a.T + net.fc1.bias) @ b.T + net.fc2.bias
        return F.cross_entropy(out / 200.0, y)

    theta = torch.cat([w1.flatten(), w2.flatten()])
    g = torch.autograd.functional.jacobian(loss, theta)
    hessian = torch.autograd.functional.hessian(loss, theta)
    score = (hessian @ g) * theta
    score = score / score.sum().abs()
    ours = grasp_scores(net, weights(net), [(x, y)])
    torch.testing.assert_close(ours["fc1.weight"], score[:n1].view_as(w1))
    torch.testing.assert_close(ours["fc2.weight"], score[n1:].view_as(w2))


def test_grasp_keeps_the_highest_hg_w_and_prunes_the_lowest() -> None:
    net = MLP()
    ours = grasp_scores(net, weights(net), [mlp_batch()])
    mask = mask_from_scores(ours, 0.5)
    kept = torch.cat([ours[n][mask[n]] for n in ours])
    pruned = torch.cat([ours[n][~mask[n]] for n in ours])
    assert kept.min() >= pruned.max()


def manual_synflow(net: MLP, mask: Mask | None = None) -> dict[str, torch.Tensor]:
    """R = 1' |W2| (|W1| 1 + |b1|) + 1' |b2| for a non-negative MLP (the ReLU is then the identity)."""
    a1, a2 = net.fc1.weight.detach().abs(), net.fc2.weight.detach().abs()
    if mask is not None:
        a1, a2 = a1 * mask["fc1.weight"], a2 * mask["fc2.weight"]
    hidden = a1.sum(1) + net.fc1.bias.detach().abs()
    return {"fc1.weight": a1 * a2.sum(0)[:, None], "fc2.weight": a2 * hidden[None, :]}


def test_synflow_scores_match_the_closed_form() -> None:
    net = MLP()
    copy_ = copy.deepcopy(net)
    make_nonnegative(copy_)
    ours = synflow_scores(copy_, weights(copy_), (4,))
    for name, s in manual_synflow(net).items():
        torch.testing.assert_close(ours[name], s)


def test_synflow_iterates_on_the_pruned_network() -> None:
    """Two rounds: keep sqrt(d), rescore with the pruned weights zeroed, keep d of the survivors."""
    net = MLP()
    config = MaskConfig(mask_method="synflow", sparsity=0.75, synflow_iterations=2)
    mask = make_mask(net, config, extras={"input_shape": (4,)})
    first = mask_from_scores(manual_synflow(net), 0.25**0.5)
    expected = mask_from_scores(manual_synflow(net, first), 0.25, previous=first)
    assert all(torch.equal(mask[n], expected[n]) for n in mask)
    assert all(not (mask[n] & ~first[n]).any() for n in mask)


def test_synflow_in_float64_gives_the_float32_mask_on_a_shallow_net() -> None:
    net = model("resnet20")
    base = dict(mask_method="synflow", sparsity=0.9, synflow_iterations=3)
    a = make_mask(net, MaskConfig(**base), extras={"input_shape": SMALL})
    b = make_mask(net, MaskConfig(**base, float64=True), extras={"input_shape": SMALL})
    assert a.kept() == b.kept()
    overlap = sum(int((a[n] & b[n]).sum()) for n in a) / a.kept()
    assert overlap > 0.99


def test_synflow_keeps_vgg16_connected_where_magnitude_collapses() -> None:
    net = _built("vgg16", 0.25)
    magnitude = quiet_make_mask(net, MaskConfig(mask_method="magnitude", sparsity=0.999))
    synflow = make_mask(
        net,
        MaskConfig(mask_method="synflow", sparsity=0.999, synflow_iterations=20),
        extras={"input_shape": SMALL},
    )
    assert magnitude.collapsed_layers()
    assert not synflow.collapsed_layers()


@pytest.mark.slow
def test_synflow_keeps_full_vgg16_connected_at_99_9_percent() -> None:
    net = _built("vgg16", 1.0, (3, 32, 32))
    magnitude = quiet_make_mask(net, MaskConfig(mask_method="magnitude", sparsity=0.999))
    config = MaskConfig(mask_method="synflow", sparsity=0.999, synflow_iterations=100)
    synflow = make_mask(net, config, extras={"input_shape": (3, 32, 32)})
    assert magnitude.collapsed_layers()
    assert not synflow.collapsed_layers()
    assert synflow.kept() == round(0.001 * synflow.total())


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_full_vgg16_counts_are_exact(method: str, scope: str) -> None:
    net = _built("vgg16", 1.0, (3, 32, 32))
    config = MaskConfig(mask_method=method, sparsity=0.98, scope=scope, synflow_iterations=100)
    mask = quiet_make_mask(net, config, data=synthetic_data((3, 32, 32)))
    assert_exact_counts(mask, prunable_parameters(net), method, scope, 1 - 0.98)


# -- prune data -------------------------------------------------------------------------------------
def test_prune_images_are_class_balanced_and_seeded() -> None:
    labels = torch.arange(200) % 4
    first = prune_indices(labels, 5, 4, True, torch.Generator().manual_seed(0))
    again = prune_indices(labels, 5, 4, True, torch.Generator().manual_seed(0))
    assert torch.equal(first, again)
    assert torch.bincount(labels[first], minlength=4).tolist() == [5, 5, 5, 5]
    assert len(set(first.tolist())) == 20
    assert len(prune_indices(labels, 5, 4, False, torch.Generator().manual_seed(0))) == 20


@pytest.mark.parametrize("method", ["snip", "grasp"])
def test_data_dependent_methods_need_data(method: str) -> None:
    with pytest.raises(AnymaskError, match="no dataset") as error:
        make_mask(_built("resnet20", 1.0), MaskConfig(mask_method=method, sparsity=0.5))
    assert one_line(error)


# -- make_mask leaves the model alone ------------------------------------------------------------------
@pytest.mark.parametrize("method", ["dense", *METHODS])
def test_make_mask_leaves_the_model_unchanged(method: str, data: ImageDataset) -> None:
    net = model("resnet20").train()
    net.body.layer1[0].bn1.weight.requires_grad_(False)
    net.stem.conv.weight.grad = torch.ones_like(net.stem.conv.weight)
    net.body.layer2.eval()
    before = copy.deepcopy(net.state_dict())
    modes = [m.training for m in net.modules()]
    flags = [p.requires_grad for p in net.parameters()]
    rng = torch.get_rng_state()
    config = MaskConfig(
        mask_method=method, sparsity=0.9, synflow_iterations=3, prune_samples_per_class=1, float64=True
    )
    quiet_make_mask(net, config, data=data)
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before)
    assert [m.training for m in net.modules()] == modes
    assert [p.requires_grad for p in net.parameters()] == flags
    assert torch.equal(net.stem.conv.weight.grad, torch.ones_like(net.stem.conv.weight))
    assert all(p.grad is None for n, p in net.named_parameters() if n != "stem.conv.weight")
    assert torch.equal(torch.get_rng_state(), rng)


# -- user errors ------------------------------------------------------------------------------------
def test_unknown_method_is_one_line() -> None:
    with pytest.raises(AnymaskError, match="unknown mask method 'magnitud'") as error:
        make_mask(_built("resnet20", 1.0), MaskConfig(mask_method="magnitud", sparsity=0.5))
    assert one_line(error)


@pytest.mark.parametrize("sparsity", [1.0, -0.1, 1.5])
def test_sparsity_outside_range_is_one_line(sparsity: float) -> None:
    with pytest.raises(AnymaskError, match="outside") as error:
        make_mask(_built("resnet20", 1.0), MaskConfig(mask_method="random", sparsity=sparsity))
    assert one_line(error)


def test_unknown_scope_is_one_line() -> None:
    with pytest.raises(AnymaskError, match="scope") as error:
        make_mask(_built("resnet20", 1.0), MaskConfig(mask_method="random", sparsity=0.5, scope="net"))
    assert one_line(error)


def test_strict_turns_layer_collapse_into_an_error() -> None:
    config = MaskConfig(mask_method="magnitude", sparsity=0.999, strict=True)
    with pytest.raises(AnymaskError, match="layer collapse") as error:
        make_mask(_built("vgg16", 0.25), config)
    assert one_line(error)
    with pytest.warns(UserWarning, match="layer collapse"):
        make_mask(_built("vgg16", 0.25), MaskConfig(mask_method="magnitude", sparsity=0.999))


# -- ranking properties -------------------------------------------------------------------------------
shapes = st.lists(st.tuples(st.integers(1, 6), st.integers(1, 7)), min_size=1, max_size=4)


@settings(max_examples=60, deadline=None)
@given(
    shapes=shapes,
    density=st.floats(0, 1),
    scope=st.sampled_from(["global", "layer"]),
    levels=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_counts_are_exact_under_ties(
    shapes: list[tuple[int, int]], density: float, scope: str, levels: int, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    scores = {f"l{i}.weight": torch.randint(0, levels, s, generator=g).float() for i, s in enumerate(shapes)}
    mask = mask_from_scores(scores, density, scope)
    if scope == "global":
        flat = torch.cat([s.flatten() for s in scores.values()])
        k = round(density * flat.numel())
        assert mask.kept() == k
        kept = torch.cat([mask[n].flatten() for n in scores])
        expected = torch.zeros_like(kept)
        expected[torch.sort(flat, descending=True, stable=True).indices[:k]] = True
        assert torch.equal(kept, expected)  # the earlier position wins every tie
    else:
        for name, s in scores.items():
            assert int(mask[name].sum()) == round(density * s.numel())


@settings(max_examples=60, deadline=None)
@given(
    shapes=shapes,
    keep=st.floats(0, 1),
    shrink=st.floats(0, 1),
    scope=st.sampled_from(["global", "layer"]),
    seed=st.integers(0, 2**16),
)
def test_previous_mask_is_never_revived(
    shapes: list[tuple[int, int]], keep: float, shrink: float, scope: str, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    first = {f"l{i}.weight": torch.rand(s, generator=g) for i, s in enumerate(shapes)}
    previous = mask_from_scores(first, keep, scope)
    scores = {n: torch.rand(s.shape, generator=g) * 10 for n, s in first.items()}  # now favour others
    mask = mask_from_scores(scores, keep * shrink, scope, previous=previous)
    assert all(not (mask[n] & ~previous[n]).any() for n in mask)
    if scope == "global":
        assert mask.kept() == round(keep * shrink * previous.total())


def test_asking_for_more_than_previous_keeps_is_refused() -> None:
    previous = Mask({"w": torch.tensor([True, False, False, False])})
    with pytest.raises(ValueError, match="never revived"):
        mask_from_scores({"w": torch.ones(4)}, 0.5, previous=previous)


def test_all_equal_scores_keep_the_first_positions() -> None:
    mask = mask_from_scores({"a": torch.ones(2, 3), "b": torch.ones(4)}, 0.5)
    assert mask["a"].flatten().tolist() == [True] * 5 + [False]
    assert mask["b"].tolist() == [False] * 4
