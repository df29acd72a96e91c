"""Models no one here wrote: Hugging Face transformers' ResNet, ViT and ConvNeXt, from tiny configs.

Every mask method (lottery ticket included), the recipe where it applies and a clear error where it
does not, training with resume, and the command line through a factory. transformers is an optional
test dependency (`pip install -e '.[test]'`): without it these tests skip.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from anymask.cli import main
from anymask.config import RunConfig
from anymask.data import load_dataset
from anymask.errors import AnymaskError
from anymask.masks import MaskConfig, enforce, make_mask, prunable_parameters
from anymask.models import create_model, ghost_skip_sites, model_logits
from anymask.recipe.ghost_neurons import relu_sites
from anymask.train import run_experiment
from anymask.train import trainer as trainer_module
from foreign_models import FACTORIES

pytest.importorskip("transformers")

METHODS = ("random", "er", "erk", "magnitude", "snip", "grasp", "synflow")
SHAPE = (1, 8, 8)  # digits


@pytest.fixture(scope="module")
def digits() -> object:
    return load_dataset("digits", train_subset=128)


def build(kind: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model(f"foreign_models:hf_{kind}", 10, SHAPE, 1.0)


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_every_mask_method_is_exact_and_leaves_the_model_alone(kind: str, digits: object) -> None:
    model = build(kind)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    total = sum(p.numel() for p in prunable_parameters(model).values())
    for method in METHODS:
        config = MaskConfig(
            mask_method=method, sparsity=0.9, synflow_iterations=10, prune_samples_per_class=2
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # layer collapse on ViT and ConvNeXt: see the next test
            mask = make_mask(model, config, data=digits)
        assert mask.kept() == round(0.1 * total), method
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_scores_that_starve_a_layer_are_reported_as_layer_collapse(digits: object) -> None:
    """At init, attention's query and key weights score about 1000x lower than the rest (the softmax
    passes little gradient to them; with SynFlow's all-ones input the tokens are nearly equal), and
    ConvNeXt's layer scale (1e-6) starves every block: global scope keeps none of them, and says so."""
    for kind, method, starved in (
        ("vit", "snip", "attention.*(q_proj|query)"),
        ("vit", "synflow", "attention.*(q_proj|query)"),
        ("convnext", "synflow", "layers.0.dwconv"),
    ):
        config = MaskConfig(mask_method=method, sparsity=0.9, synflow_iterations=3, prune_samples_per_class=2)
        with pytest.warns(UserWarning, match=rf"layer collapse: .*{starved}"):
            make_mask(build(kind), config, data=digits)
        layer_scope = make_mask(build(kind), dataclasses.replace(config, scope="layer"), data=digits)
        assert not layer_scope.collapsed_layers()


