"""Export a trained sparse network as one small safetensors file, and read it back exactly.

The file is plain safetensors (reading it runs no code):

- every tensor the export does not compress is stored under its state-dict name, as it is;
- the pruned weights' kept values, concatenated in row-major order, layer after layer, as
  ``__sparse__/values/<dtype>`` (one tensor per dtype, as they were), and their positions as one uint8
  tensor ``__sparse__/positions``: each weight's bytes in the layout of `anymask.deploy.positions` that
  is smallest for it. One pair for the whole model rather than one per layer, because a safetensors
  header entry costs about 80 bytes, which at 98% sparsity is more than a small layer's kept values.
  A weight whose compressed form would not be smaller stays as it is;
- the metadata names the format and version, lists each compressed weight with its layout, shape and
  counts (in the order its bytes follow), says which registry model the tensors load into (when
  known), and holds a SHA-256 of all tensor bytes, so a flipped bit is reported instead of loaded.

Loading gives back the state dict bit for bit, with one convention: a pruned weight loads as +0.0 even
if training left it -0.0 (the sign of a zero that is multiplied by nothing but zeros; keeping it would
cost a bit per weight). Values compare equal either way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from anymask.deploy.positions import LAYOUTS, cheapest_layout, to_numpy_bool
from anymask.errors import AnymaskError
from anymask.io import atomic_path
from anymask.masks import Mask, prunable_parameters

FORMAT = "anymask-sparse-export"
VERSION = "1"
PACKED = "__sparse__/"
POSITIONS = PACKED + "positions"


@dataclass(frozen=True)
class ModelSpec:
    """How to rebuild the registry model an export's tensors load into."""

    model: str
    width: float
    num_classes: int
    input_shape: tuple[int, int, int]

    def build(self) -> nn.Module:
        from anymask.models import create_model

        return create_model(self.model, self.num_classes, self.input_shape, self.width)


@dataclass(frozen=True)
class ExportResult:
    path: Path
    file_bytes: int
    dense_bytes: int  # the same tensors as a plain safetensors file (as model.safetensors is written)
    compressed: int  # weight tensors stored as values + positions
    kept: int  # weights kept in those tensors
    total: int  # weights in those tensors

    @property
    def ratio(self) -> float:
        return self.dense_bytes / self.file_bytes


