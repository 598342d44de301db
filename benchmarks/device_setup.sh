# Sourced by the device scripts (gpu_checks.sh, agent_pilots.sh): makes this checkout's code and the
# wheels in .whl/ importable on a machine where ganno-lightning is not installed.
#
# Missing packages can travel as wheels in the checkout's .whl/ (ignored by git): when torchrl is
# missing and .whl/*.whl exist they are installed to /tmp/site first (no index, no dependencies) and
# put on PYTHONPATH; otherwise the installed packages are used. Never put torch, numpy or lightning there: the
# machine's own builds are meant. A symlinked copy of the installed package layout (envs/ and
# agents/ under ganno_lightning/) goes first on PYTHONPATH, so the code is this checkout's.
#
# Sets: PY (python), PYP (python -P: the checkout's own ganno_lightning/, which lacks envs/ and
# agents/, must not come first on sys.path) and SHADOW (remove it when done). Needs the caller to
# run from the checkout's root and to define `failed NAME EXIT_CODE`.
PY=${PYTHON:-python3}
if ! "$PY" -c "import torchrl" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
  ls -l .whl
  if timeout -k 5 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl; then
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  else
    failed "wheel install" $?
  fi
else
  echo "using the installed packages"
fi
SHADOW=$(mktemp -d "${TMPDIR:-/tmp}/ganno_src.XXXXXX")
mkdir -p "$SHADOW/ganno_lightning"
for f in "$PWD"/ganno_lightning/*; do ln -s "$f" "$SHADOW/ganno_lightning/"; done
ln -s "$PWD/envs" "$SHADOW/ganno_lightning/envs"
ln -s "$PWD/agents" "$SHADOW/ganno_lightning/agents"
export PYTHONPATH=$SHADOW${PYTHONPATH:+:$PYTHONPATH}
echo "PYTHONPATH=$PYTHONPATH"
PYP=("$PY" -P)