def test_pruned_weights_stay_zero_through_sgd_with_momentum_and_weight_decay(digits: object) -> None:
    for kind in sorted(FACTORIES):
        model = build(kind)
        mask = make_mask(model, MaskConfig(mask_method="erk", sparsity=0.95))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        enforce(model, mask, optimizer)
        start = {name: model.get_parameter(name).detach().clone() for name in mask}
        images, labels = digits.train_x[:16].float() / 16, digits.train_y[:16]
        for _ in range(3):
            loss = torch.nn.functional.cross_entropy(model_logits(model, images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        for name, keep in mask.items():
            weight = model.get_parameter(name)
            assert not weight[~keep].any(), (kind, name)
        assert all(not torch.equal(start[name], model.get_parameter(name)) for name in mask)  # it trained


def test_recipe_sites_are_traced_from_the_model() -> None:
    resnet = build("resnet")
    stage = "resnet.encoder.stages.{}.layers.0.layer.{}"
    expected = [
        (f"{stage.format(s, c)}.convolution", f"{stage.format(s, c)}.normalization")
        for s in (0, 1)
        for c in (0, 1)
    ]
    assert ghost_skip_sites(resnet, SHAPE) == expected  # no stem, no projection shortcut
    assert len(relu_sites(resnet)) == 5  # embedder, two per block (one after the residual sum)
    for kind in ("vit", "convnext"):
        assert ghost_skip_sites(build(kind), SHAPE) == [] and relu_sites(build(kind)) == []
    relu_vit = create_model("foreign_models:hf_relu_vit", 10, SHAPE, 1.0)
    assert [type(m).__name__ for _, _, m in relu_sites(relu_vit)] == ["ReLU"]


# -- runs through a factory ------------------------------------------------------------------------------
QUICK = {
    "data": "digits",
    "train_subset": 128,
    "batch_size": 32,
    "epochs": 2,
    "lr": 0.05,
    "progress": False,
    "threads": 1,
    "channels_last": False,
    "gradinit_iterations": 4,
    "gradinit_batch_size": 16,
}


def config_for(kind: str, **settings: object) -> RunConfig:
    return RunConfig.from_flat({**QUICK, "model": f"foreign_models:hf_{kind}", **settings})


def stop_after_first_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    original = trainer_module.Trainer.train_epoch

    def train_epoch(self, epoch, **kwargs):
        if epoch == 1:
            raise KeyboardInterrupt
        return original(self, epoch, **kwargs)

    monkeypatch.setattr(trainer_module.Trainer, "train_epoch", train_epoch)


def test_full_recipe_on_hf_resnet_resumes_bit_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = config_for("resnet", mask_method="snip", sparsity=0.9, recipe="tost", ghost_epochs=1.5)
    reference = run_experiment(config, tmp_path / "reference")
    with monkeypatch.context() as patch:
        stop_after_first_epoch(patch)
        with pytest.raises(KeyboardInterrupt):
            run_experiment(config, tmp_path / "resumed")
    resumed = run_experiment(config, tmp_path / "resumed", resume=True)

    expected, actual = (
        load_file(reference.out_dir / "model.safetensors"),
        load_file(resumed.out_dir / "model.safetensors"),
    )
    assert expected.keys() == actual.keys() and all(torch.equal(expected[k], actual[k]) for k in expected)
    plain = build("resnet")
    plain.load_state_dict(actual, strict=True)  # ghost parts gone: the plain transformers model
    assert resumed.summary["nonzero_weights"] <= resumed.summary["mask_kept"]
    first = json.loads((resumed.out_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert (
        first["gsn/blend"] > 0 and first["gsc/scale"] < 1 and any(k.startswith("lrsi/scale/") for k in first)
    )
    assert (
        json.loads((resumed.out_dir / "config.json").read_text())["model"]["model"]
        == "foreign_models:hf_resnet"
    )


@pytest.mark.parametrize(
    ("kind", "missing", "fitting"),
    [("vit", "gsn, gsc", "lrsi,ls"), ("convnext", "gsn, gsc", "lrsi,ls"), ("relu_vit", "gsc", "gsn,lrsi,ls")],
)
def test_parts_that_do_not_apply_are_named_before_anything_is_written(
    kind: str, missing: str, fitting: str, tmp_path: Path
) -> None:
    with pytest.raises(AnymaskError) as error:
        run_experiment(config_for(kind, recipe="tost"), tmp_path / "run")
    message = str(error.value)
    assert f"recipe part(s) {missing} do not apply to this model" in message
    assert message.endswith(f"Train with the parts that apply: --recipe {fitting}")
    if "gsn" in missing:
        assert "gsn needs ReLU activation modules" in message and "GELUActivation" in message
    assert "gsc needs ghost-skip sites" in message and "it has no BatchNorm2d" in message
    assert not (tmp_path / "run").exists()


def test_vit_trains_with_the_parts_that_apply(tmp_path: Path) -> None:
    """GradInit's double backward runs through attention (on the math kernel, which has one)."""
    config = config_for("vit", mask_method="grasp", scope="layer", sparsity=0.8, recipe="lrsi,ls", epochs=1)
    result = run_experiment(config, tmp_path / "run")
    assert result.summary["nonzero_weights"] <= result.summary["mask_kept"]
    scales = json.loads((tmp_path / "run" / "gradinit_scales.json").read_text())
    assert any(value != 1.0 for value in scales.values())


def test_lottery_ticket_on_a_transformers_model(tmp_path: Path) -> None:
    config = config_for("convnext", mask_method="lth", sparsity=0.5, lth_rate=0.3, lth_epochs=1, epochs=1)
    result = run_experiment(config, tmp_path / "run")
    rounds = [json.loads(line) for line in (tmp_path / "run" / "lth_rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2]
    assert result.summary["mask_kept"] == round(0.5 * result.summary["mask_total"])
    assert result.summary["nonzero_weights"] <= result.summary["mask_kept"]


FACTORY_FILE = """
from transformers import ResNetConfig, ResNetForImageClassification

def resnet(num_classes, input_shape, width):
    sizes = [round(32 * width), round(64 * width)]
    config = ResNetConfig(num_channels=input_shape[0], embedding_size=sizes[0], hidden_sizes=sizes,
                          depths=[1, 1], layer_type="basic", num_labels=num_classes)
    return ResNetForImageClassification(config)
"""


def test_cli_trains_and_resumes_a_transformers_model_from_a_factory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The factory file sits in the working directory, which is not on sys.path (as for the `anymask`
    script); sweep workers importing a factory are tested in test_model_factory.py."""
    (tmp_path / "my_models.py").write_text(FACTORY_FILE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "my_models", raising=False)
    args = ["train", "--model", "my_models:resnet", "--data", "digits", "--train-subset", "64"]
    args += ["--batch-size", "32", "--epochs", "1", "--no-progress", "--mask-method", "synflow"]
    args += ["--synflow-iterations", "5", "--sparsity", "0.9", "--recipe", "gsc,ls", "--out", "run"]
    assert main(args) == 0
    assert "finished: test accuracy" in capsys.readouterr().out
    assert main([*args, "--resume"]) == 0
    assert "already finished" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["model"] == "my_models:resnet"


def test_readme_from_python_example_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("### From Python") :]
    code = section[section.index("```python\n") + len("```python\n") : section.index("\n```\n")]
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    model, mask = namespace["model"], namespace["mask"]
    assert mask.kept() == round(0.05 * mask.total())
    assert all(not model.get_parameter(name)[~keep].any() for name, keep in mask.items())
    assert (tmp_path / "mask.safetensors").is_file()
