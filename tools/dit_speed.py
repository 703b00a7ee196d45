"""Our DiT path against diffusers' own DiTPipeline: generation with classifier-free guidance at equal
steps, from the same latent, timed in one process.

Both sides run the same random-weight DiT and VAE, loaded from one saved pipeline folder: ours through
``DDIB.from_pretrained(...).generate(latents, class_B_per_image=labels, cfg_scale=S)`` (the tool's
path: on the CPU a pool of single-threaded workers, on a GPU 16-bit weights), theirs through ``DiTPipeline.__call__``
with the same guidance scale, steps and starting latent (its generator's). Each guided step is one
network evaluation: one transformer call on the doubled batch (conditional and null class) on both
sides. The outputs are compared too (max difference in [0, 1] pixels), so the two are known to
compute the same images. Runs alternate, best of ``--repeats``.

    python tools/dit_speed.py                                   # CPU: DiT-S/2 at 256², tiny VAE
    python tools/dit_speed.py --preset XL --vae sd --device cuda --dtype bf16 --batch 16 --steps 50
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddib import DDIB  # noqa: E402

# The DiT paper's configurations (depth, hidden size, heads), patch size 2
PRESETS = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16), "tiny": (2, 64, 2)}
# sd-vae-ft-ema's shape (DiT's VAE), or a light stand-in with the same 8× downscaling for the CPU
VAES = {"sd": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32),
        "tiny": dict(block_out_channels=(16, 16, 16, 16), layers_per_block=1, norm_num_groups=8)}


def build_pipeline(folder: Path, preset: str, image_size: int, vae: str, seed: int) -> Path:
    """A DiT pipeline folder with random weights (DDIM, linear schedule, 1000 classes + null)."""
    from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    depth, hidden, heads = PRESETS[preset]
    torch.manual_seed(seed)
    dit = DiTTransformer2DModel(num_attention_heads=heads, attention_head_dim=hidden // heads, in_channels=4,
                                out_channels=8, num_layers=depth, sample_size=image_size // 8, patch_size=2,
                                num_embeds_ada_norm=1000)
    blocks = VAES[vae]
    autoencoder = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                                latent_channels=4, sample_size=image_size, **blocks)
    scheduler = DDIMScheduler(beta_schedule="linear", clip_sample=False)
    DiTPipeline(transformer=dit.eval(), vae=autoencoder.eval(), scheduler=scheduler).save_pretrained(folder)
    return folder


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run(args) -> dict:
    from diffusers import DiTPipeline
    from diffusers.utils import logging

    logging.disable_progress_bar()
    threads = torch.get_num_threads()
    device = torch.device(args.device)
    dtype = {"float32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_pipeline(Path(tmp) / "dit", args.preset, args.image_size, args.vae, args.seed)
        ours = DDIB.from_pretrained(folder, device=device, precision="no" if args.dtype == "float32" else args.dtype,
                                    compile=False, micro_batch=args.batch, steps=args.steps, cfg_scale=args.cfg_scale)
        torch.set_num_threads(threads)  # the tool's CPU path ran its pool on one thread each; DiTPipeline uses all
        theirs = DiTPipeline.from_pretrained(folder, dtype=dtype).to(device)
        theirs.set_progress_bar_config(disable=True)
    labels = [(207 + 13 * i) % 1000 for i in range(args.batch)]
    latent_size = args.image_size // 8

    def latents():
        return torch.randn(args.batch, 4, latent_size, latent_size, generator=torch.Generator().manual_seed(args.seed))

    def our_call(steps):
        torch.set_num_threads(1 if device.type == "cpu" else threads)
        out = ours.generate(latents().to(device), class_B_per_image=labels, output="tensor", steps=steps)
        _sync(device)
        return (out.float().cpu() / 2 + 0.5).clamp(0, 1)

    def their_call(steps):
        torch.set_num_threads(threads)
        gen = torch.Generator().manual_seed(args.seed)  # draws the same latent as latents()
        out = theirs(class_labels=labels, guidance_scale=args.cfg_scale, generator=gen, num_inference_steps=steps,
                     output_type="pt").images
        _sync(device)
        return out.float().cpu()

    our_call(2), their_call(2)  # warm-up: allocations, kernels, thread pools (one step would be refused)
    times = {"ours": [], "DiTPipeline": []}
    for _ in range(args.repeats):
        for name, fn in (("ours", our_call), ("DiTPipeline", their_call)):
            start = time.perf_counter()
            images = fn(args.steps)
            times[name].append(time.perf_counter() - start)
            if name == "ours":
                our_images = images
            else:
                their_images = images
    best = {k: min(v) for k, v in times.items()}
    return {"preset": f"DiT-{args.preset}/2", "image_size": args.image_size, "vae": args.vae, "device": str(device),
            "dtype": args.dtype, "batch": args.batch, "steps": args.steps, "cfg_scale": args.cfg_scale,
            "torch_threads": threads, "seconds": times, "best_s": best,
            "s_per_eval": {k: v / args.steps for k, v in best.items()},
            "speedup": best["DiTPipeline"] / best["ours"],
            "max_pixel_diff": (our_images - their_images).abs().max().item()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="S", help="DiT size (default: S, DiT-S/2)")
    p.add_argument("--image_size", type=int, default=256, help="image size in pixels; the latent is 8x smaller "
                                                                "(default: 256)")
    p.add_argument("--vae", choices=sorted(VAES), default=None, help="default: sd on a GPU, tiny on the CPU")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--dtype", choices=("float32", "bf16", "fp16"), default="float32",
                   help="network precision of both sides (ours: --mixed_precision; theirs: torch_dtype)")
    p.add_argument("--batch", type=int, default=2, help="images per call (each guided call runs twice as many)")
    p.add_argument("--steps", type=int, default=10, help="DDIM steps of each generation (default: 10)")
    p.add_argument("--cfg_scale", type=float, default=4.0, help="guidance scale of both sides (default: 4)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each side, alternating (default: 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the starting latent (default: 0)")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    args.vae = args.vae or ("sd" if args.device.startswith("cuda") else "tiny")
    result = run(args)
    print(f"{result['preset']} at {args.image_size}² ({args.vae} VAE), {args.device} {args.dtype}, batch {args.batch} "
          f"(guided: {2 * args.batch} per network call), {args.steps} steps, scale {args.cfg_scale:g}")
    print("| path | s per generation (best of {}) | s per network evaluation |".format(args.repeats))
    print("| --- | ---: | ---: |")
    for name in ("DiTPipeline", "ours"):
        print(f"| {name} | {result['best_s'][name]:.3f} | {result['s_per_eval'][name]:.4f} |")
    print(f"ours / DiTPipeline speed: {result['speedup']:.2f}x; outputs differ by at most "
          f"{result['max_pixel_diff']:.2e} (pixels in [0, 1])")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
