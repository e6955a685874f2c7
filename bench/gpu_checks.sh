#!/usr/bin/env bash
# The checks to run when a CUDA machine is lent: one prepared script, ~5 minutes on an H100.
#   1. nvidia-smi; torch, CUDA and NCCL versions
#   2. bench/train_step.py, every method on the GPU (bf16, channels_last), 16 images of 224 px:
#      the smoke recipes (ResNet-18, DeepLabV3+ OS 16) and the published recipes' networks
#      (coco_r50, slotcon_coco, maskcontrast_voc: ResNet-50); step time, overhead over the
#      network alone, FLOPs, MFU, peak memory
#   3. NCCL: torchrun, one all_reduce checked and a 256 MiB all_reduce timed; 2 processes when
#      there are 2 GPUs, else a world of one (the nccl init path)
#   4. bench/superpixels.py --quick: our superpixel region sources (fast-slic, OpenCV-contrib
#      SLIC) against scikit-image and OpenCV on this host's CPU (fast-slic crashed on an H100
#      host once: see README.md, Benchmarks)
# Usage, from anywhere:   bash bench/gpu_checks.sh
# Everything is printed, and also written to $OUT/gpu_checks.log when OUT is set. A failing
# check does not stop the others; the exit status is 1 if any failed. Environment:
#   VICE_CHECKS_PYTHON  an interpreter that already has the dependencies (e.g. python3 of a
#                       CUDA image); default .venv/bin/python, made by `./dev setup` if missing
#   VICE_WHEELS         a folder of wheels installed offline first (e.g. hydra-core, omegaconf,
#                       antlr4-python3-runtime, fast-slic for a machine without network)
#   SUPERPIXELS         region source of the ViCE batches (default grid: same region count and
#                       shapes as slic, and no fast-slic needed; the step does not depend on it)
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PYTHONUNBUFFERED=1

failures=()

check() {  # check NAME TIMEOUT_S COMMAND...: runs it, records a failure, goes on
  local name=$1 limit=$2
  shift 2
  echo
  echo "=== $name ($(date +%T), ${SECONDS}s in)"
  if declare -F "$1" >/dev/null; then  # a function here: it bounds its own commands
    "$@"
  else
    timeout "$limit" "$@"
  fi
  local rc=$?
  if ((rc != 0)); then
    echo "=== $name FAILED (exit $rc$( ((rc == 124)) && echo ", timed out after ${limit}s"))"
    failures+=("$name")
  fi
}

pick_python() {
  if [[ -n "${VICE_WHEELS:-}" ]]; then
    local site="${TMPDIR:-/tmp}/vice-checks-site"
    "${VICE_CHECKS_PYTHON:-python3}" -m pip install -q --no-index --no-deps --no-compile \
      --upgrade --target "$site" "$VICE_WHEELS"/*.whl || return 1
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  if [[ -n "${VICE_CHECKS_PYTHON:-}" ]]; then
    PY=$VICE_CHECKS_PYTHON
  else
    [[ -x .venv/bin/python ]] || ./dev setup || return 1
    PY=.venv/bin/python
  fi
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # the checkout, installed or not
}

nccl_check() {
  local gpus script
  gpus=$("$PY" -c "import torch; print(torch.cuda.device_count())") || return 1
  ((gpus >= 1)) || { echo "no CUDA device"; return 1; }
  script="$(mktemp "${TMPDIR:-/tmp}/nccl_check.XXXXXX.py")"
  cat >"$script" <<'PYTHON'
import os
import time

import torch
import torch.distributed as dist

rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
torch.cuda.set_device(device)
dist.init_process_group("nccl", device_id=device)
x = torch.full((4,), float(rank + 1), device=device)
dist.all_reduce(x)
want = world * (world + 1) / 2
assert torch.equal(x, torch.full_like(x, want)), f"all_reduce gave {x.tolist()}, want {want}"
y = torch.ones(64 * 2**20, device=device)  # 256 MiB of float32
for _ in range(3):
    dist.all_reduce(y)
torch.cuda.synchronize()
tic = time.perf_counter()
for _ in range(10):
    dist.all_reduce(y)
torch.cuda.synchronize()
dt = (time.perf_counter() - tic) / 10
bus = 2 * (world - 1) / world * y.numel() * 4 / dt / 1e9  # nccl-tests' bus bandwidth
if rank == 0:
    print(
        f"nccl {'.'.join(map(str, torch.cuda.nccl.version()))}, world {world}: all_reduce "
        f"{x[0].item():g} == {want:g} ok; 256 MiB all_reduce {dt * 1e3:.2f} ms"
        + (f", bus bandwidth {bus:.0f} GB/s" if world > 1 else " (one rank: a local copy)")
    )
dist.destroy_process_group()
PYTHON
  timeout 110 "$PY" -m torch.distributed.run --standalone --nproc_per_node="$((gpus >= 2 ? 2 : 1))" "$script"
  local rc=$?
  rm -f "$script"
  return $rc
}

main() {
  echo "vice GPU checks: $(date -Is) on $(hostname), checkout $ROOT"
  check "nvidia-smi" 30 nvidia-smi
  if ! pick_python; then
    echo "=== no Python environment: ./dev setup failed (no network? set VICE_CHECKS_PYTHON"
    echo "    and VICE_WHEELS); nothing else can run"
    return 1
  fi
  check "torch" 60 "$PY" -c "
import torch
print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'cuDNN', torch.backends.cudnn.version())
print('NCCL', torch.cuda.nccl.version() if torch.cuda.is_available() else None)
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f'cuda:{i}', p.name, f'{p.total_memory / 2**30:.0f} GiB', f'sm_{p.major}{p.minor}')
assert torch.cuda.is_available(), 'torch sees no CUDA device'
"
  local step=(bench/train_step.py --devices cuda --size 224 --images 16 --steps 5
    --superpixels "${SUPERPIXELS:-grid}")
  check "train_step, smoke recipes" 240 "$PY" "${step[@]}" --recipe smoke
  check "train_step, published recipes" 300 "$PY" "${step[@]}" --recipe published
  check "nccl" 110 nccl_check
  check "superpixels" 180 "$PY" bench/superpixels.py --quick
  echo
  if ((${#failures[@]})); then
    echo "=== done in ${SECONDS}s; FAILED: ${failures[*]}"
    return 1
  fi
  echo "=== done in ${SECONDS}s; all checks passed"
}

if [[ -n "${OUT:-}" ]]; then
  mkdir -p "$OUT"
  main 2>&1 | tee "$OUT/gpu_checks.log"
  exit "${PIPESTATUS[0]}"
fi
main
