#!/usr/bin/env bash
# Make the folder of wheels an offline GPU machine needs for FlashInfer (tools/device-setup.sh, the `fi=`
# step of tools/gpu-validate.sh): the flashinfer-python wheel trimmed to what prebuilt modules need
# (tools/trim-flashinfer-wheel.py) and the apache-tvm-ffi wheel it imports, for the device's Python 3.12.
#   tools/carry-flashinfer.sh VERSION OUT_DIR [TVM_FFI_VERSION]
#   tools/carry-flashinfer.sh 0.7.2.post1 .carry/fi-0.7.2
# The other packages flashinfer imports at load (numpy, click, einops, requests, tabulate, tqdm, ...)
# are on the device image; its JIT-only extras (cutlass-dsl, cudnn-frontend) are not needed by the
# SM90 fused-MoE paths. Carry the trimmed module built by `moeacc build-flashinfer` beside it.
set -euo pipefail
v=${1:?usage: tools/carry-flashinfer.sh VERSION OUT_DIR [TVM_FFI_VERSION]}
out=${2:?usage: tools/carry-flashinfer.sh VERSION OUT_DIR [TVM_FFI_VERSION]}
tvm=${3:-0.1.15.post2}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download -q --no-deps -d "$tmp" "flashinfer-python==$v"
python3 "$(dirname "$0")/trim-flashinfer-wheel.py" "$tmp"/flashinfer_python-*.whl --out "$out"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$out" "apache-tvm-ffi==$tvm"
du -sh "$out"
