#!/usr/bin/env bash
# The three-seed sweeps behind docs/validation.md's Results, at the cpu budgets with each suite's
# default gate-bias initialisation and contrast rows beside them, two jobs at a time with one torch
# thread each (so they share the 2 cores), then the tables and plots of scripts/compare_sweeps.py:
#
#   lane 1: pixel MNIST, every cell and depth, chrono (T_max 49, the suite's default); STAR, LSTM,
#           LSTM w/f and RHN at 8 and 12 layers with a zero gate bias; crops task B at 60 epochs
#           (zero): STAR at every depth, the GRU, RHN, vRNN and LSTM w/f at 12 layers
#   lane 2: gestures, every cell and depth, zero (the suite's default); then the 12-layer LSTM on
#           crops task B at 60 epochs
#
#     bash scripts/validation_cpu_sweeps.sh [OUT]     # OUT: results/validate/final (finished runs reused)
#
# About two and a quarter hours per lane on this project's 2-core machine.
set -euo pipefail
out=${1:-results/validate/final}
mnist=${MNIST:-../shared/data/mnist}
export OMP_NUM_THREADS=1

lane1() {
    cropstar validate mnist --budget cpu --data "$mnist" --seeds 3 --out "$out/mnist-chrono"
    cropstar validate mnist --budget cpu --data "$mnist" --seeds 3 --bias-init zero --cells star,lstm,lstm_wf,rhn \
        --layers 8,12 --out "$out/mnist-zero"
    cropstar validate crops --budget cpu --seeds 3 --cells star --out "$out/crops-b-60-star"
    cropstar validate crops --budget cpu --seeds 3 --cells gru,rhn,vrnn,lstm_wf --layers 12 --out "$out/crops-b-60"
}
lane2() {
    cropstar validate gestures --budget cpu --data "$mnist" --seeds 3 --out "$out/gestures"
    cropstar validate crops --budget cpu --seeds 3 --cells lstm --layers 12 --out "$out/crops-b-60-lstm"
}
lane1 & lane2 & wait

python scripts/compare_sweeps.py --classes 10 --out "$out/mnist-comparison" \
    "chrono (T_max 49)=$out/mnist-chrono" "zero=$out/mnist-zero"
python scripts/compare_sweeps.py --classes 8 --out "$out/crops-b-60-comparison" \
    "zero=$out/crops-b-60-star" "zero=$out/crops-b-60" "zero=$out/crops-b-60-lstm"
python scripts/compare_sweeps.py --classes 9 --out "$out/gestures-comparison" \
    "chrono (T_max 12), one seed=docs/results/validate/gestures-cpu" "zero=$out/gestures"
