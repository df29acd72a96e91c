"""A folded network lowered to one program that numba runs whole (`program_kernels`).

Per-layer kernels pay, at every layer, a Python call, a numba dispatch, tensor allocations and a
parallel-region hand-off: at batch 1 that is most of the time. Here the folded torch.fx graph becomes a
table of steps (load, conv, max-pool, mean-pool, linear, add, ReLU, store) over slots of one
preallocated arena, and a single numba call runs the whole table. Lowering fuses what the kernels can do
in their last pass: a residual sum into the convolution that feeds it (moved to where the other operand
exists), and a ReLU into whatever produces its input. Arena slots are reused once a tensor is dead.

Threads: the batch is cut into chunks of images and each thread runs whole chunks through the whole
network in its own arena, so one parallel region serves a forward pass and no thread ever waits for
another between layers. A graph with anything this cannot lower raises `Unsupported`; the caller then
keeps the per-layer kernels.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import fx, nn

from anymask.deploy.kernels import LayerWeights, layer_weights
from anymask.deploy.program_run import (
    ADD,
    CONV,
    INPUT,
    LINEAR,
    MAXPOOL,
    MEANPOOL,
    OUTPUT,
    PHASES,
    RELU,
    ROWS,
    SAME,
    VECTOR,
    Program,
)

OP_FIELDS = [
    "kind", "src", "channels", "height", "width", "dst", "outputs", "out_height", "out_width", "residual",
    "first_tap", "first_bias", "stride_h", "stride_w", "relu", "size", "mode", "scratch", "border",
]  # fmt: skip
MAX_PAD = 3
"""Largest convolution padding lowered (every tensor carries a border this wide)."""


class Unsupported(Exception):
    """The graph holds something the program cannot run; the message says what."""


Shape = tuple[int, int, int]  # channels, height, width of one image


@dataclass
class Step:
    kind: int
    inputs: list[fx.Node]  # tensors read (for ADD: both operands)
    output: fx.Node | None
    shape: Shape  # of the output (for OUTPUT: of the input)
    layer: LayerWeights | None = None
    residual: fx.Node | None = None
    relu: bool = False
    pool: int = 0  # max-pool window (= stride)


@dataclass
class Lowering:
    """The state of one lowering pass: steps in order and every tensor's shape."""

    modules: dict[str, nn.Module]
    steps: list[Step] = field(default_factory=list)
    shapes: dict[fx.Node, Shape] = field(default_factory=dict)
    alias: dict[fx.Node, fx.Node] = field(default_factory=dict)
    flat: set[fx.Node] = field(default_factory=set)  # nodes whose tensor is (N, features), not NCHW
    flat_output: bool = False

    def source(self, node: object) -> fx.Node:
        if not isinstance(node, fx.Node):
            raise Unsupported(f"a constant operand ({node!r})")
        while node in self.alias:
            node = self.alias[node]
        return node

    def add(self, step: Step) -> None:
        self.steps.append(step)
        if step.output is not None:
            self.shapes[step.output] = step.shape


# -- lowering each node kind (registries: module type / function -> how it lowers) ----------------------
def _conv(low: Lowering, node: fx.Node, module: nn.Module) -> None:
    source = low.source(node.args[0])
    layer = layer_weights(module)
    _, height, width = low.shapes[source]
    if max(layer.padding) > MAX_PAD:
        raise Unsupported(f"convolution padding {layer.padding} above {MAX_PAD}")
    out_h, out_w = layer.output_size(height, width)
    low.add(Step(CONV, [source], node, (layer.weight.shape[0], out_h, out_w), layer))


def _linear(low: Lowering, node: fx.Node, module: nn.Module) -> None:
    source = low.source(node.args[0])
    if int(np.prod(low.shapes[source])) != module.in_features:
        raise Unsupported(f"a Linear of {module.in_features} inputs on a {low.shapes[source]} tensor")
    low.add(Step(LINEAR, [source], node, (module.out_features, 1, 1), layer_weights(module)))
    low.flat.add(node)


def _relu(low: Lowering, node: fx.Node, module: object = None) -> None:
    source = low.source(node.args[0])
    low.add(Step(RELU, [source], node, low.shapes[source]))
    if node.args[0] in low.flat:
        low.flat.add(node)


