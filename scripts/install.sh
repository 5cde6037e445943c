#!/usr/bin/env bash
# Install the project (editable) into a virtual environment. In order:
#   1. create $VENV (default .venv) with python3 -m venv unless it exists; upgrade pip in it;
#   2. torch:
#      - TORCH_SPEC unset: a torch already in the venv that satisfies pyproject.toml's range is
#        kept (e.g. a CUDA build you installed yourself); otherwise torch==2.13.0 is installed;
#      - TORCH_SPEC set: pip installs exactly that (pip leaves an installed torch that already
#        satisfies it alone);
#      the index is TORCH_INDEX_URL. Unset, it is PyTorch's CPU wheel index
#      (https://download.pytorch.org/whl/cpu) on Linux when `nvidia-smi` does not run, so pip
#      never downloads the CUDA wheels there, and pip's configured index everywhere else;
#      empty means pip's configured index. A URL that does not answer within 5 s, or an
#      install from it that fails, falls back to pip's configured index;
#   3. pip install -e ".[$EXTRAS]" (EXTRAS default test; EXTRAS= installs the core only;
#      e.g. EXTRAS=test,gym-pusht,robosuite,interop), and robosuite 1.5.2 with --no-deps when
#      the robosuite extra is named.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
EXTRAS=${EXTRAS-test}  # optional dependency groups of pyproject.toml
CPU_INDEX=https://download.pytorch.org/whl/cpu
if [ -z "${TORCH_INDEX_URL+set}" ]; then
    if [ "$(uname -s)" = Linux ] && ! nvidia-smi >/dev/null 2>&1; then
        TORCH_INDEX_URL=$CPU_INDEX
    else
        TORCH_INDEX_URL=
    fi
fi
PY=$VENV/bin/python
say() { echo "install.sh: $*"; }

[ -x "$PY" ] || python3 -m venv "$VENV"
"$PY" -m pip install -q --upgrade pip

# Exit status 0 when the venv has a torch inside pyproject.toml's range (e.g. >=2.4,<2.14).
compatible_torch() {
    "$PY" - <<'EOF'
import re
import sys
from importlib.metadata import PackageNotFoundError, version

try:
    from packaging.specifiers import SpecifierSet
except ImportError:  # a bare venv: the copy that ships inside pip
    from pip._vendor.packaging.specifiers import SpecifierSet

try:
    installed = version("torch")
except PackageNotFoundError:
    sys.exit(1)
wanted = re.search(r'"torch\s*([<>=!~][^";]*)"', open("pyproject.toml").read()).group(1)
ok = SpecifierSet(wanted).contains(installed, prereleases=True)
print(f"install.sh: torch {installed} is {'inside' if ok else 'outside'} the range {wanted}")
sys.exit(0 if ok else 1)
EOF
}

# Exit status 0 when the index URL answers within 5 seconds.
reachable() {
    "$PY" - "$1" <<'EOF'
import sys
import urllib.request

try:
    with urllib.request.urlopen(sys.argv[1].rstrip("/") + "/", timeout=5) as r:
        r.read(1)
except Exception as e:  # DNS, refused, timeout, TLS, HTTP error
    print(f"install.sh: {sys.argv[1]} not reachable ({type(e).__name__}: {e})")
    sys.exit(1)
EOF
}

if [ -z "${TORCH_SPEC+set}" ] && compatible_torch; then
    say "keeping the installed torch"
else
    TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
    if [ -n "$TORCH_INDEX_URL" ] && reachable "$TORCH_INDEX_URL" \
        && "$PY" -m pip install -q --index-url "$TORCH_INDEX_URL" "$TORCH_SPEC"; then
        say "installed $TORCH_SPEC from $TORCH_INDEX_URL"
    else
        [ -z "$TORCH_INDEX_URL" ] || say "falling back to pip's configured index for $TORCH_SPEC"
        "$PY" -m pip install -q "$TORCH_SPEC"
    fi
fi
"$PY" -m pip install -q -e ".${EXTRAS:+[$EXTRAS]}"
# robosuite 1.5.2 requires mink==0.0.5 (an IK library its robomimic tasks never load), which
# requires numpy < 2: the "robosuite" extra lists what robosuite does import, and robosuite
# itself goes in without its declared requirements
case ",$EXTRAS," in
    *,robosuite,*) "$PY" -m pip install -q --no-deps "robosuite==1.5.2" ;;
esac
say "installed into $VENV ($("$PY" -c 'import torch; print("torch", torch.__version__)'))"
