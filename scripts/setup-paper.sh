#!/usr/bin/env bash
# Install the Debian TeX packages that `make -C paper` needs (as root, or through sudo); a no-op
# where latexmk and booktabs are already there.
set -euo pipefail
if command -v latexmk >/dev/null && kpsewhich booktabs.sty >/dev/null; then exit 0; fi
sudo=$([ "$(id -u)" = 0 ] || echo sudo)
$sudo apt-get update -q
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends \
    latexmk texlive-latex-base texlive-latex-recommended texlive-fonts-recommended
