"""The `Mask` type: parameter name -> bool tensor (True = weight kept), validated as it is built.

On disk a mask uses `torch.nn.utils.prune` naming, `{"<module>.weight_mask": bool tensor}`, in
`.safetensors` or `.pt`; in memory keys are parameter names (`<module>.weight`), as `named_parameters()`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from anymask.errors import AnymaskError
from anymask.io import atomic_path

FILE_SUFFIX = "_mask"


@dataclass(frozen=True)
class LayerDensity:
    name: str
    shape: tuple[int, ...]
    kept: int
    total: int

    @property
    def density(self) -> float:
        return self.kept / self.total

    @property
    def collapsed(self) -> bool:
        """A layer with no weights left disconnects the network."""
        return self.kept == 0


class Mask(Mapping[str, torch.Tensor]):
    """Which weights of a model are kept. Entries are checked when set: an invalid mask cannot exist."""

    def __init__(self, entries: Mapping[str, torch.Tensor] | None = None) -> None:
        self._entries: dict[str, torch.Tensor] = {}
        for name, tensor in (entries or {}).items():
            self[name] = tensor

    def __setitem__(self, name: str, tensor: torch.Tensor) -> None:
        if not isinstance(name, str) or not name:
            raise AnymaskError(f"mask entry names must be non-empty strings, got {name!r}")
        if not isinstance(tensor, torch.Tensor):
            raise AnymaskError(f"mask entry '{name}' must be a tensor, got {type(tensor).__name__}")
        if tensor.dtype != torch.bool:
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise AnymaskError(f"mask entry '{name}' holds NaN or infinite values; a mask is 0/1 only")
            if not ((tensor == 0) | (tensor == 1)).all():
                raise AnymaskError(f"mask entry '{name}' holds values other than 0 and 1")
            tensor = tensor != 0
        self._entries[name] = tensor.detach()

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Mask({len(self)} tensors, density {self.density():.4f})"

    # -- counts ------------------------------------------------------------------------------------
    def kept(self) -> int:
        return sum(int(t.count_nonzero()) for t in self.values())

    def total(self) -> int:
        return sum(t.numel() for t in self.values())

    def density(self) -> float:
        total = self.total()
        return self.kept() / total if total else 1.0

    def sparsity(self) -> float:
        return 1.0 - self.density()

    def layers(self) -> list[LayerDensity]:
        return [LayerDensity(n, tuple(t.shape), int(t.count_nonzero()), t.numel()) for n, t in self.items()]

    def collapsed_layers(self) -> list[str]:
        return [layer.name for layer in self.layers() if layer.collapsed]

    def to(self, device: torch.device | str) -> Mask:
        return Mask({name: t.to(device) for name, t in self.items()})

    # -- model -------------------------------------------------------------------------------------
    @classmethod
    def dense(cls, params: Mapping[str, torch.Tensor]) -> Mask:
        return cls({name: torch.ones_like(p, dtype=torch.bool, device="cpu") for name, p in params.items()})

    def check_fits(self, model: nn.Module) -> None:
        """Raise a one-line `AnymaskError` unless every entry names a parameter of the same shape."""
        params = dict(model.named_parameters())
        for name, tensor in self.items():
            if name not in params:
                raise AnymaskError(
                    f"mask does not fit the model: it has '{name}{FILE_SUFFIX}' but the model has no "
                    f"parameter '{name}'; was the mask made for another model? (model has "
                    f"{len(params)} parameters, e.g. '{next(iter(params), '')}')"
                )
            if tuple(params[name].shape) != tuple(tensor.shape):
                raise AnymaskError(
                    f"mask does not fit the model: '{name}' has shape {tuple(tensor.shape)} in the mask "
                    f"but {tuple(params[name].shape)} in the model; was it made for another model or width?"
                )

    @torch.no_grad()
    def apply(self, model: nn.Module) -> None:
        """Zero the pruned weights of `model` in place."""
        self.check_fits(model)
        for name, tensor in self.items():
            param = model.get_parameter(name)
            param.mul_(tensor.to(param.device, param.dtype))

    # -- files -------------------------------------------------------------------------------------
    def file_dict(self) -> dict[str, torch.Tensor]:
        return {name + FILE_SUFFIX: t.cpu().contiguous() for name, t in self.items()}

    def save(self, path: str | Path) -> None:
        """Write `.safetensors` or `.pt` (by suffix) atomically."""
        path = Path(path)
        tensors = self.file_dict()
        with atomic_path(path) as tmp:
            if path.suffix == ".safetensors":
                from safetensors.torch import save_file

                # safetensors sorts keys; keep the model's layer order for ranking ties and reports
                order = json.dumps(list(tensors))
                metadata = {"format": "anymask-mask", "density": str(self.density()), "order": order}
                save_file(tensors, str(tmp), metadata=metadata)
            elif path.suffix in {".pt", ".pth"}:
                torch.save(tensors, tmp)
            else:
                raise AnymaskError(
                    f"cannot save a mask as '{path.suffix}'; use a .safetensors or .pt file name"
                )

    @classmethod
    def load(cls, path: str | Path, kind: str = "mask file") -> Mask:
        """Read a mask file in torch.nn.utils.prune naming; corrupt or foreign files raise AnymaskError
        naming the file (`kind`: "mask file", or "mask.safetensors" for a run folder's own mask)."""
        return cls.from_file_dict(read_tensor_file(path, kind), path, kind)

    @classmethod
    def from_file_dict(
        cls, tensors: Mapping[str, torch.Tensor], source: str | Path = "the file", kind: str = "mask file"
    ) -> Mask:
        """The `<module>.weight_mask` entries of a file's tensors (others, e.g. weight_orig, ignored)."""
        from anymask.artifacts import damaged

        names = [k for k in tensors if k.endswith(FILE_SUFFIX)]
        if not names:
            raise AnymaskError(
                f"{source} holds no '<module>.weight_mask' entries; for a checkpoint whose zeros define the "
                "mask use --mask-method file (it reads zeros of a state dict)"
            )
        try:
            return cls({k[: -len(FILE_SUFFIX)]: tensors[k] for k in names})
        except AnymaskError as error:  # an entry that is not 0/1: name the file it came from
            raise damaged(source, kind, str(error)) from None


def has_mask_entries(tensors: Mapping[str, torch.Tensor]) -> bool:
    return any(k.endswith(FILE_SUFFIX) for k in tensors)


def read_tensor_file(path: str | Path, kind: str = "mask file") -> dict[str, torch.Tensor]:
    """A flat name -> tensor dict from `.safetensors` or a torch file, with one-line errors."""
    from anymask.artifacts import read_mask_tensors

    return read_mask_tensors(path, kind)
