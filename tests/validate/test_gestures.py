"""Gesture clips: the moving-digit stand-in for Jester (determinism, motions drawn as named, a single
frame uninformative) and the lazy 20BN-Jester v1 reader on a tiny fake tree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import kruskal

from cropstar.errors import DataError, InputError
from cropstar.validate.gestures import (
    GESTURE_CLASSES,
    ClipStack,
    JesterClips,
    load_jester,
    moving_digits,
    sample_frame_indices,
)
from cropstar.validate.mnist import load_mnist


def _shapes(n: int, seed: int = 0) -> np.ndarray:
    """Digit-like test images (n, 28, 28) uint8: one or two random strokes (bars 2–4 pixels thick and
    8–16 long) inside the central 20×20 box."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    for image in images:
        for _ in range(rng.integers(1, 3)):
            length, width = rng.integers(8, 17), rng.integers(2, 5)
            h, w = (length, width) if rng.random() < 0.5 else (width, length)
            r0, c0 = rng.integers(4, 25 - h), rng.integers(4, 25 - w)
            image[r0 : r0 + h, c0 : c0 + w] = 255
    return images


def _spot(row: int, col: int, radius: float = 2.0) -> np.ndarray:
    """One image (1, 28, 28) with a bright round spot centred at (row, col)."""
    r, c = np.mgrid[0:28, 0:28] + 0.5
    return (255 * (np.hypot(r - row, c - col) <= radius)).astype(np.uint8)[None]


def _centre(frames: np.ndarray) -> np.ndarray:
    """Centre of mass (…, 2) as (x, y) in pixels of frames (…, S, S) on the torus (circular means)."""
    size = frames.shape[-1]
    phase = 2 * np.pi * (np.arange(size) + 0.5) / size
    mass = frames.astype(np.float64)
    out = []
    for axis in (-2, -1):  # x: sum over rows (axis −2 leaves columns), y: sum over columns
        profile = mass.sum(axis=axis)
        angle = np.angle((profile * np.exp(1j * phase)).sum(axis=-1))
        out.append(np.mod(angle, 2 * np.pi) * size / (2 * np.pi))
    return np.stack(out, axis=-1)


def _wrap(delta: np.ndarray, size: int) -> np.ndarray:
    return np.mod(delta + size / 2, size) - size / 2


def _radius(frames: np.ndarray) -> np.ndarray:
    """Radius of gyration (…) of frames (…, S, S) around their centre of mass on the torus."""
    size = frames.shape[-1]
    centre = _centre(frames)
    pixels = np.arange(size) + 0.5
    dx = _wrap(pixels - centre[..., :1], size)[..., None, :]  # (…, 1, S)
    dy = _wrap(pixels - centre[..., 1:], size)[..., :, None]  # (…, S, 1)
    mass = frames.astype(np.float64)
    return np.sqrt((mass * (dx**2 + dy**2)).sum(axis=(-2, -1)) / mass.sum(axis=(-2, -1)))


def _frame_features(frames: np.ndarray) -> np.ndarray:
    """Per frame (N, S, S): ink, radius of gyration and the torus position as cos/sin → (N, 5)."""
    size = frames.shape[-1]
    phase = 2 * np.pi * _centre(frames) / size
    ink = frames.astype(np.float64).sum(axis=(-2, -1))
    return np.column_stack(
        [ink, _radius(frames), np.cos(phase[:, 0]), np.sin(phase[:, 0]), np.sin(phase[:, 1])]
    )


# ---- moving digits --------------------------------------------------------------------------------


def test_moving_digits_shapes_balance_and_determinism() -> None:
    images = _shapes(30)
    clips = moving_digits(images, n_clips=20, frames=6, size=24, seed=3)
    assert clips.frames.shape == (20, 6, 1, 24, 24) and clips.frames.dtype == np.uint8
    assert clips.labels.shape == (20,) and clips.labels.dtype == np.int64
    assert clips.classes == list(GESTURE_CLASSES) and len(clips.classes) >= 8
    assert np.bincount(clips.labels, minlength=9).tolist() == [3, 3, 2, 2, 2, 2, 2, 2, 2]  # balanced
    assert clips.poses.shape == (20, 6, 4) and clips.digits.shape == (20,)
    assert clips.frames.max() > 200  # digits are drawn
    again = moving_digits(images, n_clips=20, frames=6, size=24, seed=3)
    np.testing.assert_array_equal(again.frames, clips.frames)
    np.testing.assert_array_equal(again.labels, clips.labels)
    other = moving_digits(images, n_clips=20, frames=6, size=24, seed=4)
    assert not np.array_equal(other.frames, clips.frames)
    x, y = clips.tensors()
    assert (
        x.dtype == torch.float32
        and x.shape == (20, 6, 1, 24, 24)
        and 0.0 <= float(x.min()) <= float(x.max()) <= 1.0
    )
    assert y.dtype == torch.int64
    item, label = clips[5]
    torch.testing.assert_close(item, x[5])
    assert label == int(clips.labels[5]) and len(clips) == 20


