#!/usr/bin/env bash
# Set up the harness on a bare GPU machine with no network: install carried wheels into a target
# folder put first on PYTHONPATH, and this checkout, without touching the machine's torch.
#   source tools/device-setup.sh [WHEEL_DIR ...]        (default: .whl)
# Each call installs into its own folder (/tmp/site-<name of the first WHEEL_DIR>), so two library
# versions (e.g. .carry/fi-0.6.12 and .carry/fi-0.7.2) can be set up one after the other in one shell.
# MOEACC_TRITON_KERNELS=DIR adds a triton_kernels folder made by tools/fetch-triton-kernels.py.
# Sourced: it must not change the caller's shell options.
_moeacc_dirs=("$@")
[ ${#_moeacc_dirs[@]} -eq 0 ] && _moeacc_dirs=(.whl)
_moeacc_site=/tmp/site-$(basename "${_moeacc_dirs[0]}")
_moeacc_wheels=()
for _d in "${_moeacc_dirs[@]}"; do
  for _w in "$_d"/*.whl; do [ -e "$_w" ] && _moeacc_wheels+=("$_w"); done
done
if [ ${#_moeacc_wheels[@]} -gt 0 ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$_moeacc_site" \
    "${_moeacc_wheels[@]}" || return 1
  export PYTHONPATH="$_moeacc_site${MOEACC_TRITON_KERNELS:+:$MOEACC_TRITON_KERNELS}"
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >/dev/null
echo "PYTHONPATH=${PYTHONPATH:-}"
unset _moeacc_dirs _moeacc_site _moeacc_wheels _d _w
