#!/usr/bin/env bash
# Measures cropstar's GPU path on a machine with an NVIDIA GPU, in under 8 minutes:
#   1. the card (nvidia-smi) and torch / CUDA / cuDNN versions;
#   2. python -m pytest -q tests/nn/test_cuda.py (fused layers, gradchecks, training and classify on
#      CUDA against the CPU);
#   3. cropstar bench speed --device cuda: STAR against nn.LSTM / nn.GRU, a training step and inference
#      at B 256, T 26, I 54, H 128, L 4, inference at B 4096, peak training memory;
#   4. a short training run: 300 steps of STAR 4 × 128, batch 256, on a synthetic dataset (cropstar
#      synth + ingest, no network), steps/s in float32 and with --amp, and a 30-step CPU reference;
#   5. classify of a synthetic 2048² × 26-date scene with the packaged model, timed with its I/O
#      (opening the cube, reading the COGs, writing the map), and a CPU reference on a strip;
#   6. one JSON with every figure and the card's name, and an estimate for a whole Sentinel-2 tile
#      (10 980², from the 2048² figure scaled by pixel count).
#
# Usage, from the repository root (the venv in .venv is activated if none is; PYTHON names another
# interpreter, default python3, that imports cropstar and a CUDA build of torch):
#   scripts/gpu_check.sh            on CUDA; stops at once with exit code 3 where torch sees no GPU
#   scripts/gpu_check.sh --dry-run  the same steps on the CPU at tiny sizes, to test this script
#                                   (also: CROPSTAR_GPU_CHECK_DEVICE=cpu scripts/gpu_check.sh)
# Writes $OUT/gpu_check.json if OUT is set, else results/gpu_check/gpu_check.json; beside it each
# step's JSON (env, tests, bench_speed, train, scene, classify), steps.jsonl and logs/STEP.log.
# Each step runs under its own time limit inside one budget (CROPSTAR_GPU_CHECK_BUDGET, 450 s); a step
# that fails or runs out of time is recorded and the next one runs. Exit code: 0 every step ran, 1 a
# step failed, 3 no CUDA. The scene is synthesised in the background (on other cores) while steps 2–4
# run. STAR's CPU step loops run in Python (CROPSTAR_NO_CPP=1 unless set): a C++ build at first use
# would take the budget.
set -euo pipefail

cd "$(dirname "$0")/.."
DEVICE=${CROPSTAR_GPU_CHECK_DEVICE:-cuda}
if [[ "${1:-}" == "--dry-run" ]]; then
    DEVICE=cpu
elif [[ -n "${1:-}" ]]; then
    echo "usage: scripts/gpu_check.sh [--dry-run]" >&2
    exit 2
fi
if [[ -z "${VIRTUAL_ENV:-}" && -f .venv/bin/activate ]]; then
    # shellcheck disable=SC1091
    . .venv/bin/activate
fi
PY=${PYTHON:-python3}
if ! "$PY" -c "import cropstar" 2> /dev/null; then
    echo "cropstar is not importable by $PY: pip install -c constraints.txt -e '.[test]' (README)" >&2
    exit 2
fi
CROPSTAR=("$PY" -m cropstar.cli)
export CROPSTAR_NO_CPP=${CROPSTAR_NO_CPP:-1}

if [[ "$DEVICE" == cuda* ]]; then
    SCENE_SIZE=2048 SCENE_TILE=512 TRAIN_SCENE=128 TRAIN_STEPS=300 CPU_STEPS=30
    MODEL=(--batch 256 --hidden-size 128 --layers 4) CPU_ROWS=128
    BENCH=(--cases train,infer,infer_b4096)
else
    SCENE_SIZE=64 SCENE_TILE=32 TRAIN_SCENE=64 TRAIN_STEPS=8 CPU_STEPS=4
    MODEL=(--batch 32 --hidden-size 8 --layers 2) CPU_ROWS=16
    BENCH=(--cases train,infer --quick --no-memory --hidden-size 8 --layers 2 --batch 8 --steps 5 --input-size 6)
fi