def test_moving_digits_class_subset_and_errors() -> None:
    images = _shapes(4)
    clips = moving_digits(images, n_clips=8, frames=4, size=16, classes=["zoom out", "swipe up"])
    assert clips.classes == ["zoom out", "swipe up"] and sorted(set(clips.labels.tolist())) == [0, 1]
    with pytest.raises(InputError, match="classes must be"):
        moving_digits(images, n_clips=8, classes=["wave"])
    with pytest.raises(InputError, match="uint8"):
        moving_digits(images.astype(np.float32), n_clips=8)
    with pytest.raises(InputError, match="n_clips"):
        moving_digits(images, n_clips=0)
    with pytest.raises(InputError, match=r"\(N, h, w\)"):
        moving_digits(images[0], n_clips=2)


def test_rendering_follows_the_poses_and_the_swipes_move_as_named() -> None:
    size, frames = 32, 8
    clips = moving_digits(_spot(14, 14, 3.0), n_clips=36, frames=frames, size=size, seed=1)
    centre = _centre(clips.frames[:, :, 0])  # (N, T, 2), the symmetric spot sits at the box centre
    assert np.abs(_wrap(centre - clips.poses[..., :2], size)).max() < 0.3  # drawn where the pose says
    moved = _wrap(centre[:, -1] - centre[:, 0], size)  # (N, 2) as (dx, dy)
    expected = {"swipe left": (-1, 0), "swipe right": (1, 0), "swipe up": (0, -1), "swipe down": (0, 1)}
    for label, name in enumerate(clips.classes):
        for dx, dy in moved[clips.labels == label]:
            sx, sy = expected.get(name, (0, 0))
            for step, direction in ((dx, sx), (dy, sy)):
                if direction:
                    assert step * direction > 0.2 * size, (name, dx, dy)
                else:
                    assert abs(step) < 0.3, (name, dx, dy)


def test_zoom_changes_the_extent_and_rotation_keeps_it() -> None:
    clips = moving_digits(_shapes(40, seed=2), n_clips=90, frames=6, size=32, seed=2)
    radius = _radius(clips.frames[:, :, 0])
    ratio = radius[:, -1] / radius[:, 0]
    names = np.asarray(clips.classes)[clips.labels]
    assert (ratio[names == "zoom in"] > 1.4).all()
    assert (ratio[names == "zoom out"] < 0.75).all()
    for steady in ("rotate clockwise", "rotate counter-clockwise", "swipe left", "swipe down", "no motion"):
        assert np.abs(ratio[names == steady] - 1).max() < 0.12, steady
    still = clips.frames[names == "no motion"]
    np.testing.assert_array_equal(still, np.repeat(still[:, :1], still.shape[1], axis=1))


def test_rotations_turn_as_named_on_screen() -> None:
    size = 48
    # a spot right of the box centre: at angle a (clockwise on screen) it is at centre + r (cos a, sin a)
    clips = moving_digits(_spot(14, 22, 2.0), n_clips=18, frames=5, size=size, seed=5)
    offset = _wrap(_centre(clips.frames[:, :, 0]) - clips.poses[..., :2], size)
    seen = np.degrees(np.arctan2(offset[..., 1], offset[..., 0]))  # y down: grows clockwise
    assert np.abs(_wrap(seen - clips.poses[..., 3], 360.0)).max() < 4.0
    turned = _wrap(seen[:, -1] - seen[:, 0], 360.0)
    names = np.asarray(clips.classes)[clips.labels]
    assert (turned[names == "rotate clockwise"] > 60).all()
    assert (turned[names == "rotate counter-clockwise"] < -60).all()
    assert np.abs(turned[~np.isin(names, ["rotate clockwise", "rotate counter-clockwise"])]).max() < 4.0


def _between_class_spread(frames: np.ndarray, labels: np.ndarray, classes: int) -> float:
    """Sum over pixels of the variance across classes of the per-class mean frame."""
    flat = frames.reshape(len(frames), -1).astype(np.float64)
    return float(np.stack([flat[labels == k].mean(axis=0) for k in range(classes)]).var(axis=0).sum())


