"""Image folders and user datasets streamed from disk: same batches as in memory, training, bad input."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anymask.config import RunConfig
from anymask.data import ImageDataset, StreamedDataset, load_dataset, shuffled_train_batches
from anymask.errors import AnymaskError


def write_folder(
    root: Path, per_class: int, classes: int = 3, size: int = 16, seed: int = 0, splits=("train", "val")
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """PNG images root/<split>/c<k>/<i>.png; returns each split's (uint8 [N, 3, H, W], labels) in the
    folder's sorted order (class folders sorted, files sorted by name)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split in splits:
        images, labels = [], []
        for label in range(classes):
            folder = root / split / f"c{label}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:05d}.png")
                images.append(pixels.transpose(2, 0, 1))
                labels.append(label)
        arrays[split] = (np.stack(images), np.array(labels, dtype=np.int64))
    return arrays


def in_memory(arrays, folder: StreamedDataset) -> ImageDataset:
    train_x, train_y = (torch.from_numpy(a) for a in arrays["train"])
    test_x, test_y = (torch.from_numpy(a) for a in arrays["val"])
    return ImageDataset(
        name="same",
        train_x=train_x,
        train_y=train_y,
        val_x=train_x[:0],
        val_y=train_y[:0],
        test_x=test_x,
        test_y=test_y,
        num_classes=folder.num_classes,
        mean=folder.mean,
        std=folder.std,
        crop_padding=folder.crop_padding,
        flip=folder.flip,
        class_names=folder.class_names,
    )


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("images")
    return root, write_folder(root, per_class=12)


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_batches_equal_the_in_memory_ones(folder, workers: int) -> None:
    """One generator, the same images from PNG files and from tensors: bit-identical augmented batches."""
    root, arrays = folder
    streamed = load_dataset("imagefolder", root, workers=workers)
    assert isinstance(streamed, StreamedDataset)
    assert (streamed.num_classes, streamed.input_shape, streamed.class_names) == (
        3,
        (3, 16, 16),
        ["c0", "c1", "c2"],
    )
    memory = in_memory(arrays, streamed)
    for options in ({}, {"drop_last": True, "rank": 1, "world_size": 2}):
        a = list(shuffled_train_batches(streamed, 8, torch.Generator().manual_seed(3), **options))
        b = list(shuffled_train_batches(memory, 8, torch.Generator().manual_seed(3), **options))
        assert len(a) == len(b) > 1
        for (xa, ya), (xb, yb) in zip(a, b, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    test = list(streamed.batches("test", 10))
    assert torch.equal(torch.cat([x for x, _ in test]), torch.cat([x for x, _ in memory.batches("test", 10)]))


def test_normalisation_is_computed_or_given(folder) -> None:
    root, arrays = folder
    streamed = load_dataset("imagefolder", root, workers=0)
    pixels = torch.from_numpy(arrays["train"][0]).double() / 255
    assert np.allclose(streamed.mean, pixels.mean((0, 2, 3)).tolist(), atol=1e-6)
    assert np.allclose(streamed.std, pixels.std((0, 2, 3)).tolist(), atol=1e-6)
    given = load_dataset("imagefolder", root, workers=0, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    assert given.mean == (0.5, 0.5, 0.5) and given.std == (0.25, 0.25, 0.25)


def test_image_size_resizes_and_val_split_replaces_a_missing_val_folder(tmp_path: Path) -> None:
    write_folder(tmp_path, per_class=5, size=20, splits=("train",))
    data = load_dataset("imagefolder", tmp_path, image_size=8, val_split=6, workers=0)
    assert data.input_shape == (3, 8, 8)
    assert (data.split_size("train"), data.split_size("test"), data.split_size("val")) == (9, 6, 0)
    x, y = next(data.batches("test", 6))
    assert x.shape == (6, 3, 8, 8) and sorted(y.tolist()) == [0, 0, 1, 1, 2, 2]  # stratified hold-out


@pytest.mark.parametrize(
    ("make", "options", "message"),
    [
        (lambda root: None, {}, "no .*train; --data-dir must hold train/<class>/<images>"),
        (lambda root: write_folder(root, 2, splits=("train",)), {}, "no val/ or test/ folder"),
        (lambda root: (root / "train" / "a").mkdir(parents=True), {}, "no images"),
    ],
)
def test_bad_folders_are_one_line(tmp_path: Path, make, options, message: str) -> None:
    make(tmp_path)
    with pytest.raises(AnymaskError, match=message):
        load_dataset("imagefolder", tmp_path, **options)


def test_an_image_of_another_size_names_the_fix(tmp_path: Path) -> None:
    write_folder(tmp_path, per_class=3, size=16)
    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(tmp_path / "train" / "c1" / "odd.png")
    data = load_dataset("imagefolder", tmp_path, workers=0, mean=[0.5] * 3, std=[0.2] * 3)
    with pytest.raises(AnymaskError, match=r"odd\.png is 12x12, not 16x16.*--image-size"):
        list(data.batches("train", 4))


def test_anymask_train_on_an_image_folder(folder, tmp_path: Path) -> None:
    from anymask.train import run_experiment

    root, _ = folder
    config = RunConfig.from_flat(
        {
            "model": "cnn",
            "data": "imagefolder",
            "data_dir": str(root),
            "epochs": 2,
            "batch_size": 8,
            "mask_method": "snip",
            "sparsity": 0.8,
            "recipe": "gsn,lrsi,ls",
            "gradinit_iterations": 2,
            "gradinit_batch_size": 4,
            "data_workers": 1,
            "progress": False,
            "channels_last": False,
        }
    )
    result = run_experiment(config, tmp_path / "run")
    assert result.summary["data"] == "imagefolder" and result.summary["mask_kept"] > 0
    assert 0 <= result.summary["final_test_acc"] <= 1
    assert (tmp_path / "run" / "model.safetensors").is_file()


FACTORY = textwrap.dedent(
    """
    import torch
    from torch.utils.data import TensorDataset

    class Labelled(TensorDataset):
        classes = ["a", "b"]

        @property
        def targets(self):
            return self.tensors[1]

    def make(data_dir):
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(40, 3, 8, 8, generator=generator)
        y = torch.arange(40) % 2
        return Labelled(x, y), Labelled(x[:10], y[:10])

    def broken(data_dir):
        return {"train": None}
    """
)


@pytest.fixture
def factory_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "my_data.py").write_text(FACTORY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "my_data", raising=False)
    return "my_data"


def test_a_user_dataset_factory_is_streamed(factory_module: str, tmp_path: Path) -> None:
    data = load_dataset(f"{factory_module}:make", tmp_path, val_split=4, workers=0)
    assert (data.num_classes, data.input_shape) == (2, (3, 8, 8))
    assert (data.split_size("train"), data.split_size("val"), data.split_size("test")) == (36, 4, 10)
    first = list(shuffled_train_batches(data, 8, torch.Generator().manual_seed(1)))
    again = list(shuffled_train_batches(data, 8, torch.Generator().manual_seed(1)))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again, strict=True))
    with pytest.raises(AnymaskError, match="returned a dict; a data factory is function"):
        load_dataset(f"{factory_module}:broken", tmp_path)
    with pytest.raises(AnymaskError, match=r"unknown dataset 'nope'.*or package\.module:function"):
        load_dataset("nope", tmp_path)


