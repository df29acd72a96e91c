"""Bad input, as a careless or hostile user gives it: every case is one line on stderr, a non-zero exit,
no traceback, and nothing left where output would have gone.

Cases run in-process through `anymask.cli.main` (fast); `tests/test_failure.py` has the few that need a
real process (kill -9, torchrun) and the hostile-file checks with their canaries.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from anymask.cli import main
from anymask.masks import Mask
from anymask.models import create_model

# Tokens in a case's argv, replaced by paths of the fixture files below.
OUT = "{out}"  # where the command would write: must not exist afterwards
FILES = {
    "{mask}": "cnn_mask.safetensors",
    "{resnet_mask}": "resnet20_mask.safetensors",
    "{garbage_st}": "garbage.safetensors",
    "{garbage_pt}": "garbage.pt",
    "{hostile_pt}": "hostile.pt",
    "{weights_st}": "weights.safetensors",
    "{text}": "notes.txt",
    "{a_file}": "a_file",
    "{a_dir}": "a_dir",
    "{empty_dir}": "empty_dir",
    "{under_file}": "a_file/below",
    "{hostile_data}": "hostile_data",
    "{missing}": "does/not/exist",
    "{bad_toml}": "bad.toml",
    "{unknown_key_toml}": "unknown_key.toml",
    "{wrong_section_toml}": "wrong_section.toml",
    "{list_yaml}": "list.yaml",
    "{bad_json}": "bad.json",
    "{bad_value_toml}": "bad_value_config.toml",
}
OUT_ST = ("--out", "{out}.safetensors")
CANARY = "canary"  # a file the hostile pickles try to create in the test folder


class _Plant:
    """Pickles to a call of os.system: loading it unsafely creates the canary file."""

    def __init__(self, canary: Path) -> None:
        self.canary = canary

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.canary}",))


SWEEPS = {
    "missing_grid_list.toml": '[base]\nmodel = "cnn"\n[grid]\nsparsity = 0.5\n',
    "empty_grid_list.toml": "[grid]\nsparsity = []\n",
    "empty_grid.toml": '[base]\nmodel = "cnn"\n[grid]\n',
    "top_level.toml": "sparsity = 0.5\n",
    "unknown_top.toml": "frobnicate = 1\n",
    "both.toml": "[base]\nsparsity = 0.5\n[grid]\nsparsity = [0.5, 0.9]\n",
    "unknown_setting.toml": "[base]\nsparsityy = 0.5\n",
    "bad_value.toml": '[base]\nmask_method = "random"\n[grid]\nsparsity = [0.5, 1.5]\n',
    "dense_sparse.toml": "[grid]\nsparsity = [0.5, 0.9]\n",
    "duplicate.toml": '[base]\nmask_method = "random"\n[grid]\nsparsity = [0.5, 0.5]\n',
    "syntax.toml": "[grid\n",
    "no_data.toml": '[base]\ndata = "cifar10"\ndata_dir = "does/not/exist"\n[grid]\nseed = [0, 1]\n',
    "bad_recipe_value.toml": '[base]\nrecipe = "ls"\n[grid]\nls_alpha = [0.1, 2.0]\n',
    "out_not_str.toml": "out = 3\n",
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder of every kind of input file the cases point at."""
    root = tmp_path_factory.mktemp("inputs")
    torch.manual_seed(0)
    cnn = create_model("cnn", 10, (1, 8, 8))
    Mask.dense({n: p for n, p in cnn.named_parameters() if n.endswith("weight") and p.dim() > 1}).save(
        root / FILES["{mask}"]
    )
    resnet = create_model("resnet20", 10, (3, 32, 32), 0.25)
    Mask.dense({n: p for n, p in resnet.named_parameters() if p.dim() > 1}).save(
        root / FILES["{resnet_mask}"]
    )
    from safetensors.torch import save_file

    save_file(
        {k: v.contiguous() for k, v in cnn.state_dict().items() if v.dim() > 1}, root / "weights.safetensors"
    )
    (root / FILES["{garbage_st}"]).write_bytes(b"\x00garbage, not a safetensors file")
    (root / FILES["{garbage_pt}"]).write_bytes(os.urandom(256))
    torch.save({"stem.conv.weight_mask": _Plant(root / CANARY)}, root / FILES["{hostile_pt}"])
    (root / FILES["{text}"]).write_text("just some notes\n")
    (root / FILES["{a_file}"]).write_text("a file where a folder should be\n")
    (root / FILES["{a_dir}"]).mkdir()
    (root / FILES["{a_dir}"] / "unrelated.txt").write_text("not a run\n")
    (root / FILES["{empty_dir}"]).mkdir()
    batches = root / FILES["{hostile_data}"] / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    for name in ("data_batch_1", "test_batch", "batches.meta"):
        (batches / name).write_bytes(pickle.dumps({"data": _Plant(root / CANARY)}, protocol=2))
    (root / FILES["{bad_toml}"]).write_text("epochs = = 3\n")
    (root / FILES["{unknown_key_toml}"]).write_text("sparsityy = 0.5\n")
    (root / FILES["{wrong_section_toml}"]).write_text("[mask]\nepochs = 3\n")
    (root / FILES["{list_yaml}"]).write_text("- 1\n- 2\n")
    (root / FILES["{bad_json}"]).write_text("{not json")
    (root / FILES["{bad_value_toml}"]).write_text('lr = "fast"\n')
    for name, text in SWEEPS.items():
        (root / name).write_text(text)
    return root


