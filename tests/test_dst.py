"""Dynamic sparse training (SET, RigL): the update rule, exact counts, optimizer state, reproducibility,
resume, the run folder, every starting mask, the recipe, and two DDP ranks.

This file is also the worker script the DDP check launches (`worker` at the bottom).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from torch import nn

import quick_runs
from anymask.config import RunConfig
from anymask.dst import DstConfig, DynamicSparsity, UpdateSchedule
from anymask.dst.updater import dst_seed
from anymask.errors import AnymaskError
from anymask.masks import Mask, enforce
from anymask.models import create_model
from anymask.train import run_experiment
from anymask.train.trainer import Trainer

QUICK = {
    **quick_runs.QUICK,
    "epochs": 3,  # 4 steps per epoch
    "mask_method": "erk",
    "sparsity": 0.9,
    "dst_interval": 3,
    "dst_end": 1.0,  # updates at steps 3, 6, 9: across epoch boundaries, and after a resume at step 8
}


def quick_config(**overrides: object) -> RunConfig:
    return quick_runs.quick_config(**{**QUICK, **overrides})


# -- a reference of the documented rule, written as plainly as possible ---------------------------------
def expected_mask(weight: torch.Tensor, active: torch.Tensor, scores: torch.Tensor, fraction: float) -> set:
    """Drop the k smallest |w| among active (ties: the later position goes), grow the k highest scores
    among every position not kept (ties: the earlier position), k = floor(active * fraction)."""
    w, a, s = weight.flatten().tolist(), active.flatten().tolist(), scores.flatten().tolist()
    positions = range(len(w))
    k = int(sum(a) * fraction)
    by_magnitude = sorted((i for i in positions if a[i]), key=lambda i: (-abs(w[i]), i))
    kept = set(by_magnitude[: sum(a) - k])
    by_score = sorted((i for i in positions if i not in kept), key=lambda i: (-s[i], i))
    return kept | set(by_score[:k])


def linear_stack(shapes: list[tuple[int, int]]) -> nn.Module:
    return nn.Sequential(*(nn.Linear(i, o, bias=False) for o, i in shapes))


def positions(mask: torch.Tensor) -> set:
    return set(mask.flatten().nonzero().flatten().tolist())


def updater(
    model: nn.Module, mask: Mask, method: str, fraction: float = 0.3, seed: int = 0, interval: int = 1
) -> tuple[DynamicSparsity, torch.optim.Optimizer]:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    enforcer = enforce(model, mask, optimizer)
    config = DstConfig(dst=method, dst_interval=interval, dst_fraction=fraction, dst_end=1.0)
    return DynamicSparsity(model, mask, optimizer, enforcer, config, 1000, seed=seed), optimizer


# -- the update rule ----------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(
    shapes=st.lists(st.tuples(st.integers(1, 9), st.integers(1, 9)), min_size=1, max_size=4),
    fraction=st.floats(0.0, 1.0),
    method=st.sampled_from(["set", "rigl"]),
    seed=st.integers(0, 2**16),
)
def test_every_update_keeps_each_layer_count_and_follows_the_rule(
    shapes: list[tuple[int, int]], fraction: float, method: str, seed: int
) -> None:
    """Random shapes, densities (empty and full layers included) and fractions; few distinct values, so
    magnitudes and gradients tie often. Three updates in a row, each checked against the reference."""
    g = torch.Generator().manual_seed(seed)
    model = linear_stack(shapes)
    mask = Mask(
        {
            n: torch.rand(p.shape, generator=g) < torch.rand((), generator=g)
            for n, p in model.named_parameters()
        }
    )
    dst, _ = updater(model, mask, method, fraction, seed=seed)
    draws = torch.Generator().manual_seed(dst_seed(seed))  # SET's scores, drawn in the updater's order
    counts = {name: int(m.sum()) for name, m in mask.items()}
    for step in (1, 2, 3):
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randint(-3, 4, p.shape, generator=g).float() * mask[_name(model, p)])
                p.grad = torch.randint(-2, 3, p.shape, generator=g).float()
        before = {name: m.clone() for name, m in mask.items()}
        weights = {name: p.detach().clone() for name, p in model.named_parameters()}
        now = dst.schedule.fraction(step)
        expected = {}
        for name, p in model.named_parameters():
            if int(int(before[name].sum()) * now) == 0:  # nothing to replace: no scores drawn either
                expected[name] = positions(before[name])
                continue
            scores = torch.rand(p.shape, generator=draws) if method == "set" else p.grad.abs()
            expected[name] = expected_mask(weights[name], before[name], scores, now)
        record = dst.update(step)
        assert record is not None and record["fraction"] == now
        for name, m in mask.items():
            assert int(m.sum()) == counts[name]
            assert positions(m) == expected[name], name
            assert torch.all(model.get_parameter(name)[~m] == 0)
        left = sum(int((before[n] & ~mask[n]).sum()) for n in mask)
        assert record["dropped"] == record["grown"] == left


def _name(model: nn.Module, param: torch.Tensor) -> str:
    return next(n for n, p in model.named_parameters() if p is param)


def test_rigl_grows_exactly_the_largest_gradients_among_inactive_weights() -> None:
    model = linear_stack([(4, 5)])
    weight = model[0].weight
    mask = Mask({"0.weight": torch.zeros(4, 5, dtype=torch.bool)})
    mask["0.weight"].view(-1)[:10] = True  # 10 active
    dst, _ = updater(model, mask, "rigl")
    with torch.no_grad():
        weight.copy_(torch.arange(1.0, 21.0).view(4, 5) * mask["0.weight"])
        weight.grad = torch.zeros(4, 5)
        weight.grad.view(-1)[[12, 17, 19, 3]] = torch.tensor([5.0, -7.0, 6.0, 100.0])  # 3 is active
    dst.schedule = UpdateSchedule(100, 0.35, 10**9)  # fraction just under 0.35: k = floor(3.5) = 3
    record = dst.update(100)
    assert record is not None
    # dropped: the 3 smallest active |w| (positions 0, 1, 2); grown: |grad| 7, 6, 5 at 17, 19, 12
    assert positions(mask["0.weight"]) == set(range(3, 10)) | {12, 17, 19}
    assert record["dropped"] == record["grown"] == 3 and record["regrown"] == 0


def test_a_dropped_weight_with_a_large_gradient_is_regrown_as_it_was() -> None:
    """The RigL reference excludes only the weights it keeps from growth: a dropped weight may win a
    grow slot in the same update, and then stays with its value and momentum."""
    model = linear_stack([(1, 4)])
    weight = model[0].weight
    mask = Mask({"0.weight": torch.tensor([[True, True, True, False]])})
    dst, optimizer = updater(model, mask, "rigl", fraction=0.34, interval=100)  # k = 1
    with torch.no_grad():
        weight.copy_(torch.tensor([[0.5, 2.0, 3.0, 0.0]]))
    optimizer.state[weight]["momentum_buffer"] = torch.tensor([[0.25, 1.0, 1.0, 0.0]])
    weight.grad = torch.tensor([[9.0, 0.0, 0.0, 1.0]])  # the weakest active weight has the largest grad
    dst.schedule = UpdateSchedule(100, 0.34, 10**9)
    record = dst.update(100)
    assert record == {**record, "dropped": 0, "grown": 0, "regrown": 1}
    assert weight[0, 0] == 0.5 and optimizer.state[weight]["momentum_buffer"][0, 0] == 0.25


def test_grown_and_dropped_weights_are_zero_with_zero_momentum() -> None:
    torch.manual_seed(0)
    model = linear_stack([(6, 8), (3, 6)])
    mask = Mask({n: torch.rand(p.shape) < 0.4 for n, p in model.named_parameters()})
    dst, optimizer = updater(model, mask, "set", fraction=0.5, interval=4)
    x, y = torch.randn(16, 8), torch.randn(16, 3)
    for step in range(5):  # four plain steps fill the momentum buffers; step 4 updates the mask
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        if step == 4:
            before = {n: m.clone() for n, m in mask.items()}
            buffers = {n: optimizer.state[p]["momentum_buffer"].clone() for n, p in model.named_parameters()}
            assert dst.update(step) is not None
            break
        optimizer.step()
    for name, p in model.named_parameters():
        changed = before[name] ^ mask[name]
        assert changed.any()
        buffer = optimizer.state[p]["momentum_buffer"]
        assert torch.all(p[changed] == 0) and torch.all(buffer[changed] == 0)
        assert torch.equal(buffer[~changed], buffers[name][~changed])  # the others keep theirs
        assert torch.all(p[~mask[name]] == 0)
    # the enforcer now masks gradients and weights with the new mask
    optimizer.step()
    for name, p in model.named_parameters():
        assert torch.all(p.grad[~mask[name]] == 0) and torch.all(p[~mask[name]] == 0)


def test_set_is_reproducible_from_the_seed() -> None:
    def final_mask(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = linear_stack([(8, 8)])
        mask = Mask({"0.weight": torch.rand(8, 8) < 0.5})
        dst, _ = updater(model, mask, "set", seed=seed)
        for step in (1, 2, 3):
            dst.update(step)
        return dict(mask)

    a, b, c = final_mask(0), final_mask(0), final_mask(1)
    assert torch.equal(a["0.weight"], b["0.weight"])
    assert not torch.equal(a["0.weight"], c["0.weight"])


def test_schedule_is_a_cosine_over_the_updates_until_the_end() -> None:
    schedule = UpdateSchedule.from_config(DstConfig(dst="rigl"), total_steps=1000)  # 100, 0.3, end 750
    assert schedule.update_steps() == [100, 200, 300, 400, 500, 600, 700]
    assert not schedule.is_update_step(0) and not schedule.is_update_step(750)
    assert schedule.fraction(0) == pytest.approx(0.3)
    assert schedule.fraction(375) == pytest.approx(0.15)
    assert schedule.fraction(700) == pytest.approx(0.15 * (1 + math.cos(math.pi * 700 / 750)))


# -- settings -------------------------------------------------------------------------------------------
def test_dst_settings_stay_out_of_a_static_runs_hash() -> None:
    static = quick_config()
    assert static.hash() == quick_config(dst_interval=7, dst_fraction=0.5).hash()
    assert {"dst", "dst_interval"} & static.hashed_settings().keys() == set()
    rigl = quick_config(dst="rigl")
    assert rigl.hash() != static.hash() and rigl.hash() != quick_config(dst="set").hash()
    assert rigl.hash() != quick_config(dst="rigl", dst_fraction=0.5).hash()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"dst": "sett"}, "unknown --dst 'sett'; choose one of: none, rigl, set"),
        ({"dst": "rigl", "dst_fraction": 1.5}, "invalid dst_fraction"),
        ({"dst": "rigl", "dst_interval": 0}, "invalid dst_interval"),
        ({"dst": "set", "mask_method": "dense", "sparsity": 0.0}, "this run's mask is dense"),
    ],
)
def test_bad_dst_settings_fail_before_anything_is_written(
    tmp_path: Path, overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(AnymaskError, match=message):
        run_experiment(quick_config(**overrides), tmp_path / "run")
    assert not (tmp_path / "run").exists()


# -- in training --------------------------------------------------------------------------------------
def test_pruned_weights_and_gradients_stay_zero_and_counts_exact_through_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After every optimizer step of a RigL run: weights and gradients outside the current mask are 0,
    the enforcer holds the current mask, and every layer keeps its starting count."""
    train_step, seen = Trainer.train_step, []

    def checked_step(self: Trainer, images: torch.Tensor, labels: torch.Tensor, step: int) -> object:
        result = train_step(self, images, labels, step)
        (dst,) = self.extensions
        mask = dst.updater.mask
        for (name, kept), factor in zip(mask.items(), self.enforcer.factors, strict=True):
            param = self.model.get_parameter(name)
            assert torch.equal(factor.bool(), kept)
            assert torch.all(param[~kept] == 0) and torch.all(param.grad[~kept] == 0)
            assert int(kept.sum()) == dst.updater.start_mask[name].sum()
        seen.append(len(dst.updater.updates))
        return result

    monkeypatch.setattr(Trainer, "train_step", checked_step)
    run_experiment(quick_config(dst="rigl"), tmp_path / "run")
    assert seen[-1] == 3 and len(seen) == 12


