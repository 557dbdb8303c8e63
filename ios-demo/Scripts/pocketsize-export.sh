#!/bin/sh
# Xcode build phase: run `pocketsize export` so the app bundles the model it
# was built with. Inputs (build settings or environment):
#   POCKETSIZE_MODEL       model to export (a `pocketsize compress` DIR/model,
#                          or a spec such as zoo:dinov2-small); empty = skip
#   POCKETSIZE_EXECUTABLE  pocketsize CLI (default: pocketsize on PATH)
#   POCKETSIZE_FORMATS     default coreml,executorch
#   POCKETSIZE_QUANTIZE    none | int8 (default none)
# Output: $SRCROOT/Generated/pocketsize/ (manifest.json, model.mlpackage,
# model.pte), bundled as the "pocketsize" folder resource (project.yml).
set -eu

OUT="${SRCROOT}/Generated/pocketsize"
mkdir -p "${SRCROOT}/Generated"

if [ -z "${POCKETSIZE_MODEL:-}" ]; then
  echo "note: POCKETSIZE_MODEL is not set; the app is built without a bundled model"
  mkdir -p "$OUT"
  exit 0
fi

PS="${POCKETSIZE_EXECUTABLE:-pocketsize}"
# pocketsize refuses a non-empty --out and renames its result into place at
# the end, so export into a fresh staging folder and swap it in.
STAGE="${SRCROOT}/Generated/.pocketsize-staging"
rm -rf "$STAGE"
"$PS" export "$POCKETSIZE_MODEL" \
  --to "${POCKETSIZE_FORMATS:-coreml,executorch}" \
  --quantize "${POCKETSIZE_QUANTIZE:-none}" \
  --out "$STAGE"
rm -rf "$OUT"
mv "$STAGE" "$OUT"
