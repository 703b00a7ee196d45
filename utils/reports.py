"""The save folder's reports, failures.csv and cycle.csv, describe the folder after the latest run.

A run rewrites them from what the folder holds: a row of an earlier run stays only while it is still
true (its input still has no output, or its output is still the one measured), so a fixed input
leaves failures.csv and the cycle values of an interrupted run are completed by the next. The tool
recognises its own reports by their header and never replaces or removes a file it did not write.
"""

import csv
import math
import os
import re
import stat
from pathlib import Path
from typing import Optional

FAILURES, CYCLE = "failures", "cycle"
HEADERS = {FAILURES: ("path", "reason"), CYCLE: ("path", "class_A", "class_B", "cycle_psnr_db")}
PROCESS_SHARE = re.compile(r"(failures|cycle)-process[0-9]+\.csv")
READ_LIMIT = 256 << 20  # bytes: a report of a few million rows


def report_path(save_dir, kind: str, suffix: str = "") -> Path:
    return Path(save_dir) / f"{kind}{suffix}.csv"


def is_ours(path, kind: str) -> bool:
    """A regular file whose first line is this tool's header for ``kind``."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        with open(path, "rb") as f:
            first = f.readline(256)
    except OSError:
        return False
    return first.rstrip(b"\r\n") == ",".join(HEADERS[kind]).encode()


def foreign_report(save_dir) -> Optional[str]:
    """A report name in the save folder taken by something this tool did not write, or None."""
    for kind in (FAILURES, CYCLE):
        path = report_path(save_dir, kind)
        if os.path.lexists(path) and not is_ours(path, kind):
            return f"{path} is there and was not written by this tool"
    return None


def _shares(save_dir, kind: str) -> list:
    """The report and the per-process shares an interrupted run of several processes left."""
    try:
        names = sorted(n for n in os.listdir(save_dir) if PROCESS_SHARE.fullmatch(n) and n.startswith(kind))
    except OSError:
        names = []
    return [report_path(save_dir, kind)] + [Path(save_dir) / n for n in names]


def read_rows(save_dir, kind: str) -> list:
    """Rows (tuples of strings) of this tool's ``kind`` reports in the folder: the report and any
    per-process shares. Anything unreadable counts as no rows: it is rewritten from the folder."""
    rows = []
    for path in _shares(save_dir, kind):
        if not is_ours(path, kind) or os.path.getsize(path) > READ_LIMIT:
            continue
        try:
            with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
                reader = csv.reader(f)
                next(reader, None)
                rows += [tuple(r) for r in reader if len(r) == len(HEADERS[kind])]
        except (OSError, csv.Error):
            continue
    return rows


def class_cell(text):
    """A class column's cell as the label it was written from: an int, or None (an empty cell)."""
    return None if text in ("", "None", None) else int(text)


def cycle_values(rows) -> dict:
    """(path, class_B) → PSNR from cycle.csv rows (class_B as the int it was, or None)."""
    values = {}
    for path, _, class_B, value in rows:
        try:
            values[(path, class_cell(class_B))] = float(value)
        except ValueError:
            continue
    return values


def remove_reports(save_dir, shares_only: bool = False) -> None:
    """Remove this tool's reports and their per-process shares: all of them when an --overwrite run
    starts (they describe outputs about to be replaced), the shares alone (``shares_only``) once a
    complete report holds their rows."""
    for kind in (FAILURES, CYCLE):
        for path in _shares(save_dir, kind)[1 if shares_only else 0:]:
            if is_ours(path, kind):
                path.unlink(missing_ok=True)


def write_report(save_dir, kind: str, rows, suffix: str = "") -> Optional[Path]:
    """Write ``kind`` (rows in header order), or remove this tool's old one when there are no rows;
    returns the path written, or None."""
    from .outputs import write_csv

    path = report_path(save_dir, kind, suffix)
    if rows:
        return write_csv(rows, HEADERS[kind], path, root=save_dir)
    if is_ours(path, kind):
        path.unlink(missing_ok=True)
    return None


def mean_cycle(rows) -> str:
    """The summary's text for the cycle PSNR of ``rows`` ('' when none is finite)."""
    finite = [min(float(r[3]), 100.0) for r in rows if not math.isnan(float(r[3]))]
    if not finite:
        return ""
    return f", cycle PSNR {sum(finite) / len(finite):.2f} dB (mean of {len(finite)})"