def test_a_dst_run_folder_holds_start_and_final_masks_and_records(tmp_path: Path) -> None:
    result = run_experiment(quick_config(dst="rigl"), tmp_path / "run")
    folder = result.out_dir
    assert {p.name for p in folder.iterdir()} == {
        "config.json",
        "mask.safetensors",
        "mask_start.safetensors",
        "metrics.jsonl",
        "model.safetensors",
        "summary.json",
    }
    start, final = Mask.load(folder / "mask_start.safetensors"), Mask.load(folder / "mask.safetensors")
    assert [layer.kept for layer in start.layers()] == [layer.kept for layer in final.layers()]
    assert any(not torch.equal(start[n], final[n]) for n in start)
    weights = load_file(folder / "model.safetensors")
    assert all(torch.all(weights[n][~m] == 0) for n, m in final.items())  # the model's zeros
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["dst/updates"] for r in records] == [1, 1, 1]  # steps 3 / 6 / 9 in epochs 1 / 2 / 3
    assert [u["step"] for r in records for u in r["dst/per_update"]] == [3, 6, 9]
    assert all(r["dst/dropped"] == r["dst/grown"] > 0 for r in records)
    s = result.summary
    ever = sum(int((start[n] | final[n]).sum()) for n in start)
    assert ever / start.total() <= s["itop_rate"] <= 1 and s["itop_rate"] > start.density()
    assert s["dst_updates"] == 3 and s["dst_dropped"] == sum(r["dst/dropped"] for r in records)
    assert s["mask_density"] == pytest.approx(final.density()) and 0 < s["mask_start_final_iou"] < 1


