"""Which class each input comes from and goes to: from the flags, the folder names or a manifest."""

import csv
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import List, Optional

from .classes import Labels
from .errors import UserError, printable

FOLDER = "folder"


@dataclass
class Job:
    """One input image: where it is, its source class and the classes to translate it to."""
    rel: Path
    class_A: Optional[int]
    targets: List[Optional[int]]


def _check_side(flag: str, value, labels: Labels):
    if labels.count is None and value is not None:
        raise UserError(f"{flag}: that side's model is unconditional (no num_classes in its config); drop {flag}")
    if labels.count is not None and value is None:
        raise UserError(f"{flag} is required: that side's model is class-conditional ({labels.count} classes)")


def _flagged(flag, fn, *args):
    try:
        return fn(*args)
    except UserError as e:
        raise UserError(f"{flag}: {e}") from None


def _from_flags(rel_paths, class_A, class_B, classes_A, classes_B):
    _check_side("--class_A", class_A, classes_A)
    _check_side("--class_B", class_B, classes_B)
    targets = [None] if class_B is None else _flagged("--class_B", classes_B.resolve_list, class_B)
    if class_A is None or class_A.strip().lower() != FOLDER:
        source = None if class_A is None else _flagged("--class_A", classes_A.resolve, class_A)
        return [Job(rel, source, targets) for rel in rel_paths], []
    jobs, skipped, by_folder = [], [], {}
    for rel in rel_paths:
        if len(rel.parts) < 2:
            skipped.append((rel, "--class_A folder: the image is not inside a class folder"))
            continue
        folder = rel.parts[0]
        if folder not in by_folder:
            try:
                by_folder[folder] = classes_A.resolve(folder)
            except UserError as e:
                raise UserError(f"--class_A folder: folder {folder!r}: {e}") from None
        jobs.append(Job(rel, by_folder[folder], targets))
    return jobs, skipped


def _from_manifest(path: Path, rel_paths, classes_A, classes_B):
    try:
        return _read_manifest(path, rel_paths, classes_A, classes_B)
    except csv.Error as e:
        raise UserError(f"--manifest {path}: not a readable CSV ({printable(str(e), 120)})") from None
    except OSError as e:
        raise UserError(f"--manifest {path}: cannot read it ({e.strerror or e})") from None


def _text(path: Path, line: int, column: str, value: str) -> str:
    """A class field as text: it must be UTF-8 (only the path column may hold a name's raw bytes)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        byte = ord(value[e.start]) - 0xDC00
        raise UserError(f"--manifest {path} line {line}: {column} is not UTF-8 text (byte 0x{byte:02x}); "
                        "save the manifest as UTF-8 CSV") from None
    return value


def _read_manifest(path: Path, rel_paths, classes_A, classes_B):
    """The path column is read literally, as the file's name relative to --input_dir with '/' between
    folders: no spaces are stripped and a backslash is part of a name (quote a field with commas,
    quotes, line breaks or surrounding spaces, as CSV does). A name whose bytes are not UTF-8 is
    written with those bytes, as failures.csv writes it."""
    known = {rel.as_posix(): rel for rel in rel_paths}
    jobs, skipped = {}, []
    with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is not None:
            reader.fieldnames = [name.strip() for name in reader.fieldnames]
        if reader.fieldnames is None or "path" not in reader.fieldnames:
            raise UserError(f"--manifest {path}: the first line must name the columns path,class_A,class_B")
        for line, row in enumerate(reader, start=2):
            name = PurePosixPath(row.get("path") or "").as_posix()
            class_A = _text(path, line, "class_A", row.get("class_A") or "")
            class_B = _text(path, line, "class_B", row.get("class_B") or "")
            try:
                source = classes_A.resolve(class_A) if class_A.strip() else None
                targets = classes_B.resolve_list(class_B.replace(";", ",")) if class_B.strip() else [None]
                _check_side("class_A", source, classes_A)
                _check_side("class_B", targets[0], classes_B)
            except UserError as e:
                raise UserError(f"--manifest {path} line {line}: {e}") from None
            if name not in known:
                skipped.append((Path(name), "listed in the manifest but not an image under --input_dir"))
                continue
            job = jobs.setdefault(name, Job(known[name], source, []))
            if job.class_A != source:
                raise UserError(f"--manifest {path} line {line}: {printable(name)} is listed with two source "
                                "classes")
            job.targets.extend(t for t in targets if t not in job.targets)
    return list(jobs.values()), skipped


def plan_jobs(rel_paths, class_A: Optional[str], class_B: Optional[str], manifest: Optional[str],
              classes_A: Labels, classes_B: Labels, classifier_classes: Optional[int] = None) -> tuple:
    """Jobs for the inputs (classes as typed: labels, names, ``folder``; or a manifest CSV), and
    (path, reason) for inputs that cannot be planned. ``classes_A``/``classes_B``: each side's labels."""
    if manifest:
        if class_A is not None or class_B is not None:
            raise UserError("--manifest gives the classes; drop --class_A/--class_B")
        jobs, skipped = _from_manifest(Path(manifest), rel_paths, classes_A, classes_B)
    else:
        jobs, skipped = _from_flags(rel_paths, class_A, class_B, classes_A, classes_B)
    if classifier_classes is not None:
        for job in jobs:
            bad = [t for t in job.targets if t is None or not 0 <= t < classifier_classes]
            if bad:
                raise UserError(f"class_B {bad[0]} cannot be guided: the classifier has classes "
                                f"0..{classifier_classes - 1}")
    return jobs, skipped


def all_targets(jobs: List[Job]) -> list:
    return sorted({t for job in jobs for t in job.targets}, key=lambda t: -1 if t is None else t)
