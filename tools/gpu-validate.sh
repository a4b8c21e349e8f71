#!/usr/bin/env bash
# The GPU validation the committed H100 reports came from, as named steps run in order:
#   tools/gpu-validate.sh STEP [STEP ...]        results under $WORK (default ./gpu-out), packed into
#                                               $OUT/gpu-validate.tgz at exit when $OUT is set (a device call)
# Steps (each logs its command, exit code and seconds to $WORK/steps.log; a failing step does not
# stop the next one):
#   fi=VERSION        set up carried FlashInfer wheels .carry/fi-VERSION (tools/device-setup.sh) and the
#                     prebuilt trimmed module .carry/prebuilt-VERSION when present (else it is built)
#   tk                add the triton_kernels folder .carry/triton_kernels (tools/fetch-triton-kernels.py)
#   proof             tests/gpu: the installed version's SM90 layouts vs FlashInfer's helpers, CPU/GPU inputs,
#                     faults around the real kernel localized (JSON evidence in $WORK/evidence)
#   run=ID[:ARGS]     moeacc run --device cuda --repeat 3 --run-id ID [ARGS, space-separated] into $WORK/reports
#   fuzz=BACKEND:SECS moeacc fuzz --profile nightly --time-budget SECS into $WORK/fuzz/BACKEND
#   bench             benchmarks/bench_reference.py --device cuda into $WORK/bench-h100.json
#   reference         issue 16 in one step: the reference's GPU and fused-kernel tests (and its quantizers'
#                     bits, CPU against CUDA), its host phases
#                     (benchmarks/host_overhead.py, with cProfile), the side-by-side benchmark with the
#                     variants overlap / eager-combine / eager-act / dequant, and the forward's kernel profile at both layers
#   cmd=SHELL         any command (a repro), output in steps.log
#   T=SECS            wall-clock limit for each following step (0: none; default 0)
set -u
WORK=${WORK:-$PWD/gpu-out}
mkdir -p "$WORK"
LOG=$WORK/steps.log
[ -n "${OUT:-}" ] && trap 'tar czf "$OUT/gpu-validate.tgz" -C "$WORK" --exclude=db . && cp "$LOG" "$OUT/steps.log"' EXIT
export MOEACC_CACHE_DIR=${MOEACC_CACHE_DIR:-/tmp/moeacc-cache}

STEP_T=0
_step() {  # name, command...
  local t0=$SECONDS rc
  echo "### $1" | tee -a "$LOG"
  timeout --kill-after=20 "$STEP_T" "${@:2}" >>"$LOG" 2>&1
  rc=$?
  echo "### $1: rc=$rc in $((SECONDS - t0)) s" | tee -a "$LOG"
  return 0
}

_fi() {
  local v=$1
  # shellcheck disable=SC1091
  source tools/device-setup.sh ".carry/fi-$v" || return 1
  [ -d ".carry/prebuilt-$v" ] && export MOEACC_FLASHINFER_PREBUILT=$PWD/.carry/prebuilt-$v
  python3 -c "import flashinfer, torch; print('flashinfer', flashinfer.__version__, 'torch', torch.__version__)"
}

_run() {
  local id=${1%%:*} args=()
  [[ $1 == *:* ]] && read -r -a args <<<"${1#*:}"
  moeacc run --device cuda --repeat 3 --out "$WORK/reports" --run-id "$id" --quiet "${args[@]}"
}

_fuzz() {
  local b=${1%%:*} secs=${1#*:}
  moeacc fuzz --backend "$b" --device cuda --profile nightly --time-budget "$secs" --out "$WORK/fuzz/${b//[|:]/_}"
}

for s in "$@"; do
  case $s in
    fi=*) echo "### ${s}" | tee -a "$LOG"; _fi "${s#fi=}" >>"$LOG" 2>&1 || echo "### $s: set-up failed" | tee -a "$LOG" ;;
    tk) export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD/.carry/triton_kernels; echo "### tk: $PYTHONPATH" >>"$LOG" ;;
    T=*) STEP_T=${s#T=} ;;
    proof) _step proof env MOEACC_EVIDENCE_DIR="$WORK/evidence" python3 -m pytest -q -p no:cacheprovider -rs tests/gpu ;;
    run=*) _step "$s" bash -c "$(declare -f _run); WORK='$WORK' _run '${s#run=}'" ;;
    fuzz=*) _step "$s" bash -c "$(declare -f _fuzz); WORK='$WORK' _fuzz '${s#fuzz=}'" ;;
    bench) _step bench python3 benchmarks/bench_reference.py --device cuda --out "$WORK/bench-h100.json" ;;
    reference)
      _step reference-tests python3 -m pytest -q -p no:cacheprovider tests/gpu/test_gold_cuda.py tests/gpu/test_device_arith_cuda.py \
        tests/test_combine.py tests/test_act_fused.py tests/test_gemm_fused.py tests/test_gold.py
      _step reference-host python3 benchmarks/host_overhead.py --tokens 128,4096 --reps 8 --cprofile 25 --out "$WORK/host.json"
      _step reference-bench python3 benchmarks/bench_reference.py --device cuda --variants overlap,eager-combine,eager-act,dequant \
        --out "$WORK/bench.json"
      _step reference-profile python3 benchmarks/profile_reference.py --out "$WORK/profile.json"
      _step reference-profile-dsv4 python3 benchmarks/profile_reference.py --config deepseek-v4-flash --out "$WORK/profile-dsv4.json" ;;
    cmd=*) _step cmd bash -c "${s#cmd=}" ;;
    *) echo "unknown step $s" | tee -a "$LOG"; exit 2 ;;
  esac
done
