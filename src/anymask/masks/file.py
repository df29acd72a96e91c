"""The `file` method: a mask brought from elsewhere.

`mask_file` is either a mask in torch.nn.utils.prune naming (`<module>.weight_mask` entries, as
`Mask.save` writes and as a pruned model's state dict holds), or a checkpoint / state dict whose zeros
define the mask (`weight != 0` for each prunable weight): the ToST trainer's own convention, so masks
pruned by any tool that zeroes weights carry over. `.pt`, `.pth` and `.safetensors` are read, nested
under "state_dict" (or "model_state_dict", "model") or not, with DataParallel's "module." prefix or not.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from anymask.errors import AnymaskError
from anymask.masks.mask import Mask, has_mask_entries, read_tensor_file
from anymask.masks.methods import METHODS, PruneContext

PARALLEL_PREFIX = "module."


@METHODS.register("file")
def from_file(context: PruneContext) -> Mask:
    path = context.config.mask_file
    if not path:
        raise AnymaskError(
            "mask method 'file' needs a mask file: pass --mask-file PATH (a mask or a checkpoint)"
        )
    tensors = strip_parallel_prefix(read_tensor_file(path))
    if has_mask_entries(tensors):
        return Mask.from_file_dict(tensors, path)
    return mask_from_zeros(tensors, context.params, str(path))


def strip_parallel_prefix(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys without the 'module.' that nn.DataParallel / DistributedDataParallel put in front."""
    if tensors and all(k.startswith(PARALLEL_PREFIX) for k in tensors):
        return {k[len(PARALLEL_PREFIX) :]: v for k, v in tensors.items()}
    return dict(tensors)


def mask_from_zeros(
    tensors: Mapping[str, torch.Tensor], params: Mapping[str, torch.Tensor], source: str
) -> Mask:
    """Kept = non-zero, for every prunable weight; a checkpoint of another model fails in one line."""
    missing = [name for name in params if name not in tensors]
    if missing:
        raise AnymaskError(
            f"checkpoint does not fit the model: the model has '{missing[0]}' but {source} has no such "
            f"tensor; was it saved from another model? ({len(tensors)} tensors, "
            f"e.g. '{next(iter(tensors), '')}')"
        )
    return Mask({name: tensors[name] != 0 for name in params})
