"""Compare ODE solvers and timestep spacings on the digits model: quality against network evaluations.

For every solver × spacing × end timestep × steps per half it runs tools/eval_digits.py's measures
(target accuracy, hue difference, A→B→A and A→A PSNR; x₀ unclipped, unguided and guided), counts the
UNet evaluations of each half, and writes a markdown table into docs/solvers.md (between the
``solver_table`` markers) and a plot of PSNR against evaluations (drawn with PIL) into docs/solvers.png.
Results are kept in a JSON file, so runs can add settings a few at a time; measured settings are skipped.

    python tools/solver_table.py --threads 1 --solvers ddim dpm++2m --spacings logsnr --steps 4 6 8
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from diffusions import RESPACE_TYPES, SOLVERS  # noqa: E402
from tools import digits_data  # noqa: E402
from tools.eval_digits import (Translator, add_model_args, evaluate_setting, fit_reference_classifier,  # noqa: E402
                               pairs, sample_sources)
from utils.pipeline import DDIB  # noqa: E402

STEPS = [3, 4, 5, 6, 8, 10, 15, 25, 50, 100]
START, END = "<!-- solver_table:start -->", "<!-- solver_table:end -->"
BASELINE = ("ddim", "uniform", 100, None)  # the README's reference: what a setting must match


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_args(p)
    p.add_argument("--classifier_scale", type=float, default=1.0, help="guidance scale of the guided rows")
    p.add_argument("--solvers", nargs="+", default=sorted(SOLVERS), choices=sorted(SOLVERS),
                   help="solvers to measure (default: all registered)")
    p.add_argument("--spacings", nargs="+", default=["uniform", "logsnr"], choices=RESPACE_TYPES,
                   help="timestep spacings to measure (default: uniform logsnr)")
    p.add_argument("--steps", type=int, nargs="+", default=STEPS, help="steps per half, one row each")
    p.add_argument("--t_end", nargs="+", default=["default"],
                   help="end timesteps to measure: integers, or 'default' for what the spacing gives")
    p.add_argument("--unguided_only", action="store_true", help="skip the guided rows")
    p.add_argument("--per_class", type=int, default=1, help="held-out sources per class (as eval_digits)")
    p.add_argument("--seed", type=int, default=0, help="seed of the source sample")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch")
    p.add_argument("--results", default="docs/solvers.json", help="JSON file that keeps every measured row")
    p.add_argument("--markdown", default="docs/solvers.md",
                   help="file whose solver_table section gets the table (created if missing)")
    p.add_argument("--plot", default="docs/solvers.png", help="PNG of PSNR against network evaluations")
    p.add_argument("--plot_t_end", type=int, default=950,
                   help="plot the series measured with this --t_end, and DDIM with uniform spacing (default: 950)")
    p.add_argument("--redo", action="store_true", help="measure settings again even if the JSON has them")
    p.add_argument("--report_only", action="store_true", help="only rewrite the table and plot from the JSON")
    return p.parse_args(argv)


def key(row) -> str:
    return "|".join(str(row[k]) for k in ("solver", "spacing", "steps", "t_end_arg", "scale", "per_class", "seed"))


class Counter:
    """Counts calls of a module (one network evaluation per batch: every batch here is the whole set)."""

    def __init__(self, module):
        self.n = 0
        self.handle = module.register_forward_hook(lambda *_: setattr(self, "n", self.n + 1))

    def take(self) -> int:
        n, self.n = self.n, 0
        return n


def measure(args, rows: dict) -> None:
    torch.set_num_threads(args.threads)
    ddib = DDIB.from_files(args.config, args.weights, args.classifier_weights or None, device="cpu",
                           precision="no", compile=False, micro_batch=10_000, warn=print)
    counter = Counter(ddib.bridge.model_A)
    data = digits_data.load()
    svc, _ = fit_reference_classifier(data)
    idx = sample_sources(data, args.per_class, args.seed)
    x, a = data["images"][idx], data["labels"][idx]
    pos, b = pairs(a)
    scales = [0.0] + ([args.classifier_scale] if args.classifier_weights and not args.unguided_only else [])
    for solver in args.solvers:
        for spacing in args.spacings:
            for t_end_arg in args.t_end:
                t_end = None if t_end_arg == "default" else int(t_end_arg)
                for steps in args.steps:
                    base = {"solver": solver, "spacing": spacing, "steps": steps, "t_end_arg": t_end,
                            "per_class": args.per_class, "seed": args.seed}
                    todo = [s for s in scales if args.redo or key({**base, "scale": s}) not in rows]
                    if not todo:
                        continue
                    try:
                        ddib.bridge.sampling = ddib.bridge.with_sampling(solver=solver, respace_type=spacing,
                                                                         t_end=t_end, steps=steps)
                    except ValueError as e:
                        print(f"skipping {base}: {e}", flush=True)
                        continue
                    ts = ddib.bridge.timesteps()
                    tr = Translator(ddib, steps, clip_x0=False)
                    counter.take()
                    start = time.time()
                    latent = tr.invert(x, a)
                    inv_secs, nfe_inv = time.time() - start, counter.take()
                    for scale in todo:
                        start = time.time()
                        m = evaluate_setting(tr, x, a, latent, pos, b, scale, svc, lambda: None)
                        calls = counter.take() - nfe_inv  # three generations and one inversion
                        row = {**base, "scale": scale, "t_end": ts[-1], "timesteps": ts, "nfe_inv": nfe_inv,
                               "nfe_gen": calls // 3, "acc": float(m["acc"]), "hue": float(m["hue"]),
                               "cycle": float(m["cycle"]), "rec": float(m["rec"]),
                               "secs": round(inv_secs + time.time() - start, 1),
                               "date": time.strftime("%Y-%m-%d"), "threads": args.threads}
                        assert calls % 3 == 0, calls
                        rows[key(row)] = row
                        print(f"{solver:9} {spacing:8} t_end {ts[-1]:3} steps {steps:3} scale {scale:g}: "
                              f"NFE {nfe_inv}+{row['nfe_gen']}, acc {row['acc']:.1%}, hue {row['hue']:.1f}, "
                              f"A→B→A {row['cycle']:.2f}, A→A {row['rec']:.2f} ({row['secs']}s)", flush=True)
                        save(args.results, rows)


def save(path, rows: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(sorted(rows.values(), key=order), indent=1))
    tmp.replace(path)


def order(r):
    return (r["solver"], r["spacing"], r["t_end_arg"] or 0, r["scale"], r["steps"])


def baseline(rows, scale):
    for r in rows:
        if (r["solver"], r["spacing"], r["steps"], r["t_end_arg"]) == BASELINE and r["scale"] == scale:
            return r
    return None


def meets(r, ref) -> bool:
    """At least as good as the reference on all four measures (as printed: 0.1 % and 0.01 dB)."""
    return (ref is not None and round(r["acc"], 3) >= round(ref["acc"], 3) and round(r["hue"], 1) <= round(ref["hue"], 1)
            and round(r["cycle"], 2) >= round(ref["cycle"], 2) and round(r["rec"], 2) >= round(ref["rec"], 2))


def table(rows) -> str:
    lines = ["| solver | spacing | steps/half | t_end | NFE inv + gen = total | guidance | target acc | hue diff (°) "
             "| A→B→A (dB) | A→A (dB) | ≥ DDIM 100 |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: |"]
    for r in sorted(rows, key=lambda r: (r["scale"],) + order(r)):
        ok = "✓" if meets(r, baseline(rows, r["scale"])) else ""
        lines.append(f"| {r['solver']} | {r['spacing']} | {r['steps']} | {r['t_end']} | {r['nfe_inv']} + {r['nfe_gen']} = "
                     f"{r['nfe_inv'] + r['nfe_gen']} | {r['scale']:g} | {r['acc']:.1%} | {r['hue']:.1f} | "
                     f"{r['cycle']:.2f} | {r['rec']:.2f} | {ok} |")
    return "\n".join(lines)


def write_markdown(path, rows) -> None:
    body = f"{START}\n{table(rows)}\n{END}"
    p = Path(path)
    text = p.read_text() if p.exists() else f"# Solvers\n\n{START}\n{END}\n"
    if START not in text:
        text += f"\n{START}\n{END}\n"
    head, rest = text.split(START, 1)
    p.write_text(head + body + rest.split(END, 1)[1])


PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def plot(path, rows, t_end: int) -> None:
    """Unguided A→A and A→B→A PSNR against total network evaluations (log axis): one line per solver
    and spacing measured with ``t_end``, plus DDIM with today's uniform spacing; the DDIM-100
    reference as a dashed level."""
    from PIL import Image, ImageDraw

    series = {}
    for r in sorted(rows, key=order):
        if r["scale"] == 0 and (r["t_end_arg"] == t_end or (r["solver"], r["spacing"], r["t_end_arg"]) ==
                                ("ddim", "uniform", None)):
            label = f"{r['solver']} {r['spacing']}" + (f" t_end {r['t_end_arg']}" if r["t_end_arg"] else "")
            series.setdefault(label, []).append(r)
    if not series:
        return
    w, h, left, top, pw, ph, gap = 1400, 560, 60, 40, 420, 440, 60
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    nfes = [r["nfe_inv"] + r["nfe_gen"] for s in series.values() for r in s]
    x_lo, x_hi = np.log10(max(1, min(nfes)) * 0.8), np.log10(max(nfes) * 1.25)
    ref = baseline(rows, 0.0)
    for panel, (field, title) in enumerate((("rec", "A->A PSNR (dB)"), ("cycle", "A->B->A PSNR (dB)"))):
        x0 = left + panel * (pw + gap)
        vals = [r[field] for s in series.values() for r in s]
        y_lo, y_hi = np.floor(min(vals)) - 1, np.ceil(max(vals)) + 1

        def xy(n, v, x0=x0, y_lo=y_lo, y_hi=y_hi):
            return (x0 + (np.log10(n) - x_lo) / (x_hi - x_lo) * pw, top + ph - (v - y_lo) / (y_hi - y_lo) * ph)

        d.rectangle([x0, top, x0 + pw, top + ph], outline="black")
        d.text((x0, 12), f"{title}, unguided, vs network evaluations (both halves)", fill="black")
        for n in (2, 3, 5, 10, 20, 30, 50, 100, 200):
            if x_lo <= np.log10(n) <= x_hi:
                px = xy(n, y_lo)[0]
                d.line([px, top + ph, px, top + ph + 5], fill="black")
                d.line([px, top, px, top + ph], fill=(230, 230, 230))
                d.text((px - 8, top + ph + 8), str(n), fill="black")
        for v in np.arange(y_lo, y_hi + 1e-9, 2 if y_hi - y_lo <= 24 else 5):
            py = xy(10, v)[1]
            d.line([x0 - 5, py, x0, py], fill="black")
            d.line([x0, py, x0 + pw, py], fill=(230, 230, 230))
            d.text((x0 - 30, py - 6), f"{v:g}", fill="black")
        if ref is not None:
            py = xy(10, ref[field])[1]
            for px in range(int(x0), int(x0 + pw), 12):
                d.line([px, py, px + 6, py], fill="black")
            d.text((x0 + 4, py - 14), "DDIM 100 steps", fill="black")
        for i, (label, s) in enumerate(series.items()):
            color = PALETTE[i % len(PALETTE)]
            pts = [xy(r["nfe_inv"] + r["nfe_gen"], r[field]) for r in sorted(s, key=lambda r: r["steps"])]
            if len(pts) > 1:
                d.line(pts, fill=color, width=2)
            for px, py in pts:
                d.ellipse([px - 3, py - 3, px + 3, py + 3], fill=color)
    lx = left + 2 * (pw + gap)
    for i, label in enumerate(series):
        y = top + 10 + 18 * i
        d.line([lx, y + 6, lx + 24, y + 6], fill=PALETTE[i % len(PALETTE)], width=3)
        d.text((lx + 30, y), label, fill="black")
    img.save(path)


def main(argv=None):
    args = parse_args(argv)
    path = Path(args.results)
    rows = {key(r): r for r in json.loads(path.read_text())} if path.exists() else {}
    if not args.report_only:
        measure(args, rows)
    write_markdown(args.markdown, list(rows.values()))
    plot(args.plot, list(rows.values()), args.plot_t_end)


if __name__ == "__main__":
    main()
