"""Gesture video clips for the gestures suite (DESIGN.md "The paper's protocols": 20BN-Jester v1, 32 frames
of 112×112 fed to a conv RNN): moving MNIST digits as a stand-in, and a lazy reader of the real Jester.

**Moving digits** (:func:`moving_digits`). The class is the motion, never the digit: a random MNIST
digit is swiped left / right / up / down, zoomed in / out, rotated clockwise / counter-clockwise, or
held still. Every clip draws its digit, first pose (centre, size, angle), amount (distance, zoom factor,
turn) and timing (the motion starts and ends at random frames) from a seeded generator. The first
frame's pose has the same distribution in every class, and the canvas wraps around like a torus (a digit
leaving on the left comes back on the right) with the centre uniform over it and the angle uniform over
the circle, so a single frame does not tell the class: the position and angle of every frame are
uniform in every class, and only the zoom classes' later frames differ in size. Time-reversed classes
(left/right, up/down, in/out, clockwise/counter-clockwise) visit the same poses, only in opposite
order, so even an unordered bag of frames cannot tell them apart.

Screen coordinates: x to the right, y downwards (image rows); "up" is −y, and "clockwise" is as seen on
the screen.

**Jester** (:class:`JesterClips`, :func:`load_jester`): the 20BN-Jester v1 layout, for users who hold
it — ``<root>/20bn-jester-v1/<id>/00001.jpg …`` (or the video folders directly in ``root``), the class
list ``jester-v1-labels.csv`` (one name a line) and the splits ``jester-v1-train.csv`` /
``jester-v1-validation.csv`` (``id;label``, ``;``-separated, no header; the test split has ids only).
Clips are read lazily per item: frames sampled uniformly (or padded by repeating the last one) to
``frames``, each resized as a whole to ``size``×``size``, RGB in [0, 1]. :class:`ClipStack` indexes a
subset of them like a tensor of clips, decoding each batch in threads, so a sweep streams the clips
instead of holding them in memory (Jester's 118,562 training clips of 32 frames 112² are 143 GB as bytes).

Both datasets yield items ``(frames (T, C, size, size) float32 in [0, 1], label int)``.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from cropstar.errors import DataError, InputError

#: The motions of :func:`moving_digits`, in label order.
GESTURE_CLASSES: tuple[str, ...] = (
    "swipe left",
    "swipe right",
    "swipe up",
    "swipe down",
    "zoom in",
    "zoom out",
    "rotate clockwise",
    "rotate counter-clockwise",
    "no motion",
)

#: First frame: side of the digit's 28×28 box as a fraction of the canvas side.
BOX_RANGE = (0.35, 0.5)
#: Swipes: distance travelled as a fraction of the canvas side (below one half: no aliasing on the torus).
SWIPE_RANGE = (0.25, 0.45)
#: Zooms: ratio of the last to the first size (its inverse for "zoom out").
ZOOM_RANGE = (1.6, 2.0)
#: Rotations: turn in degrees.
TURN_RANGE = (90.0, 180.0)
#: The motion starts within the first quarter of the clip and ends within the last quarter.
ONSET_RANGE = (0.0, 0.25)
OFFSET_RANGE = (0.75, 1.0)
#: Area-averaging factors of the digit copies sampled for small drawings (mipmapping, anti-aliasing).
MIPMAP_LEVELS = (1, 2, 4)

#: progress(task, done, total), called once per rendered chunk of clips.
Progress = Callable[[str, int, int], None]


@dataclass(eq=False)
class GestureClips(Dataset):
    """Moving-digit clips: ``frames`` (N, T, 1, S, S) uint8 (0–255), ``labels`` (N,) int64 into ``classes``.

    ``digits`` (N,) is the index of each clip's digit in the source images; ``poses`` (N, T, 4) float32
    holds each frame's digit centre x, y (pixels, on the torus [0, S)), box side (pixels) and angle
    (degrees, clockwise). Items are ``(frames[i] / 255 as float32, label)``.
    """

    frames: np.ndarray
    labels: np.ndarray
    classes: list[str]
    digits: np.ndarray
    poses: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return torch.from_numpy(self.frames[index]).float().div_(255.0), int(self.labels[index])

    @property
    def item_shape(self) -> tuple[int, ...]:
        """(T, 1, S, S): the shape of one clip."""
        return tuple(self.frames.shape[1:])

    def tensors(self) -> tuple[Tensor, Tensor]:
        """All clips at once: x (N, T, 1, S, S) float32 in [0, 1] and labels (N,) int64 (4 bytes a pixel:
        for large sets, index the dataset per batch instead)."""
        return torch.from_numpy(self.frames).float().div_(255.0), torch.from_numpy(self.labels)


def _uniform(rng: np.random.Generator, bounds: tuple[float, float], n: int) -> np.ndarray:
    return rng.uniform(bounds[0], bounds[1], size=n)


def gesture_poses(
    labels: np.ndarray, classes: Sequence[str], *, frames: int, size: int, rng: np.random.Generator
) -> np.ndarray:
    """Per-frame poses (N, T, 4) — centre x, y, box side (pixels), angle (degrees) — for the motions
    ``classes[labels]``; see the module docstring for the distributions."""
    n = len(labels)
    names = np.asarray(classes, dtype=object)[labels]
    x0 = rng.uniform(0.0, size, n)
    y0 = rng.uniform(0.0, size, n)
    box0 = _uniform(rng, BOX_RANGE, n) * size
    angle0 = rng.uniform(0.0, 360.0, n)
    distance = _uniform(rng, SWIPE_RANGE, n) * size
    log_zoom = np.log(_uniform(rng, ZOOM_RANGE, n))
    turn = _uniform(rng, TURN_RANGE, n)
    onset = _uniform(rng, ONSET_RANGE, n) * (frames - 1)
    offset = _uniform(rng, OFFSET_RANGE, n) * (frames - 1)
    t = np.arange(frames, dtype=np.float64)
    # motion progress 0 → 1, linear between the onset and offset frames
    progress = np.clip((t[None] - onset[:, None]) / np.maximum(offset - onset, 1e-6)[:, None], 0.0, 1.0)

    def sign(positive: str, negative: str) -> np.ndarray:
        return ((names == positive).astype(np.float64) - (names == negative).astype(np.float64))[:, None]

    x = x0[:, None] + sign("swipe right", "swipe left") * distance[:, None] * progress
    y = y0[:, None] + sign("swipe down", "swipe up") * distance[:, None] * progress
    box = box0[:, None] * np.exp(sign("zoom in", "zoom out") * log_zoom[:, None] * progress)
    angle = angle0[:, None] + sign("rotate clockwise", "rotate counter-clockwise") * turn[:, None] * progress
    poses = np.stack([np.mod(x, size), np.mod(y, size), box, np.mod(angle, 360.0)], axis=-1)
    return poses.astype(np.float32)


def render_digits(digits: Tensor, poses: Tensor, size: int) -> Tensor:
    """Draw digits (M, 28, 28) in [0, 1] at poses (M, 4) on a wrapping size×size canvas → (M, size, size).

    Each canvas pixel samples (bilinear, zero outside the box) the digit at its offset from the digit's
    centre taken on the torus, turned back by the angle and divided by the box side. A digit drawn
    smaller than its 28 pixels is sampled from a copy area-averaged by 2 or 4 (mipmapping), so that a
    small digit is a blurred rather than an aliased one.
    """
    out = digits.new_empty(len(digits), size, size)
    reduction = 28.0 / poses[:, 2].clamp(min=1e-3)  # source pixels per canvas pixel
    level = torch.log2(reduction).floor().clamp(0, len(MIPMAP_LEVELS) - 1).long()
    centres = torch.arange(size, dtype=torch.float32) + 0.5
    for k, factor in enumerate(MIPMAP_LEVELS):
        chosen = (level == k).nonzero().squeeze(1)
        if len(chosen) == 0:
            continue
        source = digits[chosen].unsqueeze(1)
        if factor > 1:
            source = F.avg_pool2d(source, factor, ceil_mode=True)
        cx, cy, box, angle = (poses[chosen, i, None, None, None] for i in range(4))
        dx = torch.remainder(centres[None, None, :, None] - cx + size / 2, size) - size / 2  # (m, 1, S, 1)
        dy = torch.remainder(centres[None, :, None, None] - cy + size / 2, size) - size / 2  # (m, S, 1, 1)
        theta = torch.deg2rad(angle)
        cos, sin = torch.cos(theta) / (box / 2), torch.sin(theta) / (box / 2)
        # undo a clockwise turn (on screen, y down): (u, v) = R(−θ)(dx, dy), R(−θ) = [[cos, sin], [−sin, cos]]
        grid = torch.addcmul(dx * torch.cat([cos, -sin], dim=-1), dy, torch.cat([sin, cos], dim=-1))
        drawn = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out[chosen] = drawn.squeeze(1)
    return out


def moving_digits(
    images: np.ndarray,
    *,
    n_clips: int,
    frames: int = 32,
    size: int = 112,
    seed: int = 0,
    classes: Sequence[str] | None = None,
    chunk: int = 256,
    progress: Progress | None = None,
) -> GestureClips:
    """Moving-digit gesture clips from MNIST digits ``images`` (N, 28, 28) uint8.

    ``n_clips`` clips of ``frames`` frames, ``size``×``size`` pixels, one channel; the labels are
    balanced over ``classes`` (default :data:`GESTURE_CLASSES`, any subset of it in any order) and
    shuffled. Deterministic for a given ``seed``. ``chunk`` clips are rendered at a time.
    """
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[0] == 0:
        raise InputError(f"images must be (N, h, w) digits with N ≥ 1, got shape {images.shape}")
    if images.dtype != np.uint8:
        raise InputError(f"images must be uint8 (0–255), got dtype {images.dtype}")
    for name, value, least in (
        ("n_clips", n_clips, 1),
        ("frames", frames, 2),
        ("size", size, 8),
        ("chunk", chunk, 1),
    ):
        if not isinstance(value, int) or value < least:
            raise InputError(f"{name} must be an integer ≥ {least}, got {value!r}")
    names = list(GESTURE_CLASSES if classes is None else classes)
    unknown = [c for c in names if c not in GESTURE_CLASSES]
    if unknown or not names or len(set(names)) != len(names):
        raise InputError(f"classes must be distinct names among {', '.join(GESTURE_CLASSES)}; got {names!r}")
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n_clips) % len(names)).astype(np.int64)
    digit_index = rng.integers(0, len(images), size=n_clips)
    poses = gesture_poses(labels, names, frames=frames, size=size, rng=rng)
    out = np.empty((n_clips, frames, 1, size, size), dtype=np.uint8)
    for start in range(0, n_clips, chunk):
        stop = min(start + chunk, n_clips)
        digits = torch.from_numpy(images[digit_index[start:stop]]).float().div_(255.0)
        digits = digits.repeat_interleave(frames, dim=0)  # (M·T, 28, 28)
        pose = torch.from_numpy(poses[start:stop]).reshape(-1, 4)
        drawn = render_digits(digits, pose, size).mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)
        out[start:stop, :, 0] = drawn.reshape(stop - start, frames, size, size).numpy()
        if progress is not None:
            progress("render", stop, n_clips)
    return GestureClips(frames=out, labels=labels, classes=names, digits=digit_index, poses=poses)


# ---- 20BN-Jester v1 ---------------------------------------------------------------------------------

VIDEO_FOLDER = "20bn-jester-v1"


def _read_rows(path: Path) -> list[list[str]]:
    if not path.is_file():
        raise InputError(f"Jester CSV file not found: {path}")
    with path.open(newline="", encoding="utf-8") as handle:
        return [[field.strip() for field in row] for row in csv.reader(handle, delimiter=";") if row]


def read_jester_labels(path: Path) -> list[str]:
    """The class names of ``jester-v1-labels.csv`` (one a line, no header), in label order."""
    names = [row[0] for row in _read_rows(path) if row[0]]
    if not names:
        raise DataError(f"{path}: no class names")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(f"{path}: class names listed twice: {', '.join(duplicates)}")
    return names


def sample_frame_indices(available: int, frames: int) -> np.ndarray:
    """Indices of ``frames`` frames out of ``available``: uniform over the video (first and last kept)
    when it is long enough, else every frame and the last one repeated."""
    if available >= frames:
        return np.round(np.linspace(0, available - 1, frames)).astype(np.int64)
    return np.minimum(np.arange(frames), available - 1)


class JesterClips(Dataset):
    """20BN-Jester v1 clips, read lazily: item i is ``(frames (T, 3, size, size) float32 in [0, 1], label)``.

    ``root`` holds the video folders in ``20bn-jester-v1/`` (or directly); ``split_csv`` (``id;label``,
    or ``id`` only for the unlabelled test split, label −1) and ``labels_csv`` are paths, relative to
    ``root`` unless absolute. ``limit`` keeps the first rows of the split. Every video folder named by the
    split must exist (checked here); an empty one is reported when its item is read.
    """

    def __init__(
        self,
        root: Path | str,
        split_csv: Path | str,
        labels_csv: Path | str,
        *,
        frames: int = 32,
        size: int = 112,
        limit: int | None = None,
    ) -> None:
        root = Path(root)
        for name, value in (("frames", frames), ("size", size)):
            if not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise InputError(f"limit must be a non-negative integer or None, got {limit!r}")
        if not root.is_dir():
            raise InputError(f"Jester root folder not found: {root}")
        self.root = root
        self.videos = root / VIDEO_FOLDER if (root / VIDEO_FOLDER).is_dir() else root
        self.frames = frames
        self.size = size
        labels_path, split_path = root / labels_csv, root / split_csv
        self.classes = read_jester_labels(labels_path)
        index = {name: i for i, name in enumerate(self.classes)}
        rows = _read_rows(split_path)
        if limit is not None:
            rows = rows[:limit]
        ids: list[str] = []
        labels: list[int] = []
        for line, row in enumerate(rows, start=1):
            video_id = row[0]
            if len(row) == 1 or not row[1]:
                label = -1
            elif row[1] in index:
                label = index[row[1]]
            else:
                raise DataError(
                    f"{split_path} row {line} (video {video_id}): label {row[1]!r} is not in {labels_path}"
                )
            if not (self.videos / video_id).is_dir():
                raise InputError(f"{split_path} row {line}: video folder not found: {self.videos / video_id}")
            ids.append(video_id)
            labels.append(label)
        self.ids = ids
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def item_shape(self) -> tuple[int, ...]:
        """(T, 3, size, size): the shape of one clip."""
        return (self.frames, 3, self.size, self.size)

    def frame_paths(self, index: int) -> list[Path]:
        """The JPEG frames of video ``index``, in order."""
        folder = self.videos / self.ids[index]
        paths = sorted(folder.glob("*.jpg"))
        if not paths:
            raise DataError(f"video {self.ids[index]}: no .jpg frames in {folder}")
        return paths

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        from PIL import Image

        paths = self.frame_paths(index)
        clip = np.empty((self.frames, self.size, self.size, 3), dtype=np.uint8)
        loaded: dict[int, np.ndarray] = {}
        for t, i in enumerate(sample_frame_indices(len(paths), self.frames).tolist()):
            if i not in loaded:
                try:
                    with Image.open(paths[i]) as image:
                        resized = image.convert("RGB").resize(
                            (self.size, self.size), Image.Resampling.BILINEAR
                        )
                except OSError as error:
                    raise InputError(
                        f"video {self.ids[index]}: cannot read frame {paths[i]}: {error}"
                    ) from error
                loaded[i] = np.asarray(resized)
            clip[t] = loaded[i]
        x = torch.from_numpy(clip).permute(0, 3, 1, 2).float().div_(255.0)
        return x.contiguous(), int(self.labels[index])


def load_jester(
    root: Path | str,
    split_csv: Path | str = "jester-v1-train.csv",
    labels_csv: Path | str = "jester-v1-labels.csv",
    *,
    frames: int = 32,
    size: int = 112,
    limit: int | None = None,
) -> JesterClips:
    """The Jester split ``split_csv`` under ``root`` as a lazy :class:`JesterClips` dataset."""
    return JesterClips(root, split_csv, labels_csv, frames=frames, size=size, limit=limit)


class ClipStack:
    """Clips ``positions`` of a :class:`JesterClips` or :class:`GestureClips`, indexed like a
    (N, T, C, h, w) float32 tensor: ``stack[index]`` (a tensor or list of positions within the stack)
    reads those clips in ``threads`` threads (PIL releases the GIL while decoding JPEGs) and stacks them.
    Nothing is converted ahead: Jester clips stay on disk, moving digits stay uint8 (a quarter of the
    float32 size). ``labels`` (N,) int64."""

    def __init__(
        self,
        clips: JesterClips | GestureClips,
        positions: Sequence[int] | np.ndarray,
        threads: int | None = None,
    ) -> None:
        self.clips = clips
        self.positions = np.asarray(positions, dtype=np.int64)
        if self.positions.size and (self.positions.min() < 0 or self.positions.max() >= len(clips)):
            raise InputError(f"clip positions must lie in 0 … {len(clips) - 1}")
        self.labels = torch.from_numpy(clips.labels[self.positions].copy())
        self.threads = threads or min(8, os.cpu_count() or 1)
        self.shape = torch.Size((len(self.positions), *clips.item_shape))

    def __len__(self) -> int:
        return len(self.positions)

    def dim(self) -> int:
        return len(self.shape)

    def __getitem__(self, index: Tensor | Sequence[int]) -> Tensor:
        chosen = self.positions[np.asarray(index, dtype=np.int64)].tolist()
        if not chosen:
            return torch.empty((0, *self.shape[1:]))
        with ThreadPoolExecutor(max_workers=min(self.threads, len(chosen))) as pool:
            return torch.stack([x for x, _ in pool.map(self.clips.__getitem__, chosen)])