DIR=${OUT:-results/gpu_check}
LOGS=$DIR/logs
STEPS=$DIR/steps.jsonl
mkdir -p "$LOGS"
: > "$STEPS"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/cropstar-gpu-check.XXXXXX")
SCENE_PID=
cleanup() {
    if [[ -n "$SCENE_PID" ]]; then kill "$SCENE_PID" 2> /dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT
BUDGET=${CROPSTAR_GPU_CHECK_BUDGET:-450}
START=$SECONDS

# run_step NAME LIMIT COMMAND...: COMMAND under min(LIMIT, what is left of the budget) seconds, its
# output in logs/NAME.log, one line in steps.jsonl; never stops the script. BACKGROUND=true marks a
# step that ran beside others.
run_step() {
    local name=$1 want=$2
    shift 2
    local left=$((BUDGET - (SECONDS - START)))
    local limit=$((want < left ? want : left))
    local log=$LOGS/$name.log rc=0 started=$SECONDS
    if ((limit < 1)); then
        echo "skipped: the time budget of ${BUDGET} s is spent" > "$log"
        rc=125
    else
        timeout --kill-after=10 "$limit" "$@" > "$log" 2>&1 || rc=$?
    fi
    local seconds=$((SECONDS - started))
    local timed_out=false
    if ((rc == 124 || rc == 137)); then timed_out=true; fi
    printf '{"name": "%s", "rc": %d, "seconds": %d, "limit_s": %d, "timed_out": %s, "background": %s, "log": "logs/%s.log"}\n' \
        "$name" "$rc" "$seconds" "$limit" "$timed_out" "${BACKGROUND:-false}" "$name" >> "$STEPS"
    if ((rc == 0)); then
        echo "[gpu_check] $name: ok in ${seconds} s"
    else
        echo "[gpu_check] $name: FAILED (exit $rc$([[ $timed_out == true ]] && echo ", timed out after ${limit} s")) — $log:"
        tail -n 5 "$log" | sed 's/^/    /'
    fi
}

report() {
    timeout 60 "$PY" scripts/gpu_check.py report --folder "$DIR" --device "$DEVICE" --out "$DIR/gpu_check.json"
}

echo "[gpu_check] device $DEVICE; results in $DIR; budget ${BUDGET} s"
if [[ "$DEVICE" == cuda* ]]; then
    if command -v nvidia-smi > /dev/null; then
        run_step nvidia_smi 20 nvidia-smi --query-gpu=name,memory.total --format=csv
        sed 's/^/    /' "$LOGS/nvidia_smi.log"
    else
        run_step nvidia_smi 5 sh -c 'echo "nvidia-smi not found: no NVIDIA driver on this machine"; exit 127'
    fi
fi
run_step env 60 "$PY" scripts/gpu_check.py env --device "$DEVICE" --out "$DIR/env.json"
if [[ "$(tail -n 1 "$STEPS")" == *'"rc": 0,'* ]]; then sed 's/^/    /' "$LOGS/env.log"; fi
if [[ "$(tail -n 1 "$STEPS")" == *'"rc": 3,'* ]]; then
    report || true
    echo "[gpu_check] CUDA is not available to torch: nothing measured (scripts/gpu_check.sh --dry-run tests the steps on the CPU)" >&2
    exit 3
fi

BACKGROUND=true run_step scene 330 "$PY" scripts/gpu_check.py scene --size "$SCENE_SIZE" --tile "$SCENE_TILE" \
    --dates 26 --out "$WORK/scene" --record "$DIR/scene.json" &
SCENE_PID=$!

run_step tests 120 env CROPSTAR_TEST_DEVICE="$DEVICE" "$PY" -m pytest -q -p no:cacheprovider tests/nn/test_cuda.py
"$PY" scripts/gpu_check.py tests --log "$LOGS/tests.log" --out "$DIR/tests.json" || true

run_step bench_speed 150 "${CROPSTAR[@]}" bench speed --device "$DEVICE" "${BENCH[@]}" --out "$DIR/bench_speed.json"

run_step train_data 90 sh -c "$PY -m cropstar.cli synth --out '$WORK/train' --size $TRAIN_SCENE --dates 26 &&
    $PY -m cropstar.cli ingest --cube '$WORK/train/cube' --fields '$WORK/train/fields.geojson' \
    --label-column crop_code --name-column crop --period 10D --out '$WORK/train/dataset'"
if [[ -d "$WORK/train/dataset" ]]; then
    run_step train 120 "$PY" scripts/gpu_check.py train --data "$WORK/train/dataset" --device "$DEVICE" \
        --steps "$TRAIN_STEPS" --cpu-steps "$CPU_STEPS" "${MODEL[@]}" --work "$WORK/runs" --out "$DIR/train.json"
fi

wait "$SCENE_PID" || true
SCENE_PID=
if [[ -f "$WORK/scene/cube/metadata.json" ]]; then
    run_step classify 150 "$PY" scripts/gpu_check.py classify --cube "$WORK/scene/cube" --device "$DEVICE" \
        --cpu-rows "$CPU_ROWS" --work "$WORK/maps" --out "$DIR/classify.json"
fi

set +e
report
code=$?
set -e
echo "[gpu_check] done in $((SECONDS - START)) s; exit $code"
exit "$code"