TRAIN_CASES: list[tuple[list[str], str]] = [
    (["--sparsity", "1.5", "--mask-method", "random"], "outside [0, 1)"),
    (["--sparsity", "-0.1", "--mask-method", "random"], "outside [0, 1)"),
    (["--sparsity", "nan", "--mask-method", "random"], "outside [0, 1)"),
    (["--sparsity", "half"], "expects a number"),
    (["--sparsity", "0.95"], "mask method 'dense'"),
    (["--model", "resnet99"], "unknown model 'resnet99'"),
    (["--data", "mnist"], "unknown dataset"),
    (["--data", "cifar10", "--data-dir", "{missing}"], "cifar-10-batches-py"),
    (["--data", "cifar100", "--data-dir", "{missing}"], "cifar-100-python"),
    (["--data", "tinyimagenet", "--data-dir", "{missing}"], "tiny-imagenet-200"),
    (["--mask", "{missing}"], "mask file not found"),
    (["--mask", "{garbage_st}"], "corrupt"),
    (["--mask", "{garbage_pt}"], "corrupt"),
    (["--mask", "{hostile_pt}"], "posix.system"),
    (["--mask", "{text}"], "corrupt"),
    (["--mask", "{resnet_mask}"], "does not fit the model"),
    (["--mask-file", "{a_dir}"], "mask file not found"),
    (["--mask-method", "magic"], "unknown mask method"),
    (["--mask-method", "file"], "needs a mask file"),
    (["--recipe", "tost,magic"], "unknown recipe part 'magic'"),
    (["--recipe", ""], "--recipe is empty"),
    (["--recipe", ","], "--recipe is empty"),
    (["--epochs", "zero"], "'epochs' expects an integer"),
    (["--epochs", "0"], "invalid epochs"),
    (["--epochs", "-3"], "invalid epochs"),
    (["--epochs", "1.5"], "'epochs' expects an integer"),
    (["--batch-size", "0"], "invalid batch_size"),
    (["--eval-batch-size", "0"], "invalid eval_batch_size"),
    (["--lr", "0"], "invalid lr"),
    (["--lr", "-0.1"], "invalid lr"),
    (["--lr", "nan"], "invalid lr"),
    (["--lr", "inf"], "invalid lr"),
    (["--momentum", "1.5"], "invalid momentum"),
    (["--momentum", "-0.1"], "invalid momentum"),
    (["--weight-decay", "-1"], "invalid weight_decay"),
    (["--weight-decay", "nan"], "invalid weight_decay"),
    (["--width", "0"], "invalid width"),
    (["--width", "-1"], "invalid width"),
    (["--lr-schedule", "exponential"], "unknown learning-rate schedule"),
    (["--lr-gamma", "nan"], "invalid lr_gamma"),
    (["--lr-gamma", "0"], "invalid lr_gamma"),
    (["--lr-gamma", "-0.1"], "invalid lr_gamma"),
    (["--lr-milestones", "0.5,x"], "'lr_milestones' expects a number"),
    (["--lr-milestones", "2"], "invalid lr_milestones"),
    (["--warmup-epochs", "-1"], "invalid warmup_epochs"),
    (["--warmup-epochs", "nan"], "invalid warmup_epochs"),
    (["--warmup-epochs", "50"], "invalid warmup_epochs"),
    (["--threads", "-1"], "invalid threads"),
    (["--threads", "0"], "invalid threads"),
    (["--threads", "two"], "'threads' expects an integer"),
    (["--bn-recalibration-batches", "-1"], "invalid bn_recalibration_batches"),
    (["--scope", "everywhere", "--mask-method", "random", "--sparsity", "0.5"], "unknown scope"),
    (["--val-split", "-1"], "invalid val_split"),
    (["--val-split", "100000"], "val_split must be in"),
    (["--train-subset", "0"], "invalid train_subset"),
    (["--train-subset", "100000"], "train_subset must be in"),
    (["--seed", "1.5"], "'seed' expects an integer"),
    (["--device", "tpu"], "unknown device"),
    (["--channels-last", "--no-channels-last", "--amp", "maybe"], "unrecognized arguments"),
    (["--sparsity-typo", "0.5"], "unrecognized arguments"),
    (["--recipe", "gsn", "--gsn-soft", "tanh"], "unknown gsn_soft"),
    (["--recipe", "gsn", "--ghost-schedule", "zigzag"], "unknown ghost_schedule"),
    (["--recipe", "gsn", "--ghost-epochs", "50"], "ghost_epochs must be between"),
    (["--recipe", "gsn", "--ghost-epochs", "-1"], "invalid ghost_epochs: -1.0 is outside [0, "),
    (["--recipe", "gsc", "--gsc-mode", "wild"], "unknown gsc_mode"),
    (["--recipe", "ls", "--ls-alpha", "1.5"], "invalid ls_alpha: 1.5 is outside [0, 1)"),
    (["--recipe", "ls", "--ls-alpha", "nan"], "invalid ls_alpha: nan is outside [0, 1)"),
    (["--recipe", "ls", "--ls-schedule", "sometimes"], "unknown ls_schedule"),
    (["--recipe", "lrsi", "--gradinit-iterations", "-1"], "invalid gradinit_iterations"),
    (["--recipe", "lrsi", "--gradinit-lr", "0"], "invalid gradinit_lr"),
    (["--recipe", "lrsi", "--gradinit-batch-size", "0"], "invalid gradinit_batch_size"),
    (["--recipe", "lrsi", "--gradinit-gamma", "nan"], "invalid gradinit_gamma"),
    (["--mask-method", "lth", "--sparsity", "0.5", "--lth-rate", "0"], "lth_rate: 0.0 is outside (0, 1)"),
    (["--mask-method", "lth", "--sparsity", "0.5", "--lth-rate", "1.5"], "lth_rate: 1.5 is outside (0, 1)"),
    (["--mask-method", "lth", "--sparsity", "0.5", "--lth-rewind", "soon"], "cannot read step 'soon'"),
    (["--mask-method", "lth", "--sparsity", "0.5", "--lth-epochs", "0"], "invalid lth_epochs"),
    (
        ["--mask-method", "synflow", "--sparsity", "0.5", "--synflow-iterations", "0"],
        "invalid synflow_iterations",
    ),
    (
        ["--mask-method", "snip", "--sparsity", "0.5", "--prune-samples-per-class", "0"],
        "prune_samples_per_class",
    ),
    (["--config", "{missing}"], "config file not found"),
    (["--config", "{bad_toml}"], "cannot parse config file"),
    (["--config", "{unknown_key_toml}"], "unknown config key 'sparsityy'"),
    (["--config", "{wrong_section_toml}"], "belongs in [train]"),
    (["--config", "{list_yaml}"], "must be a table of settings"),
    (["--config", "{bad_json}"], "cannot parse config file"),
    (["--config", "{bad_value_toml}"], "'lr' expects a number"),
    (["--data", "cifar10", "--data-dir", "{hostile_data}"], "refused unread"),
]


