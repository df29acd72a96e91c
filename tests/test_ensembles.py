"""Prune-and-tune ensembles: anti-random pairs, children as ordinary runs, ensemble.json, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from anymask.cli import main
from anymask.config import RunConfig
from anymask.data import ImageDataset, load_dataset
from anymask.ensembles import (
    EnsembleSettings,
    anti_random_masks,
    anti_random_pair,
    anti_random_within,
    evaluate_runs,
    parent_mask,
    prune_and_tune,
    pruned_child,
)
from anymask.ensembles.report import group_label, write_ensemble_report
from anymask.errors import AnymaskError
from anymask.masks import Mask
from anymask.models import create_model
from anymask.train import run_experiment
from anymask.train.lr import lr_at
from quick_runs import quick_config

TUNE = EnsembleSettings(children=2, tune_epochs=1, tune_lr=0.05)


# -- anti-random pairs ---------------------------------------------------------------------------------
@st.composite
def parent_masks(draw: st.DrawFn) -> Mask:
    generator = torch.Generator().manual_seed(draw(st.integers(0, 10_000)))
    layers = draw(st.integers(1, 4))
    mask = Mask()
    for i in range(layers):
        shape = tuple(draw(st.lists(st.integers(1, 6), min_size=1, max_size=3)))
        density = draw(st.sampled_from([0.0, 0.05, 0.3, 1.0]))
        mask[f"layer{i}.weight"] = torch.rand(shape, generator=generator) < density
    return mask


@settings(max_examples=60, deadline=None)
@given(parent_masks(), st.integers(0, 1000))
def test_anti_random_pairs_are_exact_complements_within_the_parent(parent: Mask, seed: int) -> None:
    first, second = anti_random_pair(parent, torch.Generator().manual_seed(seed))
    for name, kept in parent.items():
        assert not (first[name] & second[name]).any(), "a weight in both children"
        assert torch.equal(first[name] | second[name], kept), "together they are the parent"
        assert int(first[name].sum()) == int(kept.sum()) // 2  # half of what the layer keeps
        assert int(second[name].sum()) == int(kept.sum()) - int(kept.sum()) // 2


def test_pairs_differ_and_are_drawn_from_the_seed() -> None:
    parent = Mask({"a.weight": torch.ones(20, 30, dtype=torch.bool)})
    masks = anti_random_masks(parent, 4, seed=3)
    assert not torch.equal(masks[0]["a.weight"], masks[2]["a.weight"])
    again = anti_random_masks(parent, 6, seed=3)  # more pairs leave the first ones as they were
    assert all(torch.equal(a["a.weight"], b["a.weight"]) for a, b in zip(masks, again[:4], strict=True))
    with pytest.raises(AnymaskError, match="must be even"):
        anti_random_masks(parent, 3)


def test_a_child_of_your_own_model_is_a_pruned_copy() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    kept = parent_mask(model)
    assert kept.density() == 1.0
    first, second = anti_random_masks(kept, 2)
    child = pruned_child(model, first)
    assert int(child[0].weight.count_nonzero()) == 24 and int(model[0].weight.count_nonzero()) == 48
    assert torch.equal(child[0].weight + pruned_child(model, second)[0].weight, model[0].weight)


def test_one_cycle_rises_from_its_start_to_the_peak_then_falls() -> None:
    old = RunConfig().train  # defaults: as the schedule was before it had settings
    old.lr, old.lr_schedule = 1.0, "onecycle"
    assert [lr_at(s, 100, old) for s in (0, 15, 30)] == pytest.approx([0.04, 0.04 + 0.96 * 0.5, 1.0])
    tune = RunConfig().updated(
        {"lr": 0.1, "lr_schedule": "onecycle", "onecycle_warmup": 0.1, "onecycle_start": 0.01}
    )
    assert lr_at(0, 100, tune.train) == pytest.approx(0.001)
    assert lr_at(10, 100, tune.train) == pytest.approx(0.1)
    assert lr_at(99, 100, tune.train) < 0.001


# -- children as runs ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("parent") / "run"
    run_experiment(quick_config(epochs=3, lr=0.1), folder)
    return folder


@pytest.fixture(scope="module")
def pat(parent: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("pat") / "pat"
    return out, prune_and_tune(parent, out, TUNE)


def child_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_anti_random_ensemble_end_to_end(parent: Path, pat: tuple[Path, dict]) -> None:
    out, record = pat
    parent_state = child_weights(parent)
    masks = [Mask.load(out / f"child-{i}" / "mask.safetensors") for i in range(2)]
    for name in masks[0]:
        assert not (masks[0][name] & masks[1][name]).any()
        assert torch.equal(masks[0][name] | masks[1][name], parent_state[name] != 0)
    for i, mask in enumerate(masks):
        state = child_weights(out / f"child-{i}")
        for name, kept in mask.items():
            assert (state[name][~kept] == 0).all(), f"child {i}: a pruned weight of {name} is not 0"
            assert (state[name][kept] != 0).any()
        config = json.loads((out / f"child-{i}" / "config.json").read_text())
        assert config["model"]["init_weights"] == str(parent / "model.safetensors")
        assert config["train"]["lr_schedule"] == "onecycle" and config["train"]["epochs"] == 1
    # ensemble.json: every member measured as its own run measured itself, the parent beside them
    assert record["combination"] == "mean of softmax" and record["parent_is_member"] is False
    assert [m["role"] for m in record["members"]] == ["child", "child"]
    assert [m["pair"] for m in record["members"]] == [0, 0]
    for member in record["members"]:
        assert member["accuracy"] == pytest.approx(member["final_test_acc"])
        assert member["sparsity"] == pytest.approx(0.5, abs=1e-3)
    parent_summary = json.loads((parent / "summary.json").read_text())
    assert record["parent"]["accuracy"] == pytest.approx(parent_summary["final_test_acc"])
    assert record["ensemble"]["nll"] <= max(m["nll"] for m in record["members"])
    assert record["cost"]["epochs"] == 3 + 2 and record["cost"]["epochs_ratio"] == pytest.approx(5 / 3)
    assert json.loads((out / "ensemble.json").read_text())["ensemble"] == record["ensemble"]
    # the same command again trains nothing and measures the same
    before = (out / "child-0" / "summary.json").read_text()
    again = prune_and_tune(parent, out, TUNE)
    assert (out / "child-0" / "summary.json").read_text() == before
    assert again["ensemble"]["accuracy"] == record["ensemble"]["accuracy"]
    with pytest.raises(AnymaskError, match="holds another mask"):
        prune_and_tune(parent, out, EnsembleSettings(children=2, tune_epochs=1, seed=7))


def normalised(images: torch.Tensor, data: ImageDataset) -> torch.Tensor:
    """uint8 images by hand: / 255, then the per-channel mean and std."""
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    return (images.float() / 255 - mean) / std


def hand_accuracy(model: torch.nn.Module, data: ImageDataset) -> float:
    with torch.no_grad():
        logits = model(normalised(data.test_x, data))
    return (logits.argmax(1) == data.test_y).double().mean().item()


def test_untuned_children_are_their_masks_on_the_parents_weights(
    parent: Path, pat: tuple[Path, dict]
) -> None:
    """ensemble.json's 'untuned': each child's mask applied to the parent's weights by hand, evaluated by
    hand, gives the accuracy recorded; the tuned children differ from it (tuning moved them)."""
    out, record = pat
    untuned = record["untuned"]
    data = load_dataset("digits")  # as ensembles measure: every training image, not the run's subset
    model = create_model("cnn", data.num_classes, data.input_shape, 1.0)
    parent_state = child_weights(parent)
    accuracies = []
    for index in range(2):
        mask = Mask.load(out / f"child-{index}" / "mask.safetensors")
        state = {name: t * mask[name] if name in mask else t for name, t in parent_state.items()}
        model.load_state_dict(state)
        accuracies.append(hand_accuracy(model.eval(), data))
        assert untuned["members"][index]["child"] == index
        assert untuned["members"][index]["accuracy"] == pytest.approx(accuracies[-1], abs=1e-9)
    assert untuned["ensemble"]["mean_member_accuracy"] == pytest.approx(sum(accuracies) / 2)
    tuned = [m["accuracy"] for m in record["members"]]
    assert tuned != [m["accuracy"] for m in untuned["members"]]
    # recalibrated: BatchNorm statistics averaged over the training images (all of digits' 1,347 here,
    # fewer than RECALIBRATION_IMAGES), batch by batch
    recalibrated = untuned["recalibrated"]
    assert recalibrated["images"] == len(data.train_y) == 1347
    for index in range(2):
        mask = Mask.load(out / f"child-{index}" / "mask.safetensors")
        model.load_state_dict({n: t * mask[n] if n in mask else t for n, t in parent_state.items()})
        norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert norms
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None
        model.train()
        with torch.no_grad():
            for start in range(0, 1347, 64):  # the run's batch size
                model(normalised(data.train_x[start : start + 64], data))
        accuracy = hand_accuracy(model.eval(), data)
        assert recalibrated["members"][index]["accuracy"] == pytest.approx(accuracy, abs=1e-9)
    assert untuned["ensemble"]["nll"] > 0 and 0 <= untuned["ensemble"]["ece"] <= 1


def test_mask_method_children_each_with_their_own_seed(parent: Path, tmp_path: Path) -> None:
    settings = EnsembleSettings(
        children=2, pruning="random", sparsity=0.7, tune_epochs=1, tune_lr=0.05, include_parent=True
    )
    record = prune_and_tune(parent, tmp_path / "random", settings)
    masks = [Mask.load(tmp_path / "random" / f"child-{i}" / "mask.safetensors") for i in range(2)]
    assert all(mask.sparsity() == pytest.approx(0.7, abs=1e-4) for mask in masks)
    assert any(not torch.equal(masks[0][n], masks[1][n]) for n in masks[0])
    for i, mask in enumerate(masks):
        state = child_weights(tmp_path / "random" / f"child-{i}")
        assert all((state[n][~kept] == 0).all() for n, kept in mask.items())
    assert [m["role"] for m in record["members"]] == ["child", "child", "parent"]
    assert record["ensemble"]["members"] == 3 and record["cost"]["epochs"] == 3 + 2


def test_magnitude_children_are_pruned_on_the_parents_weights(parent: Path, tmp_path: Path) -> None:
    settings = EnsembleSettings(children=1, pruning="magnitude", sparsity=0.8, tune_epochs=1, tune_lr=0.05)
    prune_and_tune(parent, tmp_path / "magnitude", settings, overrides={"scope": "layer"})
    mask = Mask.load(tmp_path / "magnitude" / "child-0" / "mask.safetensors")
    weights = child_weights(parent)
    for name, kept in mask.items():
        magnitude = weights[name].abs().flatten()
        smallest_kept = magnitude[kept.flatten()].min()
        assert (magnitude[~kept.flatten()] <= smallest_kept).all(), name


def test_anti_random_children_leave_the_layers_they_do_not_prune_whole(parent: Path, tmp_path: Path) -> None:
    """`--no-prune-classifier`: the pairs split every other layer exactly and keep the classifier dense, as
    prune-and-tune's code leaves the last layer whole; splitting every layer is the plain pairs."""
    prune_and_tune(parent, tmp_path / "pat", TUNE, overrides={"prune_classifier": False})
    masks = [Mask.load(tmp_path / "pat" / f"child-{i}" / "mask.safetensors") for i in range(2)]
    dense = child_weights(parent)
    classifier = [name for name in masks[0] if name.startswith(("fc", "classifier"))]
    assert classifier, list(masks[0])
    for name in masks[0]:
        if name in classifier:
            assert masks[0][name].all() and masks[1][name].all()
            assert (child_weights(tmp_path / "pat" / "child-1")[name] != 0).all()
        else:
            assert not (masks[0][name] & masks[1][name]).any()
            assert torch.equal(masks[0][name] | masks[1][name], dense[name] != 0)
    kept = Mask({name: dense[name] != 0 for name in masks[0]})
    everything = anti_random_within(kept, set(kept), 4, seed=3)
    plain = anti_random_masks(kept, 4, seed=3)
    assert all(torch.equal(a[n], b[n]) for a, b in zip(everything, plain, strict=True) for n in kept)