def _max_pool(low: Lowering, node: fx.Node, module: nn.Module) -> None:
    size, stride = _pair(module.kernel_size), _pair(module.stride or module.kernel_size)
    if size[0] != size[1] or stride != size or _pair(module.padding) != (0, 0) or module.ceil_mode:
        raise Unsupported(f"max-pool {module}")
    if _pair(module.dilation) != (1, 1) or getattr(module, "return_indices", False):
        raise Unsupported(f"max-pool {module}")
    source = low.source(node.args[0])
    channels, height, width = low.shapes[source]
    shape = (channels, (height - size[0]) // size[0] + 1, (width - size[0]) // size[0] + 1)
    low.add(Step(MAXPOOL, [source], node, shape, pool=size[0]))


def _mean_pool(low: Lowering, node: fx.Node, module: nn.Module) -> None:
    if _pair(module.output_size) != (1, 1):
        raise Unsupported(f"adaptive average pool to {module.output_size}")
    source = low.source(node.args[0])
    low.add(Step(MEANPOOL, [source], node, (low.shapes[source][0], 1, 1)))


def _passes_through(low: Lowering, node: fx.Node, module: object = None) -> None:
    """Identity, eval-mode Dropout and flatten: the same arena block (a Linear reads any shape)."""
    source = low.source(node.args[0])
    low.alias[node] = source
    if node.args[0] in low.flat:
        low.flat.add(node)


def _flatten(low: Lowering, node: fx.Node, module: object = None) -> None:
    start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 1)
    if start != 1 or len(node.args) > 2 or "end_dim" in node.kwargs:
        raise Unsupported("a flatten other than flatten(x, 1)")
    _passes_through(low, node)
    low.flat.add(node)


def _add(low: Lowering, node: fx.Node, function: object = None) -> None:
    if len(node.args) != 2 or node.kwargs:
        raise Unsupported("an add with alpha or more than two operands")
    first, second = (low.source(a) for a in node.args)
    if low.shapes[first] != low.shapes[second]:
        raise Unsupported("an add with broadcasting")
    low.add(Step(ADD, [first, second], node, low.shapes[first]))
    if node.args[0] in low.flat:
        low.flat.add(node)


def _flatten_module(low: Lowering, node: fx.Node, module: nn.Module) -> None:
    if module.start_dim != 1 or module.end_dim != -1:
        raise Unsupported(f"{module}")
    _passes_through(low, node)
    low.flat.add(node)


MODULE_LOWERINGS: dict[type, Callable[[Lowering, fx.Node, nn.Module], None]] = {
    nn.Conv2d: _conv,
    nn.Linear: _linear,
    nn.ReLU: _relu,
    nn.MaxPool2d: _max_pool,
    nn.AdaptiveAvgPool2d: _mean_pool,
    nn.Identity: _passes_through,
    nn.Dropout: _passes_through,
    nn.Flatten: _flatten_module,
}
FUNCTION_LOWERINGS: dict[object, Callable[[Lowering, fx.Node, object], None]] = {
    operator.add: _add,
    torch.add: _add,
    torch.relu: _relu,
    nn.functional.relu: _relu,
    torch.flatten: _flatten,
}
METHOD_LOWERINGS: dict[str, Callable[[Lowering, fx.Node, object], None]] = {
    "relu": _relu,
    "flatten": _flatten,
}


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[-1]))


def lower(graph: fx.GraphModule, shape: Shape) -> tuple[list[Step], bool]:
    """The graph's steps for images of `shape`, fused, and whether its output is flat (N, features)
    rather than NCHW; raises Unsupported."""
    low = Lowering(dict(graph.named_modules()))
    for node in graph.graph.nodes:
        if node.op == "placeholder":
            if low.steps:
                raise Unsupported("more than one input")
            low.add(Step(INPUT, [], node, shape))
        elif node.op == "call_module":
            module = low.modules[str(node.target)]
            lowering = MODULE_LOWERINGS.get(type(module))
            if lowering is None or (isinstance(module, nn.Conv2d | nn.Linear) and node.kwargs):
                raise Unsupported(f"module {type(module).__name__}")
            lowering(low, node, module)
        elif node.op == "call_function" and node.target in FUNCTION_LOWERINGS:
            FUNCTION_LOWERINGS[node.target](low, node, None)
        elif node.op == "call_method" and node.target in METHOD_LOWERINGS:
            METHOD_LOWERINGS[str(node.target)](low, node, None)
        elif node.op == "output":
            result = low.source(node.args[0])
            low.flat_output = node.args[0] in low.flat
            low.add(Step(OUTPUT, [result], None, low.shapes[result]))
        else:
            raise Unsupported(f"{node.op} {node.target}")
    return _fuse_relus(_fuse_residuals(low.steps)), low.flat_output


