"""The one place that decides which weights a mask covers."""

from __future__ import annotations

from torch import nn

from anymask.masks.config import MaskConfig

PRUNABLE_TYPES = (nn.Conv2d, nn.Linear)
SHORTCUT_NAMES = frozenset({"shortcut", "downsample"})


def prunable_parameters(
    model: nn.Module, *, first_conv: bool = True, classifier: bool = True, shortcuts: bool = True
) -> dict[str, nn.Parameter]:
    """Weights of Conv2d and Linear modules, in module order; biases and norms stay dense.

    The first conv is the first Conv2d in module order, the classifier the last Linear, and a shortcut
    any module under a submodule named `shortcut` or `downsample` (the model zoo's convention).
    """
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)]
    convs = [name for name, m in layers if isinstance(m, nn.Conv2d)]
    linears = [name for name, m in layers if isinstance(m, nn.Linear)]
    excluded: set[str] = set()
    if not first_conv and convs:
        excluded.add(convs[0])
    if not classifier and linears:
        excluded.add(linears[-1])
    if not shortcuts:
        excluded.update(name for name, _ in layers if SHORTCUT_NAMES & set(name.split(".")))
    return {f"{name}.weight": m.weight for name, m in layers if name not in excluded}


def prunable_from_config(model: nn.Module, config: MaskConfig) -> dict[str, nn.Parameter]:
    return prunable_parameters(
        model,
        first_conv=config.prune_first_conv,
        classifier=config.prune_classifier,
        shortcuts=config.prune_shortcuts,
    )