def _train_case(args: list[str], message: str) -> tuple[list[str], str]:
    return ["train", "--no-progress", "--epochs", "2", *args, "--out", OUT], message


CASES: list[tuple[list[str], str]] = [
    *(_train_case(args, message) for args, message in TRAIN_CASES),
    # output places
    (["train", "--out", "{a_file}"], "is a file, not a folder"),
    (["train", "--out", "{under_file}/run"], "is a file, not a folder"),
    (["train", "--out", "{a_dir}"], "not an anymask run folder"),
    # the command line itself
    ([], "required: COMMAND"),
    (["frobnicate"], "invalid choice"),
    (["train", "--epochs"], "expected one argument"),
    # prune
    (["prune"], "required: --out"),
    (
        ["prune", "--mask-method", "random", "--sparsity", "0.5", "--out", "{out}.txt"],
        "must end in .safetensors",
    ),
    (["prune", "--sparsity", "0.5", "--out", "{out}.safetensors"], "mask method 'dense'"),
    (["prune", "--method", "magic", "--out", "{out}.safetensors"], "unknown mask method"),
    (["prune", "--method", "random", "--sparsity", "1", "--out", "{out}.safetensors"], "outside [0, 1)"),
    (["prune", "--method", "random", "--sparsity", "0.5", "--out", "{a_dir}"], "must end in .safetensors"),
    (["prune", "--method", "random", "--sparsity", "0.5", "--out", "{under_file}.pt"], "is a file"),
    (["prune", "--method", "file", "--out", "{out}.safetensors"], "needs a mask file"),
    (["prune", "--method", "lth", "--sparsity", "0.5", "--lth-rate", "2", "--out", "{out}.pt"], "lth_rate"),
    (
        [
            "prune",
            "--method",
            "snip",
            "--sparsity",
            "0.5",
            "--data",
            "cifar10",
            "--data-dir",
            "{missing}",
            *OUT_ST,
        ],
        "cifar-10-batches-py",
    ),
    (
        ["prune", "--method", "random", "--sparsity", "0.5", "--recipe", "tost", "--out", "{out}.pt"],
        "unrecognized",
    ),
    (["prune", "--config", "{bad_toml}", "--out", "{out}.pt"], "cannot parse config file"),
    # inspect
    (["inspect", "{missing}"], "mask file not found"),
    (["inspect", "{garbage_st}"], "corrupt"),
    (["inspect", "{garbage_pt}"], "corrupt"),
    (["inspect", "{hostile_pt}"], "posix.system"),
    (["inspect", "{text}"], "corrupt"),
    (["inspect", "{weights_st}"], "holds no '<module>.weight_mask' entries"),
    (["inspect", "{mask}", "--model", "resnet99"], "unknown model 'resnet99'"),
    (["inspect", "{mask}", "--model", "resnet20"], "does not fit model 'resnet20'"),
    (["inspect", "{mask}", "--model", "cnn", "--data", "mnist"], "unknown dataset 'mnist'"),
    (["inspect", "{mask}", "--model", "cnn", "--data", "cifar10"], "does not fit the model"),
    (["inspect", "{mask}", "--width", "wide"], "invalid float value"),
    (["inspect", "{mask}", "--plot", "{a_dir}"], "is a folder"),
    (["inspect", "{mask}", "--plot", "{under_file}.png"], "is a file"),
    # compare
    (["compare", "{mask}"], "required: b"),
    (["compare", "{mask}", "{missing}"], "mask file not found"),
    (["compare", "{mask}", "{garbage_st}"], "corrupt"),
    (["compare", "{hostile_pt}", "{mask}"], "posix.system"),
    (["compare", "{mask}", "{resnet_mask}"], "cover different weights"),
    # sweep
    (["sweep", "{missing}"], "sweep file not found"),
    (["sweep", "missing_grid_list.toml", "--out", "{out}"], "must be a list of values"),
    (["sweep", "empty_grid_list.toml", "--out", "{out}"], "is an empty list"),
    (["sweep", "empty_grid.toml", "--out", "{out}"], "[grid] is empty"),
    (["sweep", "top_level.toml", "--out", "{out}"], "put it under [base]"),
    (["sweep", "unknown_top.toml", "--out", "{out}"], "unknown key 'frobnicate'"),
    (["sweep", "both.toml", "--out", "{out}"], "set in both [base] and [grid]"),
    (["sweep", "unknown_setting.toml", "--out", "{out}"], "unknown config key 'sparsityy'"),
    (["sweep", "bad_value.toml", "--out", "{out}"], "outside [0, 1)"),
    (["sweep", "dense_sparse.toml", "--out", "{out}"], "mask method 'dense'"),
    (["sweep", "duplicate.toml", "--out", "{out}"], "lists 0.5 twice"),
    (["sweep", "syntax.toml", "--out", "{out}"], "cannot parse sweep file"),
    (["sweep", "no_data.toml", "--out", "{out}"], "cifar-10-batches-py"),
    (["sweep", "bad_recipe_value.toml", "--out", "{out}"], "invalid ls_alpha: 2.0"),
    (["sweep", "out_not_str.toml"], "'out' expects a folder name"),
    (["sweep", "{list_yaml}", "--out", "{out}"], "expected a table"),
    (["sweep", "bad_value.toml", "--workers", "0", "--out", "{out}"], "--workers: 0 is outside [1, 1024]"),
    (["sweep", "no_data.toml", "--out", "{a_file}"], "is a file, not a folder"),
    (["sweep", "no_data.toml", "--out", "{under_file}/sweep"], "is a file, not a folder"),
    # report
    (["report", "{missing}", "--out", "{out}"], "not a folder"),
    (["report", "{empty_dir}", "--out", "{out}"], "no finished runs"),
    (["report", "{empty_dir}", "--only", "recipe", "--out", "{out}"], "is not KEY=VALUE"),
    (["report", "{empty_dir}", "--only", "colour=red", "--out", "{out}"], "unknown config key 'colour'"),
    (["report", "{empty_dir}", "--only", "epochs=many", "--out", "{out}"], "'epochs' expects an integer"),
    (["report", "{empty_dir}", "--out", "{a_file}"], "is a file, not a folder"),
    (["report", "{empty_dir}", "--out", "{under_file}/report"], "is a file, not a folder"),
    # demo
    (["demo", "--workers", "0", "--out", "{out}"], "--workers: 0 is outside [1, 1024]"),
    (["demo", "--out", "{a_file}"], "is a file, not a folder"),
]