def _uses(steps: list[Step]) -> dict[fx.Node, int]:
    counts: dict[fx.Node, int] = {}
    for step in steps:
        for tensor in [*step.inputs, *([step.residual] if step.residual is not None else [])]:
            counts[tensor] = counts.get(tensor, 0) + 1
    return counts


def _fuse_residuals(steps: list[Step]) -> list[Step]:
    """``add(conv(x), other)`` -> conv(x) with residual `other`, run where the add was."""
    steps = list(steps)
    for add in [s for s in steps if s.kind == ADD]:
        uses = _uses(steps)
        producers = {s.output: s for s in steps if s.output is not None}
        for mine, other in (add.inputs, add.inputs[::-1]):
            conv = producers.get(mine)
            if conv is None or conv.kind != CONV or conv.residual is not None or conv.relu:
                continue
            if uses[mine] != 1 or mine is other:
                continue
            steps.remove(conv)
            conv.residual, conv.output, conv.relu = other, add.output, False
            steps[steps.index(add)] = conv
            break
    return steps


def _fuse_relus(steps: list[Step]) -> list[Step]:
    """A ReLU whose input only it reads runs in the producer's last pass."""
    steps = list(steps)
    for relu in [s for s in steps if s.kind == RELU]:
        uses = _uses(steps)
        producer = next((s for s in steps if s.output is relu.inputs[0]), None)
        if producer is None or producer.kind not in (CONV, LINEAR, ADD) or uses[relu.inputs[0]] != 1:
            continue
        producer.relu, producer.output = True, relu.output
        steps.remove(relu)
    return steps


# -- encoding --------------------------------------------------------------------------------------------
def conv_mode(layer: LayerWeights, in_shape: Shape, out_shape: Shape, pad: int) -> int:
    """SAME: stride 1 and output size = input size, so a tap is a shift of the input plane. PHASES:
    strided, every tap's shift inside the border once the input is split into stride x stride phase
    planes of the output's size, and enough kept weights to pay for the split. ROWS otherwise (row by
    row, any geometry)."""
    if layer.stride == (1, 1) and in_shape[1:] == out_shape[1:]:
        return SAME
    kh, kw = layer.weight.shape[2:]
    reach = [
        (k * d - p) // s
        for size, d, p, s in zip((kh, kw), layer.dilation, layer.padding, layer.stride, strict=True)
        for k in (0, size - 1)
    ]
    if not all(-pad <= r <= pad for r in reach):
        return ROWS
    # Splitting copies the input once per phase: worth it when each copied plane serves several kept
    # weights (a 3x3 or 1x1 conv), not for a depthwise conv (at most 9 weights per channel, often 1-2)
    _, _, ky, kx = layer.weight.nonzero(as_tuple=True)
    sh, sw = layer.stride
    phases = len(
        set(
            zip(
                (ky * layer.dilation[0] - layer.padding[0]).remainder(sh).tolist(),
                (kx * layer.dilation[1] - layer.padding[1]).remainder(sw).tolist(),
                strict=True,
            )
        )
    )
    return PHASES if phases and len(ky) >= 2 * in_shape[0] * phases else ROWS


