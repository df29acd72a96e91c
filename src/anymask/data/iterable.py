"""Any iterable of batches as data: a DataLoader, a list of (images, labels), a generator, HF-style dicts.

The scorers (SNIP, GraSP; SynFlow reads the input shape), GradInit and BatchNorm recalibration take either
an anymask dataset (in memory or streamed) or any iterable of batches; `as_data` tells them apart and wraps
the iterable in `BatchIterable`, which knows the input shape from the first batch without losing it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch

from anymask.errors import AnymaskError

Batch = tuple[torch.Tensor, torch.Tensor]
IMAGE_KEYS = ("pixel_values", "images", "image", "input", "inputs", "x")
LABEL_KEYS = ("labels", "label", "targets", "target", "y")


def is_dataset(data: Any) -> bool:
    """An anymask dataset (ImageDataset, StreamedDataset): it batches its own splits."""
    return hasattr(data, "batches") and hasattr(data, "split_size")


def as_data(data: Any) -> Any:
    """None, an anymask dataset as it is, or any other iterable wrapped as a `BatchIterable`."""
    if data is None or is_dataset(data) or isinstance(data, BatchIterable):
        return data
    if not isinstance(data, Iterable):
        raise AnymaskError(
            f"data must be an anymask dataset or an iterable of (images, labels) batches, got "
            f"{type(data).__name__}"
        )
    return BatchIterable(data)


def batch_pair(batch: Any) -> Batch:
    """(images, labels) from a tuple or list (first two items) or a mapping (`pixel_values`/`labels`...)."""
    if isinstance(batch, Mapping):
        images = next((batch[k] for k in IMAGE_KEYS if k in batch), None)
        labels = next((batch[k] for k in LABEL_KEYS if k in batch), None)
        if images is not None and labels is not None:
            return images, labels
    elif isinstance(batch, tuple | list) and len(batch) >= 2:
        return batch[0], batch[1]
    raise AnymaskError(
        f"a batch must be (images, labels) or a dict with one of {IMAGE_KEYS} and one of {LABEL_KEYS}; "
        f"got {type(batch).__name__}"
    )


class BatchIterable:
    """A user's iterable of batches. A re-iterable one (a DataLoader, a list) is read afresh each pass;
    a one-shot iterator (a generator) is read once, its first batch kept for whoever reads on."""

    def __init__(self, source: Iterable[Any], device: torch.device | str | None = None) -> None:
        self.source = source
        self.one_shot = iter(source) is source
        self.device = torch.device(device) if device is not None else None
        self._peeked: list[Any] = []  # read by `first`, not yet given to a pass
        self._first: Any = None

    def first(self) -> Batch:
        """The first batch; a one-shot iterator's is read once and remembered (its shape stays known
        after a pass has consumed it)."""
        if self.one_shot:
            if self._first is None:
                self._first = self._next(self.source)  # type: ignore[arg-type]
                self._peeked.append(self._first)
            return batch_pair(self._first)
        return batch_pair(self._next(iter(self.source)))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.first()[0].shape[1:])

    def __iter__(self) -> Iterator[Batch]:
        if self.one_shot:
            peeked, self._peeked = self._peeked, []
            raw: Iterable[Any] = itertools.chain(peeked, self.source)
        else:
            raw = self.source
        for batch in raw:
            images, labels = batch_pair(batch)
            if self.device is not None:
                images, labels = images.to(self.device), labels.to(self.device)
            yield images, labels

    def endless(self) -> Iterator[Batch]:
        """Batch after batch, starting a new pass when one ends (a one-shot iterator cannot: an error)."""
        while True:
            count = 0
            for batch in self:
                count += 1
                yield batch
            if self.one_shot or count == 0:
                raise AnymaskError(
                    "the batches ran out: GradInit and recalibration need more batches than a one-shot "
                    "iterator gave; pass a DataLoader or a list, which can be read again"
                )

    def take_images(self, count: int) -> list[Batch]:
        """Batches from the start until they hold at least `count` images (the last one may be cut)."""
        taken: list[Batch] = []
        held = 0
        for images, labels in self:
            need = count - held
            taken.append((images[:need], labels[:need]))
            held += len(taken[-1][1])
            if held >= count:
                break
        if not taken:
            raise AnymaskError("the batches given as data are empty")
        return taken

    @staticmethod
    def _next(iterator: Iterator[Any]) -> Any:
        try:
            return next(iterator)
        except StopIteration:
            raise AnymaskError("the batches given as data are empty") from None
