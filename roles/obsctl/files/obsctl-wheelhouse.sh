#!/usr/bin/env bash
# Build the collection's own obsctl package and its dependencies as wheels, on
# the controller (the obsctl role runs it with delegate_to: localhost):
#
#   obsctl-wheelhouse.sh PYTHON COLLECTION_ROOT CACHE_DIR
#
# The sources install.sh builds from (pyproject.toml, README.md, src,
# templates, plugins/module_utils) are copied to a temporary directory (the
# collection may be read-only, and a build writes build/ and *.egg-info next
# to its sources), hashed, and built with `PYTHON -m pip wheel` into
# CACHE_DIR/DIGEST unless that directory is complete already: the same
# sources give the same wheel files, so a second run copies nothing new to
# the targets. Prints one JSON object:
#   {"wheelhouse": DIR, "wheel": DIR/obsctl-*.whl, "built": true|false,
#    "python": "3.11", "machine": "x86_64"}
# Exit 1 with pip's output on stderr when the build fails.
set -euo pipefail
python="$1" root="$2" cache="$3"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src"
(cd "$root" && tar --exclude=__pycache__ --exclude='*.egg-info' --exclude=build -chf - \
    pyproject.toml README.md src templates plugins/module_utils) | tar -C "$work/src" -xf -
digest="$(cd "$work/src" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)"
dir="$cache/$digest"
built=false
if [ ! -e "$dir/.complete" ]; then
    rm -rf "$dir"
    mkdir -p "$dir"
    if ! "$python" -m pip wheel -q --disable-pip-version-check -w "$dir" "$work/src" >"$work/pip.log" 2>&1; then
        cat "$work/pip.log" >&2
        rm -rf "$dir"
        exit 1
    fi
    touch "$dir/.complete"
    built=true
fi
wheel="$(find "$dir" -maxdepth 1 -name 'obsctl-*.whl' | head -1)"
[ -n "$wheel" ] || { echo "no obsctl wheel in $dir" >&2; exit 1; }
"$python" - "$dir" "$wheel" "$built" <<'PY'
import json, platform, sys
print(json.dumps({"wheelhouse": sys.argv[1], "wheel": sys.argv[2], "built": sys.argv[3] == "true",
                  "python": "%d.%d" % sys.version_info[:2], "machine": platform.machine()}))
PY
