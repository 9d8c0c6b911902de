#!/usr/bin/env bash
# The sweeps behind docs/validation.md, "Choosing the gate bias": every crops cell at the cpu budget
# trained for 30 epochs (the budget before it was raised), three seeds, with each gate-bias
# initialisation, tasks A and B side by side (one torch thread each, so the two tasks share the 2
# cores), then the tables and plots of scripts/compare_sweeps.py.
#
#     bash scripts/gate_bias_sweeps.sh [OUT]      # OUT: results/validate/init (finished runs are reused)
#
# About 50 minutes per initialisation for all cells on 2 cores. CELLS and INITS narrow it down, e.g.
#     CELLS=star INITS="zero chrono" bash scripts/gate_bias_sweeps.sh
set -euo pipefail
out=${1:-results/validate/init}
cells=${CELLS:-star,lstm,lstm_wf,vrnn,rhn,gru}
inits=${INITS:-zero chrono minus1}

flags() {  # the cropstar validate options of one initialisation
    case $1 in
        zero) echo "--bias-init zero" ;;
        chrono) echo "--bias-init chrono" ;;   # T_max = the 26 steps
        minus1) echo "--gate-bias -1" ;;
        *) echo "unknown initialisation $1" >&2; exit 2 ;;
    esac
}

for init in $inits; do
    for task in a b; do
        name=per_sequence; [ "$task" = a ] && name=per_timestep
        # shellcheck disable=SC2046
        OMP_NUM_THREADS=1 cropstar validate crops --budget cpu --task "$name" --cells "$cells" --seeds 3 --epochs 30 \
            $(flags "$init") --out "$out/crops-$task-$init" &
    done
    wait
done
for task in a b; do
    args=()
    for init in $inits; do args+=("$init=$out/crops-$task-$init"); done
    python scripts/compare_sweeps.py --out "$out/crops-$task-comparison" "${args[@]}"
done
