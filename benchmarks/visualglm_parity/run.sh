#!/usr/bin/env bash
# One command: parity of our VisualGLM with SwissArmyTransformer 0.4.12 on tiny random configs.
#
#   benchmarks/visualglm_parity/run.sh [--write-fixture tests/fixtures/visualglm/sat_tiny]
#
# Builds a throwaway venv OUTSIDE the repository (default /tmp/sat-venv, override with SAT_VENV)
# holding only SwissArmyTransformer and the few packages it imports (triton, wandb, requests,
# einops); torch, transformers and this project come from the project's venv through a .pth
# line, so nothing is installed into the project. SAT is never a dependency of the project.
# Runs at nice 15 (shared CPUs). Exit status 0 when every check passes.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PROJECT_PY="${PROJECT_PY:-$REPO/.venv/bin/python}"
SAT_VENV="${SAT_VENV:-/tmp/sat-venv}"

case "$SAT_VENV" in
  "$REPO"/*) echo "SAT_VENV must be outside the repository ($REPO)" >&2; exit 2 ;;
esac
if [ ! -x "$PROJECT_PY" ]; then
  echo "the project's python is not at $PROJECT_PY (set PROJECT_PY)" >&2; exit 2
fi

if [ ! -x "$SAT_VENV/bin/python" ]; then
  echo "creating $SAT_VENV ..."
  nice -n 15 "$PROJECT_PY" -m venv "$SAT_VENV"
fi
SITE="$("$PROJECT_PY" -c 'import site; print(site.getsitepackages()[0])')"
SAT_SITE="$("$SAT_VENV/bin/python" -c 'import site; print(site.getsitepackages()[0])')"
echo "import site; site.addsitedir('$SITE')" > "$SAT_SITE/zz_defect_glm_project.pth"

if ! "$SAT_VENV/bin/python" -c 'import sat, triton, wandb, requests, einops' 2>/dev/null; then
  echo "installing SwissArmyTransformer 0.4.12 into $SAT_VENV ..."
  nice -n 15 "$SAT_VENV/bin/pip" install --quiet --no-deps "SwissArmyTransformer==0.4.12"
  nice -n 15 "$SAT_VENV/bin/pip" install --quiet triton wandb requests einops
fi

exec nice -n 15 env OMP_NUM_THREADS=1 TRANSFORMERS_VERBOSITY=error PYTHONPATH="$HERE" "$SAT_VENV/bin/python" "$HERE/parity.py" "$@"
