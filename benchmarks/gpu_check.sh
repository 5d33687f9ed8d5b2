#!/usr/bin/env bash
# The GPU checks of issue 13, as one prepared run of at most ~10 minutes on a CUDA machine:
#
#   1. tests/test_cuda.py (device choice, spectra on the device, every pre-training method's steps
#      on CUDA equal to the CPU's, the command in bf16 with MFU) and the DDP/FSDP tests;
#   2. benchmarks/pretrain_steps.py: step time and torch.cuda.max_memory_allocated for full, LoRA,
#      ReLoRA, GaLore, SLTrain and SST on a model that fills a real share of the GPU;
#   3. benchmarks/widget_throughput.py: the Playground headless on CUDA (frames per second, and the
#      live view's cost in training throughput), when the widget packages are there;
#   4. the pre-training command at a GPT-2-small size (d 768, 12 layers, 12 heads, 1024 tokens of
#      context) for full and SST in bf16 autocast, with and without torch.compile: tokens/s and MFU;
#   5. a short run of the gpu profile's head-to-head through the command (every contender).
#
# Every result is written under $OUT (default benchmarks/results/gpu/), each step has its own
# timeout, and a failing step does not stop the others. Run from the repository root:
#
#   OUT=/some/folder benchmarks/gpu_check.sh
#
# A machine without the project's virtual environment: the project is installed (no dependencies,
# no network) into /tmp/site with its Python's own torch; packages that Python lacks (geoopt; plotly,
# ipywidgets and anywidget for step 3) can come as wheels in .whl/. The timeouts add up to 9 minutes.
set -u
OUT=${OUT:-benchmarks/results/gpu}
PY=${PY:-python3}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
$PY -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --upgrade --target /tmp/site . \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 SPECTRALLAB_HOME=/tmp/spectrallab-home SPECTRALLAB_PROGRESS=lines
$PY - <<'EOF' | tee "$OUT/device.txt"
import torch
print(torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA")
EOF

step() {  # step NAME SECONDS COMMAND...: run it with a timeout, log to $OUT/NAME.log, never stop the script
    local name=$1 seconds=$2
    shift 2
    echo "== $name"
    local start=$SECONDS
    timeout "$seconds" "$@" > "$OUT/$name.log" 2>&1
    echo "   exit $?, $((SECONDS - start)) s"
    tail -n 5 "$OUT/$name.log"
}

step tests 100 $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_ddp.py tests/test_fsdp.py
step pretrain_steps 90 $PY benchmarks/pretrain_steps.py
step widget_throughput 40 $PY benchmarks/widget_throughput.py
cp benchmarks/results/pretrain_steps.json benchmarks/results/widget_throughput.json "$OUT/" 2> /dev/null

GPT2_SMALL=(--profile gpu --d-model 768 --n-layer 12 --n-head 12 --context 1024 --batch-size 16 --steps 60
    --eval-every 60 --autocast bf16 --progress lines)
for method in full sst; do
    step "command_${method}" 40 $PY -m spectrallab.pretrain --method "$method" "${GPT2_SMALL[@]}" \
        --summary-json "$OUT/command_${method}.json"
    step "command_${method}_compiled" 70 $PY -m spectrallab.pretrain --method "$method" "${GPT2_SMALL[@]}" \
        --compile --summary-json "$OUT/command_${method}_compiled.json"
done
for method in full lora relora galore sltrain sst; do
    step "head_to_head_${method}" 15 $PY -m spectrallab.pretrain --method "$method" --profile gpu --steps 100 \
        --eval-every 50 --summary-json "$OUT/head_to_head_${method}.json"
done
echo "results in $OUT"
