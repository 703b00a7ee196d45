"""How far the fast paths move DDIB translations: PSNR against float32 on the golden fixture.

Runs the golden 32×32 UNet and classifier (tests/data/ddib_public_32.pt, guided-diffusion's numbers)
through DDIB inversion and generation (``diffusions.invert`` / ``generate``) in float32 and through
each fast path, on any device, and reports PSNR (signal range [-1, 1]) and max |Δ|. The pytest suite
and tools/gpu_check.sh both use it.

    python tools/faithfulness.py --device cuda --dtypes bf16,fp16 --compile --out results.json
    python tools/faithfulness.py --png_dirs out_float32 out_bf16    # two runs' PNGs, image by image
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusions import alphas_cumprod, generate, invert  # noqa: E402
from models.fast import prepare_for_inference  # noqa: E402
from models.unet import EncoderUNetModel, UNetModel  # noqa: E402
from utils.images import psnr  # noqa: E402

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "data" / "ddib_public_32.pt"
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# latent: DDIM inversion of x0; translated / reconstructed / translated_guided: generation from that
# latent; *_from_latent: generation from the fixture's own latent, i.e. one ODE direction alone.
OUTPUTS = ("latent", "translated", "reconstructed", "translated_guided", "translated_from_latent",
           "guided_from_latent")
GOLDEN_KEY = {"translated_from_latent": "translated", "guided_from_latent": "translated_guided"}


def load_golden(path=GOLDEN) -> dict:
    return torch.load(path, weights_only=True)


def _sizes(kwargs: dict) -> dict:
    """The fixture gives attention_resolutions as downsample rates; our constructors take sizes."""
    kwargs = dict(kwargs)
    kwargs["attention_resolutions"] = [kwargs["image_size"] // r for r in kwargs["attention_resolutions"]]
    return kwargs


def golden_models(golden: dict, device="cpu"):
    """The fixture's UNet and classifier in float32, weights loaded strictly."""
    unet = UNetModel(**_sizes(golden["unet"]["kwargs"]))
    unet.load_state_dict(golden["unet"]["state_dict"], strict=True)
    clf = EncoderUNetModel(**_sizes(golden["classifier"]["kwargs"]))
    clf.load_state_dict(golden["classifier"]["state_dict"], strict=True)
    return unet.to(device).eval(), clf.to(device).eval()


def golden_translations(unet, clf, golden: dict, device="cpu") -> dict:
    """All of OUTPUTS for the fixture's three images (latents are compared like images)."""
    d = golden["diffusion"]
    ac = alphas_cumprod(d["beta_schedule"], d["total_steps"])
    ts = [int(t) for t in d["timesteps"]]
    guide = dict(classifier=clf, classifier_scale=d["classifier_scale"])
    a, b = d["class_A"], d["class_B"]
    with torch.no_grad():
        latent = invert(unet, d["x0"].to(device), a, ac, ts)
        ref_latent = d["latent"].to(device)
        out = dict(latent=latent, translated=generate(unet, latent, b, ac, ts),
                   reconstructed=generate(unet, latent, a, ac, ts),
                   translated_guided=generate(unet, latent, b, ac, ts, **guide),
                   translated_from_latent=generate(unet, ref_latent, b, ac, ts),
                   guided_from_latent=generate(unet, ref_latent, b, ac, ts, **guide))
    return {k: v.float().cpu() for k, v in out.items()}


def compare(ref: dict, got: dict) -> dict:
    return {k: {"psnr_db": round(psnr(got[k], ref[k]), 2),
                "max_abs": round((got[k] - ref[k]).abs().max().item(), 6)} for k in got}


def run(device="cpu", dtypes=("bf16",), compile=False) -> dict:
    """float32 on ``device`` vs the fixture, then each dtype (and compiled variant) vs float32."""
    torch.backends.cudnn.allow_tf32 = False  # the reference must be true float32 on a GPU too
    torch.backends.cuda.matmul.allow_tf32 = False
    golden = load_golden()
    unet, clf = golden_models(golden, device)
    ref = golden_translations(unet, clf, golden, device)
    report = {"device": str(device), "note": "PSNR over [-1, 1]; the fixture's random weights make the "
              "10-step DDIB chaotic (x0 perturbed by 1e-4 -> ~24 dB end to end), so latent and *_from_latent "
              "(one ODE direction) are the tight measures",
              "fp32_vs_golden": compare({k: golden["diffusion"][GOLDEN_KEY.get(k, k)] for k in OUTPUTS}, ref)}
    variants = [(name, False) for name in dtypes] + ([(name, True) for name in dtypes] if compile else [])
    for name, comp in variants:
        u, c = golden_models(golden, device)
        for m in (u, c):
            prepare_for_inference(m, dtype=DTYPES[name], compile=comp)
        start = time.perf_counter()
        got = golden_translations(u, c, golden, device)
        key = f"{name}{'_compiled' if comp else ''}_vs_fp32"
        report[key] = compare(ref, got)
        report[key]["seconds"] = round(time.perf_counter() - start, 2)
    return report


def compare_png_dirs(ref_dir, other_dir) -> dict:
    """PSNR (8-bit) of every PNG under ``ref_dir`` against the same path under ``other_dir``."""
    import numpy as np
    from PIL import Image

    ref_dir, other_dir = Path(ref_dir), Path(other_dir)
    values = []
    for ref in sorted(ref_dir.rglob("*.png")):
        with Image.open(ref) as a, Image.open(other_dir / ref.relative_to(ref_dir)) as b:
            values.append(psnr(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB")), data_range=255.0))
    if not values:
        raise SystemExit(f"error: no PNG under {ref_dir}")
    finite = [min(v, 100.0) for v in values]
    return dict(count=len(values), identical=sum(math.isinf(v) for v in values),
                mean_db=round(sum(finite) / len(finite), 2), worst_db=round(min(finite), 2))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="device to run on (default: cuda when available)")
    p.add_argument("--dtypes", default="bf16,fp16", help="comma list of bf16, fp16, fp32")
    p.add_argument("--compile", action="store_true", help="also check the torch.compile'd fast path")
    p.add_argument("--png_dirs", nargs=2, metavar=("REF", "OTHER"),
                   help="instead: compare two runs' output folders PNG by PNG (mean PSNR capped at 100 dB)")
    p.add_argument("--out", help="write the report as JSON here")
    args = p.parse_args(argv)
    if args.png_dirs:
        report = compare_png_dirs(*args.png_dirs)
    else:
        report = run(args.device, args.dtypes.split(","), args.compile)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
