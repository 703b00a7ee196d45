"""Class labels from what a user types: an index, a name the model's config gives its class, or for
ImageNet models a WordNet id or an ImageNet name."""

import difflib
import functools
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

from .errors import UserError

SYNSETS = Path(__file__).resolve().parents[1] / "assets" / "imagenet_synsets.txt"
IMAGENET_CLASSES = 1000


@lru_cache(maxsize=1)
@functools.lru_cache(maxsize=1)
def imagenet_classes() -> list:
    """[(wnid, [name, synonym, …]), …] in class-index order, the order the checkpoints were trained in."""
    classes = []
    for line in SYNSETS.read_text(encoding="utf-8").splitlines():
        wnid, _, names = line.partition(" ")
        classes.append((wnid, [n.strip() for n in names.split(",") if n.strip()]))
    return classes


def describe(index: int) -> str:
    wnid, names = imagenet_classes()[index]
    return f"{index:4d}  {wnid}  {', '.join(names)}"


def search(query: str, limit: int = 20) -> list:
    """Indices of classes whose id or names contain ``query`` (case-insensitive), then close spellings;
    an index (``292``) finds that class."""
    q = query.strip().lower()
    if q.isdigit():
        return [int(q)] if int(q) < len(imagenet_classes()) else []
    hits = [i for i, (wnid, names) in enumerate(imagenet_classes())
            if q == wnid.lower() or any(q in n.lower() for n in names)]
    if not hits:
        lookup = {n.lower(): i for i, (_, names) in enumerate(imagenet_classes()) for n in names}
        hits = list(dict.fromkeys(lookup[m] for m in difflib.get_close_matches(q, lookup, n=limit, cutoff=0.6)))
    return hits[:limit]


def _own_name(text: str, names) -> Optional[int]:
    """The label whose name (from the model's config) is ``text``, exactly or else ignoring case."""
    if text in names:
        return names.index(text)
    low = [i for i, n in enumerate(names) if n.lower() == text.lower()]
    return low[0] if len(low) == 1 else None


def resolve(text, num_classes, names=None) -> int:
    """One class label from ``text``: an integer, one of ``names`` (the model's own class names, from
    its config), or for 1000-class models without names a WordNet id (n04409515) or a name ("tiger")."""
    text = str(text).strip()
    if names and _own_name(text, names) is not None:
        return _own_name(text, names)
    if re.fullmatch(r"-?\d+", text):
        label = int(text)
        if num_classes is not None and not 0 <= label < num_classes:
            raise UserError(f"class {label} is out of range: the model has classes 0..{num_classes - 1}")
        return label
    if names:
        close = difflib.get_close_matches(text, names, n=3, cutoff=0.6)
        shown = ", ".join(names[:10]) + (" …" if len(names) > 10 else "")
        raise UserError(f"unknown class {text!r}" + (f" (did you mean {' or '.join(map(repr, close))}?)"
                                                      if close else "") + f"; the model's classes: {shown}")
    if num_classes != IMAGENET_CLASSES:
        raise UserError(f"class {text!r}: names are known for the 1000 ImageNet classes only; "
                        "give an integer label")
    classes = imagenet_classes()
    low = text.lower()
    exact = [i for i, (wnid, names) in enumerate(classes)
             if low == wnid.lower() or any(low == n.lower() for n in names)]
    if len(exact) == 1:
        return exact[0]
    matches = exact or search(text)
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise UserError(f"unknown class {text!r}; try --list_classes QUERY")
    shown = "; ".join(f"{i} {classes[i][1][0]}" for i in matches[:8])
    raise UserError(f"class {text!r} is ambiguous: {shown}{' …' if len(matches) > 8 else ''}; "
                    "give the index or the WordNet id")


def resolve_list(text, num_classes, names=None) -> list:
    """Comma-separated labels, for several targets at once."""
    parts = [p for p in str(text).split(",") if p.strip()]
    if not parts:
        raise UserError("empty class list")
    return list(dict.fromkeys(resolve(p, num_classes, names) for p in parts))


def display_name(label, num_classes, names=None) -> str:
    """A label as a person reads it: ``3 dog`` with the model's own names, ``292 tiger`` for ImageNet
    models, the number otherwise, '' for none."""
    if label is None:
        return ""
    if names:
        return str(label) if names[label] == str(label) else f"{label} {names[label]}"
    if num_classes == len(imagenet_classes()):
        return f"{label} {imagenet_classes()[label][1][0]}"
    return str(label)


@dataclass(frozen=True)
class Labels:
    """One side's class labels: how many (None: an unconditional model) and, where the model's config
    gives them, their names (``class_names``)."""
    count: Optional[int]
    names: Optional[tuple] = None

    @classmethod
    def of(cls, source) -> "Labels":
        """The labels of a config dict (``load_config``) or of a network (``models.EpsNetwork``)."""
        if isinstance(source, dict):
            names = source.get("class_names")
            return cls(source["model"].get("num_classes"), tuple(names) if names else None)
        names = getattr(source, "class_names", None)
        return cls(source.num_classes, tuple(names) if names else None)

    def resolve(self, text) -> int:
        return resolve(text, self.count, self.names)

    def resolve_list(self, text) -> list:
        return resolve_list(text, self.count, self.names)

    def display(self, label) -> str:
        return display_name(label, self.count, self.names)
