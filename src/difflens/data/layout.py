"""Image layout: every Dataset of images is channel-first, (C, H, W), as torch models use.

Grey-scale images stay (H, W) (the same values in the same flattened order as (1, H, W)). An array of
colour images stored channel-last, (N, H, W, C), is read as (N, C, H, W); the rule that tells the two
apart looks at the per-sample shape (a, b, c): a trailing axis of 1, 3 or 4 channels with a leading axis
that is not → channel-last; a leading one with a trailing one that is not → channel-first; both → ambiguous,
refused unless ``layout=`` says which (see docs/architecture.md, data layer).
"""

from __future__ import annotations

import math

from difflens.errors import DifflensError

LAYOUTS = ("auto", "CHW", "HWC")  # what ``load(spec, layout=…)`` accepts for (N, a, b, c) arrays
CHANNELS = (1, 3, 4)  # channel counts of grey, RGB and RGBA images


def channels_last(sample_shape: tuple[int, ...], spec: str, layout: str = "auto") -> bool:
    """True if samples of this stored shape are channel-last images to be read as (C, H, W).

    ``layout`` "CHW" takes the array as stored, "HWC" transposes it, "auto" applies the rule above."""
    if layout not in LAYOUTS:
        raise DifflensError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if len(sample_shape) != 3:
        if layout == "HWC":
            raise DifflensError(f"{spec}: layout HWC needs samples of shape (H, W, C), got {sample_shape}")
        return False
    if layout != "auto":
        return layout == "HWC"
    first, last = sample_shape[0] in CHANNELS, sample_shape[-1] in CHANNELS
    if first and last and not sample_shape[0] == sample_shape[-1] == 1:  # (1, H, 1): both readings agree
        raise DifflensError(
            f"{spec}: samples of shape {sample_shape} may be (C, H, W) or (H, W, C); say which with --layout CHW|HWC"
        )
    return last and not first


def layout_name(shape: tuple[int, ...]) -> str:
    """The layout of a sample shape as a Dataset presents it: flat, HW, CHW, or ND for more axes.

    Loaders never present HWC; an in-memory (N, H, W, C) array wrapped as it is says so."""
    if len(shape) == 3 and shape[-1] in CHANNELS and shape[0] not in CHANNELS:
        return "HWC"
    return {1: "flat", 2: "HW", 3: "CHW"}.get(len(shape), "ND")


def canonical(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape without size-1 axes: (1, H, W), (H, W, 1) and (H, W) flatten to the same order."""
    return tuple(s for s in shape if s != 1) or (1,)


def check_same_layout(a_shape: tuple[int, ...], b_shape: tuple[int, ...], a: str, b: str) -> None:
    """Refuse two inputs of one command whose samples have the same size but another shape.

    Their flattened values would then be compared in a different order (e.g. (H, W, 3) against (3, H, W)),
    which gives a wrong answer rather than an error. Flat samples carry no layout and pass; so do shapes
    that differ only by size-1 axes. Different sizes are left to the caller's own check."""
    a_shape, b_shape = tuple(int(s) for s in a_shape), tuple(int(s) for s in b_shape)
    if len(a_shape) <= 1 or len(b_shape) <= 1 or canonical(a_shape) == canonical(b_shape):
        return
    if math.prod(a_shape) == math.prod(b_shape):
        raise DifflensError(
            f"{a} have shape {a_shape} but {b} {b_shape}: same size, different layout; "
            "save both channel-first (C, H, W) or flatten them in the same order"
        )
