#!/usr/bin/env bash
# Here, before a run on a lent GPU machine (benchmarks/device/README.md): the wheels of what
# figure 5 and the aggregation tests import that the machine's image lacks, built for its
# Python 3.12, at the versions this project's venv runs. It cannot reach a registry there.
# Exit codes: 0 wheels in .whl/; 2 no venv to read the versions from; other: pip's.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv_python=${VENV_PYTHON:-.venv/bin/python}
[ -x "$venv_python" ] || { echo "no $venv_python: run make venv first" >&2; exit 2; }
dest=.whl
# Ignored by git here, yet it travels: the device run names it in carry.
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude

# flwr and its imports that the image ('cuda', benchmarks/device/README.md) does not hold, and
# the libraries whose versions flwr's generated code and pins depend on (grpcio, protobuf).
names=(
  flwr iterators pycryptodome cryptography cffi pycparser grpcio grpcio-health-checking protobuf
  pydantic pydantic-core annotated-types typing-inspection typing-extensions
)
platforms=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1; do
  platforms+=(--platform "${tag}_x86_64")
done
rm -rf "$dest"
mkdir -p "$dest"
for name in "${names[@]}"; do
  version=$("$venv_python" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$name")
  "$venv_python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$dest" "$name==$version"
done
ls "$dest"
du -sh "$dest"