def test_a_set_of_runs_and_the_report(parent: Path, pat: tuple[Path, dict], tmp_path: Path) -> None:
    deep = evaluate_runs([parent, pat[0] / "child-0"], tmp_path / "deep")
    assert deep["kind"] == "members" and deep["ensemble"]["members"] == 2
    assert deep["cost"]["epochs"] == 3 + 1
    report = write_ensemble_report([pat[0], tmp_path / "deep"], tmp_path / "report")
    text = report.read_text()
    for heading in ("paired gain", "deep ensembles", "each child's acc", "gap closed", "before tuning"):
        assert heading in text
    assert (tmp_path / "report" / "reliability_0.png").stat().st_size > 10_000


def test_a_damaged_untuned_record_is_named(pat: tuple[Path, dict], tmp_path: Path) -> None:
    record = json.loads((pat[0] / "ensemble.json").read_text())
    record["untuned"]["recalibrated"]["ensemble"]["accuracy"] = "high"
    (tmp_path / "pat").mkdir()
    (tmp_path / "pat" / "ensemble.json").write_text(json.dumps(record))
    with pytest.raises(
        AnymaskError, match="'untuned' recalibrated ensemble: its entry 'accuracy' is a string"
    ):
        write_ensemble_report([tmp_path / "pat"], tmp_path / "report")