def _ids() -> list[str]:
    return [" ".join(args)[:80] or "(no command)" for args, _ in CASES]


def _fill(args: list[str], root: Path, out: Path) -> list[str]:
    filled = []
    for arg in args:
        arg = arg.replace(OUT, str(out))
        for token, name in FILES.items():
            arg = arg.replace(token, str(root / name))
        filled.append(arg)
    return filled


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(("args", "message"), CASES, ids=_ids())
def test_bad_input_is_one_line_and_leaves_nothing(
    args: list[str],
    message: str,
    files: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(files)  # sweep files are named relative to the inputs folder
    out = tmp_path / "out"
    before = _snapshot(files)
    try:
        code = main(_fill(args, files, out))
    except SystemExit as exit_:  # argparse
        code = exit_.code
    err = capsys.readouterr().err
    ran_code = (files / CANARY).exists()
    (files / CANARY).unlink(missing_ok=True)  # so one failure does not fail every later case
    assert not ran_code, "a hostile pickle ran code"
    assert code not in (0, None), err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("anymask: error: ")
    assert message in lines[0]
    assert "Traceback" not in err
    assert not any(tmp_path.iterdir()), f"left behind: {list(tmp_path.rglob('*'))}"
    assert _snapshot(files) == before, "an input file or folder changed"