def test_a_single_frame_does_not_tell_the_class() -> None:
    """Ink, extent and (torus) position of the first frame have the same distribution in every class
    (Kruskal–Wallis across the 9 classes), and the per-class mean first frames differ no more than
    under shuffled labels; the same checks on the last frame see the zooms."""
    clips = moving_digits(_shapes(200, seed=7), n_clips=900, frames=8, size=24, seed=7)
    k = len(clips.classes)
    groups = [clips.labels == label for label in range(k)]
    first = _frame_features(clips.frames[:, 0, 0])
    for column in range(first.shape[1]):
        assert kruskal(*(first[g, column] for g in groups)).pvalue > 1e-3, column
    rng = np.random.default_rng(0)
    shuffles = [rng.permutation(clips.labels) for _ in range(40)]
    null = [_between_class_spread(clips.frames[:, 0, 0], s, k) for s in shuffles]
    spread = _between_class_spread(clips.frames[:, 0, 0], clips.labels, k)
    assert np.mean(np.asarray(null) >= spread) > 0.05  # the mean first frames are alike
    # the checks have power: the last frame's extent and mean frame give the zooms away
    last = _frame_features(clips.frames[:, -1, 0])
    assert kruskal(*(last[g, 1] for g in groups)).pvalue < 1e-10
    null = [_between_class_spread(clips.frames[:, -1, 0], s, k) for s in shuffles]
    assert _between_class_spread(clips.frames[:, -1, 0], clips.labels, k) > 1.5 * max(null)


def test_progress_is_reported_per_chunk() -> None:
    calls: list[tuple[str, int, int]] = []
    moving_digits(_shapes(3), n_clips=5, frames=3, size=16, chunk=2, progress=lambda *a: calls.append(a))
    assert calls == [("render", 2, 5), ("render", 4, 5), ("render", 5, 5)]


@pytest.mark.realdata
def test_mnist_digits_move_as_named(shared_data: Path) -> None:
    images = load_mnist(shared_data / "mnist", "test").images[:500]
    clips = moving_digits(images, n_clips=180, frames=8, size=32, seed=11)
    names = np.asarray(clips.classes)[clips.labels]
    centre = _centre(clips.frames[:, :, 0])
    moved = _wrap(centre[:, -1] - centre[:, 0], 32)
    assert (moved[names == "swipe left", 0] < -5).all() and (moved[names == "swipe right", 0] > 5).all()
    assert (moved[names == "swipe up", 1] < -5).all() and (moved[names == "swipe down", 1] > 5).all()
    radius = _radius(clips.frames[:, :, 0])
    ratio = radius[:, -1] / radius[:, 0]
    assert (ratio[names == "zoom in"] > 1.3).all() and (ratio[names == "zoom out"] < 0.8).all()
    rotated = np.isin(names, ["rotate clockwise", "rotate counter-clockwise"])
    assert np.abs(ratio[rotated] - 1).max() < 0.15
    first = _frame_features(clips.frames[:, 0, 0])
    for column in range(first.shape[1]):
        assert kruskal(*(first[clips.labels == k, column] for k in range(9))).pvalue > 1e-3, column


# ---- 20BN-Jester v1 --------------------------------------------------------------------------------

LABELS = ["Swiping Left", "Swiping Right", "No gesture"]


def _colour(i: int) -> tuple[int, int, int]:
    return (20 * i, 100, 200 - 10 * i)


def _jester_tree(root: Path, videos: dict[str, int]) -> Path:
    """A fake Jester tree: per video id that many solid-colour 40×30 JPEG frames (frame i: _colour(i))."""
    from PIL import Image

    for video_id, count in videos.items():
        folder = root / "20bn-jester-v1" / video_id
        folder.mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (40, 30), _colour(i)).save(folder / f"{i + 1:05d}.jpg", quality=95)
    (root / "jester-v1-labels.csv").write_text("\n".join(LABELS) + "\n")
    return root


def test_frame_sampling_is_uniform_or_pads_with_the_last_frame() -> None:
    assert sample_frame_indices(12, 8).tolist() == [0, 2, 3, 5, 6, 8, 9, 11]
    assert sample_frame_indices(8, 8).tolist() == list(range(8))
    assert sample_frame_indices(5, 8).tolist() == [0, 1, 2, 3, 4, 4, 4, 4]