def export_model(
    model: nn.Module, path: str | Path, mask: Mask | None = None, spec: ModelSpec | None = None
) -> ExportResult:
    """Export `model`'s state dict; `mask` (default: the zeros of its Conv2d and Linear weights) says
    which weights are pruned."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if mask is None:
        mask = Mask({name: p.detach().cpu() != 0 for name, p in prunable_parameters(model).items()})
    return export_state(state, mask, path, spec)


def export_state(
    state: Mapping[str, torch.Tensor], mask: Mask, path: str | Path, spec: ModelSpec | None = None
) -> ExportResult:
    """Write `state` with every weight that `mask` covers compressed (when that is smaller)."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    sparse: dict[str, list[object]] = {}  # name -> [layout, shape, kept values, position bytes, dtype]
    values: dict[torch.dtype, list[torch.Tensor]] = {}
    positions: list[torch.Tensor] = []
    kept_total = weights_total = 0
    for name, tensor in state.items():
        tensor = tensor.detach().cpu().contiguous()
        if name not in mask:
            tensors[name] = tensor
            continue
        kept = _checked_mask(name, tensor, mask[name])
        layout, encoded = cheapest_layout(to_numpy_bool(kept))
        kept_values = tensor[kept]
        if kept_values.nbytes + encoded.nbytes >= tensor.nbytes:
            tensors[name] = tensor  # denser than the break-even point: the plain tensor is smaller
            continue
        values.setdefault(tensor.dtype, []).append(kept_values)
        positions.append(torch.from_numpy(encoded))
        sparse[name] = [
            layout,
            list(tensor.shape),
            kept_values.numel(),
            len(encoded),
            _dtype_name(tensor.dtype),
        ]
        kept_total += kept_values.numel()
        weights_total += tensor.numel()
    for dtype, parts in values.items():
        tensors[PACKED + "values/" + _dtype_name(dtype)] = torch.cat(parts)
    if positions:
        tensors[POSITIONS] = torch.cat(positions)
    metadata = {"format": FORMAT, "version": VERSION, "sparse": json.dumps(sparse, separators=(",", ":"))}
    if spec is not None:
        metadata["model"] = json.dumps(asdict(spec), separators=(",", ":"))
    metadata["sha256"] = _digest(tensors)
    from safetensors.torch import save, save_file

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    dense_bytes = len(save({k: v.detach().cpu().contiguous() for k, v in state.items()}))
    return ExportResult(path, path.stat().st_size, dense_bytes, len(sparse), kept_total, weights_total)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _checked_mask(name: str, tensor: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    kept = kept.cpu()
    if tuple(kept.shape) != tuple(tensor.shape):
        raise AnymaskError(
            f"mask does not fit the weights: '{name}' has shape {tuple(kept.shape)} in the mask but "
            f"{tuple(tensor.shape)} in the model; export the model with the mask it was trained with"
        )
    stray = int((tensor[~kept] != 0).sum())
    if stray:
        raise AnymaskError(
            f"'{name}' has {stray} nonzero weights where the mask prunes them; export a model trained "
            "with this mask (or zero them first with mask.apply(model))"
        )
    return kept


def _digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _digest_matches(tensors: Mapping[str, torch.Tensor], recorded: str | None) -> bool:
    try:
        return _digest(tensors) == recorded
    except (RuntimeError, TypeError):  # a dtype numpy cannot view as bytes: not what export writes
        return False


# -- reading -------------------------------------------------------------------------------------------
def load_export(path: str | Path) -> tuple[dict[str, torch.Tensor], ModelSpec | None]:
    """The full state dict of an export (pruned weights as zeros) and the model it is for, if recorded.

    A missing, truncated, corrupt or foreign file raises a one-line `AnymaskError`.
    """
    from anymask.artifacts import read_export

    path = Path(path)
    again = "export it again with `anymask export RUN_DIR --out FILE`"
    export = read_export(path)
    metadata, tensors = export.metadata, export.tensors
    if metadata.get("format") != FORMAT:
        raise AnymaskError(f"{path} is not an anymask sparse export (no '{FORMAT}' tag); {again}")
    if metadata.get("version") != VERSION:
        raise AnymaskError(
            f"{path} is an export of format version {metadata.get('version')!r}, this anymask reads "
            f"version {VERSION}; {again}"
        )
    if not _digest_matches(tensors, metadata.get("sha256")):
        raise AnymaskError(
            f"{path} is corrupt: its tensors do not match the checksum they were written with; {again}"
        )
    try:
        state = _expand(tensors, json.loads(metadata["sparse"]))
        spec = _spec(metadata.get("model"))
    except (KeyError, ValueError, TypeError, RuntimeError, AttributeError, AnymaskError) as error:
        raise AnymaskError(f"{path} is corrupt ({_first_line(error)}); {again}") from None
    return state, spec


def load_exported_model(path: str | Path) -> nn.Module:
    """The registry model an export was made from, with its weights loaded (`strict=True`), in eval mode."""
    state, spec = load_export(path)
    if spec is None:
        raise AnymaskError(
            f"{path} does not record its model (exported from Python without a ModelSpec); build the model "
            "yourself and load anymask.deploy.load_export(path)[0] into it"
        )
    model = spec.build()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise AnymaskError(f"{path} does not load into {spec.model}: {_first_line(error)}") from None
    return model.eval()


def _expand(tensors: dict[str, torch.Tensor], sparse: Mapping[str, list[object]]) -> dict[str, torch.Tensor]:
    """The packed weights unpacked in order; every byte of the packed tensors must be used exactly."""
    state = {k: v for k, v in tensors.items() if not k.startswith(PACKED)}
    values_at = {k: 0 for k in tensors if k.startswith(PACKED + "values/")}
    position_at = 0
    packed_positions = tensors.get(POSITIONS, torch.zeros(0, dtype=torch.uint8))
    if packed_positions.dtype != torch.uint8:
        raise ValueError(f"positions are {packed_positions.dtype}, not uint8")
    for name, (layout, shape, count, nbytes, dtype) in sparse.items():  # type: ignore[misc]
        shape = tuple(int(d) for d in shape)
        numel = int(torch.Size(shape).numel())
        encoded = packed_positions[position_at : position_at + int(nbytes)]
        position_at += int(nbytes)
        kept = LAYOUTS.get(str(layout))().decode(encoded.numpy(), numel)
        if int(kept.sum()) != int(count):
            raise ValueError(f"'{name}' has {int(kept.sum())} positions for {count} values")
        full = _take_values(tensors, values_at, PACKED + "values/" + str(dtype), name, int(count))
        state[name] = (
            torch.zeros(numel, dtype=full.dtype).masked_scatter_(torch.from_numpy(kept), full).reshape(shape)
        )
    unused = [k for k, at in values_at.items() if at != tensors[k].numel()]
    if unused or position_at != packed_positions.numel():
        raise ValueError("packed values or positions are longer than the weights they belong to")
    return state


def _take_values(
    tensors: dict[str, torch.Tensor], values_at: dict[str, int], key: str, name: str, count: int
) -> torch.Tensor:
    """The next `count` values of the packed values tensor `key`."""
    at = values_at[key]
    if tensors[key].dim() != 1 or at + count > tensors[key].numel():
        raise ValueError(f"packed values end before '{name}'")
    values_at[key] = at + count
    return tensors[key][at : at + count]


def _spec(text: str | None) -> ModelSpec | None:
    if text is None:
        return None
    fields = json.loads(text)
    return ModelSpec(
        model=str(fields["model"]),
        width=float(fields["width"]),
        num_classes=int(fields["num_classes"]),
        input_shape=tuple(int(d) for d in fields["input_shape"]),  # type: ignore[arg-type]
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__