def test_ensembles_made_differently_never_share_a_group(pat: tuple[Path, dict]) -> None:
    """The report groups ensembles by every setting they were made with: another peak learning rate or a
    run setting given to the children is another group; the defaults read as before."""
    record = pat[1]
    plain = {**record, "settings": {**record["settings"], "tune_lr": 0.1, "overrides": {}}}
    assert group_label(plain) == "anti-random, 2 children, 1 epoch, recipe default"
    slower = {**plain, "settings": {**plain["settings"], "tune_lr": 0.03}}
    whole = {**plain, "settings": {**plain["settings"], "overrides": {"prune_classifier": False}}}
    quiet = {**plain, "settings": {**plain["settings"], "overrides": {"progress": False, "threads": 1}}}
    assert group_label(quiet) == group_label(plain)  # where a child trains is not how it was made
    labels = {group_label(plain), group_label(slower), group_label(whole)}
    assert len(labels) == 3
    assert group_label(slower).endswith("tune_lr 0.03")
    assert group_label(whole).endswith("prune_classifier=False")
    control = {
        **plain,
        "settings": {**plain["settings"], "pruning": "random", "sparsity": 0.0, "children": 1},
    }
    assert group_label(control) == "unpruned, 1 child, 1 epoch, recipe default"  # the parent tuned alone
    halves = {**control, "settings": {**control["settings"], "sparsity": 0.5, "children": 6}}
    assert group_label(halves) == "random 0.5, 6 children, 1 epoch, recipe default"


