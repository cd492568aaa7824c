"""Built-in procedural domains: toy faces and targets derived from them, so the project runs offline.

The source domain ``faces`` is rendered from random parameters. Targets come in two kinds, as in the
paper: image-space domains (``tint``, ``sketch``, ``painting``, ``negative``, from near the source to far
from it) whose image of a face is a fixed transform of the face image, so source/target correspondence can be *measured*; and parameter-space domains
(``sunglasses``, ``babies``) that change what is drawn, like the paper's "similar domains".

Everything is deterministic by seed and prefix-stable: ``toy_images(name, 5, seed=s)`` are the first
five images of ``toy_images(name, 50, seed=s)``, and the same seed gives the same identity in every
domain (so the contact sheets of all domains correspond image by image).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

TOY_DOMAINS: tuple[str, ...] = ("faces", "tint", "sketch", "painting", "negative", "sunglasses", "babies")

FEW_SHOT_SEED = 0
"""Seed of the canonical 10-shot sets; held-out sets refuse it so the two never share an image."""

FEW_SHOT_COUNT = 10

FACTOR_RANGES: dict[str, tuple[float, float]] = {
    "offset_x": (-0.22, 0.22),  # pose: horizontal position of the head
    "tilt": (-0.3, 0.3),  # pose: head roll in radians
    "head_width": (0.36, 0.50),
    "head_height": (0.46, 0.60),
    "jaw": (2.0, 3.2),  # superellipse exponent: 2 = oval, higher = squarer jaw
    "skin_tone": (0.0, 1.0),  # position along _SKIN, light to dark
    "hair_shade": (0.0, 1.0),  # position along _HAIR
    "hair_volume": (1.04, 1.22),  # back hair / head size: how much hair shows around the head
    "hair_length": (0.0, 1.0),  # 0 = short, 1 = down to the shoulders
    "fringe": (0.0, 1.0),  # how far the front hair comes down the forehead
    "eye_size": (0.11, 0.17),  # eye radius / head width
    "eye_spacing": (0.32, 0.46),  # eye centre distance from the midline / head width
    "eye_height": (-0.12, 0.04),  # eye centre below the head centre / head height
    "iris_shade": (0.0, 1.0),  # position along _IRIS
    "mouth_width": (0.22, 0.40),  # half-width / head width
    "mouth_curve": (-0.25, 0.9),  # corner lift / head height * 10: > 0 smile, < 0 frown
    "background_hue": (0.0, 1.0),
    "shirt_hue": (0.0, 1.0),
}
"""The source domain's factors of variation, each sampled uniformly in [low, high].

