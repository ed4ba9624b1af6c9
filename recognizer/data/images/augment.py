"""Augmentation of line images: the usual HTR set, drawn per (seed, epoch, sample).

A line image here is what :class:`~recognizer.data.images.lines.LineDataset` loads: ``(1, H, W)`` float32
in ``[0, 1]`` with bright ink on a 0 background (the padding value). Each transform is applied with
its own probability and draws its magnitude from the generator it is given:

- :class:`Affine`: slant (shear), size (scale), horizontal stretch and skew (rotation);
- :class:`Elastic`: a smooth random displacement field (grid distortion);
- :class:`Stroke`: thinner or thicker strokes (grey erosion or dilation);
- :class:`Blur`: Gaussian blur;
- :class:`Contrast`: fainter ink, gamma, a paper tone;
- :class:`Noise`: Gaussian pixel noise.

:class:`LineAugment` applies them in that order; the two geometric ones are composed into a single
resampling (one interpolation, not two). The height never changes. The width never shrinks: an
affine change that narrows the writing keeps the canvas, one that widens it (stretch, shear,
rotation) widens the canvas so no ink is cut at the line's ends. The model's output length grows
with the width, so every augmented line still meets the CTC bounds the pre-flight audit checked on
the stored widths.

The generator is ``numpy.random.default_rng((seed, epoch, index))``: the same sample in the same
epoch of the same run always gets the same draw, in whichever loader worker it is loaded, and a
resumed run repeats the interrupted one exactly. Only numpy and scipy (single-threaded) compute, so
the result does not depend on the number of threads either.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

__all__ = ["Affine", "Blur", "Contrast", "Elastic", "LineAugment", "Noise", "Stroke", "augment_rng"]

U64 = (1 << 64) - 1


def augment_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one sample's augmentation in one epoch (any int seed, negative too)."""
    return np.random.default_rng([seed & U64, epoch, index])


def _check(name: str, value: float, low: float, high: float = math.inf) -> None:
    if not low <= value <= high:
        raise ValueError(f"data.augment.{name} must be in [{low:g}, {high:g}], got {value:g}")


class Affine:
    """Small affine change of the writing, about the line's centre.

    Args:
        p: probability of applying it to a line.
        shear: slant; the horizontal shift per row, drawn in ``[-shear, shear]`` (0.3 ≈ ±17°).
        rotation: skew in degrees, drawn in ``[-rotation, rotation]``. Long lines turn far at their
            ends (1° moves the ends of a 15:1 line by a quarter of its height), so keep it small.
        scale: size factor of the writing, drawn in ``[1 - scale, 1 + scale]`` (both axes).
        stretch: extra horizontal factor, drawn in ``[1 - stretch, 1 + stretch]`` (narrow/wide hands).
    """

    def __init__(
        self, p: float = 0.5, shear: float = 0.3, rotation: float = 1.0, scale: float = 0.1, stretch: float = 0.15
    ) -> None:
        _check("affine.p", p, 0.0, 1.0)
        _check("affine.shear", shear, 0.0, 1.0)
        _check("affine.rotation", rotation, 0.0, 15.0)
        _check("affine.scale", scale, 0.0, 0.5)
        _check("affine.stretch", stretch, 0.0, 0.5)
        self.p, self.shear, self.rotation, self.scale, self.stretch = p, shear, rotation, scale, stretch

    def draw(self, rng: np.random.Generator) -> np.ndarray | None:
        """The forward ``(2, 2)`` map of ``(x, y)`` about the centre, or None when not applied."""
        if rng.random() >= self.p:
            return None
        shear = rng.uniform(-self.shear, self.shear)
        angle = math.radians(rng.uniform(-self.rotation, self.rotation))
        scale = rng.uniform(1.0 - self.scale, 1.0 + self.scale)
        stretch = rng.uniform(1.0 - self.stretch, 1.0 + self.stretch)
        cos, sin = math.cos(angle), math.sin(angle)
        rotate = np.array([[cos, -sin], [sin, cos]])
        slant = np.array([[1.0, shear], [0.0, 1.0]])
        size = np.diag([scale * stretch, scale])
        return rotate @ slant @ size


