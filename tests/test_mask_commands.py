"""`anymask prune`, `inspect` and `compare` from the command line."""

from __future__ import annotations

from pathlib import Path

import torch

from anymask.masks import Mask
from cli_helpers import anymask, anymask_in_process, quick_train


def prune(tmp_path: Path, method: str, sparsity: str = "0.9", *extra: str) -> Path:
    out = tmp_path / f"{method}.safetensors"
    result = anymask(
        "prune",
        "--model",
        "cnn",
        "--data",
        "digits",
        "--method",
        method,
        "--sparsity",
        sparsity,
        "--no-progress",
        "--synflow-iterations",
        "5",
        *extra,
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    assert "saved" in result.stdout
    return out


def test_prune_inspect_compare(tmp_path: Path) -> None:
    snip, erk = prune(tmp_path, "snip"), prune(tmp_path, "erk")
    a, b = Mask.load(snip), Mask.load(erk)
    assert a.kept() == b.kept() == round(0.1 * a.total())

    shown = anymask("inspect", str(snip), "--model", "cnn", "--data", "digits")
    assert shown.returncode == 0, shown.stderr
    assert "classifier.weight" in shown.stdout and "density plot:" in shown.stdout
    assert "effective" in shown.stdout.splitlines()[0] and "of 10 classes reachable" in shown.stdout
    alive = sum(int((a[n].flatten(1).sum(1) > 0).sum()) for n in a)
    outputs = sum(a[n].shape[0] for n in a)
    assert f"width: {alive:,} of {outputs:,} output channels keep a weight" in shown.stdout
    assert "of the kept weights are positive at the model's seed-0 initial weights" in shown.stdout
    assert (tmp_path / "snip_densities.png").stat().st_size > 5_000

    compared = anymask("compare", str(snip), str(erk))
    assert compared.returncode == 0, compared.stderr
    overall = compared.stdout.strip().splitlines()[-1].split()
    assert overall[0] == "all" and 0.0 <= float(overall[1]) < 1.0

    same = anymask("compare", str(snip), str(snip))
    assert same.stdout.strip().splitlines()[-1].split()[1:3] == ["1.0000", "0"]


def test_inspect_seed_gives_the_initial_weights_the_mask_was_made_on(tmp_path: Path) -> None:
    """`inspect --seed 1` reads the weights `prune --seed 1` scored: a magnitude mask keeps their largest."""
    from anymask.experiments.masking import registry_model

    path = prune(tmp_path, "magnitude", "0.5", "--seed", "1")
    mask = Mask.load(path)
    for seed, expected in ((1, True), (0, False)):
        model = registry_model("cnn", "digits", 1.0, seed=seed)
        weights = {n: model.get_parameter(n).detach().abs() for n in mask}
        threshold = (
            torch.cat([w.flatten() for w in weights.values()]).kthvalue(mask.total() - mask.kept()).values
        )
        matches = all(torch.equal(mask[n], weights[n] > threshold) for n in mask)
        assert matches is expected
    shown = anymask("inspect", str(path), "--model", "cnn", "--data", "digits", "--seed", "1")
    assert shown.returncode == 0, shown.stderr
    assert "positive at the model's seed-1 initial weights" in shown.stdout
    bad = anymask("inspect", str(path), "--model", "cnn", "--seed", "-3")
    assert bad.returncode != 0 and "seed" in bad.stderr and "Traceback" not in bad.stderr


def test_pruned_mask_trains_with_the_same_initialisation(tmp_path: Path) -> None:
    """`prune` seeds the model as `train` does, so a magnitude mask fits the weights it was made on."""
    mask_path = prune(tmp_path, "magnitude", "0.5")
    run = tmp_path / "run"
    result = quick_train(run, "--mask", str(mask_path))
    assert result.returncode == 0, result.stderr
    saved = Mask.load(run / "mask.safetensors")
    original = Mask.load(mask_path)
    assert all(torch.equal(saved[n], original[n]) for n in original)


def test_prune_bad_input(tmp_path: Path) -> None:
    for args, message in [
        (["--method", "bogus"], "unknown mask method 'bogus'"),
        (["--method", "snip", "--sparsity", "1.0"], "outside [0, 1)"),
        (["--method", "snip", "--out", str(tmp_path / "mask.txt")], "must end in .safetensors or .pt"),
    ]:
        argv = [
            "prune",
            "--model",
            "cnn",
            "--data",
            "digits",
            "--sparsity",
            "0.5",
            "--out",
            str(tmp_path / "m.safetensors"),
            *args,
        ]
        result = anymask_in_process(*argv)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert not list(tmp_path.iterdir())
    missing = anymask_in_process("inspect", str(tmp_path / "none.safetensors"))
    assert missing.returncode == 2 and "not found" in missing.stderr