def test_inspect_and_compare_read_both_masks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from anymask.experiments.masking import compare_masks, inspect_mask

    config = quick_config(dst="set", epochs=1, dst_interval=1)
    folder = run_experiment(config, tmp_path / "run").out_dir
    start, final = folder / "mask_start.safetensors", folder / "mask.safetensors"
    inspect_mask(final, model_name="cnn", data="digits", plot=tmp_path / "final.png")
    compare_masks(start, final)
    out = capsys.readouterr().out
    assert "all layers" in out and "IoU" in out
    overall = out.strip().splitlines()[-1].split()
    assert 0 < float(overall[1]) < 1  # start and final overlap, but not entirely


@pytest.mark.parametrize("method", ["set", "rigl"])
def test_resume_is_bit_exact_across_updates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    """Killed after epoch 2 (updates at steps 3 and 6 done, 9 to come): same weights, masks and records."""
    config = quick_config(dst=method)
    reference = run_experiment(config, tmp_path / "reference").out_dir
    train_epoch = Trainer.train_epoch

    def killed_at_epoch_3(self: Trainer, epoch: int, **kwargs: object) -> object:
        if epoch == 2:
            raise RuntimeError("killed")
        return train_epoch(self, epoch, **kwargs)

    monkeypatch.setattr(Trainer, "train_epoch", killed_at_epoch_3)
    with pytest.raises(RuntimeError, match="killed"):
        run_experiment(config, tmp_path / "resumed")
    monkeypatch.undo()
    before = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert len(before) == 2 and (tmp_path / "resumed" / "checkpoint.pt").is_file()
    resumed = run_experiment(config, tmp_path / "resumed", resume=True).out_dir
    assert (resumed / "metrics.jsonl").read_text().splitlines()[:2] == before  # not trained again
    for name in ("model.safetensors", "mask.safetensors", "mask_start.safetensors"):
        expected, actual = load_file(reference / name), load_file(resumed / name)
        assert all(torch.equal(expected[k], actual[k]) for k in expected), name

    def records(folder: Path) -> list[dict]:
        lines = (folder / "metrics.jsonl").read_text().splitlines()
        return [
            {k: v for k, v in json.loads(line).items() if k not in {"seconds", "images_per_s"}}
            for line in lines
        ]

    assert records(resumed) == records(reference)
    costs = [json.loads((folder / "summary.json").read_text()) for folder in (reference, resumed)]
    assert costs[0]["train_flops"] == costs[1]["train_flops"]  # RigL's dense gradients not lost


