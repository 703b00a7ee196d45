"""A static HTML gallery of a run: settings, counts, failures, then each source beside its translations.

The pages open from disk in any browser, with no server and nothing fetched from the network: the
style is inline and a two-line script marks each image loaded or broken (broken ones get a red frame,
and a test can check that every image on a page loaded) and enlarges small images with crisp pixels.
Large runs are split into pages of ``per_page`` rows with a navigation bar whose size grows with the
logarithm of the page count, so every page stays small and writing stays linear in the number of rows.
The caller gives plain strings and numbers; this module knows nothing about models.
"""

import errno
import functools
import html
import math
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Optional
from urllib.parse import quote

from .errors import INVISIBLE
from .images import NotOurs, atomic_path

PAGE_NAME = re.compile(r"index-([1-9][0-9]*)\.html")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class Translation(NamedTuple):
    """One translation of a source: a plain ``(path, class_B, psnr)`` tuple works as well."""

    path: str  # relative to save_dir
    class_B: str  # display name, may be ''
    psnr: Optional[float] = None  # cycle PSNR in dB


@dataclass
class GalleryRow:
    """One source image and what became of it.

    ``source`` is the source file's path (absolute, or relative to the working directory); the page
    links it relative to itself. ``outputs`` and ``cycle`` are paths relative to ``save_dir``;
    ``cycle[i]``, when given, is the round trip A→B→A through ``outputs[i]``.
    """

    source: str
    label: str
    class_A: str = ""
    outputs: list = field(default_factory=list)
    cycle: list = field(default_factory=list)


CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1em;color:#222;background:#fafafa}
h1{font-size:20px;margin:0 0 .5em}header{display:flex;flex-wrap:wrap;gap:0 2em;align-items:flex-start}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}
th{background:#eee;font-weight:600}
nav{margin:1em 0;word-spacing:.3em}nav b{padding:0 .3em}
section{border-top:1px solid #ddd;padding:.5em 0}h2{font-size:14px;margin:0 0 .3em;word-break:break-all}
.imgs{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start}
figure{margin:0;text-align:center}figcaption{font-size:12px;max-width:192px;word-break:break-word}
img{height:192px;width:auto;min-width:32px;max-width:384px;object-fit:contain;display:block;
background:#eee}img.px{image-rendering:pixelated}
img.broken{width:192px;outline:3px solid #d00}
.psnr{color:#555}
"""
# Marks each image when it loads or fails (images are lazy, so this listens on the document) and
# enlarges small ones with crisp pixels: pixelated scaling would alias images shown smaller.
SCRIPT = ("document.addEventListener('load',e=>{const i=e.target;if(i.tagName==='IMG'){i.classList.add('ok');"
          "if(i.naturalHeight<i.height)i.classList.add('px')}},true);"
          "document.addEventListener('error',e=>{if(e.target.tagName==='IMG')e.target.classList.add('broken')},true);")


def text(s) -> str:
    """HTML-escaped display text; bytes that are not UTF-8 (os.fsdecode's surrogates) and control
    characters show as ``\\xNN`` rather than breaking the page's encoding, bidirectional controls as
    ``\\uNNNN`` rather than reordering what is shown."""
    s = str(s)
    try:
        s = s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # lone surrogates that did not come from a file name
        s = s.encode("utf-8", "backslashreplace").decode("utf-8")
    s = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", s)
    return html.escape(INVISIBLE.sub(lambda m: f"\\u{ord(m.group()):04x}", s))


def url(path) -> str:
    """A link to a relative POSIX path or an absolute path, percent-encoded byte for byte, so that
    any file name (spaces, '#', '?', '%', non-UTF-8 bytes) reaches the same file."""
    path = os.fspath(path)
    posix = os.fsencode(path if os.sep == "/" else path.replace(os.sep, "/"))
    if not os.path.isabs(path):
        return quote(posix, safe="/")  # a ':' stays encoded, or "a:b.png" would read as a scheme
    encoded = quote(posix, safe="/:")
    return ("file://" if encoded.startswith("/") else "file:///") + encoded  # file:///C:/... on Windows


@functools.lru_cache(maxsize=4096)
def _relative_folder(folder: str, page_dir: str):
    """``folder`` relative to ``page_dir``, or None where there is no such path (another drive)."""
    try:
        return os.path.relpath(folder, page_dir)
    except ValueError:
        return None


def source_url(source, page_dir: str) -> str:
    """The source image linked relative to the page, or as a file: URL where no relative path exists.
    The relative path is worked out once per folder: sources come a folder at a time."""
    folder, name = os.path.split(os.path.abspath(source))
    relative = _relative_folder(folder, page_dir)
    if relative is None:
        return url(os.path.abspath(source))
    return url(name if relative == os.curdir else os.path.join(relative, name))


def page_name(number: int) -> str:
    """``index.html`` for the first page, ``index-N.html`` after it."""
    return "index.html" if number == 1 else f"index-{number}.html"


def nav_pages(current: int, total: int) -> list:
    """Pages linked from ``current``: its neighbours, the ends, and pages 5, 10, 20, 50, 100, … away,
    so any page is a few clicks from any other while each bar stays short."""
    steps, scale = {1, 2, 3}, 1
    while scale < total:
        steps.update({5 * scale, 10 * scale, 20 * scale})
        scale *= 10
    pages = {1, total} | {current + s for s in steps} | {current - s for s in steps}
    return sorted(p for p in pages if 1 <= p <= total)


def nav(current: int, total: int) -> str:
    """Previous/next links and the page index; empty for a single page."""
    if total == 1:
        return ""
    parts = [f'<a href="{page_name(current - 1)}" rel="prev">&larr; previous</a>' if current > 1 else ""]
    last = 0
    for p in nav_pages(current, total):
        if p > last + 1:
            parts.append("&hellip;")
        parts.append(f"<b>{p}</b>" if p == current else f'<a href="{page_name(p)}">{p}</a>')
        last = p
    parts.append(f'<a href="{page_name(current + 1)}" rel="next">next &rarr;</a>' if current < total else "")
    return f"<nav>page {' '.join(x for x in parts if x)}</nav>"


def duration(seconds: float) -> str:
    """``12.3 s``, ``4 min 05 s`` or ``2 h 03 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def table(pairs) -> str:
    """A two-column table of (name, value) pairs."""
    rows = "".join(f"<tr><th>{text(k)}</th><td>{text(v)}</td></tr>" for k, v in pairs)
    return f"<table>{rows}</table>"


def header(settings: dict, counts: dict, elapsed_s: Optional[float]) -> str:
    """The run's settings, counts and time (when given), shown on every page."""
    times = [] if elapsed_s is None else [("time", duration(elapsed_s))]
    return (f"<h1>DDIB translations</h1><header>{table(settings.items())}"
            f"{table(list(counts.items()) + times)}</header>")


def failures_html(failures, limit: int) -> str:
    """Failed inputs and why, at most ``limit`` of them (the rest counted)."""
    if not failures:
        return ""
    items = "".join(f"<li>{text(p)}: {text(r)}</li>" for p, r in failures[:limit])
    more = f"<p>&hellip; and {len(failures) - limit} more</p>" if len(failures) > limit else ""
    return f"<h2>Failed ({len(failures)})</h2><ul>{items}</ul>{more}"


def figure(link: str, caption: str, alt: str) -> str:
    """One image, clickable to open at full size, with its caption."""
    return (f'<figure><a href="{link}"><img src="{link}" alt="{alt}" loading="lazy"></a>'
            f"<figcaption>{caption}</figcaption></figure>")


def psnr_text(psnr) -> str:
    """The cycle PSNR under a translation, where it was measured."""
    return "" if psnr is None else f'<br><span class="psnr">cycle PSNR {psnr:.2f} dB</span>'


def row_html(row: GalleryRow, index: int, page_dir: str) -> str:
    """A row: the source, each translation and each round trip, captioned with class names."""
    label, class_A = text(row.label), text(row.class_A)
    figures = [figure(source_url(row.source, page_dir), f"source{': ' + class_A if class_A else ''}", label)]
    outputs = [Translation(*o) for o in row.outputs]
    for out in outputs:
        name = text(out.class_B)
        figures.append(figure(url(out.path), f"&rarr; {name or 'B'}{psnr_text(out.psnr)}", f"{label} to {name}"))
    for i, path in enumerate(row.cycle):
        via = text(outputs[i].class_B) if len(row.cycle) == len(outputs) else ""
        figures.append(figure(url(path), f"back to {class_A or 'A'}{' via ' + via if via else ''}",
                              f"{label} round trip"))
    return f'<section id="r{index}"><h2>{label}</h2><div class="imgs">{"".join(figures)}</div></section>'


def page_html(title: str, head: str, bar: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{title}</title><style>{CSS}</style><script>{SCRIPT}</script></head>\n"
            f"<body>{head}{bar}{body}{bar}</body></html>\n")


TITLE = "DDIB translations"  # every page's title starts so: how the tool knows a page as its own


def is_our_page(path) -> bool:
    """A regular file that this gallery wrote (its title near the start)."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        with open(path, "rb") as f:
            return f"<title>{TITLE}".encode() in f.read(1024)
    except OSError:
        return False


def foreign_page(save_dir) -> Optional[str]:
    """The first page name in ``save_dir`` taken by something the gallery did not write, or None."""
    path = Path(save_dir) / page_name(1)
    if os.path.lexists(path) and not is_our_page(path):
        return f"{path} is there and was not written by this tool"
    return None


def write_page(path: Path, content: str, root=None) -> None:
    """Write one page atomically: readers see the old page or the new one, never half of one. A page
    of the same name that this gallery did not write is never replaced."""
    if os.path.lexists(path) and not is_our_page(path):
        raise NotOurs(errno.EEXIST, "is there and was not written by this tool; it is left as it is", str(path))
    with atomic_path(path, root) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write(content)


def remove_stale_pages(save_dir: Path, pages: int) -> None:
    """Delete ``index-N.html`` pages beyond ``pages`` that an earlier, larger gallery wrote (only ours:
    a page of that name with other content is the user's)."""
    for entry in os.scandir(save_dir):
        match = PAGE_NAME.fullmatch(entry.name)
        if match and int(match.group(1)) > pages and is_our_page(entry.path):
            os.unlink(entry.path)


def write_gallery(save_dir, settings: dict, rows: list, failures: list, counts: dict, elapsed_s: Optional[float],
                  per_page: int = 200) -> Path:
    """Write ``save_dir/index.html`` (and ``index-2.html``, … when there are more than ``per_page``
    rows) and return the first page's path. Pages of those names that the gallery did not write are
    never replaced or removed (``NotOurs``, an OSError, is raised instead).

    ``settings`` and ``counts`` are shown as name/value tables (with a time row unless ``elapsed_s`` is
    None), ``failures`` as (path, reason) pairs.
    """
    if per_page < 1:
        raise ValueError(f"per_page must be positive, got {per_page}")
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    problem = foreign_page(save_dir)
    if problem:  # before any page: a gallery split over someone else's first page would be half a gallery
        raise NotOurs(errno.EEXIST, "is there and was not written by this tool; it is left as it is",
                      str(save_dir / page_name(1)))
    page_dir = os.path.abspath(save_dir)
    total = max(1, math.ceil(len(rows) / per_page))
    head = header(settings, counts, elapsed_s)
    for number in range(1, total + 1):
        start = (number - 1) * per_page
        chunk = rows[start:start + per_page]
        shown = f"<p>images {start + 1}&ndash;{start + len(chunk)} of {len(rows)}</p>" if rows else "<p>no images</p>"
        body = "".join(row_html(r, start + i + 1, page_dir) for i, r in enumerate(chunk))
        extra = failures_html(failures, per_page) if number == 1 else ""
        title = TITLE + (f" &ndash; page {number} of {total}" if total > 1 else "")
        write_page(save_dir / page_name(number), page_html(title, head + extra + shown, nav(number, total), body),
                   save_dir)
    remove_stale_pages(save_dir, total)
    return save_dir / "index.html"
