#!/usr/bin/env bash
# The README's main command: set up .venv (scripts/setup.sh) and run the offline demo.
#   bash scripts/demo.sh [--quick] [--out DIR] [--jobs N] ...   (arguments go to `robustarch demo`)
# Trains small ResNet-18, DenseNet-121, DARTS and NSGA-Net variants on Fashion-MNIST (Debian's
# dataset-fashion-mnist, installed by setup.sh when missing), attacks them with the paper's preset and the
# standard preset, and writes the report to robustarch-demo/report/ (report.html, report.md, figures/).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/robustarch demo "$@"