def last_val_acc(folder: Path) -> float:
    return json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])["val_acc"]


def test_split_val_measures_on_the_held_out_images(tmp_path: Path) -> None:
    """Tuning settings are chosen on the validation images the parent held out: every member, the parent
    and the ensemble are measured there, as each run measured its own validation accuracy."""
    parent = tmp_path / "parent"
    run_experiment(quick_config(epochs=2, lr=0.1, val_split=200), parent)
    record = prune_and_tune(parent, tmp_path / "pat", TUNE, split="val")
    assert record["evaluated_on"]["split"] == "val" and record["evaluated_on"]["images"] == 200
    assert record["parent"]["accuracy"] == pytest.approx(last_val_acc(parent))
    for i, member in enumerate(record["members"]):
        assert member["accuracy"] == pytest.approx(last_val_acc(tmp_path / "pat" / f"child-{i}"))
    deep = evaluate_runs([parent, tmp_path / "pat" / "child-0"], tmp_path / "deep", split="val")
    assert deep["evaluated_on"]["images"] == 200
    text = write_ensemble_report([tmp_path / "pat", tmp_path / "deep"], tmp_path / "report").read_text()
    assert "Validation images of digits" in text
    evaluate_runs([parent], tmp_path / "test")
    with pytest.raises(AnymaskError, match="different images"):
        write_ensemble_report([tmp_path / "pat", tmp_path / "test"], tmp_path / "mixed")


