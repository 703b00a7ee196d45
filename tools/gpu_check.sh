#!/usr/bin/env bash
# GPU check: the README's digits demo through sample_ddib.py (default precision against
# float32), golden-fixture faithfulness of the fast path on CUDA, layer micro-benchmarks of the fused
# upsampling and GroupNorm variants at the 256x256 UNet's shapes (tools/layer_bench.py), the DDIB
# speed benchmark of the 256x256 model, then our DiT path against diffusers' DiTPipeline (DiT-XL/2 at
# 256x256 with sd-vae's shape, random weights, bf16, guided; tools/dit_speed.py; needs diffusers).
# Run from the repo root with OUT set to a folder:
#     OUT=/path/to/out bash tools/gpu_check.sh          # ~8 min on one H100/H200, plus the DiT step (hard cap 12m10s)
#     STEPS=dit OUT=/path/to/out bash tools/gpu_check.sh     # the DiT comparison alone (at most 150 s)
#     GPU_CHECK_TINY=1 OUT=/tmp/gc bash tools/gpu_check.sh   # seconds-to-minutes smoke test, CPU or GPU
# Knobs: PYTHON (default python3), BENCH_BUDGET (s, default 300), BATCH_SIZES (default 32,64),
# PATHS (default eager_fp16_gd,fast,bf16_eager,eager_fp32,fast_tuned: the baseline, the fast path,
# what the script runs below 256 images, float32, then the tuned compile preset if the budget still
# holds a compile), FAITH_COMPILE=1 (also compile the golden model in the
# faithfulness check), STEPS (default script,faithfulness,layers,benchmark,dit). Benchmark jobs run batch
# by batch in PATHS order until the budget is spent.
set -uo pipefail
export PYTHONUNBUFFERED=1
: "${OUT:?set OUT to an output folder}"
PY=${PYTHON:-python3}
mkdir -p "$OUT"
start=$(date +%s)
log() { echo "[gpu_check $(( $(date +%s) - start ))s] $*"; }
status=0
want() { [[ ",${STEPS:-script,faithfulness,layers,benchmark,dit}," == *",$1,"* ]]; }

{ date -u; "$PY" -c "import sys, torch; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available()); print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"; nvidia-smi 2>/dev/null; } > "$OUT/env.txt" 2>&1
log "environment: $(grep -m1 '^torch' "$OUT/env.txt")"

if [ -n "${GPU_CHECK_TINY:-}" ]; then
    DEVICE=$("$PY" -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
    SCRIPT_TIMEOUT=180
    FAITH_ARGS=(--device "$DEVICE" --dtypes bf16)
    LAYER_ARGS=(--config configs/digits.yaml --device "$DEVICE" --batch 4 --time_budget 30)
    BENCH_ARGS=(--config tiny --device "$DEVICE" --batch_sizes 2 --steps 2 --repeats 1
                --paths eager_fp32,eager_fp16_gd,fast,eager_bf16_autocast,bf16_eager
                --time_budget 900 --compile_reserve 0 --probe_micro_batch --profile fast)
    DIT_ARGS=(--preset tiny --image_size 64 --vae tiny --device "$DEVICE" --batch 2 --steps 3 --repeats 1)
else
    DEVICE=cuda
    SCRIPT_TIMEOUT=40
    FAITH_ARGS=(--device cuda --dtypes bf16,fp16)
    LAYER_ARGS=(--config configs/256x256_diffusion.yaml --device cuda --batch 32 --time_budget 45)
    BENCH_ARGS=(--config configs/256x256_diffusion.yaml --device cuda --batch_sizes "${BATCH_SIZES:-32,64}"
                --steps 10 --paths "${PATHS:-eager_fp16_gd,fast,bf16_eager,eager_fp32,fast_tuned}"
                --time_budget "${BENCH_BUDGET:-300}" --compile_reserve 150 --probe_micro_batch
                --profile fast,fast_tuned,eager_fp16_gd)
    DIT_ARGS=(--preset XL --image_size 256 --vae sd --device cuda --dtype bf16 --batch 16 --steps 50 --repeats 3)
fi
[ -n "${FAITH_COMPILE:-}" ] && FAITH_ARGS+=(--compile)

if ! want script; then
    :
elif "$PY" -c "import accelerate, PIL, tqdm" 2>/dev/null; then
    log "the README's digits demo through sample_ddib.py on $DEVICE: default precision, then float32"
    for prec in auto no; do
        timeout "$SCRIPT_TIMEOUT" "$PY" sample_ddib.py -c configs/digits.yaml --weights assets/digits_unet.pt \
            --input_dir assets/digits --save_dir "$OUT/digits_$prec" --class_A folder --class_B 8 \
            --respace_steps 50 --no-clip_x0 --mixed_precision "$prec" 2>&1 | tail -3 | tee -a "$OUT/script.log"
        [ "${PIPESTATUS[0]}" -eq 0 ] || { status=1; log "sample_ddib.py --mixed_precision $prec FAILED"; }
    done
    "$PY" tools/faithfulness.py --png_dirs "$OUT/digits_no" "$OUT/digits_auto" 2>&1 | tee -a "$OUT/script.log"
else
    log "digits demo skipped: accelerate, pillow or tqdm is not installed here"
fi

if want faithfulness; then
    log "faithfulness on $DEVICE: golden fixture, fast path vs float32 (PSNR)"
    timeout 45 "$PY" tools/faithfulness.py "${FAITH_ARGS[@]}" --out "$OUT/faithfulness.json" \
        2>&1 | tee "$OUT/faithfulness.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || { status=1; log "faithfulness FAILED (see faithfulness.log)"; }
fi

if want layers; then
    log "layer micro-benchmarks (fused upsampling, GroupNorm variants) on $DEVICE"
    timeout 70 "$PY" tools/layer_bench.py "${LAYER_ARGS[@]}" --out "$OUT/layer_bench.json" \
        2>&1 | tee "$OUT/layer_bench.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || { status=1; log "layer_bench FAILED (see layer_bench.log)"; }
fi

if want benchmark; then
    log "benchmark on $DEVICE"
    timeout "${BENCH_TIMEOUT:-380}" "$PY" tools/benchmark.py "${BENCH_ARGS[@]}" --out "$OUT" 2>&1 | tee "$OUT/benchmark.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || { status=1; log "benchmark FAILED or timed out (see benchmark.log)"; }
fi

if ! want dit; then
    :
elif "$PY" -c "import diffusers" 2>/dev/null; then
    log "our DiT path against DiTPipeline on $DEVICE"
    timeout "${DIT_TIMEOUT:-150}" "$PY" tools/dit_speed.py "${DIT_ARGS[@]}" --out "$OUT/dit_speed.json" 2>&1 | tee "$OUT/dit_speed.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || { status=1; log "dit_speed FAILED or timed out (see dit_speed.log)"; }
else
    log "DiT comparison skipped: diffusers is not installed here (pip install -r requirements-diffusers.txt)"
fi

log "done, status $status; results in $OUT: benchmark.md benchmark.json faithfulness.json layer_bench.json dit_speed.json script.log env.txt"
exit $status
