"""Synthetic blood-smear scenes with exact masks, 2D and 3D.

A scene is a bright-field picture of a thin blood smear: red cells (discs or spheres with a paler centre),
white cells (large, with a dark lobulated nucleus), single platelets (2-4 px) and platelet aggregates (clusters of
3-6 platelets), on a smoothly varying background with blur and noise. Objects are placed without overlap, at least
two pixels apart, so every object is its own connected component in the label maps.

:func:`oneshot_scene` makes scenes of many object classes told apart by their texture, for one-shot tests and
benchmarks where classes must be split into seen and unseen folds.

Layout: images ``[1, *spatial]`` float32 in [0, 1]; semantic and instance labels ``[*spatial]``;
``len(spatial)`` is 2 or 3.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

__all__ = ["BLOOD_CLASSES", "MIN_SCENE_SIZE", "blood_smear_scene", "oneshot_scene"]

BLOOD_CLASSES: dict[int, str] = {
    0: "background",
    1: "red_cell",
    2: "white_cell",
    3: "platelet",
    4: "platelet_aggregate",
}
MIN_SCENE_SIZE = 32

_RED, _WHITE, _PLATELET, _AGGREGATE = 1, 2, 3, 4
# default counts per 64^2 pixels (2D) or 32^3 voxels (3D), scaled with the scene size, at least 1 each
_DEFAULT_COUNTS = {
    2: {_RED: 8, _WHITE: 1, _PLATELET: 6, _AGGREGATE: 2},
    3: {_RED: 5, _WHITE: 1, _PLATELET: 8, _AGGREGATE: 2},
}
_REFERENCE_SIZE = {2: 64**2, 3: 32**3}
_GAP = 2.0  # minimum free distance between the bounding balls of two objects, in pixels
_TRIES = 256  # candidate centres drawn per object


def _balls(box: tuple[slice, ...], centres: np.ndarray, radii: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise the union of balls inside a box of the scene.

    Args:
        box: one slice per spatial axis, the region to rasterise.
        centres: ``[K, ndim]`` ball centres in scene coordinates (pixel centres lie on integers).
        radii: ``[K]`` ball radii.

    Returns:
        ``(inside, rel)``: a bool mask of the union over the box, and the distance to the first ball's centre
        divided by its radius (used for radial intensity profiles).
    """
    grids = np.ogrid[box]
    d2 = sum((g[None] - centres[:, k].reshape((-1,) + (1,) * len(grids))) ** 2 for k, g in enumerate(grids))
    inside = (d2 <= radii.reshape((-1,) + (1,) * len(grids)) ** 2).any(0)
    return inside, np.sqrt(d2[0]) / radii[0]