def _taps(
    layer: LayerWeights, in_shape: Shape, out_shape: Shape, pad: int, mode: int
) -> tuple[np.ndarray, ...]:
    """Per output channel, its kept weights as (input channel, dy, dx, offset, value), channel-major;
    the offset (per image, in floats) is where the tap reads relative to the block the kernel reads."""
    weight = layer.weight.detach().float()
    outputs = weight.shape[0]
    flat = weight.reshape(outputs, -1)
    rows, cols = flat.nonzero(as_tuple=True)
    counts = np.bincount(rows.numpy(), minlength=outputs)
    values = flat[rows, cols].numpy().astype(np.float32)
    rows_np, cols_np = rows.numpy().astype(np.int64), cols.numpy().astype(np.int64)
    if layer.is_conv:
        per_group, kh, kw = weight.shape[1:]
        group = rows_np // (outputs // layer.groups)
        chan = group * per_group + cols_np // (kh * kw)
        dy = (cols_np // kw) % kh * layer.dilation[0] - layer.padding[0]
        dx = cols_np % kw * layer.dilation[1] - layer.padding[1]
        pitch, plane = out_shape[2] + 2 * pad, (out_shape[1] + 2 * pad) * (out_shape[2] + 2 * pad)
        if mode == SAME:
            offset = chan * plane + dy * pitch + dx
        elif mode == PHASES:
            sh, sw = layer.stride
            phase = (chan * sh + dy % sh) * sw + dx % sw
            offset = phase * plane + dy // sh * pitch + dx // sw
        else:
            offset = np.zeros_like(chan)
    else:
        _, height, width = in_shape
        chan, dy, dx = cols_np // (height * width), cols_np // width % height, cols_np % width
        pitch, plane = width + 2 * pad, (height + 2 * pad) * (width + 2 * pad)
        offset = chan * plane + (pad + dy) * pitch + pad + dx
    return counts, chan, dy, dx, offset, values


def compile_program(graph: fx.GraphModule, shape: Shape) -> Program:
    """Lower the folded `graph` for images of `shape` and encode it; raises Unsupported."""
    steps, flat_output = lower(graph, shape)
    convs = [s.layer for s in steps if s.kind == CONV and s.layer is not None]
    pad = max([max(layer.padding) for layer in convs] + [0])
    shapes = {s.output: s.shape for s in steps if s.output is not None}
    modes = {
        id(s): conv_mode(s.layer, shapes[s.inputs[0]], s.shape, pad)
        for s in steps
        if s.kind == CONV and s.layer is not None
    }
    slots, scratch = _allocate(steps, shapes, pad, modes)
    bordered = _read_with_border(steps)
    rows, counts, chans, dys, dxs, offsets, values, biases = [], [], [], [], [], [], [], []
    first_tap = first_bias = 0
    for step in steps:
        row = dict.fromkeys(OP_FIELDS, 0)
        row["kind"], row["residual"] = step.kind, -1
        if step.inputs:
            row["src"] = slots[step.inputs[0]][0]
            row["channels"], row["height"], row["width"] = shapes.get(step.inputs[0], step.shape)
        if step.output is not None:
            row["dst"] = slots[step.output][0]
            row["outputs"], row["out_height"], row["out_width"] = step.shape
        if step.kind == ADD:
            row["residual"] = slots[step.inputs[1]][0]
        if step.residual is not None:
            row["residual"] = slots[step.residual][0]
        row["relu"] = int(step.relu)
        row["stride_h"] = row["stride_w"] = row["size"] = step.pool
        row["mode"] = modes.get(id(step), 0)
        row["scratch"] = scratch[id(step)][0] if id(step) in scratch else 0
        row["border"] = int(step.output in bordered)
        if step.layer is not None:
            count, chan, dy, dx, offset, value = _taps(
                step.layer, shapes[step.inputs[0]], step.shape, pad, row["mode"]
            )
            row["first_tap"], row["first_bias"] = first_tap, first_bias
            row["stride_h"], row["stride_w"] = step.layer.stride
            if row["mode"] == PHASES:
                sh, sw = step.layer.stride
                row["size"] = int(np.bitwise_or.reduce(1 << np.unique(dy % sh * sw + dx % sw), initial=0))
            counts.append(count)
            chans.append(chan)
            dys.append(dy)
            dxs.append(dx)
            offsets.append(offset)
            values.append(value)
            biases.append(step.layer.bias.detach().float().numpy())
            first_tap += len(count) + 1
            first_bias += len(count)
        rows.append([row[name] for name in OP_FIELDS])
    indptr = _indptrs(counts)
    output = next(s for s in steps if s.kind == OUTPUT)
    return Program(
        ops=np.array(rows, dtype=np.int64),
        pad=pad,
        indptr=indptr,
        chan=_join(chans, np.int64),
        dy=_join(dys, np.int64),
        dx=_join(dxs, np.int64),
        offset=_join(offsets, np.int64),
        weight=_join(values, np.float32),
        bias=_join(biases, np.float32),
        floats_per_image=_arena_end(slots, scratch, shapes, pad),
        outputs=int(np.prod(output.shape)),
        output_shape=(int(np.prod(output.shape)),) if flat_output else output.shape,
        shape=shape,
        layers=len(counts),
    )


def _arena_end(
    slots: dict[fx.Node, tuple[int, int]], scratch: dict[int, tuple[int, int]], shapes: dict, pad: int
) -> int:
    """Floats per image: the slots, and room after the last one for what a conv's last pass reads
    beyond its input's last plane (a tap reaches up to pad rows and columns on, and the pass is
    rounded up to whole vectors: `program_kernels._conv_flat`)."""
    end = max([start + size for start, size in [*slots.values(), *scratch.values()]] + [1])
    widest = max([width for _, _, width in shapes.values()] + [1])
    return end + pad * (widest + 2 * pad + 1) + VECTOR


def _read_with_border(steps: list[Step]) -> set[fx.Node]:
    """Tensors whose zero border some step reads: the input of a padded convolution, and the inputs of
    an add or ReLU (which run over whole blocks) whose own output is read so. Every other tensor's
    border is left as the arena had it: on the late layers of a network at batch 1 (4x4 planes),
    zeroing borders cost more than the convolutions' arithmetic."""
    bordered: set[fx.Node] = set()
    for step in reversed(steps):
        padded = step.kind == CONV and step.layer is not None and max(step.layer.padding) > 0
        if padded or (step.kind in (ADD, RELU) and step.output in bordered):
            bordered.update(step.inputs)
    return bordered


def _join(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.ascontiguousarray(np.concatenate(parts) if parts else np.zeros(1), dtype=dtype)


def _indptrs(counts: list[np.ndarray]) -> np.ndarray:
    """Each layer's CSR row pointers (outputs + 1 entries, absolute tap indices), concatenated."""
    pointers, at = [], 0
    for count in counts:
        pointers.append(at + np.concatenate([[0], np.cumsum(count)]))
        at += int(count.sum())
    return _join(pointers, np.int64)


def _allocate(
    steps: list[Step], shapes: dict[fx.Node, Shape], pad: int, modes: dict[int, int]
) -> tuple[dict[fx.Node, tuple[int, int]], dict[int, tuple[int, int]]]:
    """Tensor -> (start, size) in floats per image, and id(step) -> the phase planes of a PHASES conv;
    a slot is reused once its tensor (or the step's phase planes) is dead."""
    last_use: dict[fx.Node, int] = {}
    for index, step in enumerate(steps):
        for tensor in [*step.inputs, *([step.residual] if step.residual is not None else [])]:
            last_use[tensor] = index
    free: list[tuple[int, int]] = []  # (start, size)
    slots: dict[fx.Node, tuple[int, int]] = {}
    scratch: dict[int, tuple[int, int]] = {}
    end = 0

    def take(size: int) -> tuple[int, int]:
        nonlocal end
        fitting = [slot for slot in free if slot[1] >= size]
        if fitting:
            slot = min(fitting, key=lambda s: s[1])
            free.remove(slot)
            return slot
        end += size
        return (end - size, size)

    for index, step in enumerate(steps):
        if modes.get(id(step)) == PHASES and step.layer is not None:
            channels = shapes[step.inputs[0]][0]
            _, out_h, out_w = step.shape
            phases = step.layer.stride[0] * step.layer.stride[1]
            scratch[id(step)] = take(channels * phases * (out_h + 2 * pad) * (out_w + 2 * pad))
        if step.output is not None:
            channels, height, width = shapes[step.output]
            slots[step.output] = take(channels * (height + 2 * pad) * (width + 2 * pad))
        if id(step) in scratch:
            free.append(scratch[id(step)])
        for tensor, last in list(last_use.items()):
            if last == index and tensor in slots:
                free.append(slots[tensor])
                del last_use[tensor]
    return slots, scratch
