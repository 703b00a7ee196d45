"""Open a gallery page (or any HTML file) in headless Chromium, from disk, and save a screenshot.

The gallery's tests use the same functions to check that every image on a page loads, so a picture
made with this tool shows exactly what the tests saw.

    python tools/gallery_shot.py out/digits_to_8/index.html gallery.png --width 1280 --height 900
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-headless-shell", "chromium-browser", "google-chrome")
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--allow-file-access-from-files", "--hide-scrollbars", "--no-first-run", "--disable-extensions",
         "--mute-audio", "--disable-background-networking")
VIRTUAL_TIME_MS = 5000  # page time the browser may spend loading before it dumps or shoots


def find_chromium():
    """The Chromium binary: $CHROMIUM if set (None if that is not an executable), else the first of
    the usual names on PATH, else None."""
    if os.environ.get("CHROMIUM"):
        return shutil.which(os.environ["CHROMIUM"])
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


def run_chromium(html_path, width: int, height: int, *extra: str, timeout: float = 20) -> str:
    """Load ``html_path`` as a file:// page in a fresh profile and return stdout.

    Virtual time lets the page finish loading its images before output, without a fixed sleep.
    """
    binary = find_chromium()
    if binary is None:
        raise FileNotFoundError(f"no Chromium found (tried {', '.join(BROWSERS)}; or set CHROMIUM)")
    with tempfile.TemporaryDirectory(prefix="gallery-shot-") as profile:
        cmd = [binary, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
               f"--virtual-time-budget={VIRTUAL_TIME_MS}", *extra, Path(html_path).resolve().as_uri()]
        done = subprocess.run(cmd, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(f"{binary} exited with {done.returncode}: {done.stderr.decode(errors='replace')[-2000:]}")
    return done.stdout.decode("utf-8", "replace")


def dump_dom(html_path, width: int = 1280, height: int = 20000, timeout: float = 20) -> str:
    """The page's DOM after loading, as HTML (scripts and handlers have run)."""
    return run_chromium(html_path, width, height, "--dump-dom", timeout=timeout)


def screenshot(html_path, png_path, width: int = 1280, height: int = 900, timeout: float = 20) -> Path:
    """Save a ``width`` x ``height`` PNG of the page's top as ``png_path``."""
    png_path = Path(png_path).resolve()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    png_path.unlink(missing_ok=True)  # so a stale picture never passes for a new one
    run_chromium(html_path, width, height, f"--screenshot={png_path}", timeout=timeout)
    if not png_path.is_file():
        raise RuntimeError(f"Chromium wrote no screenshot to {png_path}")
    return png_path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("html", help="the page to open, e.g. SAVE_DIR/index.html")
    p.add_argument("png", help="where the screenshot goes")
    p.add_argument("--width", type=int, default=1280, help="window width in CSS pixels (default: 1280)")
    p.add_argument("--height", type=int, default=900, help="window height in CSS pixels (default: 900)")
    p.add_argument("--timeout", type=float, default=20, help="seconds before the browser is stopped (default: 20)")
    args = p.parse_args(argv)
    try:
        print(screenshot(args.html, args.png, args.width, args.height, args.timeout))
    except (FileNotFoundError, RuntimeError, subprocess.TimeoutExpired) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