def test_jester_clips_sample_resize_and_label(tmp_path: Path) -> None:
    root = _jester_tree(tmp_path, {"101": 12, "7": 5, "33": 9})
    (root / "jester-v1-train.csv").write_text("101;Swiping Right\n7;No gesture\n33;Swiping Left\n")
    clips = load_jester(root, "jester-v1-train.csv", frames=8, size=16)
    assert isinstance(clips, JesterClips) and len(clips) == 3
    assert clips.classes == LABELS and clips.ids == ["101", "7", "33"]
    assert clips.labels.tolist() == [1, 2, 0]
    x, label = clips[0]
    assert x.shape == (8, 3, 16, 16) and x.dtype == torch.float32 and label == 1
    expected = torch.tensor([_colour(i) for i in [0, 2, 3, 5, 6, 8, 9, 11]], dtype=torch.float32) / 255
    torch.testing.assert_close(x.mean(dim=(2, 3)), expected, atol=3 / 255, rtol=0)
    x, label = clips[1]  # 5 frames padded with the last
    expected = torch.tensor([_colour(min(i, 4)) for i in range(8)], dtype=torch.float32) / 255
    torch.testing.assert_close(x.mean(dim=(2, 3)), expected, atol=3 / 255, rtol=0)
    assert label == 2
    batch = torch.utils.data.default_collate([clips[0], clips[2]])
    assert batch[0].shape == (2, 8, 3, 16, 16) and batch[1].tolist() == [1, 0]
    # limit, absolute CSV paths, the unlabelled test split
    assert len(JesterClips(root, root / "jester-v1-train.csv", root / "jester-v1-labels.csv", limit=2)) == 2
    (root / "jester-v1-test.csv").write_text("33\n7\n")
    test = load_jester(root, "jester-v1-test.csv", frames=4, size=8)
    assert test.labels.tolist() == [-1, -1] and test[0][0].shape == (4, 3, 8, 8)


def test_jester_errors_name_the_file_the_video_and_the_label(tmp_path: Path) -> None:
    root = _jester_tree(tmp_path, {"1": 3, "2": 0})
    (root / "missing.csv").write_text("1;Swiping Left\n99;No gesture\n")
    with pytest.raises(InputError, match=r"row 2: video folder not found: .*20bn-jester-v1/99"):
        load_jester(root, "missing.csv")
    (root / "unknown.csv").write_text("1;Swiping Left\n2;Waving Hand\n")
    with pytest.raises(DataError, match=r"unknown.csv row 2 \(video 2\): label 'Waving Hand' is not in"):
        load_jester(root, "unknown.csv")
    with pytest.raises(InputError, match="CSV file not found: .*nowhere.csv"):
        load_jester(root, "nowhere.csv")
    with pytest.raises(InputError, match="root folder not found"):
        load_jester(tmp_path / "absent", "missing.csv")
    (root / "empty.csv").write_text("2;No gesture\n")
    empty = load_jester(root, "empty.csv")
    with pytest.raises(DataError, match=r"video 2: no .jpg frames in .*20bn-jester-v1/2"):
        empty[0]


def test_a_clip_stack_decodes_the_clips_it_is_indexed_with(tmp_path: Path) -> None:
    root = _jester_tree(tmp_path, {"101": 12, "7": 5, "33": 9})
    (root / "jester-v1-train.csv").write_text("101;Swiping Right\n7;No gesture\n33;Swiping Left\n")
    clips = load_jester(root, "jester-v1-train.csv", frames=6, size=8)
    stack = ClipStack(clips, [2, 0], threads=2)
    assert len(stack) == 2 and stack.dim() == 5 and stack.shape == (2, 6, 3, 8, 8)
    assert stack.labels.tolist() == [0, 1]
    torch.testing.assert_close(stack[torch.tensor([1, 0])], torch.stack([clips[0][0], clips[2][0]]))
    assert stack[[]].shape == (0, 6, 3, 8, 8)
    with pytest.raises(InputError, match=r"clip positions must lie in 0 … 2"):
        ClipStack(clips, [0, 3])
    digits = moving_digits(_shapes(4), n_clips=6, frames=3, size=16, seed=2)  # uint8 until read
    whole_x, whole_y = digits.tensors()
    stack = ClipStack(digits, range(1, 6))
    assert stack.shape == (5, 3, 1, 16, 16) and torch.equal(stack.labels, whole_y[1:])
    assert torch.equal(stack[torch.tensor([4, 0, 2])], whole_x[torch.tensor([5, 1, 3])])
