"""tools/benchmark.py end to end on the CPU (digits-size model, eager paths, 2 steps), and its verdicts."""

import json

import pytest
import torch
import torch.nn.functional as F

from tools import benchmark


def test_cpu_benchmark_end_to_end(tmp_path):
    benchmark.main(["--config", "tiny", "--device", "cpu", "--paths", "eager_fp32,eager_bf16_autocast,bf16_eager",
                    "--batch_sizes", "2", "--steps", "2", "--repeats", "1", "--profile", "bf16_eager",
                    "--out", str(tmp_path)])
    report = json.loads((tmp_path / "benchmark.json").read_text())
    rows = {r["path"]: r for r in report["results"]}
    assert set(rows) == {"eager_fp32", "eager_bf16_autocast", "bf16_eager"}
    for r in rows.values():
        assert r["translations_per_s"] > 0 and r["guided_translations_per_s"] > 0 and r["finite"]
        # 99 + 100 forwards per translation: the extrapolation is consistent with the forward rate
        assert r["translations_per_s"] == pytest.approx(r["forwards_per_s"] / 199)
    assert rows["eager_fp32"]["x_eager_fp32"] == pytest.approx(1.0)
    assert 0 < rows["bf16_eager"]["eps_rel_err"] < 0.1  # bf16 rounding, not garbage
    assert report["meta"]["flops"]["unet_forward"] > 0 and report["meta"]["flops"]["classifier_grad"] > 0
    text = (tmp_path / "benchmark.md").read_text()
    assert "not judged on the CPU" in text
    prof = rows["bf16_eager"]["profile"]
    assert sum(prof["families"].values()) == pytest.approx(1.0)
    assert prof["families"]["convolution / matmul"] > 0.2  # a conv net on the CPU: convolutions lead
    assert "profile" not in rows["eager_fp32"] and "Profile of one UNet forward, bf16_eager" in text


@pytest.mark.parametrize("name, family", [
    ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc", "convolution / matmul"),
    ("triton_red_fused_native_group_norm_silu_12", "generated (fused norm, SiLU, adds)"),
    ("pytorch_flash::flash_fwd_kernel", "attention"),
    ("void at::native::elementwise_kernel<128, 2>", "other"),
])
def test_kernel_families(name, family):
    assert benchmark.kernel_family(name) == family


def test_unknown_path_is_refused():
    with pytest.raises(ValueError, match="fast_tuned"):
        benchmark.prepare_path("fast_fastest", None, None, None)


def test_targets_pick_the_best_fast_variant():
    meta = {"device": "cuda"}
    results = [
        dict(path="fast", batch=32, forward_s=1, translations_per_s=0.84, x_eager_fp16_gd=1.97,
             x_eager_fp16_gd_guided=1.98),
        dict(path="fast_tuned", batch=64, forward_s=1, translations_per_s=1.12, x_eager_fp16_gd=2.6,
             x_eager_fp16_gd_guided=1.9),
        dict(path="eager_fp16_gd", batch=32, forward_s=2, translations_per_s=0.42),
    ]
    lines = benchmark.targets(results, meta).splitlines()
    assert lines[1] == "- fast ≥ 2.5× eager fp16: 2.60 (fast_tuned, batch 64) → PASS"
    assert lines[2] == "- ≥ 1.1 translations/s (100+100): 1.12 (fast_tuned, batch 64) → PASS"
    assert lines[3] == "- guided fast ≥ 2× eager fp16 guided: 1.98 (fast, batch 32) → FAIL"


@pytest.mark.parametrize("shape", [(2, 64, 5, 7), (3, 32, 9)])
def test_channel_stats_group_norm_is_group_norm(shape):
    from tools.layer_bench import group_norm_channel_stats

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen) * 3 + 1.5  # a mean offset: the variance combination matters
    weight, bias = torch.randn(shape[1], generator=gen), torch.randn(shape[1], generator=gen)
    want = F.group_norm(x, 32, weight, bias, 1e-5)
    got = group_norm_channel_stats(x, 32, weight, bias, 1e-5)
    assert ((got - want).norm() / want.norm()).item() < 1e-5


def test_layer_shapes_cover_every_group_norm_and_upsampling():
    from models.unet import UNetModel
    from tests.conftest import TINY_CONFIG
    from tools.layer_bench import layer_shapes

    shapes = layer_shapes(TINY_CONFIG["model"])
    unet = UNetModel(**TINY_CONFIG["model"])
    assert sum(shapes["groupnorm"].values()) == sum(isinstance(m, torch.nn.GroupNorm) for m in unet.modules())
    assert (32, 32, 32) in shapes["groupnorm"] and all(s[0] % 32 == 0 for s in shapes["groupnorm"])
    assert shapes["upsample"] == {(64, 16, 16, 64): 1}  # the one up ResBlock: 64 channels, 16² → 32²


def test_layer_bench_upsampling_runs_and_agrees(tmp_path):
    from tools import layer_bench

    result = layer_bench.main(["--config", "configs/digits.yaml", "--device", "cpu", "--dtype", "fp32",
                               "--parts", "upsample", "--repeats", "1", "--out", str(tmp_path / "l.json")])
    rows = result["upsample"]["rows"]
    assert rows and result["upsample"]["share_timed"] == 1.0
    assert all(r["fused"]["rel_err"] < 1e-5 and r["unfused"]["ms"] > 0 for r in rows)
    assert json.loads((tmp_path / "l.json").read_text())["upsample"]["rows"] == rows


def test_compare_png_dirs(tmp_path):
    import numpy as np
    from PIL import Image

    from tools.faithfulness import compare_png_dirs

    rng = np.random.default_rng(0)
    for name, change in (("a.png", 0), ("sub/b.png", 1)):
        img = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        for root, delta in ((tmp_path / "ref", 0), (tmp_path / "other", change)):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img + np.uint8(delta)).save(root / name)
    report = compare_png_dirs(tmp_path / "ref", tmp_path / "other")
    assert report["count"] == 2 and report["identical"] == 1
    assert report["worst_db"] == pytest.approx(48.13, abs=0.01)  # every pixel off by one level
    assert report["mean_db"] == pytest.approx((100 + 48.13) / 2, abs=0.01)
