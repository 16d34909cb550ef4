#!/usr/bin/env bash
# Installs Debian's dataset-fashion-mnist (the four gzipped IDX files under
# /usr/share/datasets/fashion-mnist) for `memtrain index bench` and `memtrain index ood`.
# Tests never need it: they use generated clustered data.
set -euo pipefail
DIR=/usr/share/datasets/fashion-mnist
if [ -f "$DIR/train-images-idx3-ubyte.gz" ] && [ -f "$DIR/t10k-images-idx3-ubyte.gz" ]; then
    echo "$DIR"
    exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
if ! $SUDO apt-get install -y dataset-fashion-mnist >&2; then
    $SUDO apt-get update >&2 && $SUDO apt-get install -y dataset-fashion-mnist >&2 || {
        echo "could not install dataset-fashion-mnist (no apt, or the Debian mirror is unreachable)" >&2
        exit 1
    }
fi
echo "$DIR"
