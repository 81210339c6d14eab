#!/usr/bin/env bash
# The GPU check of issue 22 (docs/gpu.md): benchmarks/gpu_check.sh OUT_DIR [--cpu-dry-run] [--only STEP ...]
#
# On a lent GPU the machine has no network and lacks diffusers and a few more: the wheels
# that /work/shared/gpu/prepare-wheels.sh put in ./.whl travel with the run (`carry: [".whl"]`)
# and are installed here without network, as /work/shared/gpu/README.md says. The steps,
# their budgets and their summary lines are benchmarks/gpu_check.py's.
set -u
OUT=${1:?usage: benchmarks/gpu_check.sh OUT_DIR [--cpu-dry-run] [--only STEP ...]}
shift
cd "$(dirname "$0")/.." || exit 2
mkdir -p "$OUT" || exit 2
PY=${PYTHON:-python3}
case " $* " in *" --cpu-dry-run "*) dry=1 ;; *) dry=0 ;; esac
if [ "$dry" = 0 ] && compgen -G ".whl/*.whl" > /dev/null; then
  echo "installing $(ls .whl/*.whl | wc -l) carried wheels into /tmp/site (no network)"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl > "$OUT/install.log" 2>&1 \
    || { echo "wheel install failed: see $OUT/install.log"; tail -3 "$OUT/install.log"; exit 1; }
  export PYTHONPATH=/tmp/site
  "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . >> "$OUT/install.log" 2>&1 \
    || echo "note: the editable install failed (see $OUT/install.log); running from the checkout through PYTHONPATH"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" benchmarks/gpu_check.py "$OUT" "$@"
