"""Models whose forward takes the images by keyword and returns its logits in a tuple, dict or object.

The behaviour that matters: a model that only differs in how it is called and what it returns gets
the very same masks, GradInit scales and training as the plain model (bit for bit), because every
forward goes through `anymask.models.calling`.
"""

from __future__ import annotations

import copy
import dataclasses
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from anymask import SparseTraining
from anymask.config import RunConfig
from anymask.data import load_dataset
from anymask.errors import AnymaskError
from anymask.masks import MaskConfig, make_mask
from anymask.models import ModelCall, create_model, model_logits
from anymask.models.calling import image_keyword, logits_from
from anymask.train.trainer import Trainer

LOGITS = torch.arange(6.0).reshape(2, 3)


@pytest.mark.parametrize(
    "output",
    [
        LOGITS,
        (LOGITS,),
        [LOGITS, torch.zeros(1)],
        {"logits": LOGITS, "loss": None},
        SimpleNamespace(logits=LOGITS, hidden_states=None),
        ((LOGITS, torch.zeros(1)), "aux"),
    ],
    ids=["tensor", "tuple", "list", "dict", "object", "nested"],
)
def test_logits_are_found_in_every_common_output_form(output: object) -> None:
    assert logits_from(output) is LOGITS


def wrapped_outputs() -> st.SearchStrategy[object]:
    """LOGITS nested in tuples, lists and mappings, first element or 'logits' key at every level."""
    leaf = st.sampled_from([LOGITS, SimpleNamespace(logits=LOGITS, loss=None)])
    return st.recursive(
        leaf,
        lambda inner: st.one_of(
            st.tuples(inner, st.none()),
            st.builds(lambda x, n: [x] + [None] * n, inner, st.integers(0, 2)),
            st.builds(lambda x: {"loss": None, "logits": x}, inner),
        ),
        max_leaves=6,
    )


@settings(max_examples=50, deadline=None)
@given(wrapped_outputs())
def test_logits_are_found_at_any_depth(output: object) -> None:
    assert logits_from(output) is LOGITS


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ({"scores": LOGITS}, r"dict without 'logits' \(keys: scores\); return a tensor, or pass output_fn="),
        ("logits", r"returned a str, where anymask needs its logits"),
        ((), r"returned a tuple, where anymask needs its logits"),
        (SimpleNamespace(logits=[1.0]), r"returned a SimpleNamespace"),
    ],
)
def test_outputs_without_logits_are_one_clear_line(output: object, message: str) -> None:
    with pytest.raises(AnymaskError, match=message):
        logits_from(output)


def test_output_fn_picks_the_logits_and_must_return_a_tensor() -> None:
    model = Returning(lambda x: {"scores": x.flatten(1)})
    x = torch.ones(2, 1, 2, 2)
    assert torch.equal(model_logits(model, x, output_fn=lambda out: out["scores"]), x.flatten(1))
    with pytest.raises(AnymaskError, match="output_fn returned a list"):
        model_logits(model, x, output_fn=lambda out: [out["scores"]])


class Returning(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> object:
        return self.fn(x)


class PixelValues(nn.Module):
    def forward(self, input_ids=None, pixel_values=None, labels=None):  # the images are not the first
        return pixel_values


class KeywordOnly(nn.Module):
    def forward(self, *, images):
        return images


def test_images_go_by_keyword_where_the_forward_asks_for_one() -> None:
    x = torch.ones(1, 2)
    assert image_keyword(PixelValues()) == "pixel_values"
    assert image_keyword(KeywordOnly()) == "images"
    assert image_keyword(nn.Linear(2, 2)) is None
    for model in (PixelValues(), KeywordOnly()):
        assert model_logits(model, x) is x
        assert ModelCall.of(nn.DataParallel(model)).keyword == image_keyword(model)  # through wrappers


# -- the same numbers through every forward anymask runs --------------------------------------------------
class DictOutput(nn.Module):
    """The plain model behind a Hugging Face-style interface: images by keyword, logits in a dict."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, *, pixel_values: torch.Tensor) -> dict[str, object]:
        return {"loss": None, "logits": self.net(pixel_values)}


@pytest.fixture(scope="module")
def digits() -> object:
    return load_dataset("digits", train_subset=128)


def twins() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    plain = create_model("cnn", 10, (1, 8, 8), 0.5)
    return plain, DictOutput(copy.deepcopy(plain))


def as_plain(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name.removeprefix("net."): value for name, value in state.items()}


@pytest.mark.parametrize("method", ["snip", "grasp", "synflow"])
def test_scorers_give_the_same_mask_whatever_the_output_form(method: str, digits: object) -> None:
    plain, wrapped = twins()
    config = MaskConfig(mask_method=method, sparsity=0.9, synflow_iterations=3, prune_samples_per_class=2)
    expected = make_mask(plain, config, data=digits)
    actual = make_mask(wrapped, config, data=digits)
    assert list(actual) == [f"net.{name}" for name in expected]
    assert all(torch.equal(actual[f"net.{name}"], expected[name]) for name in expected)


def quick_config(recipe: str = "default") -> RunConfig:
    config = RunConfig.from_flat(
        {"batch_size": 32, "epochs": 2, "progress": False, "recipe": recipe, "channels_last": False}
    )
    config.recipe = dataclasses.replace(config.recipe, gradinit_iterations=3, gradinit_batch_size=16)
    return config


def test_training_evaluation_and_gradinit_match_the_plain_model(digits: object) -> None:
    results = []
    for model in twins():
        config = quick_config("lrsi")
        sparse = SparseTraining(config=config, epochs=2, steps_per_epoch=4, batches=digits)
        trainer = Trainer(model, digits, config, sparse=sparse)
        stats = trainer.train_epoch(0)
        with trainer.recalibrated_norms(0, 2):
            recalibrated = trainer.evaluate("test")
        results.append((stats.loss, trainer.evaluate("test"), recalibrated))
        results.append(as_plain(model.state_dict()))
    plain_numbers, plain_state, wrapped_numbers, wrapped_state = results
    assert plain_numbers == wrapped_numbers
    assert all(torch.equal(plain_state[k], wrapped_state[k]) for k in plain_state)
