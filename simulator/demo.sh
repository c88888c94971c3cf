#!/usr/bin/env bash
# The local multi-site demo, step by step (what `make demo` / `fedseg simulate` does in one go).
# Run from the repository root with fedseg installed (`make demo` installs it into .venv).
set -euo pipefail
SITES=${SITES:-2}
fedseg data synth --task spleen --out data/spleen --cases 30 --seed 0 --workers 2
fedseg data split --dataset data/spleen --sites "$SITES" --out data/spleen/splits --seed 0
# The committed site_configs/site-N.yaml point at data/spleen/splits/site-N.json.
# Thin jobs bring no code: the workspace allows the classes they name (the simulator copies
# WORKSPACE/local into every participant).
fedseg jobs allow-list --local-dir runs/spleen_fedavg_manual/workspace/local
FEDSEG_SITE_CONFIG_DIR="$PWD/site_configs" \
  nvflare simulator jobs/spleen_fedavg -w runs/spleen_fedavg_manual/workspace -n "$SITES" -t "$SITES"
