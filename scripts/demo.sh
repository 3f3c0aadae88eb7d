#!/usr/bin/env bash
# Install, then compress and decompress FILE (default: paper1, 53 KB, from the shared corpus)
# with the default model, check the round trip and show the archive.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
file="${1:-$here/../shared/corpus/paper1}"
bash "$here/scripts/setup.sh"
out="$(mktemp -d)"
"$here/.venv/bin/llmzip" compress "$file" -o "$out/archive.lz"
"$here/.venv/bin/llmzip" decompress "$out/archive.lz" -o "$out/restored"
cmp "$file" "$out/restored" && echo "round trip exact: $file"
"$here/.venv/bin/llmzip" info "$out/archive.lz"
rm -r "$out"
