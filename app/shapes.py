"""A generated 10-class image task that needs no download: shapes on cluttered, noisy backgrounds.

Each image shows one shape (the class) in a random colour, scale, rotation and position, over
a random background with clutter (lines and dots) and pixel noise. Every image is a function of
`(seed, class, index)` alone, so a larger `--per-class` adds images without changing the
earlier ones, and the same arguments write the same bytes on every machine. Rotation makes a
square and a diamond one class, so there is none; pentagons and hexagons, circles and
ellipses, stars and crosses stay close enough at small sizes that a small CNN does not reach
100 %.

```python
image = render_shape("star", size=64, rng=np.random.default_rng([42, 7, 0]))  # (64, 64, 3) uint8
write_shapes(Path("shapes"), per_class=500, size=64, seed=42)   # shapes/<class>/<class>_00000.png
```
"""

import math

import numpy as np

CLASSES = ("circle", "ellipse", "ring", "triangle", "square", "pentagon", "hexagon", "star",
           "cross", "crescent")
# Shapes are drawn this many times larger and then downsampled, for smooth edges.
SUPERSAMPLING = 4


def render_shape(name, size, rng):
    """One RGB image of the shape `name` as a `(size, size, 3)` uint8 array.

    Args:
        name: one of `CLASSES`.
        size: the side of the square image in pixels.
        rng: a `numpy.random.Generator`; everything random about the image comes from it.
    """
    from PIL import Image, ImageDraw

    big = size * SUPERSAMPLING
    background = rng.integers(0, 256, size=3)
    canvas = Image.new("RGB", (big, big), tuple(int(c) for c in background))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(2, 7))):  # clutter: lines and dots in other colours
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        x0, y0, x1, y1 = (float(v) for v in rng.uniform(0, big, size=4))
        if rng.random() < 0.6:
            draw.line([(x0, y0), (x1, y1)], fill=colour, width=int(rng.integers(1, 3)) * SUPERSAMPLING)
        else:
            radius = rng.uniform(0.01, 0.05) * big
            draw.ellipse([x0 - radius, y0 - radius, x0 + radius, y0 + radius], fill=colour)
    mask = Image.new("L", (big, big), 0)
    _draw_mask(ImageDraw.Draw(mask), name, big, rng)
    canvas.paste(tuple(int(c) for c in _contrasting(background, rng)), mask=mask)
    pixels = np.asarray(canvas.resize((size, size), Image.LANCZOS), dtype=np.float32)
    pixels += rng.normal(0.0, rng.uniform(0.0, 20.0), size=pixels.shape)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def write_shapes(directory, per_class, size, seed, progress=None):
    """Writes `per_class` PNG images of each class into `directory/<class>/`.

    Args:
        directory: an existing, empty folder.
        per_class: images per class.
        size: the side of each image in pixels.
        seed: the seed of the whole task.
        progress: called with the number of images written so far, or `None`.
    """
    from PIL import Image

    written = 0
    for class_index, name in enumerate(CLASSES):
        folder = directory / name
        folder.mkdir()
        for index in range(per_class):
            rng = np.random.default_rng([seed, class_index, index])
            Image.fromarray(render_shape(name, size, rng)).save(
                folder / f"{name}_{index:05d}.png", optimize=False)
            written += 1
            if progress is not None:
                progress(written)


def _contrasting(background, rng):
    """A random colour at least 96 away from `background` in the sum of channel distances."""
    while True:
        colour = rng.integers(0, 256, size=3)
        if np.abs(colour - background).sum() >= 96:
            return colour


def _draw_mask(draw, name, big, rng):
    """Draws the shape `name` in white on the mask, at a random scale, rotation and place."""
    radius = rng.uniform(0.18, 0.38) * big
    centre = rng.uniform(radius, big - radius, size=2)
    angle = rng.uniform(0.0, 2.0 * math.pi)

    def points(radii, count):
        return [(centre[0] + r * math.cos(angle + 2 * math.pi * k / count),
                 centre[1] + r * math.sin(angle + 2 * math.pi * k / count))
                for k, r in zip(range(count), radii)]

    def box(r, dx=0.0, dy=0.0):
        return [centre[0] + dx - r, centre[1] + dy - r, centre[0] + dx + r, centre[1] + dy + r]

    if name == "circle":
        draw.ellipse(box(radius), fill=255)
    elif name == "ellipse":
        # An ellipse at any rotation: a polygon with the minor axis half the major one.
        draw.polygon([(centre[0] + radius * math.cos(t) * math.cos(angle)
                       - 0.5 * radius * math.sin(t) * math.sin(angle),
                       centre[1] + radius * math.cos(t) * math.sin(angle)
                       + 0.5 * radius * math.sin(t) * math.cos(angle))
                      for t in np.linspace(0, 2 * math.pi, 72, endpoint=False)], fill=255)
    elif name == "ring":
        draw.ellipse(box(radius), fill=255)
        draw.ellipse(box(radius * 0.6), fill=0)
    elif name == "crescent":
        draw.ellipse(box(radius), fill=255)
        draw.ellipse(box(0.9 * radius, 0.45 * radius * math.cos(angle),
                         0.45 * radius * math.sin(angle)), fill=0)
    elif name in ("triangle", "square", "pentagon", "hexagon"):
        count = {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6}[name]
        draw.polygon(points([radius] * count, count), fill=255)
    elif name == "star":
        draw.polygon(points([radius, 0.45 * radius] * 5, 10), fill=255)
    elif name == "cross":
        arm = 0.3
        outline = [(1, arm), (arm, arm), (arm, 1), (-arm, 1), (-arm, arm), (-1, arm), (-1, -arm),
                   (-arm, -arm), (-arm, -1), (arm, -1), (arm, -arm), (1, -arm)]
        cos, sin = math.cos(angle), math.sin(angle)
        draw.polygon([(centre[0] + radius * (x * cos - y * sin),
                       centre[1] + radius * (x * sin + y * cos)) for x, y in outline], fill=255)
    else:
        raise ValueError(f"unknown shape {name!r}; choose one of {', '.join(CLASSES)}")