def small_dataset(classes: int = 4, n: int = 64) -> ImageDataset:
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=generator)
    y = torch.arange(n) % classes
    return ImageDataset(
        "tiny",
        x,
        y,
        x[:0],
        y[:0],
        x[:8],
        y[:8],
        classes,
        (0.5,) * 3,
        (0.25,) * 3,
        1,
        True,
        [str(c) for c in range(classes)],
    )


@pytest.mark.parametrize("method", ["snip", "grasp"])
def test_scorers_take_any_iterable_of_batches(method: str) -> None:
    """SNIP and GraSP on a list of batches equal the same scorers on the dataset those batches came from."""
    from anymask.masks import MaskConfig, make_mask
    from anymask.masks.scoring import prune_indices
    from anymask.models import create_model

    data = small_dataset()
    torch.manual_seed(0)
    model = create_model("cnn", 4, (3, 8, 8), 1.0)
    config = MaskConfig(mask_method=method, sparsity=0.9, prune_samples_per_class=3)
    from_dataset = make_mask(model, config, data=data, seed=5)
    idx = prune_indices(data.train_y, 3, 4, True, torch.Generator().manual_seed(5))
    batches = [*data.train_batches_at(idx, 12), *data.train_batches_at(idx, 12)]  # it takes the first 12
    from_batches = make_mask(model, config, data=iter(batches), seed=5)
    assert all(torch.equal(from_dataset[name], from_batches[name]) for name in from_dataset)
    dicts = [{"pixel_values": x, "labels": y} for x, y in batches]
    assert make_mask(model, config, data=dicts, seed=5).kept() == from_dataset.kept()


def test_synflow_reads_the_input_shape_from_the_first_batch() -> None:
    from anymask.masks import MaskConfig, make_mask
    from anymask.models import create_model

    data = small_dataset()
    model = create_model("cnn", 4, (3, 8, 8), 1.0)
    config = MaskConfig(mask_method="synflow", sparsity=0.9)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(data.train_x.float(), data.train_y), 8
    )
    from_loader = make_mask(model, config, data=loader)
    given = make_mask(model, config, extras={"input_shape": (3, 8, 8)})
    assert all(torch.equal(from_loader[name], given[name]) for name in given)
    with pytest.raises(AnymaskError, match="batches given as data are empty"):
        make_mask(model, MaskConfig(mask_method="snip", sparsity=0.9), data=[])


def test_the_command_line_trains_an_image_folder(tmp_path: Path) -> None:
    from cli_helpers import anymask

    write_folder(tmp_path / "images", per_class=8, size=12, splits=("train",))
    result = anymask(
        "train",
        "--model",
        "cnn",
        "--width",
        "0.5",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--no-progress",
        "--data",
        "imagefolder",
        "--data-dir",
        str(tmp_path / "images"),
        "--image-size",
        "8",
        "--val-split",
        "6",
        "--data-mean",
        "0.5,0.5,0.5",
        "--data-std",
        "0.25,0.25,0.25",
        "--data-workers",
        "1",
        "--out",
        str(tmp_path / "run"),
    )
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "run" / "config.json").read_text())["data"]
    assert (config["image_size"], config["data_mean"], config["data_workers"]) == (8, [0.5] * 3, 1)
    bad = anymask(
        "train", "--data", "imagefolder", "--data-dir", str(tmp_path / "none"), "--out", str(tmp_path / "x")
    )
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1 and "train/<class>" in bad.stderr
