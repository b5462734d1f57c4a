"""What each content tag looks like: one procedural renderer per look.

A *look* is how a class is drawn. The eight base tags each have one; a trend that
brings a new class picks one of the novel looks (``meme``, ``pixel_art``). Classes
share palettes and backdrops on purpose (pets and food are both warm, cars and
fitness both sit on floors) and every post carries clutter, occlusion, noise and
random framing, so the task is learnable but not trivial: a small CNN trained on a
few thousand posts lands near 90% (see ``tests/test_simulator_difficulty.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from components.simulator.draw import (
    background,
    blocky_text,
    hsv_color,
    opaque,
    place,
    shade,
    vertical_gradient,
)

BASE_TAGS = ("food", "pets", "selfie", "cars", "fitness", "flowers", "landscape", "city")


def _layer(width: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    layer = Image.new("RGBA", (width, width), (0, 0, 0, 0))
    return layer, ImageDraw.Draw(layer)


def food(rng: np.random.Generator, w: int) -> Image.Image:
    """A plate seen from above with round, warm-coloured items on it."""
    layer, d = _layer(w)
    r = w * rng.uniform(0.36, 0.46)
    c = w / 2
    plate = hsv_color(rng, (0, 360), (0.0, 0.15), (0.8, 1.0))
    d.ellipse((c - r, c - r, c + r, c + r), fill=opaque(shade(plate, 0.85)))
    d.ellipse((c - r * 0.82, c - r * 0.82, c + r * 0.82, c + r * 0.82), fill=opaque(plate))
    for _ in range(int(rng.integers(3, 10))):
        ir = r * rng.uniform(0.12, 0.3)
        ang, dist = rng.uniform(0, 2 * np.pi), rng.uniform(0, r * 0.5)
        x, y = c + dist * np.cos(ang), c + dist * np.sin(ang)
        d.ellipse(
            (x - ir, y - ir * rng.uniform(0.6, 1), x + ir, y + ir),
            fill=opaque(hsv_color(rng, (-20, 55), (0.5, 1), (0.45, 1))),
        )
    return layer


def pets(rng: np.random.Generator, w: int) -> Image.Image:
    """A four-legged animal in profile: body, head with pointed ears, tail, furry colour."""
    layer, d = _layer(w)
    fur = hsv_color(rng, (15, 45), (0.0, 0.8), (0.15, 0.95))
    dark = shade(fur, 0.6)
    bx0, by0, bx1, by1 = w * 0.18, w * 0.42, w * 0.72, w * 0.7
    for lx in (0.24, 0.34, 0.56, 0.66):  # legs
        d.rectangle((w * lx, w * 0.62, w * (lx + 0.05), w * 0.86), fill=opaque(dark))
    d.ellipse((bx0, by0, bx1, by1), fill=opaque(fur))
    d.line((bx0 + 2, w * 0.5, w * 0.06, w * rng.uniform(0.25, 0.5)), fill=opaque(fur), width=max(2, w // 28))
    hx, hy, hr = w * 0.72, w * 0.38, w * rng.uniform(0.11, 0.15)
    for ex in (-0.7, 0.4):  # ears
        d.polygon(
            [
                (hx + ex * hr, hy - hr * 0.5),
                (hx + (ex + 0.3) * hr, hy - hr * 1.7),
                (hx + (ex + 0.6) * hr, hy - hr * 0.4),
            ],
            fill=opaque(dark),
        )
    d.ellipse((hx - hr, hy - hr, hx + hr, hy + hr), fill=opaque(fur))
    d.ellipse((hx + hr * 0.2, hy - hr * 0.3, hx + hr * 0.45, hy - hr * 0.05), fill=(15, 15, 15, 255))
    d.ellipse((hx + hr * 0.8, hy + hr * 0.05, hx + hr * 1.1, hy + hr * 0.3), fill=(30, 20, 20, 255))
    return layer


def selfie(rng: np.random.Generator, w: int) -> Image.Image:
    """A face close up: skin-toned oval, hair, eyes, mouth, shoulders below."""
    layer, d = _layer(w)
    skin = hsv_color(rng, (15, 35), (0.2, 0.6), (0.35, 1.0))
    hair = hsv_color(rng, (0, 50), (0.2, 0.9), (0.05, 0.8))
    d.ellipse((w * 0.1, w * 0.78, w * 0.9, w * 1.3), fill=opaque(hsv_color(rng, (0, 360), (0.2, 1), (0.2, 1))))
    d.ellipse((w * 0.27, w * 0.12, w * 0.73, w * 0.62), fill=opaque(hair))
    d.ellipse((w * 0.3, w * 0.2, w * 0.7, w * 0.78), fill=opaque(skin))
    d.chord((w * 0.28, w * 0.12, w * 0.72, w * 0.45), 180, 360, fill=opaque(hair))
    for ex in (0.4, 0.6):
        d.ellipse((w * (ex - 0.035), w * 0.43, w * (ex + 0.035), w * 0.48), fill=(25, 20, 20, 255))
    d.arc((w * 0.42, w * 0.55, w * 0.58, w * 0.66), 20, 160, fill=opaque(shade(skin, 0.5)), width=max(1, w // 50))
    return layer


def cars(rng: np.random.Generator, w: int) -> Image.Image:
    """A car side-on: a bright body, a cabin with windows, two dark wheels."""
    layer, d = _layer(w)
    paint = hsv_color(rng, (0, 360), (0.5, 1.0), (0.4, 1.0))
    top = w * rng.uniform(0.3, 0.38)
    d.polygon(
        [(w * 0.3, w * 0.47), (w * 0.38, top), (w * 0.64, top), (w * 0.74, w * 0.47)], fill=opaque(shade(paint, 0.8))
    )
    d.polygon(
        [(w * 0.34, w * 0.46), (w * 0.4, top + 3), (w * 0.62, top + 3), (w * 0.69, w * 0.46)], fill=(150, 180, 200, 255)
    )
    d.rounded_rectangle((w * 0.08, w * 0.45, w * 0.92, w * 0.64), radius=w * 0.05, fill=opaque(paint))
    for wx in (0.25, 0.75):
        r = w * 0.09
        d.ellipse((w * wx - r, w * 0.64 - r, w * wx + r, w * 0.64 + r), fill=(20, 20, 20, 255))
        d.ellipse((w * wx - r / 2, w * 0.64 - r / 2, w * wx + r / 2, w * 0.64 + r / 2), fill=(150, 150, 150, 255))
    return layer


def fitness(rng: np.random.Generator, w: int) -> Image.Image:
    """Gym gear: a dumbbell, or a kettlebell with its handle."""
    layer, d = _layer(w)
    metal = hsv_color(rng, (0, 360), (0.0, 0.25), (0.1, 0.45))
    accent = hsv_color(rng, (0, 360), (0.6, 1.0), (0.6, 1.0))
    if rng.random() < 0.5:
        d.rectangle((w * 0.25, w * 0.47, w * 0.75, w * 0.53), fill=opaque(shade(metal, 1.6)))
        for x0 in (0.12, 0.72):
            d.rounded_rectangle((w * x0, w * 0.3, w * (x0 + 0.16), w * 0.7), radius=w * 0.03, fill=opaque(metal))
            d.rectangle((w * (x0 + 0.05), w * 0.3, w * (x0 + 0.11), w * 0.7), fill=opaque(accent))
    else:
        d.arc((w * 0.32, w * 0.15, w * 0.68, w * 0.55), 180, 360, fill=opaque(metal), width=max(3, w // 14))
        d.ellipse((w * 0.22, w * 0.32, w * 0.78, w * 0.85), fill=opaque(metal))
        d.rectangle((w * 0.38, w * 0.55, w * 0.62, w * 0.65), fill=opaque(accent))
    return layer


def flowers(rng: np.random.Generator, w: int) -> Image.Image:
    """A flower head: petals around a disc, on a green stem."""
    layer, d = _layer(w)
    c = w / 2
    d.line((c, c, c + w * rng.uniform(-0.1, 0.1), w), fill=(40, 120, 40, 255), width=max(2, w // 25))
    petal = hsv_color(rng, (270, 420), (0.3, 1.0), (0.6, 1.0))
    n = int(rng.integers(5, 10))
    pr = w * rng.uniform(0.13, 0.2)
    for k in range(n):
        a = 2 * np.pi * k / n
        x, y = c + pr * 1.1 * np.cos(a), c + pr * 1.1 * np.sin(a)
        d.ellipse((x - pr * 0.7, y - pr * 0.7, x + pr * 0.7, y + pr * 0.7), fill=opaque(petal))
    dr = pr * rng.uniform(0.45, 0.7)
    d.ellipse((c - dr, c - dr, c + dr, c + dr), fill=opaque(hsv_color(rng, (30, 55), (0.6, 1), (0.3, 0.95))))
    return layer


def landscape(rng: np.random.Generator, w: int) -> Image.Image:
    """A full-frame view: sky (day or sunset), mountain ridges, a ground or water band."""
    sunset = rng.random() < 0.4
    sky_top = hsv_color(rng, (260, 300) if sunset else (195, 225), (0.4, 0.9), (0.4, 1.0))
    sky_low = hsv_color(rng, (10, 40) if sunset else (190, 210), (0.2, 0.8), (0.7, 1.0))
    canvas = vertical_gradient(w, sky_top, sky_low)
    d = ImageDraw.Draw(canvas)
    if rng.random() < 0.6:
        sx, sy, sr = w * rng.uniform(0.1, 0.9), w * rng.uniform(0.1, 0.4), w * rng.uniform(0.04, 0.09)
        d.ellipse((sx - sr, sy - sr, sx + sr, sy + sr), fill=opaque(hsv_color(rng, (30, 60), (0.2, 0.9), (0.9, 1))))
    horizon = w * rng.uniform(0.5, 0.75)
    for layer_no in range(int(rng.integers(1, 4))):
        ridge = hsv_color(rng, (90, 250), (0.15, 0.6), (0.2, 0.6))
        peaks = (
            [(0.0, horizon)]
            + [(x, horizon - w * rng.uniform(0.05, 0.35)) for x in np.linspace(0, w, int(rng.integers(3, 7)))]
            + [(w, horizon)]
        )
        d.polygon([(x, y + layer_no * w * 0.04) for x, y in peaks], fill=opaque(shade(ridge, 1 - 0.2 * layer_no)))
    d.rectangle((0, horizon, w, w), fill=opaque(hsv_color(rng, (60, 220), (0.3, 0.8), (0.25, 0.7))))
    return canvas


def city(rng: np.random.Generator, w: int) -> Image.Image:
    """A skyline: buildings of many heights with lit window grids against the sky."""
    night = rng.random() < 0.4
    canvas = vertical_gradient(
        w,
        hsv_color(rng, (200, 240), (0.3, 0.8), (0.05, 0.3) if night else (0.6, 1.0)),
        hsv_color(rng, (190, 230), (0.1, 0.5), (0.2, 0.5) if night else (0.8, 1.0)),
    )
    d = ImageDraw.Draw(canvas)
    x = -rng.uniform(0, w * 0.1)
    while x < w:
        bw = w * rng.uniform(0.1, 0.24)
        top = w * rng.uniform(0.15, 0.65)
        d.rectangle((x, top, x + bw, w), fill=opaque(hsv_color(rng, (180, 260), (0.0, 0.3), (0.15, 0.6))))
        lit = (250, 220, 120) if night else hsv_color(rng, (190, 210), (0.2, 0.5), (0.7, 1.0))
        step = max(3.0, w * 0.045)
        for wy in np.arange(top + step * 0.5, w - step, step):
            for wx in np.arange(x + step * 0.4, x + bw - step * 0.6, step):
                if rng.random() < 0.7:
                    d.rectangle((wx, wy, wx + step * 0.45, wy + step * 0.5), fill=opaque(lit))
        x += bw + rng.uniform(0, w * 0.04)
    return canvas


def meme(rng: np.random.Generator, w: int) -> Image.Image:
    """A meme format: a base scene framed by top and bottom caption bars of bold text."""
    inner = render_scene(str(rng.choice(BASE_TAGS)), rng, w, clutter=0.0)
    canvas = Image.new("RGBA", (w, w), (255, 255, 255, 255) if rng.random() < 0.7 else (0, 0, 0, 255))
    bar = int(w * rng.uniform(0.16, 0.24))
    canvas.paste(inner.resize((w, w - 2 * bar)), (0, bar))
    d = ImageDraw.Draw(canvas)
    ink = (0, 0, 0, 255) if canvas.getpixel((0, 0))[0] > 128 else (255, 255, 255, 255)
    blocky_text(d, rng, (2, 2, w - 2, bar - 2), ink)
    if rng.random() < 0.8:
        blocky_text(d, rng, (2, w - bar + 2, w - 2, w - 2), ink)
    return canvas


def pixel_art(rng: np.random.Generator, w: int) -> Image.Image:
    """8-bit pixel art: a left-right symmetric sprite in a few flat colours, upscaled blocky."""
    cells = int(rng.choice([8, 10, 12]))
    colours = np.array(
        [hsv_color(rng, (0, 360), (0.5, 1), (0.5, 1)) for _ in range(3)]
        + [hsv_color(rng, (0, 360), (0, 0.4), (0.05, 0.3))],
        np.uint8,
    )
    half = rng.integers(0, 5, size=(cells, (cells + 1) // 2))  # 4 = background
    sprite_idx = np.concatenate([half, half[:, ::-1][:, cells % 2 :]], axis=1)
    pixels = np.where(sprite_idx[..., None] == 4, colours[3], colours[np.minimum(sprite_idx, 2)])
    return Image.fromarray(pixels.astype(np.uint8), "RGB").resize((w, w), Image.Resampling.NEAREST).convert("RGBA")


OBJECTS: dict[str, Callable[[np.random.Generator, int], Image.Image]] = {
    "food": food,
    "pets": pets,
    "selfie": selfie,
    "cars": cars,
    "fitness": fitness,
    "flowers": flowers,
}
SCENES: dict[str, Callable[[np.random.Generator, int], Image.Image]] = {
    "landscape": landscape,
    "city": city,
    "meme": meme,
    "pixel_art": pixel_art,
}


def _sticker(rng: np.random.Generator, canvas: Image.Image) -> None:
    """Occlude part of the frame the way posts are: an emoji, a text box or a solid block."""
    w = canvas.width
    d = ImageDraw.Draw(canvas)
    size = w * rng.uniform(0.2, 0.4)
    x, y = rng.uniform(-0.1, 0.9) * w, rng.uniform(-0.1, 0.9) * w
    kind = rng.integers(3)
    if kind == 0:
        d.ellipse((x, y, x + size, y + size), fill=(250, 205, 40, 255))
        d.ellipse((x + size * 0.28, y + size * 0.3, x + size * 0.4, y + size * 0.45), fill=(40, 30, 20, 255))
        d.ellipse((x + size * 0.6, y + size * 0.3, x + size * 0.72, y + size * 0.45), fill=(40, 30, 20, 255))
    elif kind == 1:
        box = (int(x), int(y), int(x + size * 1.6), int(y + size * 0.5))
        d.rounded_rectangle(box, radius=size * 0.1, fill=(245, 245, 245, 235))
        blocky_text(d, rng, box, (30, 30, 30, 255))
    else:
        d.rectangle(
            (x, y, x + size, y + size * rng.uniform(0.5, 1.5)), fill=opaque(hsv_color(rng, (0, 360), (0, 1), (0, 1)))
        )


def render_scene(look: str, rng: np.random.Generator, w: int, clutter: float) -> Image.Image:
    """The RGBA composition for one look at width ``w`` before camera effects.

    ``clutter`` scales how many small distractor objects of other looks share the frame.
    """
    if look in SCENES:
        canvas = SCENES[look](rng, w)
    else:
        canvas = background(rng, w)
        place(canvas, OBJECTS[look](rng, w), rng, scale=(0.55, 1.05), max_rotation=25, jitter=0.18)
    for _ in range(int(rng.poisson(clutter))):
        other = str(rng.choice([o for o in OBJECTS if o != look]))
        place(canvas, OBJECTS[other](rng, w), rng, scale=(0.18, 0.34), max_rotation=40, jitter=0.45)
    return canvas


def render_post(look: str, rng: np.random.Generator, size: int, difficulty: float = 1.0) -> Image.Image:
    """An RGB ``size`` x ``size`` post image of ``look``, with the camera and the app's effects.

    ``difficulty`` scales clutter, occlusion, noise, blur and colour casts together;
    1.0 is the calibrated default.
    """
    w = size * 2  # draw at twice the size, then downsample: anti-aliased edges
    canvas = render_scene(look, rng, w, clutter=1.2 * difficulty)
    if rng.random() < 0.45 * difficulty:
        _sticker(rng, canvas)
    image = canvas.convert("RGB").resize((size, size), Image.Resampling.BOX)
    if rng.random() < 0.25 * difficulty:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.4)))
    pixels = np.asarray(image, np.float32)
    cast = 1.0 + rng.normal(0.0, 0.12 * difficulty, size=3)  # white balance, per channel
    contrast = 1.0 + rng.uniform(-0.35, 0.25) * difficulty
    brightness = rng.normal(0.0, 18.0 * difficulty)
    pixels = (pixels * cast - 128.0) * contrast + 128.0 + brightness
    pixels += rng.normal(0.0, rng.uniform(2.0, 14.0) * difficulty, size=pixels.shape)  # sensor noise
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
