#!/usr/bin/env bash
# A local NVFlare POC deployment, by hand: what a consortium's admin does, on loopback.
# Run from the repository root with fedseg installed (`make demo` installs it into .venv).
# It provisions a server and N sites in a scratch folder, starts them, submits the spleen job with
# `nvflare job submit`, waits, downloads the result, prints the global Dice report and stops
# every process it started (also when interrupted).
set -euo pipefail
SITES=${SITES:-2}
TASK=${TASK:-spleen}
# Each run gets a new folder under runs/ (printed at the start and the end).
fedseg poc --task "$TASK" --sites "$SITES" "$@"