Lengths are in image units (the image spans [-1, 1] on both axes, y pointing down); feature sizes are
relative to the head so they scale with it.
"""

_SKIN = np.array(
    [[0.98, 0.84, 0.74], [0.93, 0.75, 0.62], [0.82, 0.62, 0.46], [0.64, 0.45, 0.31], [0.42, 0.28, 0.19]],
    dtype=np.float32,
)
_HAIR = np.array(  # black, dark brown, brown, auburn, blond, grey
    [[0.08, 0.06, 0.05], [0.28, 0.17, 0.09], [0.55, 0.30, 0.13], [0.66, 0.24, 0.10], [0.88, 0.73, 0.42],
     [0.72, 0.72, 0.74]],
    dtype=np.float32,
)
_IRIS = np.array(  # brown, blue, green, grey
    [[0.33, 0.19, 0.08], [0.18, 0.40, 0.75], [0.22, 0.52, 0.30], [0.45, 0.47, 0.50]], dtype=np.float32
)
_LIPS = np.array([0.62, 0.20, 0.22], dtype=np.float32)
_SUNGLASSES = np.array([0.06, 0.06, 0.08], dtype=np.float32)


@dataclasses.dataclass(frozen=True)
class FaceParams:
    """One entry per face for each factor of variation (float32 arrays of shape [n]).

    Colours are given as positions along fixed palettes (skin, hair, iris) or hues (background,
    shirt), so every factor is one number and can be varied on its own.
    """

    offset_x: np.ndarray
    tilt: np.ndarray
    head_width: np.ndarray
    head_height: np.ndarray
    jaw: np.ndarray
    skin_tone: np.ndarray
    hair_shade: np.ndarray
    hair_volume: np.ndarray
    hair_length: np.ndarray
    fringe: np.ndarray
    eye_size: np.ndarray
    eye_spacing: np.ndarray
    eye_height: np.ndarray
    iris_shade: np.ndarray
    mouth_width: np.ndarray
    mouth_curve: np.ndarray
    background_hue: np.ndarray
    shirt_hue: np.ndarray
    sunglasses: np.ndarray  # 0 or 1: a target-domain attribute, never drawn in the source domain

    def __len__(self) -> int:
        return len(self.offset_x)

    def slice(self, start: int, stop: int) -> FaceParams:
        return FaceParams(**{f.name: getattr(self, f.name)[start:stop] for f in dataclasses.fields(self)})


def sample_face_params(n: int, seed: int) -> FaceParams:
    """Draw ``n`` source-domain faces. Row ``i`` depends only on ``(seed, i)``: sets are prefix-stable."""
    # One row of uniforms per face, generated row-major: the first k rows never depend on n.
    u = np.random.default_rng(seed).random((n, len(FACTOR_RANGES)), dtype=np.float32)
    values = {
        name: (low + (high - low) * u[:, k]).astype(np.float32)
        for k, (name, (low, high)) in enumerate(FACTOR_RANGES.items())
    }
    return FaceParams(**values, sunglasses=np.zeros(n, dtype=np.float32))


def with_sunglasses(params: FaceParams) -> FaceParams:
    """The ``sunglasses`` domain: the same faces wearing dark sunglasses over the eyes."""
    return dataclasses.replace(params, sunglasses=np.ones(len(params), dtype=np.float32))


def as_babies(params: FaceParams) -> FaceParams:
    """The ``babies`` domain: the same identities (colours, pose) with baby proportions.

    Rounder and bigger heads, big eyes set low in the face, a small mouth and little or no hair.
    """
    return dataclasses.replace(
        params,
        head_width=0.52 + 0.4 * (params.head_width - 0.36),
        head_height=0.56 + 0.3 * (params.head_height - 0.46),
        jaw=np.full_like(params.jaw, 2.0),
        hair_volume=1.0 + 0.15 * (params.hair_volume - 1.0),
        hair_length=np.zeros_like(params.hair_length),
        fringe=0.15 * params.fringe,
        eye_size=0.19 + 0.5 * (params.eye_size - 0.11),
        eye_spacing=0.34 + 0.3 * (params.eye_spacing - 0.32),
        eye_height=0.12 + 0.5 * (params.eye_height + 0.12),
        mouth_width=0.14 + 0.3 * (params.mouth_width - 0.22),
        mouth_curve=0.3 + 0.5 * params.mouth_curve,
        skin_tone=0.8 * params.skin_tone,
    )


# ---------------------------------------------------------------------------------------------
# Rendering. Each shape is a signed distance field (negative inside, in image units); coverage is
# a linear ramp one pixel wide across the boundary, so edges are anti-aliased at any resolution.


def _palette(positions: torch.Tensor, palette: np.ndarray) -> torch.Tensor:
    """Linear interpolation along a palette: [n] in [0, 1] -> [n, 3]."""
    table = torch.from_numpy(palette)
    x = positions.clamp(0, 1) * (len(table) - 1)
    low = x.floor().long().clamp(max=len(table) - 2)
    frac = (x - low).unsqueeze(-1)
    return table[low] * (1 - frac) + table[low + 1] * frac


def _hue(hue: torch.Tensor, saturation: float, value: float) -> torch.Tensor:
    """HSV -> RGB for a fixed saturation and value: [n] -> [n, 3]."""
    k = (torch.tensor([5.0, 3.0, 1.0]) + hue.unsqueeze(-1) * 6) % 6
    return value - value * saturation * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


Scalar = torch.Tensor | float


def _ellipse(x: torch.Tensor, y: torch.Tensor, rx: Scalar, ry: Scalar, power: Scalar = 2.0) -> torch.Tensor:
    """Approximate signed distance to a superellipse |x/rx|^p + |y/ry|^p = 1."""
    if isinstance(power, float) and power == 2.0:
        norm = torch.sqrt((x / rx) ** 2 + (y / ry) ** 2)
    else:
        norm = ((x / rx).abs() ** power + (y / ry).abs() ** power) ** (1 / power)
    return (norm - 1) * torch.minimum(torch.as_tensor(rx), torch.as_tensor(ry))


def _box(x: torch.Tensor, y: torch.Tensor, hx: Scalar, hy: Scalar, radius: Scalar = 0.0) -> torch.Tensor:
    """Signed distance to an axis-aligned box of half-sizes (hx, hy) with rounded corners."""
    qx = x.abs() - hx + radius
    qy = y.abs() - hy + radius
    outside = torch.sqrt(qx.clamp(min=0) ** 2 + qy.clamp(min=0) ** 2)
    return outside + torch.minimum(torch.maximum(qx, qy), torch.zeros(())) - radius


def _paint(canvas: torch.Tensor, sdf: torch.Tensor, color: torch.Tensor, pixel: float) -> torch.Tensor:
    """Composite ``color`` ([n, 3] or [n, 3, H, W]) over ``canvas`` where ``sdf`` < 0, anti-aliased."""
    alpha = (0.5 - sdf / pixel).clamp_(0, 1).unsqueeze(1)
    if color.dim() == 2:
        color = color[:, :, None, None]
    return canvas.lerp_(color.expand_as(canvas), alpha)


def _render_chunk(p: FaceParams, size: int) -> torch.Tensor:
    """Draw the faces back to front: background, hair, shoulders, neck, head, fringe, features."""
    n = len(p)
    t = {f.name: torch.as_tensor(np.asarray(getattr(p, f.name), np.float32)) for f in dataclasses.fields(p)}
    col = {k: v[:, None, None] for k, v in t.items()}  # broadcastable against [n, H, W]
    pixel = 2.0 / size
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) * pixel - 1
    gy, gx = coords[None, :, None], coords[None, None, :]

    w, h = col["head_width"], col["head_height"]
    cx, cy = col["offset_x"], torch.full_like(w, -0.08)
    # Head frame: rotate about the neck so a tilt moves the head, not the shoulders.
    pivot_y = cy + h
    cos, sin = torch.cos(col["tilt"]), torch.sin(col["tilt"])
    dx, dy = gx - cx, gy - pivot_y
    x = cos * dx + sin * dy
    y = -sin * dx + cos * dy + h  # y = 0 at the head centre

    background = _hue(t["background_hue"], 0.35, 0.85)
    canvas = background[:, :, None, None] * (1.0 - 0.18 * (gy + 1) / 2).unsqueeze(1)
    canvas = canvas.expand(n, 3, size, size).contiguous()

    skin = _palette(t["skin_tone"], _SKIN)
    hair = _palette(t["hair_shade"], _HAIR)

    # Back hair: a halo around the head, extended down the sides for long hair.
    volume = col["hair_volume"]
    halo = _ellipse(x, y + 0.06 * h, w * volume, h * volume)
    drop = col["hair_length"] * h * 0.8
    long_hair = _box(x, y - drop, w * volume, drop + 0.02, 0.1 * w)
    canvas = _paint(canvas, torch.minimum(halo, long_hair), hair, pixel)

    shoulders = _ellipse(gx - 0.5 * cx, gy - 1.12, torch.full_like(w, 0.78), torch.full_like(w, 0.36))
    canvas = _paint(canvas, shoulders, _hue(t["shirt_hue"], 0.55, 0.7), pixel)
    neck = _box(x, y - 0.9 * h, 0.38 * w, 0.35 * h, 0.05)
    canvas = _paint(canvas, neck, skin * 0.85, pixel)

    # Head, with a little shading towards its edge so it reads as a volume.
    head = _ellipse(x, y, w, h, col["jaw"])
    shade = 1.0 - 0.22 * ((x / w) ** 2 + (y / h) ** 2).clamp(max=1.0)
    canvas = _paint(canvas, head, skin[:, :, None, None] * shade.unsqueeze(1), pixel)

    # Fringe: the hair inside the top of the head, above a hairline that curves down at the sides.
    hairline = -h * (0.78 - 0.5 * col["fringe"]) + 0.35 * h * (x / w) ** 2
    fringe = torch.maximum(_ellipse(x, y, w * 1.04, h * 1.04, col["jaw"]), y - hairline)
    canvas = _paint(canvas, fringe, hair, pixel)

    # Eyes: white, iris clipped to the white, pupil, and a brow in the hair colour.
    r = col["eye_size"] * w
    eye_y = col["eye_height"] * h
    eye_x = x.abs() - col["eye_spacing"] * w  # both eyes at once, mirrored
    white = _ellipse(eye_x, y - eye_y, 1.3 * r, 0.9 * r)
    canvas = _paint(canvas, white, torch.full((n, 3), 0.97), pixel)
    iris = torch.maximum(_ellipse(eye_x, y - eye_y, 0.62 * r, 0.62 * r), white)
    canvas = _paint(canvas, iris, _palette(t["iris_shade"], _IRIS), pixel)
    canvas = _paint(canvas, _ellipse(eye_x, y - eye_y, 0.3 * r, 0.3 * r), torch.full((n, 3), 0.03), pixel)
    brow = _box(eye_x, y - eye_y + 1.55 * r, 1.25 * r, 0.2 * r, 0.15 * r)
    canvas = _paint(canvas, brow, hair * 0.8, pixel)

    mouth_y = 0.52 * h
    nose = _ellipse(x, y - 0.5 * (eye_y + mouth_y) - 0.11 * h, 0.09 * w, 0.06 * h)
    canvas = _paint(canvas, nose, skin * 0.78, pixel)

    # Mouth: a thick parabola arc; positive curve lifts the corners (a smile).
    mouth_w = col["mouth_width"] * w
    arc = mouth_y - col["mouth_curve"] * 0.1 * h * ((x / mouth_w) ** 2 - 0.5)
    mouth = torch.maximum((y - arc).abs() - 0.045 * h, x.abs() - mouth_w)
    canvas = _paint(canvas, mouth, torch.from_numpy(_LIPS).expand(n, 3), pixel)

    # Sunglasses: two dark lenses covering the eyes, a bridge, arms to the head's edge, a glint.
    if p.sunglasses.any():
        worn = col["sunglasses"] > 0.5
        eye_x_w = col["eye_spacing"] * w
        lens = _box(eye_x, y - eye_y, 1.75 * r, 1.25 * r, 0.7 * r)
        bridge = _box(x, y - eye_y + 0.45 * r, eye_x_w, 0.14 * r)
        arms = _box(x.abs() - (eye_x_w + w) / 2, y - eye_y + 0.6 * r, (w - eye_x_w) / 2, 0.1 * r)
        frame = torch.where(worn, torch.minimum(torch.minimum(lens, bridge), arms), 1.0)
        canvas = _paint(canvas, frame, torch.from_numpy(_SUNGLASSES).expand(n, 3), pixel)
        glint = torch.maximum(_ellipse(eye_x + 0.7 * r, y - eye_y + 0.55 * r, 0.45 * r, 0.22 * r), lens)
        canvas = _paint(canvas, torch.where(worn, glint, 1.0), torch.full((n, 3), 0.45), pixel)

    return canvas.clamp_(0, 1) * 2 - 1


ImageTransform = Callable[[torch.Tensor], torch.Tensor]


def _chunked(params: FaceParams, size: int, transform: ImageTransform | None) -> torch.Tensor:
    """Render (and transform) a few images at a time: temporaries stay in cache, which is ~5x faster."""
    chunk = max(1, (1 << 18) // (size * size))
    parts = []
    for start in range(0, len(params), chunk):
        images = _render_chunk(params.slice(start, start + chunk), size)
        parts.append(transform(images) if transform else images)
    return torch.cat(parts) if parts else torch.zeros(0, 3, size, size)


def render_faces(params: FaceParams, size: int = 64) -> torch.Tensor:
    """Render faces as float32 [n, 3, size, size] in [-1, 1]."""
    return _chunked(params, size, None)


# ---------------------------------------------------------------------------------------------
# Image-space targets: fixed, deterministic, batched functions of a source image.


def _gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    k = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float32) / sigma) ** 2)
    k = (k / k.sum()).to(images)
    c = images.shape[1]
    padded = F.pad(images, (radius, radius, radius, radius), mode="replicate")
    out = F.conv2d(padded, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _luma(rgb: torch.Tensor) -> torch.Tensor:
    return 0.299 * rgb[:, 0:1] + 0.587 * rgb[:, 1:2] + 0.114 * rgb[:, 2:3]


def sketch(images: torch.Tensor) -> torch.Tensor:
    """Pencil sketch: grey, dark strokes along edges on white paper, diagonal hatching in dark areas."""
    size = images.shape[-1]
    scale = size / 64
    gray = _gaussian_blur((_luma(images) + 1) / 2, 0.6 * scale)
    gx = F.pad(gray[..., :, 2:] - gray[..., :, :-2], (1, 1, 0, 0), mode="replicate")
    gy = F.pad(gray[..., 2:, :] - gray[..., :-2, :], (0, 0, 1, 1), mode="replicate")
    strokes = (torch.sqrt(gx**2 + gy**2) * 5.0 / scale).clamp(0, 1)
    # Hatching: fixed diagonal lines, 4 px apart at 64 px, drawn where the image is dark (hair, dark skin).
    idx = torch.arange(size, dtype=images.dtype, device=images.device)
    lines = (torch.cos((idx[:, None] + idx[None, :]) * (2 * math.pi / (4 * scale))) + 1) / 2
    hatch = 0.9 * (0.6 - gray).clamp(min=0) * lines
    paper = ((1 - 0.85 * strokes) * (1 - hatch)).clamp(0, 1)
    return (paper * 2 - 1).expand(-1, 3, -1, -1).contiguous()


def _kuwahara(rgb: torch.Tensor, radius: int) -> torch.Tensor:
    """Each pixel takes the mean of the least varied of its four overlapping quadrant windows.

    The classic painterly filter: flat patches, edges kept.
    """
    luma = _luma(rgb)
    stacked = torch.cat([rgb, luma, luma * luma], dim=1)
    means = F.avg_pool2d(F.pad(stacked, (radius,) * 4, mode="replicate"), radius + 1, stride=1)
    height, width = rgb.shape[-2:]
    best_mean, best_var = None, None
    for dy in (0, radius):  # windows whose corner is the pixel, one per quadrant
        for dx in (0, radius):
            quad = means[..., dy : dy + height, dx : dx + width]
            var = quad[:, 4:5] - quad[:, 3:4] ** 2
            if best_var is None:
                best_mean, best_var = quad[:, :3], var
            else:
                best_mean = torch.where(var < best_var, quad[:, :3], best_mean)
                best_var = torch.minimum(var, best_var)
    return best_mean


def painting(images: torch.Tensor) -> torch.Tensor:
    """Oil painting: flat brush patches, a warm saturated palette in few tones, diagonal brush grain."""
    size = images.shape[-1]
    scale = size / 64
    rgb = _kuwahara((images + 1) / 2, max(1, round(scale)))
    gray = rgb.mean(1, keepdim=True)
    warm = torch.tensor([1.1, 0.98, 0.8], dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    vivid = ((gray + 1.4 * (rgb - gray)) * warm).clamp(0, 1)
    levels = 7
    poster = torch.round(vivid * (levels - 1)) / (levels - 1)
    poster = _gaussian_blur(poster, 0.45 * scale)
    # Brush grain: a fixed pattern of the pixel position (diagonal streaks), so this stays a pure function.
    idx = torch.arange(size, dtype=rgb.dtype, device=rgb.device) / scale
    u, v = idx[:, None] + idx[None, :], idx[:, None] - idx[None, :]
    grain = 1 + 0.05 * torch.sin(u * 1.3 + 2.0 * torch.sin(v * 0.45)) * torch.sin(v * 0.21 + 1.0)
    return ((poster * grain).clamp(0, 1) * 2 - 1).contiguous()


def tint(images: torch.Tensor) -> torch.Tensor:
    """Old photograph: a warm sepia toning at two thirds strength, slightly lifted blacks and softened contrast.

    The near target: every shape and most of the colour stay, only the colour balance moves.
    """
    rgb = (images + 1) / 2
    sepia = _luma(rgb) * torch.tensor([1.07, 0.86, 0.62], dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    toned = 0.35 * rgb + 0.65 * sepia
    return ((0.08 + 0.86 * toned).clamp(0, 1) * 2 - 1).contiguous()


def negative(images: torch.Tensor) -> torch.Tensor:
    """Photographic negative: every channel inverted. The far target: the same shapes in opposite colours,
    as far from the source in feature statistics as a transform that keeps every edge can go."""
    return (-images).contiguous()


_IMAGE_TRANSFORMS: dict[str, ImageTransform] = {"tint": tint, "sketch": sketch, "painting": painting, "negative": negative}
_PARAM_TRANSFORMS: dict[str, Callable[[FaceParams], FaceParams]] = {
    "faces": lambda p: p,
    "sunglasses": with_sunglasses,
    "babies": as_babies,
}


def _check_name(name: str) -> None:
    if name not in TOY_DOMAINS:
        raise ValueError(f"unknown toy domain {name!r}; valid names: {', '.join(TOY_DOMAINS)}")


def image_transform(name: str) -> ImageTransform | None:
    """The fixed source->target image map of an image-space domain; None for parameter-space ones."""
    _check_name(name)
    return _IMAGE_TRANSFORMS.get(name)


def toy_images(name: str, n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    """``n`` images of a toy domain; image ``i`` shows the same identity in every domain."""
    _check_name(name)
    params = _PARAM_TRANSFORMS.get(name, _PARAM_TRANSFORMS["faces"])(sample_face_params(n, seed))
    return _chunked(params, size, _IMAGE_TRANSFORMS.get(name))


def few_shot_set(name: str, size: int = 64) -> torch.Tensor:
    """The canonical 10-shot training set of a domain: the first 10 faces of seed ``FEW_SHOT_SEED``."""
    return toy_images(name, FEW_SHOT_COUNT, size, FEW_SHOT_SEED)


def held_out(name: str, n: int, size: int = 64, seed: int = 1) -> torch.Tensor:
    """Evaluation images (FID etc.) of a domain, never overlapping the few-shot set."""
    if seed == FEW_SHOT_SEED:
        raise ValueError(f"held-out seed must differ from the few-shot seed {FEW_SHOT_SEED}")
    return toy_images(name, n, size, seed)