class Elastic:
    """A smooth random displacement field (grid distortion): wobbly baselines, uneven letter shapes.

    Displacements are drawn at control points ``spacing × H`` apart and interpolated bilinearly to
    every pixel.

    Args:
        p: probability of applying it to a line.
        magnitude: standard deviation of a control point's displacement, as a fraction of the height.
        spacing: distance between control points, as a fraction of the height (> 0).
    """

    def __init__(self, p: float = 0.5, magnitude: float = 0.03, spacing: float = 0.5) -> None:
        _check("elastic.p", p, 0.0, 1.0)
        _check("elastic.magnitude", magnitude, 0.0, 0.2)
        _check("elastic.spacing", spacing, 0.05)
        self.p, self.magnitude, self.spacing = p, magnitude, spacing

    def draw(self, rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray] | None:
        """``(dx, dy)`` displacements in pixels, each ``(height, width)``, or None when not applied."""
        if rng.random() >= self.p:
            return None
        step = self.spacing * height
        rows, cols = math.ceil((height - 1) / step) + 1, math.ceil((width - 1) / step) + 1
        rows, cols = max(rows, 2), max(cols, 2)
        coarse = rng.normal(0.0, self.magnitude * height, size=(2, rows, cols)).astype(np.float32)
        dx, dy = (_upsample(c, height, width) for c in coarse)
        return dx, dy