def test_split_val_needs_held_out_images(parent: Path, pat: tuple[Path, dict], tmp_path: Path) -> None:
    with pytest.raises(AnymaskError, match="give a parent trained with --val-split above 0"):
        prune_and_tune(parent, tmp_path / "out", TUNE, split="val")
    assert not (tmp_path / "out").exists()
    with pytest.raises(AnymaskError, match="same --val-split above 0, these have 0"):
        evaluate_runs([parent, pat[0] / "child-0"], tmp_path / "deep", split="val")


@pytest.mark.parametrize(
    ("settings", "overrides", "message"),
    [
        (EnsembleSettings(children=3), {}, "must be even"),
        (EnsembleSettings(sparsity=0.9), {}, "--sparsity is for mask methods"),
        (EnsembleSettings(pruning="dense"), {}, "does not prune each child"),
        (EnsembleSettings(pruning="magic", sparsity=0.5), {}, "unknown mask method 'magic'"),
        (EnsembleSettings(pruning="snip"), {}, "needs --sparsity"),
        (EnsembleSettings(), {"epochs": 9}, "'epochs' is set by the ensemble"),
        (EnsembleSettings(), {"model": "resnet20"}, "'model' cannot change"),
        (EnsembleSettings(), {"weight_decya": 0.1}, "unknown config key 'weight_decya'"),
        (EnsembleSettings(recipe="tost,magic"), {}, "unknown recipe part 'magic'"),
    ],
)
def test_bad_settings_fail_before_anything_is_written(
    parent: Path, tmp_path: Path, settings: EnsembleSettings, overrides: dict, message: str
) -> None:
    with pytest.raises(AnymaskError, match=message):
        prune_and_tune(parent, tmp_path / "out", settings, overrides=overrides)
    assert not (tmp_path / "out").exists()


def test_init_weights_of_another_model_fail_in_one_line(parent: Path, tmp_path: Path) -> None:
    config = quick_config(model="resnet20", width=0.25, init_weights=str(parent / "model.safetensors"))
    with pytest.raises(AnymaskError, match="does not fit the model"):
        run_experiment(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    with pytest.raises(AnymaskError, match="init_weights file not found"):
        run_experiment(quick_config(init_weights=str(tmp_path / "none.safetensors")), tmp_path / "run")


def test_cli_ensemble_and_its_errors(
    parent: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ensemble", str(parent), "--children", "3", "--out", str(tmp_path / "e")]) == 2
    error = capsys.readouterr().err
    assert "must be even" in error and len(error.strip().splitlines()) == 1
    assert main(["ensemble", "--out", str(tmp_path / "e")]) == 2
    assert "give the parent run folder" in capsys.readouterr().err
    assert main(["ensemble", "--members", str(parent), "--out", str(tmp_path / "one")]) == 0
    assert "ensemble of 1" in capsys.readouterr().out
    record = json.loads((tmp_path / "one" / "ensemble.json").read_text())
    assert record["members"][0]["ece"] == pytest.approx(record["ensemble"]["ece"])
    for command in ("ensemble", "ensemble-report"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64, torch.int8])
def test_init_weights_of_another_float_precision_load_and_integers_fail(
    tmp_path: Path, dtype: torch.dtype
) -> None:
    """load_state_dict would cast int8 (quantized) weights into floats as wrong numbers, silently."""
    from safetensors.torch import save_file

    from anymask.train.checkpoint import load_weights

    source, target = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    with torch.no_grad():
        source.weight.copy_(torch.randint(-3, 4, (3, 4)).float())  # exact in every dtype
    save_file({k: v.to(dtype) for k, v in source.state_dict().items()}, tmp_path / "w.safetensors")
    if dtype.is_floating_point:
        load_weights(target, tmp_path / "w.safetensors")
        assert torch.equal(target.weight, source.weight) and target.weight.dtype == torch.float32
    else:
        with pytest.raises(AnymaskError, match=r"weight holds torch.int8 values where the model has torch"):
            load_weights(target, tmp_path / "w.safetensors")
