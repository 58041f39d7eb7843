#!/bin/bash
# One guided tune of the shipped digits-cond model (issue 15, deliverable 4); usage: run_tune.sh NFE MAXFEV
# Logs wall time and load average beside the JSON.
set -e
K=$1; MAXFEV=$2
cd "$(dirname "$0")/../.."
. .venv/bin/activate
LOG=benchmarks/tuning_cond/dpmpp_2m-$K.log
echo "start $(date -u +%FT%TZ) load: $(uptime)" > $LOG
CMD="sde-diffusion tune --model digits-cond --solver dpmpp_2m --nfe $K --class all --guidance 2 --calibration 256 --validation 64 --holdout 128 --maxfev $MAXFEV --patience 3 --threads 1 --out benchmarks/tuning_cond/dpmpp_2m-$K.json"
echo "OMP_NUM_THREADS=1 $CMD" >> $LOG
S=$(date +%s.%N)
OMP_NUM_THREADS=1 $CMD >> $LOG 2>&1
E=$(date +%s.%N)
echo "end $(date -u +%FT%TZ) wall_s $(echo "$E - $S" | bc) load: $(uptime)" >> $LOG