def _upsample(coarse: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear interpolation of a ``(rows, cols)`` grid spread evenly over ``(height, width)`` pixels."""
    rows, cols = coarse.shape
    y0, fy = _split(np.linspace(0.0, rows - 1, height, dtype=np.float32), rows)
    x0, fx = _split(np.linspace(0.0, cols - 1, width, dtype=np.float32), cols)
    along_x = coarse[:, x0] * (1.0 - fx) + coarse[:, x0 + 1] * fx  # (rows, width)
    return along_x[y0] * (1.0 - fy[:, None]) + along_x[y0 + 1] * fy[:, None]


def _split(pos: np.ndarray, points: int) -> tuple[np.ndarray, np.ndarray]:
    """Left neighbour index (at most ``points - 2``) and fraction of positions in ``[0, points - 1]``."""
    left = np.minimum(np.floor(pos), np.float32(points - 2))
    return left.astype(np.intp), pos - left


def _bilinear(image: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``image`` sampled at float32 pixel positions ``(y, x)``, bilinearly, 0 outside (float32).

    Element-wise numpy with flat gathers (several times faster than ``scipy.ndimage.map_coordinates``
    here); every operation is an exactly rounded float32 one, so the result does not depend on the
    machine's threads or vector width.
    """
    height, width = image.shape
    stride = width + 2
    padded = np.zeros((height + 2, stride), dtype=np.float32)  # a ring of background
    padded[1:-1, 1:-1] = image
    flat = padded.ravel()
    y = np.clip(y + np.float32(1.0), 0.0, height + 1.0)
    x = np.clip(x + np.float32(1.0), 0.0, width + 1.0)
    y0 = np.minimum(np.floor(y), np.float32(height))  # so that y0 + 1 stays inside
    x0 = np.minimum(np.floor(x), np.float32(width))
    fy, fx = y - y0, x - x0
    i = (y0 * stride + x0).astype(np.intp)
    top_left, top_right = flat[i], flat[i + 1]
    bottom_left, bottom_right = flat[i + stride], flat[i + stride + 1]
    top = top_left + fx * (top_right - top_left)
    bottom = bottom_left + fx * (bottom_right - bottom_left)
    return top + fy * (bottom - top)


class Stroke:
    """Thinner or thicker pen strokes: grey erosion or dilation (each with probability 1/2).

    Args:
        p: probability of applying it to a line.
        radius: largest radius in pixels of the disc-shaped structuring element (drawn in 1..radius;
            radius 1 is a 3×3 cross). At height 64 strokes are 3-8 pixels wide: keep it at 1 or 2.
    """

    def __init__(self, p: float = 0.3, radius: int = 1) -> None:
        _check("stroke.p", p, 0.0, 1.0)
        _check("stroke.radius", radius, 1, 5)
        self.p, self.radius = p, int(radius)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.random() >= self.p:
            return image
        r = int(rng.integers(1, self.radius + 1))
        grow = rng.random() < 0.5
        y, x = np.ogrid[-r : r + 1, -r : r + 1]
        disc = x * x + y * y <= r * r
        op = ndimage.grey_dilation if grow else ndimage.grey_erosion
        return op(image, footprint=disc, mode="constant", cval=0.0)


class Blur:
    """Gaussian blur (out-of-focus scans, low resolution).

    Args:
        p: probability of applying it to a line.
        sigma: largest standard deviation in pixels (drawn in ``[0, sigma]``).
    """

    def __init__(self, p: float = 0.2, sigma: float = 1.0) -> None:
        _check("blur.p", p, 0.0, 1.0)
        _check("blur.sigma", sigma, 0.0, 10.0)
        self.p, self.sigma = p, sigma

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.random() >= self.p:
            return image
        sigma = rng.uniform(0.0, self.sigma)
        return ndimage.gaussian_filter(image, sigma, mode="constant", cval=0.0)


class Contrast:
    """Ink strength, gamma and paper tone: ``x → background + (gain - background) · x^gamma``.

    Args:
        p: probability of applying it to a line.
        gain: faintest ink kept: the ink's brightness is multiplied by a factor in ``[gain, 1]``.
        gamma: ``log(gamma)`` is drawn in ``[-gamma, gamma]`` (mid-tones lighter or darker).
        background: largest paper tone added under the ink (0 = clean paper, the padding value).
    """

    def __init__(self, p: float = 0.5, gain: float = 0.6, gamma: float = 0.3, background: float = 0.1) -> None:
        _check("contrast.p", p, 0.0, 1.0)
        _check("contrast.gain", gain, 0.05, 1.0)
        _check("contrast.gamma", gamma, 0.0, 2.0)
        _check("contrast.background", background, 0.0, 0.5)
        if background >= gain:
            raise ValueError(
                f"data.augment.contrast.background ({background:g}) must stay below contrast.gain ({gain:g}): "
                "the paper would be as bright as the faintest ink"
            )
        self.p, self.gain, self.gamma, self.background = p, gain, gamma, background

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.random() >= self.p:
            return image
        gain = rng.uniform(self.gain, 1.0)
        gamma = math.exp(rng.uniform(-self.gamma, self.gamma))
        background = rng.uniform(0.0, self.background)
        return background + (gain - background) * np.power(image, gamma, dtype=np.float32)


class Noise:
    """Additive Gaussian pixel noise (sensor noise, paper texture).

    Args:
        p: probability of applying it to a line.
        std: largest standard deviation (drawn in ``[0, std]``), in units of the ``[0, 1]`` range.
    """

    def __init__(self, p: float = 0.3, std: float = 0.05) -> None:
        _check("noise.p", p, 0.0, 1.0)
        _check("noise.std", std, 0.0, 0.5)
        self.p, self.std = p, std

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.random() >= self.p:
            return image
        std = rng.uniform(0.0, self.std)
        return image + np.float32(std) * rng.standard_normal(image.shape, dtype=np.float32)


class LineAugment:
    """The augmentation of training lines (``data.augment``): geometry, then strokes, blur, contrast, noise.

    Args:
        enabled: apply it to the train split; False keeps every image exactly as loaded.
        affine, elastic, stroke, blur, contrast, noise: the transforms (None: left out).
    """

    def __init__(
        self,
        enabled: bool = True,
        affine: Affine | None = None,
        elastic: Elastic | None = None,
        stroke: Stroke | None = None,
        blur: Blur | None = None,
        contrast: Contrast | None = None,
        noise: Noise | None = None,
    ) -> None:
        self.enabled = enabled
        self.affine = affine
        self.elastic = elastic
        self.pixels = [t for t in (stroke, blur, contrast, noise) if t is not None]

    def __call__(self, image: Tensor, seed: int, epoch: int, index: int) -> Tensor:
        """Augment one ``(1, H, W)`` line; returns ``(1, H, W')`` float32 in ``[0, 1]`` with ``W' >= W``.

        The draw depends only on ``(seed, epoch, index)``; a line no transform was drawn for is
        returned as given.
        """
        rng = augment_rng(seed, epoch, index)
        pixels = image[0].numpy()
        out = self.geometry(pixels, rng)
        for transform in self.pixels:
            out = transform(out, rng)
        if out is pixels:
            return image
        return torch.from_numpy(np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)).unsqueeze(0)

    def geometry(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Affine and elastic changes of an ``(H, W)`` image in one resampling (``image`` itself if none)."""
        height, width = image.shape
        forward = self.affine.draw(rng) if self.affine is not None else None
        matrix = np.eye(2) if forward is None else forward
        out_width = max(width, _extent(matrix, width, height))
        field = self.elastic.draw(rng, height, out_width) if self.elastic is not None else None
        if forward is None and field is None:
            return image
        # output pixel → source pixel, both about their centres (float32: exact enough for 1e4 px)
        u: np.ndarray = np.arange(out_width, dtype=np.float32) - np.float32((out_width - 1) / 2)  # (W',)
        v: np.ndarray = np.arange(height, dtype=np.float32)[:, None] - np.float32((height - 1) / 2)  # (H, 1)
        if field is not None:
            u, v = u + field[0], v + field[1]  # (H, W')
        inverse = np.linalg.inv(matrix).astype(np.float32)
        src_x = inverse[0, 0] * u + inverse[0, 1] * v + np.float32((width - 1) / 2)
        src_y = inverse[1, 0] * u + inverse[1, 1] * v + np.float32((height - 1) / 2)
        src_x, src_y = np.broadcast_arrays(src_x, src_y)
        return _bilinear(image, src_y, src_x)


def _extent(matrix: np.ndarray, width: int, height: int) -> int:
    """Width in pixels of the ``width × height`` image after ``matrix`` (the x-extent of its corners)."""
    corners = np.array([[-width, -height], [width, -height], [-width, height], [width, height]]) / 2
    xs = corners @ matrix[0]
    return math.ceil(xs.max() - xs.min() - 1e-9)