def _box(shape: tuple[int, ...], centre: np.ndarray, radius: float) -> tuple[slice, ...]:
    lo = np.maximum(np.floor(centre - radius).astype(int), 0)
    hi = np.minimum(np.ceil(centre + radius).astype(int) + 1, shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _place(
    rng: np.random.Generator, shape: tuple[int, ...], radius: float, centres: list, radii: list, inside: bool
) -> np.ndarray | None:
    """Draw a centre whose bounding ball is clear of every placed ball, or None.

    Cells (``inside=False``) only need their centre in the scene and may be cut by its border; platelets and
    aggregates (``inside=True``) lie wholly inside, centred on pixel corners so a platelet of radius in [1, 2)
    is 2 or 4 px wide.
    """
    if inside:
        lo, hi = np.ceil(radius - 0.5), np.floor(np.asarray(shape) - 1.5 - radius)
        cand = rng.integers(lo, hi + 1, size=(_TRIES, len(shape))) + 0.5
    else:
        cand = rng.uniform(0.0, np.asarray(shape) - 1.0, size=(_TRIES, len(shape)))
    if centres:
        dist = np.linalg.norm(cand[:, None] - np.asarray(centres)[None], axis=-1)
        ok = (dist >= radius + np.asarray(radii)[None] + _GAP).all(1)
        if not ok.any():
            return None
        cand = cand[ok]
    return cand[0]


def _aggregate_members(rng: np.random.Generator, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer offsets ``[K, ndim]`` and radii ``[K]`` of 3-6 platelets forming one connected cluster.

    Each platelet sits 1-2 px (per axis, not all zero) from an earlier one; as every platelet covers the 2^ndim
    pixels around its pixel-corner centre, neighbouring platelets touch or overlap.
    """
    k = int(rng.integers(3, 7))
    steps = np.indices((5,) * ndim).reshape(ndim, -1).T - 2
    steps = steps[np.abs(steps).sum(1) > 0]
    anchors = [int(rng.integers(0, i)) for i in range(1, k)]
    moves = steps[rng.integers(0, len(steps), size=k - 1)]
    offsets = np.zeros((k, ndim))
    for i, (anchor, move) in enumerate(zip(anchors, moves), start=1):
        offsets[i] = offsets[anchor] + move
    return offsets - np.round(offsets.mean(0)), rng.uniform(1.0, 2.0, size=k)


def _check_count(name: str, value: int | None, default: int) -> int:
    if value is None:
        return default
    if int(value) != value or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value}.")
    return int(value)


def blood_smear_scene(
    shape: Sequence[int],
    seed: int,
    n_red: int | None = None,
    n_white: int | None = None,
    n_platelets: int | None = None,
    n_aggregates: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generate a blood-smear-like scene with exact semantic and instance masks.

    Red cells are 8-14 px across with a paler centre, white cells 16-30 px (at most a quarter of the smallest
    side) with a dark nucleus of 2-4 lobes, single platelets 2 or 4 px, aggregates 3-6 touching platelets.
    Objects are placed in the order white cells, aggregates, platelets, red cells, at least 2 px apart; cells may
    be cut by the border, platelets and aggregates lie wholly inside. An object that finds no free spot in 256
    tries is left out (with a warning when its count was given explicitly). Default counts scale with the scene
    size (per 64x64 pixels: 8 red, 1 white, 6 platelets, 2 aggregates; per 32^3 voxels: 5, 1, 8, 2), at least
    one of each; a crowded scene may hold a few red cells fewer.

    Args:
        shape: spatial size, 2 or 3 entries, each at least ``MIN_SCENE_SIZE`` (32).
        seed: seed of the scene's ``numpy.random.Generator``; the same seed gives the same scene.
        n_red: number of red cells; ``None`` for the default.
        n_white: number of white cells; ``None`` for the default.
        n_platelets: number of single platelets; ``None`` for the default.
        n_aggregates: number of platelet aggregates; ``None`` for the default.

    Returns:
        ``(image, semantic, instance)``: image float32 ``[1, *shape]`` in [0, 1] (dark objects on a bright
        background), semantic label uint8 ``[*shape]`` with the classes of ``BLOOD_CLASSES``, instance label
        int32 ``[*shape]`` (0 background, 1..N one id per object, an aggregate being one object).

    Raises:
        ValueError: when ``shape`` does not have 2 or 3 entries or a side is smaller than 32, or a count is
            negative or not an integer.

    Example:
        >>> image, semantic, instance = blood_smear_scene((64, 64), seed=0)
        >>> image.shape, semantic.dtype, sorted(set(semantic.ravel().tolist()))
        ((1, 64, 64), dtype('uint8'), [0, 1, 2, 3, 4])
    """
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    if ndim not in (2, 3):
        raise ValueError(f"shape must have 2 or 3 entries (2D or 3D), got {shape}.")
    if min(shape) < MIN_SCENE_SIZE:
        raise ValueError(f"every side of shape must be at least {MIN_SCENE_SIZE}, got {shape}.")
    scale = float(np.prod(shape)) / _REFERENCE_SIZE[ndim]
    defaults = {c: max(1, round(n * scale)) for c, n in _DEFAULT_COUNTS[ndim].items()}
    requested = {_WHITE: n_white, _AGGREGATE: n_aggregates, _PLATELET: n_platelets, _RED: n_red}
    names = {_WHITE: "n_white", _AGGREGATE: "n_aggregates", _PLATELET: "n_platelets", _RED: "n_red"}
    counts = {c: _check_count(names[c], requested[c], defaults[c]) for c in requested}
    rng = np.random.default_rng(seed)
    white_r = (8.0, min(15.0, min(shape) / 4))

    transmittance = np.ones(shape, np.float32)
    semantic = np.zeros(shape, np.uint8)
    instance = np.zeros(shape, np.int32)
    centres: list[np.ndarray] = []
    radii: list[float] = []
    for cls, count in counts.items():
        placed = 0
        for _ in range(count):
            if cls == _AGGREGATE:
                offsets, member_r = _aggregate_members(rng, ndim)
                radius = float(np.max(np.linalg.norm(offsets, axis=1) + member_r))
            else:
                low, high = {_WHITE: white_r, _RED: (4.0, 7.0), _PLATELET: (1.0, 2.0)}[cls]
                radius = float(rng.uniform(low, high))
            centre = _place(rng, shape, radius, centres, radii, inside=cls in (_PLATELET, _AGGREGATE))
            if centre is None:
                continue
            centres.append(centre)
            radii.append(radius)
            placed += 1
            box = _box(shape, centre, radius)
            if cls == _AGGREGATE:
                inside, rel = _balls(box, centre + offsets, member_r)
                value = np.full(inside.shape, rng.uniform(0.4, 0.5), np.float32)
            elif cls == _WHITE:
                inside, rel = _balls(box, centre[None], np.array([radius]))
                n_lobes = int(rng.integers(2, 5))
                directions = rng.normal(size=(n_lobes, ndim))
                directions /= np.linalg.norm(directions, axis=1, keepdims=True)
                lobes, _ = _balls(box, centre + 0.3 * radius * directions, rng.uniform(0.3, 0.4, n_lobes) * radius)
                value = np.where(lobes, rng.uniform(0.25, 0.35), rng.uniform(0.7, 0.8)).astype(np.float32)
            elif cls == _RED:
                inside, rel = _balls(box, centre[None], np.array([radius]))
                value = (rng.uniform(0.5, 0.6) + 0.2 * np.exp(-((rel / 0.45) ** 2))).astype(np.float32)
            else:
                inside, rel = _balls(box, centre[None], np.array([radius]))
                value = np.full(inside.shape, rng.uniform(0.35, 0.45), np.float32)
            transmittance[box][inside] = value[inside]
            semantic[box][inside] = cls
            instance[box][inside] = len(centres)
        if placed < count and requested[cls] is not None:
            warnings.warn(
                f"blood_smear_scene: placed {placed} of {count} {BLOOD_CLASSES[cls]} objects in a scene of shape "
                f"{shape}; the scene is too crowded.",
                stacklevel=2,
            )

    coarse = rng.normal(size=(4,) * ndim)
    illumination = ndi.zoom(coarse, [s / 4 for s in shape], order=3, mode="nearest")
    illumination = 0.85 + 0.05 * illumination / max(np.abs(illumination).max(), 1e-6)
    image = ndi.gaussian_filter(illumination * transmittance, sigma=0.6)
    image = np.clip(image + rng.normal(0.0, 0.02, size=shape), 0.0, 1.0).astype(np.float32)
    return image[None], semantic, instance


def oneshot_scene(
    shape: Sequence[int],
    seed: int,
    classes: Sequence[int],
    n_classes: int = 6,
    objects_per_class: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """A scene of blobs from a few of ``n_classes`` classes, each class a stripe texture of its own orientation.

    Class ``k`` (1-based) is striped at angle ``180 (k - 1) / n_classes`` degrees in the plane of the first two
    axes, with a 4-pixel period; every blob's brightness is drawn at random, so the orientation is the only cue
    that tells the classes apart, and an unseen class lies between seen orientations. Blobs are balls of radius
    4-7 px, placed without overlap on a dark noisy background.

    Args:
        shape: spatial size, 2 or 3 entries, each at least ``MIN_SCENE_SIZE``.
        seed: seed of the scene.
        classes: the classes (values in 1..``n_classes``) present in the scene.
        n_classes: number of classes of the family. Defaults to 6.
        objects_per_class: blobs per present class (fewer when the scene is full). Defaults to 2.

    Returns:
        ``(image, label)``: float32 ``[1, *shape]`` in [0, 1] and uint8 ``[*shape]`` with the class values.

    Raises:
        ValueError: on a bad shape or a class outside 1..``n_classes``.
    """
    shape = tuple(int(v) for v in shape)
    if len(shape) not in (2, 3) or min(shape) < MIN_SCENE_SIZE:
        raise ValueError(f"shape must have 2 or 3 entries, each at least {MIN_SCENE_SIZE}, got {shape}.")
    if n_classes < 2 or any(not 1 <= int(c) <= n_classes for c in classes):
        raise ValueError(f"classes must lie in 1..{n_classes} (n_classes >= 2), got {list(classes)}.")
    rng = np.random.default_rng(seed)
    image = rng.normal(0.1, 0.03, size=shape).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    centres: list[np.ndarray] = []
    radii: list[float] = []
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    for _ in range(objects_per_class):
        for c in classes:
            radius = float(rng.uniform(4.0, 7.0))
            centre = _place(rng, shape, radius, centres, radii, inside=True)
            if centre is None:
                continue
            centres.append(centre)
            radii.append(radius)
            box = _box(shape, centre, radius)
            inside, _ = _balls(box, centre[None], np.array([radius]))
            angle = np.pi * (int(c) - 1) / n_classes
            phase = grids[0][box[0]] * np.cos(angle) + grids[1][:, box[1]] * np.sin(angle)
            level = rng.uniform(0.45, 0.75)
            texture = level + 0.2 * np.sign(np.sin(2 * np.pi * phase / 4.0 + rng.uniform(0, 2 * np.pi)))
            value = np.broadcast_to(texture, inside.shape).astype(np.float32)
            image[box][inside] = value[inside]
            label[box][inside] = int(c)
    image = ndi.gaussian_filter(image, sigma=0.5) + rng.normal(0.0, 0.02, size=shape)
    return np.clip(image, 0.0, 1.0).astype(np.float32)[None], label
