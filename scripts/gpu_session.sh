#!/usr/bin/env bash
# The GPU session behind this project's GPU records: one prepared script for a machine lent for minutes (no
# internet; the data carried as FLAC, see ../shared/gpu-kit/). Every part runs under its own timeout and writes its
# records as it goes, so what finished comes back even when a later part runs out of time.
#
#   bash scripts/gpu_session.sh DATA_ROOT OUT [smoke]
#
# DATA_ROOT holds ravdess/ (and esc50/ for the noise parts); OUT receives the benchmark record, the logs and one
# archive of the run records (results.tgz) and one of the logs (logs.tgz). Parts:
#   A  (alone on the device, for clean timings) benchmarks/head_fusion_gpu.py; the committed Head Fusion paper-protocol
#      run of seed 0 (50 epochs) repeated from its record (`serlib experiment --from-record`) for its timings and UA;
#   B  (in parallel) every model's speaker-independent runs of folds 0-1, seed 0, checkpoints kept, then
#      `serlib robustness` (issue 14 (a) for every model); the noise study's designs a-e for Head Fusion, seeds 0-2
#      (cpu profile); CA-SER's MFCC branch: the 24 leave-one-speaker-out folds and seeds 1-4 of the six
#      speaker-independent folds (cpu profile).
# smoke: the same commands on the quick profile with a tiny budget (a CPU check of this script).
set -u
DATA=$(cd "$1" && pwd); OUT=$2; SMOKE=${3:-}
mkdir -p "$OUT/logs"; OUT=$(cd "$OUT" && pwd); LOGS=$OUT/logs
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg SERLIB_CACHE=${SERLIB_CACHE:-$PWD/build/gpu/cache} RAY_USAGE_STATS_ENABLED=0
# one thread per process: a dozen processes share the machine's cores (unset, each would start one per core)
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
PARTS=${PARTS:-"bench clean robust noise caser"}   # e.g. PARTS=clean: the clean runs, their checkpoints archived
has() { case " $PARTS " in *" $1 "*) return 0;; esac; return 1; }
PY=${PY:-python3}
R=$PWD/build/gpu/results; CK=$PWD/build/gpu/checkpoints
mkdir -p "$R" "$CK"
T0=$(date +%s)
BUDGET=${BUDGET:-480}            # seconds from the start by which everything must have stopped
if [ -n "$SMOKE" ]; then PROFILE=quick; HFP=quick; FOLDS="0"; SEEDS3="0"; BUDGET=${BUDGET_SMOKE:-900}
else PROFILE=cpu; HFP=full; FOLDS="0 1"; SEEDS3="0 1 2"; fi
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
run() {  # run NAME SECONDS CMD...: CMD under a timeout capped by what is left, its output in OUT/NAME.log
  local name=$1 secs=$2; shift 2
  local l; l=$(left); [ "$secs" -gt "$l" ] && secs=$l
  if [ "$secs" -le 5 ]; then echo "[$name] skipped: no time left" | tee -a "$OUT/session.log"; return 0; fi
  echo "[$name] start at +$(( $(date +%s) - T0 )) s, limit $secs s: $*" | tee -a "$OUT/session.log"
  timeout -k 5 "$secs" "$@" >"$LOGS/$name.log" 2>&1
  echo "[$name] rc $? at +$(( $(date +%s) - T0 )) s" | tee -a "$OUT/session.log"
}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU";
  $PY -c "import torch, serlib; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"; } \
  >"$OUT/session.log" 2>&1

# ---- A: alone on the device
if ! has bench; then :
elif [ -n "$SMOKE" ]; then
  run bench 300 $PY benchmarks/head_fusion_gpu.py --toy --device cpu --reps 1 --sides authors serlib_code_amp \
      --out "$OUT/head_fusion_gpu.json"
else
  run bench 110 $PY benchmarks/head_fusion_gpu.py --data-root "$DATA" --reps 2 --budget-s 70 --out "$OUT/head_fusion_gpu.json" \
      --sides authors serlib_code_amp serlib_faithful_amp serlib_code_amp_compiled serlib_faithful_amp_compiled \
      serlib_code_fp32 serlib_faithful_fp32
  run hf50 90 $PY -m serlib experiment --data-root "$DATA" --results "$R/hf50" --no-resume \
      --from-record results/head_fusion_paper_val/ravdess/random_80_20/28e44ac9c9_seed0_fold0.json
fi

# ---- B: in parallel
one_clean() {  # one study's clean speaker-independent runs (checkpoints kept), then their robustness records
  local study=$1; shift
  run "clean_$study" ${CLEAN_S:-300} $PY -m serlib reproduce "$study" "$@" --data-root "$DATA" --protocols speaker_independent \
      --seeds 0 --folds $FOLDS --results "$R/clean" --checkpoints "$CK" --n-jobs 2
  has robust || return 0
  for rec in $(find "$R/clean" -path "*${study}_speaker_independent*" -name '*.json' -not -path '*/splits/*'); do
    run "robust_$(basename "$(dirname "$(dirname "$(dirname "$rec")")")")_$(basename "$rec" .json)" 300 \
        $PY -m serlib robustness "$rec" --checkpoints "$CK" --results "$R/clean" --profile "$PROFILE" \
        --data-root "$DATA" --offsets 0 &
  done
  wait
}
clean() {
  one_clean head_fusion --profile $HFP & one_clean faca --profile $PROFILE --arms faca &
  one_clean moma --profile $PROFILE & one_clean eca --profile $PROFILE --arms our_eca_stft_aug &
  one_clean ca_ser --profile $PROFILE --arms mfcc &
  wait
}
noise() {  # seed by seed, so that a cut-off leaves whole seeds of every design
  for seed in $SEEDS3; do
    run "noise_seed$seed" 460 $PY -m serlib reproduce noise --data-root "$DATA" --profile "$PROFILE" --no-prebuild \
        --protocols speaker_independent --designs a b c d e --seeds $seed --results "$R/noise" --n-jobs 6
  done
}
caser() {
  run caser_loso 400 $PY -m serlib reproduce ca_ser --data-root "$DATA" --profile "$PROFILE" --arms mfcc \
      --protocols paper --seeds 0 --results "$R/caser" --n-jobs 3
  run caser_si 300 $PY -m serlib reproduce ca_ser --data-root "$DATA" --profile "$PROFILE" --arms mfcc \
      --protocols speaker_independent --seeds 1 2 3 4 --results "$R/caser" --n-jobs 3
}
P1= P2= P3=
has clean && { clean & P1=$!; }
if ! has noise; then :; elif [ -d "$DATA/esc50" ]; then noise & P2=$!
else echo "no esc50: noise designs skipped" >>"$OUT/session.log"; fi
has caser && { caser & P3=$!; }
wait $P1 $P2 $P3
if has clean && ! has robust; then  # the checkpoints travel back instead (one archive per study, for `serlib robustness`)
  for study in head_fusion faca moma eca ca_ser; do
    (cd "$CK" && ls -d ${study}_speaker_independent* >/dev/null 2>&1 && \
     tar -czf "$OUT/ck_$study.tgz" ${study}_speaker_independent*)
  done
fi
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv >>"$OUT/session.log" 2>&1
tar -czf "$OUT/results.tgz" -C "$R" . && tar -czf "$OUT/logs.tgz" -C "$LOGS" . && rm -rf "$LOGS"
echo "done at +$(( $(date +%s) - T0 )) s" | tee -a "$OUT/session.log"; ls -la "$OUT" >>"$OUT/session.log"
