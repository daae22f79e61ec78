#!/usr/bin/env bash
# The GPU check of docs/distribute.md: install, then train and generate on the GPU; under 10 minutes.
#
#   bash bench/gpu_check.sh [OUT_DIR]          (OUT_DIR default: ./gpu-check-out)
#
# Environment: PYTHON (default python3.11, else python3), WHEELS (a folder of wheels for an
# offline install: tensorflow[and-cuda] 2.21 with its CUDA packages and tweetgen's dependencies),
# VENV (default /tmp/tweetgen-gpu-venv; reused when it already has TensorFlow).
#
# 1. The training benchmark (bench/distribute.py, the real trainer), strategy `auto` on the GPU:
#    default model (GRU 128/256) at batch 64, and GRU 512/1024 at batch 1024, each with float32
#    and mixed_bfloat16; plus `mirrored` on the one GPU at batch 64 (the replicated step's cost).
#    On a GPU the trainer forces Keras's cuDNN GRU (use_cudnn=True): a run that could not take
#    cuDNN fails instead of silently running the generic loop.
# 2. Generation: 64 and 4096 seeded tweets in one batch from each model trained in (1).
# Every figure goes to OUT_DIR/*.json, a summary to OUT_DIR/summary.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu-check-out}
mkdir -p "$OUT"
VENV=${VENV:-/tmp/tweetgen-gpu-venv}
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
export TF_CPP_MIN_LOG_LEVEL=2 PYTHONUNBUFFERED=1
START=$(date +%s)
elapsed() { echo "[$(( $(date +%s) - START )) s] $*"; }

# ---- install (the CPU wheel is a base dependency on x86-64: replace it by the CUDA one)
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import tensorflow" 2>/dev/null; then
    "$PYTHON" -m venv "$VENV"
    PIP=("$VENV/bin/pip" install -q --ignore-requires-python)
    [ -n "${WHEELS:-}" ] && PIP+=(--no-index --find-links "$WHEELS")
    "${PIP[@]}" -e .
    "$VENV/bin/pip" uninstall -q -y tensorflow-cpu
    "${PIP[@]}" "tensorflow[and-cuda]==2.21.*"
fi
PY="$VENV/bin/python"
elapsed "installed"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
"$PY" -c "import tensorflow as tf; g = tf.config.list_physical_devices('GPU'); print('TensorFlow', \
tf.__version__, 'GPUs', g); assert g, 'TensorFlow sees no GPU'" | tee -a "$OUT/gpu.txt"

# ---- 1. training
train() {  # name, then bench/distribute.py arguments
    local name=$1; shift
    timeout 150 "$PY" -m bench.distribute --json --workdir "/tmp/tweetgen-gpu-$name" "$@" > "$OUT/train-$name.json"
    elapsed "train $name: $("$PY" -c "import json, sys; s = json.load(open(sys.argv[1]))['summary']; \
print({k: (v['chars_per_s'], v.get('ratio_vs_one')) for k, v in s.items()})" "$OUT/train-$name.json")"
}
train b64-f32 --configs one mirrored-1 --steps 60 --log-every 10
train b64-bf16 --configs one --steps 60 --log-every 10 --precision mixed_bfloat16
train b1024-f32 --configs one --steps 40 --log-every 10 --batch-size 1024 --gru-sizes 512,1024
train b1024-bf16 --configs one --steps 40 --log-every 10 --batch-size 1024 --gru-sizes 512,1024 \
    --precision mixed_bfloat16

# ---- 2. generation from the float32 checkpoints of (1)
for model in b64-f32 b1024-f32; do
    timeout 120 "$PY" - "/tmp/tweetgen-gpu-$model/one-0" > "$OUT/generate-$model.json" <<'EOF'
import json, sys, time
from pathlib import Path
from tweetgen import corpus, engine
from tweetgen.config import Settings

home = Path(sys.argv[1])
settings = Settings(home=home, corpus_path=home.parent / "corpus.txt")
generator, ckpt = engine.open_generator(settings, with_novelty=False)
words = corpus.common_first_words(corpus.read_lines(settings.corpus_file).lines, 64)
report = {"checkpoint": str(ckpt.path), "model": ckpt.meta["model_config"]}
for count in (64, 4096):
    seeds = [words[i % len(words)] for i in range(count)]
    times = []
    for attempt in range(3):  # the first call traces the loop
        started = time.perf_counter()
        samples = generator.generate(seeds, 1, 0.8, random_seed=attempt)
        times.append(time.perf_counter() - started)
    report[str(count)] = {"first_s": round(times[0], 3), "seconds": round(min(times[1:]), 3),
                          "tweets_per_s": round(count / min(times[1:])),
                          "chars": sum(len(s.text) for s in samples)}
print(json.dumps(report))
EOF
    elapsed "generate $model: $(cat "$OUT/generate-$model.json")"
done

{ date -u +%FT%TZ; cat "$OUT/gpu.txt"; for f in "$OUT"/train-*.json "$OUT"/generate-*.json; do
    echo "$(basename "$f"): $(head -c 2000 "$f")"; done; } > "$OUT/summary.txt"
elapsed "done: $OUT/summary.txt"
