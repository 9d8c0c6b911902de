"""One block of a class map (DESIGN.md "Scale-out": a block function with a 1-pixel halo): the block's
window of the cube with a halo of P // 2 pixels, completed by reflection at the scene's edges exactly
as :func:`~cropstar.data.patches.extract_patches` does; that window prepared the way the model reads
it (:func:`~cropstar.infer.predict.prepare_cube`) and normalised (:class:`Window`); every observed
pixel's patch sequence gathered from it and run through the model in batches (:func:`classify_window`;
the batches may run on several threads); the map's bands encoded as :class:`MapLayout` says.

Early-season maps (the class "after date t") come from one pass of the recurrent stack: it is causal,
so its outputs up to step t are those of the sequence cut after t (:func:`probabilities_after_each_step`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass

import dask.array as da
import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

from cropstar.data.class_table import ClassTable
from cropstar.data.cube import Cube
from cropstar.data.patches import reflect_indices
from cropstar.errors import DataError, InputError
from cropstar.infer.predict import (
    DEFAULT_BATCH_SIZE,
    check_patches,
    model_device,
    model_input,
    predict_inputs,
    prepare_cube,
)
from cropstar.model.artifact import LoadedModel, ModelCard
from cropstar.nn.ensemble import EnsembleClassifier


@dataclass(frozen=True)
class Block:
    """Rows ``row0:row1`` and columns ``col0:col1`` of the scene; ``index`` in row-major block order."""

    index: int
    row0: int
    row1: int
    col0: int
    col1: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.row1 - self.row0, self.col1 - self.col0

    @property
    def size(self) -> int:
        return self.shape[0] * self.shape[1]


def tile_blocks(height: int, width: int, block_size: int) -> list[Block]:
    """The scene cut into ``block_size``² blocks, row by row; the last row and column may be smaller."""
    if block_size < 1:
        raise InputError(f"block size must be a positive number of pixels, got {block_size}")
    origins = [(r, c) for r in range(0, height, block_size) for c in range(0, width, block_size)]
    return [
        Block(i, r, min(r + block_size, height), c, min(c + block_size, width))
        for i, (r, c) in enumerate(origins)
    ]


@dataclass(frozen=True)
class MapLayout:
    """The bands of a class map and how they are stored, all in one integer type (one per GeoTIFF).

    Bands: ``class`` (class id), ``confidence`` (the largest class probability), with ``probabilities``
    one ``p_<code>`` band per class, with ``per_timestep`` one ``class_<date>`` band per time step (the
    class after that date). uint8 for up to 255 classes, else uint16; the largest value is no-data.
    Probabilities are stored as integers: value / :attr:`scale` (uint8: percent; uint16: 1/10 000).
    """

    class_table: ClassTable
    dates: tuple[str, ...]
    probabilities: bool = False
    per_timestep: bool = False

    def __post_init__(self) -> None:
        if len(self.class_table) > np.iinfo(np.uint16).max:
            raise InputError(
                f"a class map holds at most 65535 classes, the model has {len(self.class_table)}"
            )

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8 if len(self.class_table) <= np.iinfo(np.uint8).max else np.uint16)

    @property
    def nodata(self) -> int:
        return int(np.iinfo(self.dtype).max)

    @property
    def scale(self) -> int:
        """Stored value of probability 1 (100 in uint8 maps, 10 000 in uint16 maps)."""
        return 100 if self.dtype == np.uint8 else 10_000

    @property
    def descriptions(self) -> list[str]:
        names = ["class", "confidence"]
        if self.probabilities:
            names += [f"p_{entry.code}" for entry in self.class_table]
        if self.per_timestep:
            names += [f"class_{date}" for date in self.dates]
        return names

    @property
    def count(self) -> int:
        return len(self.descriptions)

    def encode(self, final: np.ndarray, steps: np.ndarray | None, mask: np.ndarray) -> np.ndarray:
        """Bands (count, N) of N pixels: ``final`` (N, K) probabilities, ``steps`` (N, T, K) those after
        each step (needed with ``per_timestep``), ``mask`` (N, T) valid steps. A date before a pixel's
        first valid observation is no-data in its ``class_<date>`` band."""
        out = np.empty((self.count, len(final)), self.dtype)
        out[0] = final.argmax(-1)
        out[1] = np.rint(final.max(-1) * self.scale)
        k = len(self.class_table)
        if self.probabilities:
            out[2 : 2 + k] = np.rint(final.T * self.scale)
        if self.per_timestep:
            assert steps is not None
            seen = np.logical_or.accumulate(mask, axis=1)
            out[self.count - len(self.dates) :] = np.where(seen, steps.argmax(-1), self.nodata).T
        return out


@torch.inference_mode()
def _after_each_step(loaded: LoadedModel, x: np.ndarray | torch.Tensor, mask: np.ndarray) -> np.ndarray:
    """:func:`probabilities_after_each_step` of model inputs ``x`` (N, T, I) (an array, or a tensor on
    the model's device) in one forward pass; summed on the model's device, copied back once."""
    card, model = loaded.card, loaded.model
    if card.task == "per_timestep":
        return predict_inputs(loaded, x, mask)
    device = model_device(loaded)
    t = x.shape[1]
    out = torch.zeros((len(x), t, card.architecture.num_classes), dtype=torch.float32, device=device)
    m = torch.from_numpy(np.asarray(mask)).to(device) if model.use_mask else None
    members = list(model.members) if isinstance(model, EnsembleClassifier) else [model]
    for member in members:  # an ensemble's probabilities are its members' mean
        outputs, _ = member.rnn(torch.as_tensor(x).to(device), mask=m)
        for step in range(t):
            logits = member.head(outputs[:, : step + 1], None if m is None else m[:, : step + 1])
            out[:, step] += torch.softmax(logits.float(), dim=-1)
    return (out / len(members)).cpu().numpy()


def probabilities_after_each_step(
    loaded: LoadedModel, patches: np.ndarray, mask: np.ndarray, *, batch_size: int = DEFAULT_BATCH_SIZE
) -> np.ndarray:
    """(N, T, K): at step t, the class probabilities the model gives from the steps up to t — the
    early-season map after each date; the same as :func:`~cropstar.infer.predict.predict_patches` on ``patches[:, :t + 1]``,
    ``mask[:, :t + 1]``. Per-time-step models give this at every step. For per-sequence models the
    recurrent stack runs once: it is causal (a masked step keeps the state), so its outputs up to t are
    those of the cut sequence, and the head reads the outputs and mask up to t (the mean over the valid
    steps so far).
    """
    card = loaded.card
    check_patches(card, patches)
    n, t = patches.shape[:2]
    out = np.empty((n, t, card.architecture.num_classes), np.float32)
    for start in range(0, n, batch_size):
        part = slice(start, start + batch_size)
        out[part] = _after_each_step(loaded, model_input(card, patches[part]), mask[part])
    return out


def read_window(
    card: ModelCard, cube: Cube, block: Block, dask_scheduler: str | Executor = "threads"
) -> tuple[np.ndarray, np.ndarray]:
    """The block as the model reads it: reflectance pixel-major (h + 2·half, w + 2·half, T, C) with a
    halo of ``half = patch_size // 2`` (reflected at the scene's edges, numpy "reflect" as in
    extract_patches) and the validity mask (T, h, w) of the block's own pixels.

    Only the window is read and composited (the time compositing is per pixel, so the prepared window
    equals the window of the prepared cube); ``dask_scheduler`` (a dask scheduler's name or an executor)
    computes it.
    """
    half = card.patch_size // 2
    height, width = cube.data.sizes["y"], cube.data.sizes["x"]
    rows = reflect_indices(block.row0 - half, block.row1 + half, height)
    cols = reflect_indices(block.col0 - half, block.col1 + half, width)
    r0, c0 = int(rows.min()), int(cols.min())
    window = cube.isel(y=slice(r0, int(rows.max()) + 1), x=slice(c0, int(cols.max()) + 1))
    prepared = prepare_cube(card, Cube(window.data, window.valid, window.attrs))
    # computed straight into pixel-major arrays, piece by piece: no second copy of the window
    t, c, h, w = prepared.data.shape
    data, valid = np.empty((h, w, t, c), np.float32), np.empty((t, h, w), bool)
    try:
        da.store(
            [prepared.data.data.transpose(2, 3, 0, 1), prepared.valid.data], [data, valid],
            lock=False, scheduler=dask_scheduler,
        )  # fmt: skip
    except OSError as error:
        source = cube.attrs.get("source", "the cube")
        raise DataError(
            f"cannot read {source} in rows {block.row0}–{block.row1}, columns {block.col0}–{block.col1}: "
            f"{error}"
        ) from None
    rows, cols = rows - r0, cols - c0
    inside = np.array_equal(rows, np.arange(h)) and np.array_equal(cols, np.arange(w))
    padded = data if inside else data[np.ix_(rows, cols)]  # reflected at the scene's edges: one copy
    return padded, valid[:, rows[half : len(rows) - half]][:, :, cols[half : len(cols) - half]]


#: Rows of a window normalised at a time (bounds the temporaries).
_SLAB = 32


@dataclass(frozen=True)
class Window:
    """A block's window as the model reads it: ``inputs`` (h + 2·half, w + 2·half, T, C) float32, the
    reflectance pixel-major with its halo, normalised with the model's statistics, NaN → 0 (per pixel
    exactly what :func:`~cropstar.infer.predict.model_input` makes of a patch), and ``valid`` (T, h, w)
    of the block's own pixels."""

    block: Block
    inputs: np.ndarray
    valid: np.ndarray

    @property
    def nbytes(self) -> int:
        return self.inputs.nbytes + self.valid.nbytes


