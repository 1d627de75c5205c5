#!/usr/bin/env bash
# Run the cells of a DVC grid on a SLURM cluster: one array task per cell, results shared through the DVC remote's
# run-cache (scripts/shared_cache.py), MLflow runs sent to the team's tracking server.
#
#   scripts/slurm/grid.sh 'scan_pretrain@.*' --gres=gpu:1 --time=04:00:00 [more sbatch options]
#   ... when the array is done, on any machine with the repository:
#   python scripts/shared_cache.py fetch && dvc repro --pull      # restores every cell, runs what is left (reports)
#
# Needs: the repository and its .venv (or $EQUITUNE_VENV) on a filesystem the compute nodes see; a clean, committed work tree (tasks
# run the commit, not uncommitted edits); a DVC remote that `python scripts/shared_cache.py check` accepts;
# MLFLOW_TRACKING_URI (+ MLFLOW_TRACKING_USERNAME/PASSWORD) in the environment, which sbatch passes on.
# Each task clones the repository into node-local $TMPDIR, runs `dvc repro --pull <cell>` (upstream stages come
# from the run-cache when another task or machine pushed them) and pushes its results; a GPU task's device comes
# from the CUDA_VISIBLE_DEVICES that SLURM sets for its --gres (equitune.pipeline.stage.resolve_device).
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 STAGE_REGEX [sbatch options...]   (e.g. 'scan_pretrain@.*' --gres=gpu:1)" >&2
  exit 2
fi
PATTERN=$1
shift
SCRIPTS=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPO=$(git rev-parse --show-toplevel)
cd "$REPO"
VENV=${EQUITUNE_VENV:-${VIRTUAL_ENV:-$REPO/.venv}}
if [ ! -x "$VENV/bin/dvc" ]; then
  echo "error: no virtual environment with dvc at $VENV: run make setup, or set EQUITUNE_VENV" >&2
  exit 2
fi
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
  echo "error: uncommitted changes in $REPO; the tasks run a commit: commit (or stash) them first" >&2
  exit 2
fi
if [ -z "${MLFLOW_TRACKING_URI:-}" ]; then
  echo "error: MLFLOW_TRACKING_URI is not set: each task runs in a temporary clone, so its MLflow runs would be" \
       "lost; point it at the team's tracking server (docs/scaling-out.md)" >&2
  exit 2
fi
"$VENV/bin/python" "$SCRIPTS/shared_cache.py" check
REV=$(git rev-parse HEAD)
mkdir -p .dvc/tmp/slurm
CELLS=$REPO/.dvc/tmp/slurm/cells-$REV.txt
"$VENV/bin/dvc" stage list --name-only | { grep -E "^(${PATTERN})$" || true; } > "$CELLS"
COUNT=$(wc -l < "$CELLS")
if [ "$COUNT" -eq 0 ]; then
  echo "error: no stage matches ^(${PATTERN})\$; see \`dvc stage list --name-only\`" >&2
  exit 2
fi
JOB=$(sbatch --parsable --array="0-$((COUNT - 1))" "$@" "$SCRIPTS/slurm/cell.sbatch" "$REPO" "$REV" "$CELLS" \
      "$SCRIPTS" "$VENV")
echo "[slurm] job $JOB: $COUNT cell(s) of commit ${REV:0:8} (list: $CELLS)"
echo "[slurm] when it is done: python scripts/shared_cache.py fetch && dvc repro --pull"
