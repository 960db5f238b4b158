#!/usr/bin/env bash
# Issue 15's GPU evidence in one prepared run: 8 minutes of one CUDA GPU at most (steps 1 and 2 are cut
# off by their timeouts, 4 minutes each; step 3 runs only with LF=1 and adds at most 3). Written without
# a GPU (none was lent to the session that wrote it): how much of each step fits its limit at 2B is a
# guess (a step cut off still leaves its log; on the 2-core CPU machine its stages took 192 s at 2B).
# SIZE=tiny runs the same steps on the tiny fixture: a check of the script itself, on a CPU too (151 s);
# run that in a copy of the repository, as on a CPU step 2 writes over
# bench/results/train_throughput-cpu.json.
#
# From the repository root, after `make install`:
#     bash bench/gpu_issue15.sh          # steps 1-2
#     LF=1 bash bench/gpu_issue15.sh     # and step 3 (builds .venv-lf with make lf-env first)
# Each step writes raw JSON to bench/results/ (GPU name in the file name) and the log
# bench/results/gpu_issue15-<date>.log; commit them together and quote them in docs/BENCHMARKS.md.
#
#   1. bench/real_shape.py: the user's path at the 2B shape (build, train 2 steps of the default
#      recipe at batch 2, bf16 export, predict, serve): seconds, peak RSS and peak CUDA memory per
#      stage, and fits_12gb_at_batch_2, the train stage's peak against a 12 GB card.
#   2. bench/train_throughput.py at the 2B shape: the original recipe and the default recipe, each with
#      and without gradient checkpointing, and the default at batch 8: samples/s, MFU, peak memory.
#      The default recipe may turn checkpointing off if "all, no checkpointing" peaks within 12 GB
#      (docs/TRAINING.md, "Gradient checkpointing").
#   3. (LF=1) LLaMA-Factory's seed recipe (the original train.sh, our pixel budget) on the same GPU and
#      data as the native engine, where .venv-lf installs; FAMILIES="qwen2_vl qwen2_5_vl qwen3_vl qwen3_5" runs it
#      for each family's real shape (steps 1 and 2 measure Qwen2-VL only).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src"
PY=${PYTHON:-.venv/bin/python}
SIZE=${SIZE:-2b}
LOG="bench/results/gpu_issue15-$(date -u +%Y%m%d).log"
mkdir -p bench/results
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$LOG"

step() {  # step SECONDS COMMAND...: run, log, and go on to the next step whatever happens
  local limit=$1
  shift
  echo "== $* (limit ${limit} s)" | tee -a "$LOG"
  timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
  echo "== exit ${PIPESTATUS[0]}" | tee -a "$LOG"
}

step 240 "$PY" bench/real_shape.py --size "$SIZE"
step 240 "$PY" bench/train_throughput.py --size "$SIZE" --steps 4 --warmup 1 --repeats 1 --best-batch 8 --no-e2e \
  --only "original, no checkpointing" "all (default recipe)" "all, no checkpointing"
if [ "${LF:-0}" != 1 ]; then
  echo "== step 3 (LLaMA-Factory) not asked for (LF=1)" | tee -a "$LOG"
elif make --no-print-directory lf-env >>"$LOG" 2>&1; then
  step 180 "$PY" bench/bench_llamafactory.py --size "$SIZE" --rows 24 --steps 4 --accumulation 1 \
    --families ${FAMILIES:-qwen2_vl}
else
  echo "== LLaMA-Factory's environment did not install here: step 3 skipped" | tee -a "$LOG"
fi