def load_window(
    card: ModelCard, cube: Cube, block: Block, dask_scheduler: str | Executor = "threads"
) -> Window:
    """The :class:`Window` of ``block``: :func:`read_window`, normalised once per pixel of the window
    (not once per patch that holds it)."""
    inputs, valid = read_window(card, cube, block, dask_scheduler)
    for start in range(0, len(inputs), _SLAB):  # in place, a slab of rows at a time
        slab = inputs[start : start + _SLAB]
        slab[...] = np.nan_to_num(card.normalisation.apply(slab, band_axis=-1), nan=0.0)
    return Window(block, inputs, valid)


def pixel_batches(window: Window, batch_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Rows and columns (within the block) of the pixels with at least one valid observation, in
    row-major order, cut into batches of at most ``batch_size``: the forward passes of the block."""
    ys, xs = np.nonzero(window.valid.any(axis=0))
    return [(ys[s : s + batch_size], xs[s : s + batch_size]) for s in range(0, len(ys), batch_size)]


def patch_sequences(
    inputs: np.ndarray | torch.Tensor, ys: np.ndarray, xs: np.ndarray, patch_size: int
) -> np.ndarray | torch.Tensor:
    """The model inputs (n, T, C·P·P) of the pixels ``ys``, ``xs`` (rows and columns of the block) from a
    window's ``inputs`` (h + 2·half, w + 2·half, T, C) with its halo: the P × P patch around each pixel,
    in C-order of (C, P, P). An array gives an array (a view per pixel, one copy); a tensor, e.g. the
    window on a GPU, gives a tensor gathered on its device."""
    p = patch_size
    if isinstance(inputs, np.ndarray):
        x = sliding_window_view(inputs, (p, p), axis=(0, 1))[ys, xs]  # (n, T, C, P, P)
        return x.reshape(*x.shape[:2], -1)
    offsets = torch.arange(p, device=inputs.device)
    rows = torch.as_tensor(ys, device=inputs.device)[:, None] + offsets  # (n, P)
    cols = torch.as_tensor(xs, device=inputs.device)[:, None] + offsets
    x = inputs[rows[:, :, None], cols[:, None, :]]  # (n, P, P, T, C)
    return x.permute(0, 3, 4, 1, 2).reshape(len(ys), inputs.shape[2], -1)


def classify_pixels(
    loaded: LoadedModel,
    window: Window,
    ys: np.ndarray,
    xs: np.ndarray,
    layout: MapLayout,
    inputs: torch.Tensor | None = None,
) -> np.ndarray:
    """The map's bands (count, n) of the pixels ``ys``, ``xs`` of ``window`` in one forward pass.

    Their patch sequences are gathered from the normalised window straight into the model's input
    (n, T, C·P·P) (:func:`patch_sequences`): one copy, no normalising of overlapping patches again;
    from ``inputs``, the window's inputs on the model's device, where given.
    """
    card = loaded.card
    x = patch_sequences(window.inputs if inputs is None else inputs, ys, xs, card.patch_size)
    mask = window.valid[:, ys, xs].T
    if layout.per_timestep or card.task == "per_timestep":
        steps = _after_each_step(loaded, x, mask)
        final = steps[:, -1]
    else:
        steps, final = None, predict_inputs(loaded, x, mask)
    return layout.encode(final, steps, mask)


def classify_window(
    loaded: LoadedModel,
    window: Window,
    layout: MapLayout,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    map_batches: Callable[..., Iterable[np.ndarray]] = map,
) -> np.ndarray:
    """The map's bands (count, h, w) of a block from its window: every observed pixel through the
    model ``batch_size`` patch sequences at a time (:func:`pixel_batches`), the others no-data.

    ``map_batches(function, batches)``: how the batches run (default: one after another; e.g. an
    executor's ``map`` to run them on several threads). Each batch's result is the same however they
    run, so the map is too. A model on a GPU gets the window there once, and each batch gathers its
    patch sequences there (each pixel's values are in P² patches: copying the window moves 1/P² of
    what copying the patches would).
    """
    out = np.full((layout.count, *window.block.shape), layout.nodata, layout.dtype)
    batches = pixel_batches(window, batch_size)
    device = model_device(loaded)
    inputs = None if device.type == "cpu" or not batches else torch.from_numpy(window.inputs).to(device)
    results = map_batches(lambda batch: classify_pixels(loaded, window, *batch, layout, inputs), batches)
    for (ys, xs), bands in zip(batches, results, strict=True):
        out[:, ys, xs] = bands
    return out


def classify_block(
    loaded: LoadedModel,
    cube: Cube,
    block: Block,
    layout: MapLayout,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    dask_scheduler: str = "threads",
) -> np.ndarray:
    """The map's bands (count, h, w) of ``block`` of ``cube`` (the cube as opened; prepared here):
    :func:`load_window`, then :func:`classify_window` one batch after another.

    Pixels without any valid observation are no-data in every band and never reach the model; the
    others go through it ``batch_size`` patch sequences at a time, so memory follows the block size.
    """
    window = load_window(loaded.card, cube, block, dask_scheduler)
    return classify_window(loaded, window, layout, batch_size=batch_size)
