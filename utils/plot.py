"""A line plot drawn with PIL (no plotting library is a dependency): a training run's loss curve."""

import math

from PIL import Image, ImageDraw

from .images import atomic_path

WIDTH, HEIGHT = 720, 420
MARGIN = (70, 20, 20, 50)  # left, top, right, bottom
COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44)]


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list:
    """Round tick values covering [lo, hi]."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / count
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 5, 10) if raw <= m * step)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


def _log_ticks(lo: float, hi: float) -> list:
    """Ticks for a log10 axis from ``lo`` to ``hi`` (in log10 units): round values of y, as log10."""
    if hi - lo <= 1:
        values = [v for v in _nice_ticks(10 ** lo, 10 ** hi) if v > 0]
    else:
        values = [m * 10.0 ** e for e in range(math.floor(lo), math.ceil(hi) + 1) for m in (1, 2, 5)]
        values = [v for v in values if lo <= math.log10(v) <= hi]
        if len(values) > 8:
            values = [v for v in values if round(v / 10 ** math.floor(math.log10(v))) == 1]
    return [math.log10(v) for v in values]


def _label(value: float) -> str:
    rounded = round(value)
    if abs(value - rounded) < 1e-9 * max(1.0, abs(value)) and abs(rounded) < 10 ** 7:
        return f"{rounded:,}"
    return f"{value:.3g}"


def line_plot(path, series: dict, x_label: str = "step", y_label: str = "", log_y: bool = False,
              root=None) -> None:
    """Write a PNG of ``series`` ({name: (xs, ys)}) with axes, ticks and a legend, atomically (inside
    ``root``: see ``utils.images.atomic_path``). ``log_y`` plots log10 of y (non-positive values are left
    out)."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = MARGIN[0], MARGIN[1], WIDTH - MARGIN[2], HEIGHT - MARGIN[3]
    points = {}
    for name, (xs, ys) in series.items():
        pts = [(float(x), math.log10(y) if log_y else float(y)) for x, y in zip(xs, ys)
               if math.isfinite(y) and (y > 0 or not log_y)]
        if pts:
            points[name] = pts
    draw.rectangle([left, top, right, bottom], outline=(0, 0, 0))
    if points:
        all_x = [x for pts in points.values() for x, _ in pts]
        all_y = [y for pts in points.values() for _, y in pts]
        x0, x1 = min(all_x), max(all_x) if max(all_x) > min(all_x) else min(all_x) + 1
        pad = (max(all_y) - min(all_y)) * 0.05 or 0.5
        y0, y1 = min(all_y) - pad, max(all_y) + pad

        def to_px(x, y):
            return (left + (x - x0) / (x1 - x0) * (right - left), bottom - (y - y0) / (y1 - y0) * (bottom - top))

        for tick in _nice_ticks(x0, x1):
            px = to_px(tick, y0)[0]
            draw.line([px, bottom, px, bottom + 4], fill=(0, 0, 0))
            draw.text((px - 12, bottom + 8), _label(tick), fill=(0, 0, 0))
        for tick in (_log_ticks(y0, y1) if log_y else _nice_ticks(y0, y1)):
            py = to_px(x0, tick)[1]
            draw.line([left - 4, py, left, py], fill=(0, 0, 0))
            draw.line([left + 1, py, right - 1, py], fill=(230, 230, 230))
            draw.text((4, py - 6), _label(10 ** tick if log_y else tick), fill=(0, 0, 0))
        for i, (name, pts) in enumerate(points.items()):
            colour = COLOURS[i % len(COLOURS)]
            pixels = [to_px(x, y) for x, y in pts]
            if len(pixels) > 1:
                draw.line(pixels, fill=colour, width=2)
            else:
                draw.ellipse([pixels[0][0] - 2, pixels[0][1] - 2, pixels[0][0] + 2, pixels[0][1] + 2], fill=colour)
            draw.text((right - 150, top + 6 + 14 * i), name, fill=colour)
    draw.text(((left + right) // 2 - 15, HEIGHT - 18), x_label, fill=(0, 0, 0))
    if y_label:
        draw.text((left + 6, top + 4), y_label + (" (log scale)" if log_y else ""), fill=(0, 0, 0))
    with atomic_path(path, root) as tmp:
        image.save(tmp, format="PNG")
