#!/usr/bin/env bash
# Each extra installs and works alone, as the images install it: a fresh venv per extra,
# the install line taken from its Dockerfile, then the commands that image runs.
#   training   (deploy/docker/training.Dockerfile): prepare, train --preset smoke, export,
#              evaluate
#   serving    (deploy/docker/gateway.Dockerfile): serve the exported repository, the client
#              verbs against it; torch must not be installed
#   playground (no image; pip install '.[playground]'): the page and its API against it
# Usage: scripts/check_extras.sh [WORKDIR]   (make check-extras; .ci/run runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
work=${1:-$(mktemp -d)}
rm -rf "$work"  # a scratch folder: every run starts from nothing, as a fresh image would
mkdir -p "$work"
work=$(cd "$work" && pwd)  # absolute: the installs run from a copy of the tree
py=${PYTHON:-python3}
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# The quoted '.[extra]' of a Dockerfile's pip install line: the spec the image is built with.
spec_of() { grep -o "pip install[^&]*'\.\[[a-z]*\]'" "$1" | grep -o "'\.\[[a-z]*\]'" | tr -d "'"; }

venv_with() {  # NAME SPEC: a fresh venv with only SPEC installed (a copy of the tree, as COPY does)
  local name=$1 spec=$2
  echo "== $name: pip install '$spec' into a fresh venv"
  rm -rf "$work/$name" "$work/src-$name"
  mkdir -p "$work/src-$name"
  cp -r pyproject.toml README.md vaegan "$work/src-$name/"
  "$py" -m venv "$work/$name"
  "$work/$name/bin/pip" install -q --upgrade pip
  (cd "$work/src-$name" && "$work/$name/bin/pip" install -q --no-cache-dir "$spec")
}

free_port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

wait_for() {  # PORT: until something listens on 127.0.0.1:PORT (60 s)
  for _ in $(seq 120); do
    "$py" -c "import socket,sys; socket.create_connection(('127.0.0.1', $1), 1)" 2>/dev/null && return 0
    sleep 0.5
  done
  echo "nothing listens on port $1" >&2
  return 1
}

# --- training ---
spec=$(spec_of deploy/docker/training.Dockerfile)
test "$spec" = ".[training]" || { echo "training.Dockerfile installs '$spec'?" >&2; exit 1; }
venv_with training "$spec"
t="$work/training/bin"
"$t/python" - "$work/images" <<'EOF'
import sys
from pathlib import Path
import numpy as np
from PIL import Image, ImageDraw
root = Path(sys.argv[1]); root.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
for i in range(48):
    im = Image.new("RGB", (48, 48), "white")
    r = int(rng.integers(8, 16)); cx, cy = (int(v) for v in rng.integers(r, 48 - r, 2))
    ImageDraw.Draw(im).ellipse((cx - r, cy - r, cx + r, cy + r), fill=tuple(int(v) for v in rng.integers(0, 200, 3)))
    im.save(root / f"{i:03d}.png")
EOF
"$t/vaegan" prepare "$work/images" --out "$work/data" --size 32 --center-crop --quiet
"$t/vaegan" train --data "$work/data" --out "$work/run" --preset smoke --quiet
"$t/vaegan" export --checkpoint "$work/run/checkpoints/last.pt" --repository "$work/repo" --data "$work/data" --prior-components 2
"$t/vaegan" evaluate --repository "$work/repo" --data "$work/data" --n 8 --quiet --out "$work/eval.json"
echo "training extra: prepare, train, export and evaluate ran"

# --- serving ---
spec=$(spec_of deploy/docker/gateway.Dockerfile)
test "$spec" = ".[serving]" || { echo "gateway.Dockerfile installs '$spec'?" >&2; exit 1; }
venv_with serving "$spec"
s="$work/serving/bin"
if "$s/python" -c "import torch" 2>/dev/null; then
  echo "the serving extra installs torch" >&2; exit 1
fi
port=$(free_port); metrics=$(free_port)
"$s/vaegan" serve --model-repository "$work/repo" --host 127.0.0.1 --port "$port" --metrics-port "$metrics" > "$work/serve.log" 2>&1 &
pids+=($!)
wait_for "$port"
"$s/vaegan" info --target "127.0.0.1:$port" > "$work/info.json"
"$s/vaegan" generate --target "127.0.0.1:$port" --random 4 --prior fitted --out "$work/generated.png"
"$s/vaegan" encode --target "127.0.0.1:$port" "$work"/images/000.png "$work"/images/001.png --out "$work/z.npy"
"$s/vaegan" interpolate --target "127.0.0.1:$port" "$work"/images/000.png "$work"/images/001.png --steps 3 --out "$work/walk.png"
# From $work: in the source tree's root, python -c would import its ./vaegan folder instead.
(cd "$work" && "$s/python" -c "
import sys, vaegan.service.server, vaegan.client, vaegan.cli
assert 'torch' not in sys.modules, 'the gateway imported torch'")
echo "serving extra: serve and the client verbs ran without torch"

# --- playground ---
venv_with playground ".[playground]"
pg=$(free_port)
"$work/playground/bin/vaegan" playground --target "127.0.0.1:$port" --port "$pg" > "$work/playground.log" 2>&1 &
pids+=($!)
wait_for "$pg"
"$py" - "$pg" <<'EOF'
import json, sys, urllib.request
base = f"http://127.0.0.1:{sys.argv[1]}"
page = urllib.request.urlopen(base + "/", timeout=30).read()
assert b"<html" in page.lower(), page[:200]
info = json.loads(urllib.request.urlopen(base + "/api/info", timeout=30).read())
assert info, info
EOF
echo "playground extra: page and API answered"
echo "all extras install and work alone"
