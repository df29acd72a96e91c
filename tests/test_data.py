"""anymask.data: loaders on tiny files in the official formats, splits, and device-side batching."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from anymask.data import DATASETS, ImageDataset, iterate_batches, load_dataset, num_batches
from anymask.errors import AnymaskError

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _dump(path: Path, obj: object) -> None:
    # Protocol 2, like the official Python 2 files; loaded back with encoding="latin1".
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=2)


def _batch(n: int, seed: int, label_key: str = "labels", num_classes: int = 10) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    return {
        "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        label_key: [i % num_classes for i in range(n)],
    }


def write_cifar10(data_dir: Path, batches: int = 2, per_batch: int = 20, test: int = 10) -> Path:
    root = data_dir / "cifar-10-batches-py"
    root.mkdir(parents=True)
    for i in range(1, batches + 1):
        _dump(root / f"data_batch_{i}", _batch(per_batch, seed=i))
    _dump(root / "test_batch", _batch(test, seed=0))
    _dump(root / "batches.meta", {"label_names": CIFAR10_NAMES})
    return root


def write_cifar100(data_dir: Path) -> Path:
    root = data_dir / "cifar-100-python"
    root.mkdir(parents=True)
    _dump(root / "train", _batch(200, 1, "fine_labels", 100))
    _dump(root / "test", _batch(100, 2, "fine_labels", 100))
    _dump(root / "meta", {"fine_label_names": [f"class{i}" for i in range(100)]})
    return root


def write_tinyimagenet(data_dir: Path) -> Path:
    root = data_dir / "tiny-imagenet-200"
    wnids = ["n01443537", "n01629819"]
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for k, wnid in enumerate(wnids):
        folder = root / "train" / wnid / "images"
        folder.mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (64, 64), (80 * k, 10 * i, 200)).save(folder / f"{wnid}_{i}.JPEG")
    Image.new("L", (64, 64), 128).save(root / "val" / "images" / "val_0.JPEG")  # grayscale, as some are
    Image.new("RGB", (64, 64), (0, 0, 0)).save(root / "val" / "images" / "val_1.JPEG")
    (root / "val" / "val_annotations.txt").write_text(
        f"val_0.JPEG\t{wnids[1]}\t0\t0\t63\t63\nval_1.JPEG\t{wnids[0]}\t1\t2\t40\t50\n"
    )
    return root


# ---------------------------------------------------------------------------------------------- loaders


def test_registry_names() -> None:
    assert DATASETS.names() == ["cifar10", "cifar100", "digits", "tinyimagenet"]
    with pytest.raises(AnymaskError, match="unknown dataset 'mnist'"):
        load_dataset("mnist")


def test_cifar10_loads(tmp_path: Path) -> None:
    root = write_cifar10(tmp_path)
    ds = load_dataset("cifar10", tmp_path)
    assert ds.train_x.shape == (40, 3, 32, 32) and ds.train_x.dtype == torch.uint8
    assert ds.train_y.dtype == torch.int64 and ds.train_y.tolist() == [i % 10 for i in range(20)] * 2
    assert ds.test_x.shape == (10, 3, 32, 32) and ds.val_x.shape == (0, 3, 32, 32)
    assert ds.num_classes == 10 and ds.class_names == CIFAR10_NAMES
    assert ds.input_shape == (3, 32, 32) and (ds.crop_padding, ds.flip) == (4, True)
    # Rows are channel-major: the first 1,024 values are the red plane, row by row.
    with (root / "data_batch_2").open("rb") as f:
        raw = pickle.load(f, encoding="latin1")["data"]
    assert torch.equal(ds.train_x[20, 0].flatten(), torch.from_numpy(raw[0, :1024]))
    assert torch.equal(ds.train_x[20, 2, 31], torch.from_numpy(raw[0, -32:]))


def test_cifar10_accepts_any_number_of_batches_in_numeric_order(tmp_path: Path) -> None:
    write_cifar10(tmp_path, batches=11, per_batch=2)
    ds = load_dataset("cifar10", tmp_path)
    assert len(ds.train_x) == 22
    first_of_10 = _batch(2, seed=10)["data"]
    assert torch.equal(ds.train_x[18].flatten(), torch.from_numpy(first_of_10[0]))  # batch 10 after batch 9


def test_cifar100_loads(tmp_path: Path) -> None:
    write_cifar100(tmp_path)
    ds = load_dataset("cifar100", tmp_path)
    assert ds.train_x.shape == (200, 3, 32, 32) and ds.test_x.shape == (100, 3, 32, 32)
    assert ds.num_classes == 100 and ds.class_names[7] == "class7" and int(ds.train_y.max()) == 99
    assert ds.mean == (0.5071, 0.4865, 0.4409)


def test_tinyimagenet_loads_and_caches(tmp_path: Path) -> None:
    root = write_tinyimagenet(tmp_path)
    ds = load_dataset("tinyimagenet", tmp_path)
    assert ds.train_x.shape == (6, 3, 64, 64) and ds.train_x.dtype == torch.uint8
    assert ds.train_y.tolist() == [0, 0, 0, 1, 1, 1] and ds.test_y.tolist() == [1, 0]
    assert ds.test_x.shape == (2, 3, 64, 64) and ds.num_classes == 2
    assert ds.class_names == ["n01443537", "n01629819"]
    assert abs(int(ds.train_x[3, 0].float().mean()) - 80) <= 2  # red channel of the second class
    assert abs(int(ds.test_x[0].float().mean()) - 128) <= 2  # grayscale became 3 equal channels
    assert (root / "anymask-cache.npz").is_file()
    # The second load comes from the cache, not the JPEGs.
    for jpeg in root.rglob("*.JPEG"):
        jpeg.unlink()
    again = load_dataset("tinyimagenet", tmp_path)
    assert torch.equal(again.train_x, ds.train_x) and torch.equal(again.test_y, ds.test_y)


def test_tinyimagenet_rebuilds_a_corrupt_cache(tmp_path: Path) -> None:
    root = write_tinyimagenet(tmp_path)
    (root / "anymask-cache.npz").write_bytes(b"not a zip")
    assert len(load_dataset("tinyimagenet", tmp_path).train_x) == 6


def test_digits_split() -> None:
    ds = load_dataset("digits")
    assert ds.train_x.shape == (1347, 1, 8, 8) and ds.test_x.shape == (450, 1, 8, 8)
    assert ds.train_x.dtype == torch.uint8 and int(ds.train_x.max()) == 255
    assert ds.test_y.bincount().tolist() == [45] * 10
    assert (ds.crop_padding, ds.flip, ds.num_classes) == (1, False, 10)
    assert torch.equal(load_dataset("digits").test_x, ds.test_x)


# ---------------------------------------------------------------------------------------------- splits


def test_val_split_is_fixed_stratified_and_disjoint(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    ds = load_dataset("cifar10", tmp_path, val_split=10)
    assert len(ds.val_x) == 10 and len(ds.train_x) == 30
    assert ds.val_y.bincount(minlength=10).tolist() == [1] * 10
    again = load_dataset("cifar10", tmp_path, val_split=10)
    assert torch.equal(again.val_x, ds.val_x) and torch.equal(again.train_x, ds.train_x)
    full = load_dataset("cifar10", tmp_path).train_x.flatten(1)
    in_val = (full[:, None] == ds.val_x.flatten(1)[None]).all(-1).any(1)
    assert int(in_val.sum()) == 10
    assert torch.equal(full[~in_val], ds.train_x.flatten(1))  # the rest keeps file order


def test_train_subset_keeps_the_first_remaining_images(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    full = load_dataset("cifar10", tmp_path, val_split=5)
    sub = load_dataset("cifar10", tmp_path, val_split=5, train_subset=7)
    assert torch.equal(sub.train_x, full.train_x[:7]) and torch.equal(sub.val_y, full.val_y)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"val_split": -1}, "val_split must be in 0..39"),
        ({"val_split": 40}, "val_split must be in 0..39"),
        ({"train_subset": 0}, "train_subset must be in 1..40"),
        ({"val_split": 10, "train_subset": 31}, "train_subset must be in 1..30"),
    ],
)
def test_bad_split_values(tmp_path: Path, kwargs: dict[str, int], message: str) -> None:
    write_cifar10(tmp_path)
    with pytest.raises(AnymaskError, match=message):
        load_dataset("cifar10", tmp_path, **kwargs)


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("cifar10", "cifar-10-batches-py/data_batch_1"),
        ("cifar100", "cifar-100-python/train"),
        ("tinyimagenet", "tiny-imagenet-200/wnids.txt"),
    ],
)
def test_missing_folder_names_the_expected_path(tmp_path: Path, name: str, expected: str) -> None:
    with pytest.raises(AnymaskError) as err:
        load_dataset(name, tmp_path)
    message = str(err.value)
    assert f"{name} not found: expected {tmp_path.resolve() / expected}" in message
    assert "--data-dir" in message and "--download" in message and "\n" not in message


def test_missing_test_batch(tmp_path: Path) -> None:
    (write_cifar10(tmp_path) / "test_batch").unlink()
    with pytest.raises(AnymaskError, match="cifar-10-batches-py/test_batch"):
        load_dataset("cifar10", tmp_path)


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        (b"\x80\x02garbage", "cannot unpickle"),
        (pickle.dumps([1, 2], protocol=2), "expected a dict"),
        (pickle.dumps({"labels": [0]}, protocol=2), "no 'data' entry"),
        (pickle.dumps({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}, protocol=2), "must be uint8"),
        (pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}, protocol=2), "1 labels for 2"),
        (pickle.dumps({"data": np.zeros((1, 3072), np.uint8), "labels": [10]}, protocol=2), "labels outside"),
    ],
    ids=["truncated", "not-a-dict", "no-data", "wrong-shape", "label-count", "label-range"],
)
def test_malformed_cifar_file(tmp_path: Path, content: bytes, detail: str) -> None:
    path = write_cifar10(tmp_path) / "data_batch_2"
    path.write_bytes(content)
    with pytest.raises(AnymaskError, match=detail) as err:
        load_dataset("cifar10", tmp_path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_malformed_tinyimagenet(tmp_path: Path) -> None:
    root = write_tinyimagenet(tmp_path)
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(AnymaskError, match=r"val_annotations\.txt is malformed"):
        load_dataset("tinyimagenet", tmp_path)
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn01443537\n")
    Image.new("RGB", (32, 32)).save(root / "val" / "images" / "val_0.JPEG")
    with pytest.raises(AnymaskError, match="image is 32x32, expected 64x64"):
        load_dataset("tinyimagenet", tmp_path)


def test_real_cifar10_subset() -> None:
    if not (REAL_DATA / "cifar-10-batches-py").is_dir():
        pytest.skip(f"no real CIFAR-10 subset at {REAL_DATA}")
    ds = load_dataset("cifar10", REAL_DATA)
    assert ds.train_x.shape == (10_000, 3, 32, 32) and ds.test_x.shape == (5_000, 3, 32, 32)
    assert ds.train_y.bincount().tolist() == [1000] * 10 and ds.test_y.bincount().tolist() == [500] * 10
    assert ds.class_names == CIFAR10_NAMES
    # Real photos: the standard statistics should roughly hold on this subset.
    assert torch.allclose(ds.train_x.float().mean((0, 2, 3)) / 255, torch.tensor(ds.mean), atol=0.02)


# ---------------------------------------------------------------------------------------------- batches


def _images(n: int, size: int = 6, channels: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g)


MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _epoch(images: torch.Tensor, batch_size: int, seed: int = 0, **kwargs: object) -> list[torch.Tensor]:
    options: dict = {
        "mean": MEAN,
        "std": STD,
        "shuffle": True,
        "augment": True,
        "crop_padding": 2,
        "flip": True,
    }
    options.update(kwargs)
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(len(images))
    return [
        torch.cat([x.flatten(1), y[:, None].float()], 1)
        for x, y in iterate_batches(images, labels, batch_size, generator=g, **options)
    ]


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 40),
    batch_size=st.integers(1, 12),
    drop_last=st.booleans(),
    shuffle=st.booleans(),
    world_size=st.sampled_from([1, 2, 3]),
)
def test_epoch_covers_every_sample_once(
    n: int, batch_size: int, drop_last: bool, shuffle: bool, world_size: int
) -> None:
    batch_size *= world_size
    labels = torch.arange(n)
    seen = []
    for rank in range(world_size):
        g = torch.Generator().manual_seed(1)
        batches = list(
            iterate_batches(
                _images(n, size=2),
                labels,
                batch_size,
                mean=(0.5,) * 3,
                std=(0.5,) * 3,
                shuffle=shuffle,
                augment=False,
                generator=g,
                drop_last=drop_last,
                rank=rank,
                world_size=world_size,
            )
        )
        assert len(batches) == num_batches(n, batch_size, drop_last)
        seen += [y for _, y in batches]
    got = torch.cat(seen).sort().values if seen else torch.zeros(0, dtype=torch.int64)
    if drop_last:
        assert len(got) == n - n % batch_size and len(got.unique()) == len(got)
    else:
        assert torch.equal(got, labels)


def test_num_batches() -> None:
    assert num_batches(10, 3, drop_last=False) == 4 and num_batches(10, 3, drop_last=True) == 3
    assert num_batches(0, 3, drop_last=False) == 0
    with pytest.raises(AnymaskError):
        num_batches(10, 0, drop_last=False)


def test_same_seed_same_batches_other_seed_differs() -> None:
    images = _images(30)
    a, b, c = _epoch(images, 8, seed=3), _epoch(images, 8, seed=3), _epoch(images, 8, seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_normalization_without_augmentation() -> None:
    images = _images(10)
    x, y = next(
        iterate_batches(images, torch.arange(10), 10, mean=MEAN, std=STD, shuffle=False, augment=False)
    )
    expected = (images.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(
        1, 3, 1, 1
    )
    assert x.dtype == torch.float32 and torch.allclose(x, expected, atol=1e-5)
    assert torch.equal(y, torch.arange(10))


def _windows(image: torch.Tensor, padding: int) -> list[tuple[int, int, bool, torch.Tensor]]:
    """Slow reference: every crop of the zero-padded image, with and without a horizontal flip."""
    _, h, w = image.shape
    padded = F.pad(image, (padding,) * 4)
    return [
        (top, left, flipped, crop.flip(-1) if flipped else crop)
        for top in range(2 * padding + 1)
        for left in range(2 * padding + 1)
        for flipped in (False, True)
        for crop in [padded[:, top : top + h, left : left + w]]
    ]


def test_crop_is_a_shifted_window_of_the_zero_padded_image() -> None:
    images = _images(64, size=5)
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    g = torch.Generator().manual_seed(0)
    batch = iterate_batches(
        images,
        torch.arange(64),
        64,
        mean=MEAN,
        std=STD,
        shuffle=False,
        augment=True,
        crop_padding=2,
        flip=True,
        generator=g,
    )
    x, _ = next(batch)
    pixels = torch.round((x * std + mean) * 255)  # back to padded pixel values: zero padding -> 0
    used = set()
    for image, out in zip(images, pixels, strict=True):
        matches = [(t, left, f) for t, left, f, crop in _windows(image.float(), 2) if torch.equal(crop, out)]
        assert len(matches) == 1
        used.add(matches[0])
    offsets, flips = {(t, left) for t, left, _ in used}, {f for *_, f in used}
    assert len(offsets) > 10 and flips == {False, True}  # really random, not always the centre


def test_flip_only_mirrors_and_digit_style_has_no_flip() -> None:
    images = _images(64, size=4)

    def augmented(flip: bool) -> torch.Tensor:
        x, _ = next(
            iterate_batches(
                images,
                torch.arange(64),
                64,
                mean=(0,) * 3,
                std=(1 / 255,) * 3,
                shuffle=False,
                augment=True,
                flip=flip,
                generator=torch.Generator().manual_seed(0),
            )
        )
        return x

    x = augmented(flip=True)
    flipped = torch.tensor([torch.equal(o, i.float().flip(-1)) for o, i in zip(x, images, strict=True)])
    same = torch.tensor([torch.equal(o, i.float()) for o, i in zip(x, images, strict=True)])
    assert bool((flipped | same).all()) and 10 < int(flipped.sum()) < 54
    assert torch.equal(augmented(flip=False), images.float())


@pytest.mark.parametrize("world_size", [2, 4])
@pytest.mark.parametrize("drop_last", [False, True])
def test_ddp_shards_concatenate_to_the_global_batch(world_size: int, drop_last: bool) -> None:
    images = _images(30)
    whole = _epoch(images, 8, seed=5, drop_last=drop_last)
    shards = [
        _epoch(images, 8, seed=5, drop_last=drop_last, rank=r, world_size=world_size)
        for r in range(world_size)
    ]
    assert len(shards[0]) == len(whole)
    for b, batch in enumerate(whole):
        assert torch.equal(torch.cat([s[b] for s in shards]), batch)
        if b < len(whole) - 1 or drop_last:
            assert {len(s[b]) for s in shards} == {8 // world_size}


def test_ddp_batch_size_must_divide() -> None:
    with pytest.raises(AnymaskError, match="multiple of the number of processes"):
        _epoch(_images(10), 6, world_size=4)


def test_channels_last_and_device_of_images() -> None:
    x, y = next(
        iterate_batches(
            _images(8),
            torch.arange(8),
            4,
            mean=MEAN,
            std=STD,
            shuffle=True,
            augment=True,
            crop_padding=1,
            flip=True,
            channels_last=True,
        )
    )
    assert x.is_contiguous(memory_format=torch.channels_last) and x.shape == (4, 3, 6, 6)
    assert x.device == y.device == torch.device("cpu")


def test_dataset_to_and_validation() -> None:
    ds = load_dataset("digits", val_split=10, device="cpu").to("cpu")
    assert ds.val_x.dtype == torch.uint8 and len(ds.val_x) == 10
    with pytest.raises(ValueError, match="train_x must be uint8"):
        ImageDataset(
            "bad",
            ds.train_x.float(),
            ds.train_y,
            ds.val_x,
            ds.val_y,
            ds.test_x,
            ds.test_y,
            10,
            (0.5,),
            (0.5,),
            1,
            False,
            [str(i) for i in range(10)],
        )


@given(start=st.integers(0, 500), length=st.integers(0, 300), world_size=st.integers(1, 9))
def test_each_rank_slices_the_share_tensor_split_gives_it(start: int, length: int, world_size: int) -> None:
    from anymask.data.batches import _share

    parts = torch.arange(start, start + length).tensor_split(world_size)
    for rank, part in enumerate(parts):
        lo, hi = _share(start, start + length, rank, world_size)
        assert torch.equal(torch.arange(lo, hi), part)