def masked_positions_times_zeros(model: torch.nn.Module, mask: Mask, example: torch.Tensor) -> float:
    """Per example: what a dense weight gradient costs beyond the sparse one, layer by layer by hand."""
    positions: dict[str, int] = {}
    hooks = [
        module.register_forward_hook(
            lambda m, a, out, name=name: positions.__setitem__(name, out[0].numel() // m.weight.shape[0])
        )
        for name, module in model.named_modules()
        if f"{name}.weight" in mask
    ]
    model(example)
    for hook in hooks:
        hook.remove()
    return sum(positions[n.rsplit(".", 1)[0]] * (m.numel() - int(m.sum())) for n, m in mask.items())


def test_rigl_pays_a_dense_weight_gradient_at_each_update_and_set_does_not(tmp_path: Path) -> None:
    """As the RigL paper counts it: an update step's weight gradient is dense; all else costs what SET's
    steps cost (the same counts per layer)."""
    rigl = run_experiment(quick_config(dst="rigl"), tmp_path / "rigl")
    set_summary = run_experiment(quick_config(dst="set"), tmp_path / "set").summary
    start = Mask.load(rigl.out_dir / "mask_start.safetensors")
    extra = masked_positions_times_zeros(create_model("cnn", 10, (1, 8, 8)), start, torch.zeros(1, 1, 8, 8))
    assert extra > 0 and "dense_gradient_flops" not in set_summary
    s = rigl.summary
    assert s["dense_gradient_steps"] == 3
    assert s["dense_gradient_flops"] == pytest.approx(2 * 3 * 64 * extra)  # updates x batch x per image
    assert s["train_flops"] - s["dense_gradient_flops"] == pytest.approx(set_summary["train_flops"])
    assert s["train_flops_vs_default"] > set_summary["train_flops_vs_default"] == pytest.approx(1.0)


@pytest.mark.parametrize("method", ["random", "erk", "snip", "synflow", "lth", "file"])
def test_every_mask_method_can_start_a_dst_run(tmp_path: Path, method: str) -> None:
    settings = {"mask_method": method, "epochs": 1, "dst": "set", "dst_interval": 1, "dst_end": 0.75}
    if method == "lth":
        settings.update(sparsity=0.36, lth_epochs=1)  # two rounds of 20%
    if method == "synflow":
        settings.update(synflow_iterations=5)
    if method == "file":
        mask_file = tmp_path / "start.safetensors"
        start = run_experiment(quick_config(epochs=1), tmp_path / "static").out_dir / "mask.safetensors"
        mask_file.write_bytes(start.read_bytes())
        settings.update(mask_file=str(mask_file))
    result = run_experiment(quick_config(**settings), tmp_path / "run")
    start = Mask.load(result.out_dir / "mask_start.safetensors")
    final = Mask.load(result.out_dir / "mask.safetensors")
    assert [layer.kept for layer in start.layers()] == [layer.kept for layer in final.layers()]
    assert result.summary["dst_updates"] == 2  # steps 1 and 2 of 4 (the mask freezes at 75%)
    assert result.summary["dst_dropped"] > 0


def test_dst_combines_with_every_recipe_part(tmp_path: Path) -> None:
    """tost: ghost parts in the model during the first updates, GradInit before training, smoothing."""
    config = quick_config(
        dst="rigl", recipe="tost", ghost_epochs=2, gradinit_iterations=2, gradinit_batch_size=32
    )
    result = run_experiment(config, tmp_path / "run")
    records = [json.loads(line) for line in (result.out_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["ghost_phase"] and records[0]["dst/updates"] == 1  # an update with ghosts inside
    assert result.summary["dst_updates"] == 3
    from anymask.models import create_model

    model = create_model("cnn", 10, (1, 8, 8))
    model.load_state_dict(load_file(result.out_dir / "model.safetensors"), strict=True)  # ghosts gone
    final = Mask.load(result.out_dir / "mask.safetensors")
    assert all(torch.all(model.get_parameter(n)[~m] == 0) for n, m in final.items())


def test_the_command_line_trains_with_dst_and_refuses_an_unknown_rule(tmp_path: Path) -> None:
    from cli_helpers import quick_train

    flags = ("--mask-method", "erk", "--sparsity", "0.9", "--dst-interval", "1", "--batch-size", "16")
    result = quick_train(tmp_path / "run", *flags, "--dst", "rigl")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["dst_updates"] == 2  # steps 1, 2 of 4
    assert (tmp_path / "run" / "mask_start.safetensors").is_file()
    wrong = quick_train(tmp_path / "wrong", *flags, "--dst", "rigL")
    assert wrong.returncode == 2 and wrong.stderr.strip().splitlines() == [
        "anymask: error: unknown --dst 'rigL'; choose one of: none, rigl, set"
    ]


def test_the_checkpoint_state_loads_with_weights_only(tmp_path: Path) -> None:
    """Checkpoints may be read with torch.load(weights_only=True): the DST state is tensors and plain data."""
    model = linear_stack([(4, 4)])
    mask = Mask({"0.weight": torch.rand(4, 4) < 0.5})
    dst, _ = updater(model, mask, "set")
    dst.update(1)
    torch.save(dst.state_dict(), tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    fresh, _ = updater(linear_stack([(4, 4)]), Mask({"0.weight": torch.ones(4, 4, dtype=torch.bool)}), "set")
    fresh.load_state_dict(state)
    assert torch.equal(fresh.mask["0.weight"], mask["0.weight"]) and fresh.updates == dst.updates
    assert torch.equal(fresh.generator.get_state(), dst.generator.get_state())


# -- two DDP ranks ------------------------------------------------------------------------------------
DDP_FLAGS = {**QUICK, "train_subset": 512, "batch_size": 128, "epochs": 2, "device": "cpu", "dst": "rigl"}
DDP_FLAGS["dst_interval"] = 2  # steps 2, 4, 6 of 8


def test_two_ranks_hold_the_same_mask_after_every_update(tmp_path: Path) -> None:
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is needed")
    from test_distributed import check, launch

    check(launch([__file__, "ddp", str(tmp_path / "run")], ranks=2))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert len(ranks[0]["proposed"]) == len(ranks[1]["proposed"]) == 3
    for update in range(3):
        for name, agreed in ranks[0]["agreed"][update].items():
            assert torch.equal(ranks[1]["agreed"][update][name], agreed)
            # the broadcast changed nothing: each rank computed the same update on its own
            assert torch.equal(ranks[1]["proposed"][update][name], agreed)
    assert all(torch.equal(ranks[0]["model"][k], ranks[1]["model"][k]) for k in ranks[0]["model"])
    saved = Mask.load(tmp_path / "run" / "mask.safetensors")
    assert all(torch.equal(saved[n], ranks[1]["mask"][n]) for n in saved)


def worker(mode: str, out: Path) -> None:
    """`ddp`: train under torchrun, recording each update's proposed and agreed masks on this rank."""
    import torch.distributed as dist

    from anymask.dst import updater as updater_module
    from anymask.train import run

    assert mode == "ddp"
    agree, proposed, agreed = updater_module._rank_zeros, [], []

    def recording(masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        proposed.append({n: m.clone() for n, m in masks.items()})
        result = agree(masks)
        agreed.append({n: m.clone() for n, m in result.items()})
        return result

    updater_module._rank_zeros = recording
    finish = run._Run.finish

    def record_finish(self: run._Run, trainer: Trainer, mask: Mask, history: list) -> run.RunResult:
        state = {
            "proposed": proposed,
            "agreed": agreed,
            "mask": dict(mask),
            "model": trainer.model.state_dict(),
        }
        torch.save(state, out.parent / f"rank{dist.get_rank()}.pt")
        return finish(self, trainer, mask, history)

    run._Run.finish = record_finish  # type: ignore[method-assign]
    run_experiment(RunConfig.from_flat(DDP_FLAGS), out)


if __name__ == "__main__":
    worker(sys.argv[1], Path(sys.argv[2]))
