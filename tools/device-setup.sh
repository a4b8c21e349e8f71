#!/usr/bin/env bash
# Set up the harness on a bare GPU machine with no network: install the carried wheels
# (.whl/: flashinfer-python and its missing deps) and this checkout, without touching torch.
# Sourced (`source tools/device-setup.sh`): it must not change the caller's shell options.
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >/dev/null
echo "PYTHONPATH=${PYTHONPATH:-}"
