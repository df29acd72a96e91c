"""The lottery ticket method: pruning rounds on the schedule, rewinding to the initial or an early step's
weights, pruning by trained magnitude; and its step texts ("500it", "2ep")."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from anymask.errors import AnymaskError
from anymask.masks import Mask, MaskConfig, make_mask, mask_from_scores
from anymask.masks.lth import TrainedRound, round_densities
from anymask.steps import Step
from mask_models import _built, model, one_line


class FakeTrainer:
    """Stands in for the trainer: 'training' adds a seeded perturbation and keeps pruned weights at 0."""

    def __init__(self, net: nn.Module) -> None:
        self.net, self.calls = net, []

    def __call__(
        self, mask: Mask, state: dict[str, torch.Tensor], start_step: int, capture_step: int | None
    ) -> TrainedRound:
        self.calls.append((mask, state, start_step, capture_step))
        g = torch.Generator().manual_seed(len(self.calls))
        final = {k: v.clone() for k, v in state.items()}
        for name in mask:
            final[name] = (final[name] + torch.randn(final[name].shape, generator=g)) * mask[name]
        captured = None if capture_step is None else shifted(state)
        return TrainedRound(final, captured, test_acc=0.1 * len(self.calls))


def shifted(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The fake trainer's weights at the capture step: every float tensor + 0.5."""
    return {k: v + 0.5 if v.is_floating_point() else v.clone() for k, v in state.items()}


@pytest.mark.parametrize("rewind", ["0it", "30it", "2ep"])
def test_lth_rounds_follow_the_schedule_and_rewind(rewind: str, tmp_path: Path) -> None:
    net = model("resnet20")
    initial = copy.deepcopy(net.state_dict())
    train = FakeTrainer(net)
    config = MaskConfig(mask_method="lth", sparsity=0.9, lth_rewind=rewind)
    mask = make_mask(net, config, train=train, out_dir=tmp_path, extras={"steps_per_epoch": 20})
    step = Step.parse(rewind).iterations(20)
    rounds = [json.loads(line) for line in (tmp_path / "lth_rounds.jsonl").read_text().splitlines()]
    total = mask.total()
    assert len(rounds) == 11  # 0.8^10 = 0.107 > 0.1 >= 0.8^11
    for k, record in enumerate(rounds, start=1):
        target = 0.9 if k == 11 else 1 - 0.8**k
        assert record["round"] == k
        assert record["kept"] == round((1 - target) * total)
        assert record["test_acc"] == pytest.approx(0.1 * k)  # the network it was pruned from
        assert (tmp_path / f"lth_round_{k}.safetensors").is_file()
    assert mask.kept() == round(0.1 * total)
    assert len(train.calls) == 11  # dense round 0, then rounds 1..10; the final ticket trains in the run
    _, state0, start0, capture0 = train.calls[0]
    assert start0 == 0 and capture0 == (step or None)
    assert all(torch.equal(state0[k], initial[k]) for k in initial)
    rewound = initial if step == 0 else shifted(initial)
    for previous, (mask_k, state_k, start_k, capture_k) in zip(train.calls, train.calls[1:], strict=False):
        assert start_k == step and capture_k is None
        assert all(torch.equal(state_k[k], rewound[k]) for k in rewound)
        assert all(not (mask_k[n] & ~previous[0][n]).any() for n in mask_k)
    assert all(torch.equal(net.state_dict()[k], rewound[k]) for k in rewound)
    saved = Mask.load(tmp_path / "lth_round_11.safetensors")
    assert all(torch.equal(saved[n], mask[n]) for n in mask)


def test_lth_prunes_by_trained_magnitude() -> None:
    net = model("resnet20")
    train = FakeTrainer(net)
    mask = make_mask(net, MaskConfig(mask_method="lth", sparsity=0.2), train=train)
    final_state = train.calls[0]
    trained = FakeTrainer(net)(*final_state).state  # same seed as round 0: the weights pruned from
    expected = mask_from_scores({n: trained[n].abs() for n in mask}, 0.8)
    assert all(torch.equal(mask[n], expected[n]) for n in mask)


def test_round_densities() -> None:
    assert round_densities(1.0, 0.2) == []
    assert round_densities(0.64, 0.2) == pytest.approx([0.8, 0.64])
    assert round_densities(0.5, 0.2)[-1] == 0.5
    assert len(round_densities(0.5, 0.2)) == 4


def test_lth_without_trainer_says_how_to_run_it() -> None:
    with pytest.raises(AnymaskError, match="anymask train --mask-method lth") as error:
        make_mask(_built("resnet20", 1.0), MaskConfig(mask_method="lth", sparsity=0.5))
    assert one_line(error)


def test_lth_epoch_rewind_needs_steps_per_epoch() -> None:
    config = MaskConfig(mask_method="lth", sparsity=0.5, lth_rewind="2ep")
    net = model("resnet20")
    with pytest.raises(AnymaskError, match="steps per epoch") as error:
        make_mask(net, config, train=FakeTrainer(net))
    assert one_line(error)


@pytest.mark.parametrize("text, iterations", [("500it", 500), ("2ep", 40), ("0it", 0), (" 3EP ", 60)])
def test_step_parse(text: str, iterations: int) -> None:
    assert Step.parse(text).iterations(20) == iterations


@pytest.mark.parametrize("text", ["", "500", "2 epochs", "-1it", "1.5ep", "it"])
def test_step_parse_rejects_bad_text(text: str) -> None:
    with pytest.raises(AnymaskError, match="cannot read step") as error:
        Step.parse(text)
    assert one_line(error)
