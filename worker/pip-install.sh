#!/bin/sh
# Build-time only: `pip install ARGS`, trusting ca-bundle.crt next to this script when the
# build context has one (the build host's CA bundle, for TLS-intercepting proxies).
# `-r FILE` with no requirement lines in FILE installs nothing.
set -eu
here=$(dirname "$0")
if [ "$#" -eq 2 ] && [ "$1" = "-r" ] && ! grep -q '^[[:space:]]*[^#[:space:]]' "$2"; then
    echo "no requirements in $2"
    exit 0
fi
if [ -s "$here/ca-bundle.crt" ]; then
    export PIP_CERT="$here/ca-bundle.crt"
fi
exec pip install --no-cache-dir "$@"
