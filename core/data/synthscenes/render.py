"""Drawing a scene: anti-aliased shapes on its background, colour jitter and pixel noise."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

from core.data.synthscenes.scene import BACKGROUNDS, COLOURS, Scene

__all__ = ["render"]

RADIUS = {"small": 0.2, "large": 0.36}  # object radius as a share of a grid cell
SUPERSAMPLE = 4  # shapes are drawn at 4x and box-averaged down: anti-aliased edges
NOISE_STD = 5.0  # per-pixel Gaussian noise (uint8 levels), so no two renders are identical
COLOUR_JITTER = 12  # per-object colour offset range (uint8 levels)


# ------------------------------------------------------------------------------------ drawing
def _circle(draw: ImageDraw.ImageDraw, x: float, y: float, r: float, fill: tuple) -> None:
    draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)


def _square(draw: ImageDraw.ImageDraw, x: float, y: float, r: float, fill: tuple) -> None:
    h = r * 0.85  # about the circle's area
    draw.rectangle((x - h, y - h, x + h, y + h), fill=fill)


def _triangle(draw: ImageDraw.ImageDraw, x: float, y: float, r: float, fill: tuple) -> None:
    draw.polygon([(x, y - r), (x + r * 0.95, y + r * 0.75), (x - r * 0.95, y + r * 0.75)], fill=fill)


def _diamond(draw: ImageDraw.ImageDraw, x: float, y: float, r: float, fill: tuple) -> None:
    draw.polygon([(x, y - r), (x + r, y), (x, y + r), (x - r, y)], fill=fill)


def _cross(draw: ImageDraw.ImageDraw, x: float, y: float, r: float, fill: tuple) -> None:
    t = r * 0.35
    draw.rectangle((x - r, y - t, x + r, y + t), fill=fill)
    draw.rectangle((x - t, y - r, x + t, y + r), fill=fill)


def _star(draw: ImageDraw.ImageDraw, x: float, y: float, r: float, fill: tuple) -> None:
    angles = np.pi / 2 + np.arange(10) * np.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
    draw.polygon([(x + q * np.cos(a), y - q * np.sin(a)) for a, q in zip(angles, radii)], fill=fill)


DRAW: dict[str, Callable[[ImageDraw.ImageDraw, float, float, float, tuple], None]] = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "diamond": _diamond,
    "cross": _cross,
    "star": _star,
}


def render(scene: Scene, size: int, rng: np.random.Generator) -> np.ndarray:
    """Draw a scene: each object inside its grid cell (jittered), anti-aliased, with pixel noise.

    Args:
        scene: what to draw.
        size: the square image side in pixels.
        rng: the image's render stream (jitter, colour offsets, noise).
    Returns:
        uint8 ``(size, size, 3)``.
    """
    side = size * SUPERSAMPLE
    image = Image.new("RGB", (side, side), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    cell = side / 3
    for obj in scene.objects:
        radius = RADIUS[obj.size] * cell
        slack = cell / 2 - radius - 0.05 * cell  # keep every object inside its own cell
        x, y = ((obj.col + 0.5) * cell, (obj.row + 0.5) * cell) + rng.uniform(-slack, slack, size=2)
        colour = np.clip(np.array(COLOURS[obj.colour]) + rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, 3), 0, 255)
        DRAW[obj.shape](draw, float(x), float(y), radius, tuple(int(c) for c in colour))
    pixels = np.asarray(image.resize((size, size), Image.Resampling.BOX), dtype=np.float32)
    pixels += rng.normal(0.0, NOISE_STD, pixels.shape)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


