#!/usr/bin/env bash
# Prepare the GPU proof kit on an ordinary x86_64 machine with pip and apt access: put into
# git-ignored folders at the repo root what the device machine lacks, so that one call there can
# run benchmarks/gpu/run.sh with nothing fetched:
#   .whl/             wheels (CPython 3.12, manylinux x86_64) of polyfit's runtime dependencies
#                     the device does not have, pinned to what this repo's venv resolved;
#                     .whl/fallback/ holds device packages the carried ones constrain, installed
#                     there only where the device's own version falls short (run.sh's setup)
#   .gpu-kit/redis/   Debian's redis-server with its shared libraries (bin/redis-server is a
#                     wrapper that sets LD_LIBRARY_PATH)
# and check that what would travel (tracked + untracked-not-ignored files + those two folders)
# stays under the device's 64 MiB. Re-running re-uses what is there.
#
#   bash benchmarks/gpu/prepare.sh            (PYTHON=path/to/venv/python to pick the venv)
#
# Environment: PYTHON (default: .venv/bin/python of the repo), KIT_EXTRA_WHEELS (more
# NAME==VERSION to carry, space-separated), KIT_PLATFORMS (manylinux tags to accept).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO"
KIT=benchmarks/gpu
WHL=.whl
REDIS_DIR=.gpu-kit/redis
LIMIT=$((64 * 1024 * 1024))
DEFAULT_PLATFORMS="manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64"
DEFAULT_PLATFORMS="$DEFAULT_PLATFORMS manylinux2014_x86_64 manylinux1_x86_64"
PLATFORMS=${KIT_PLATFORMS:-$DEFAULT_PLATFORMS}

say() { printf 'prepare: %s\n' "$*"; }
die() { printf 'prepare: error: %s\n' "$*" >&2; exit 1; }

if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
"$PYTHON" -c 'import celery, kombu, sqlalchemy, redis' 2>/dev/null \
    || die "$PYTHON does not have polyfit's dependencies: create the venv first" \
           "(python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 -e '.[test]')" \
           "or set PYTHON"

# -- wheels ------------------------------------------------------------------------------------
pip_download() {  # DEST NAME==VERSION
    local dest=$1 pin=$2 args=() p out
    for p in $PLATFORMS; do args+=(--platform "$p"); done
    if ! out=$("$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
            --python-version 3.12 --implementation cp "${args[@]}" -d "$dest" "$pin" 2>&1); then
        printf '%s\n' "$out" | tail -n 5 >&2
        die "pip could not download $pin for CPython 3.12 manylinux x86_64 (is the package" \
            "index reachable from here? a binary-only package may need another" \
            "manylinux tag in KIT_PLATFORMS)"
    fi
}

fetch_set() {  # DIR MANIFEST PIN...: download the pins into DIR, drop other versions of them
    local dir=$1 manifest=$2; shift 2
    local pin file
    mkdir -p "$dir"
    : >"$manifest.tmp"
    for pin in "$@"; do
        # Another version of the same project would stop `pip install` on the device: pruned.
        file=$("$PYTHON" $KIT/wheels.py have --prune "$dir" "$pin")
        if [ -z "$file" ]; then
            say "downloading $pin"
            pip_download "$dir" "$pin"
            file=$("$PYTHON" $KIT/wheels.py have "$dir" "$pin")
            [ -n "$file" ] || die "pip reported success but no wheel for $pin is in $dir"
        else
            say "have $(basename "$file")"
        fi
        basename "$file" >>"$manifest.tmp"
    done
    mv "$manifest.tmp" "$manifest"
}

pins=$("$PYTHON" $KIT/wheels.py pins) || die "could not work out the wheel set (see above)"
# shellcheck disable=SC2086
fetch_set "$WHL" "$WHL/gpu-kit-wheels.txt" $pins ${KIT_EXTRA_WHEELS:-}
fallbacks=$("$PYTHON" $KIT/wheels.py fallbacks) || die "could not work out the fallback wheels"
# shellcheck disable=SC2086
fetch_set "$WHL/fallback" "$WHL/fallback/gpu-kit-wheels.txt" $fallbacks

# The closure, checked on the wheels themselves (their METADATA, markers for the device).
mapfile -t carried < <(sed "s|^|$WHL/|" "$WHL/gpu-kit-wheels.txt")
"$PYTHON" $KIT/wheels.py check "${carried[@]}" \
    || die "the wheels in $WHL do not cover their own requirements (see above)"
extra=$(cd "$WHL" && ls -1 ./*.whl 2>/dev/null | sed 's|^\./||' | grep -vxF -f gpu-kit-wheels.txt || true)
[ -z "$extra" ] || say "note: $WHL also holds wheels the kit does not use (they travel too):" $extra

# -- redis-server ------------------------------------------------------------------------------
redis_ok() {
    [ -x "$REDIS_DIR/bin/redis-server" ] && [ -f "$REDIS_DIR/MANIFEST" ] || return 1
    [ "$(uname -m)" != x86_64 ] && return 0  # cannot run it here; trust the manifest
    "$REDIS_DIR/bin/redis-server" --version >/dev/null 2>&1
}

# Stay the device's own: glibc, and the C++ runtime that torch itself needs there.
SYSTEM_LIBS='libc6|libc6-.*|libcrypt1|libstdc\+\+6|libgcc-s1'

lib_deps() {  # PACKAGE: its Depends/Pre-Depends that are libraries (SYSTEM_LIBS excepted)
    apt-cache "${APT_OPTS[@]}" depends --no-recommends --no-suggests --no-conflicts \
        --no-breaks --no-replaces --no-enhances "$1" 2>/dev/null \
        | awk '$1 ~ /^\|?(Pre)?Depends:$/ {print $2}' | sed 's/:any$//; s/[<>]//g' \
        | grep -E '^lib' | grep -vxE "$SYSTEM_LIBS" || true
}

build_redis() {
    command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null \
        || die "needs apt-get and dpkg-deb (a Debian or Ubuntu machine) to fetch redis-server"
    APT_OPTS=()
    if [ "$(dpkg --print-architecture)" != amd64 ]; then
        APT_OPTS=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64
                  -oDir::State::Lists=/tmp/polyfit-gpu-kit-apt/lists
                  -oDir::Cache=/tmp/polyfit-gpu-kit-apt/cache)
        mkdir -p /tmp/polyfit-gpu-kit-apt/lists/partial /tmp/polyfit-gpu-kit-apt/cache
        apt-get "${APT_OPTS[@]}" update -qq || die "apt-get update (amd64 lists) failed"
    fi
    apt-cache "${APT_OPTS[@]}" show redis-tools >/dev/null 2>&1 \
        || die "apt knows no redis-tools package: run 'apt-get update' (is the Debian mirror" \
               "reachable?)"
    # The packages: redis-tools (the binary), redis-server (its redis-server name), and the
    # libraries they need, recursively (but SYSTEM_LIBS).
    local todo="redis-tools redis-server" all="" p d
    while [ -n "$todo" ]; do
        set -- $todo; p=$1; shift; todo="$*"
        case " $all " in *" $p "*) continue ;; esac
        all="$all $p"
        for d in $(lib_deps "$p"); do todo="$todo $d"; done
    done
    local tmp
    tmp=$(mktemp -d /tmp/polyfit-gpu-kit.XXXXXX)
    # shellcheck disable=SC2064
    trap "rm -rf '$tmp'" EXIT
    say "downloading Debian packages:$all"
    # shellcheck disable=SC2086
    (cd "$tmp" && apt-get "${APT_OPTS[@]}" download $all >download.log 2>&1) || {
        tail -n 5 "$tmp/download.log" >&2
        die "apt-get download failed (is the Debian mirror reachable? try 'apt-get update')"
    }
    mkdir -p "$tmp/root"
    for d in "$tmp"/*.deb; do dpkg-deb -x "$d" "$tmp/root"; done
    local real
    real=$(readlink -f "$tmp/root/usr/bin/redis-server")
    [ -f "$real" ] || die "no redis-server binary in the packages"

    rm -rf "$REDIS_DIR.new"
    mkdir -p "$REDIS_DIR.new/bin" "$REDIS_DIR.new/libexec" "$REDIS_DIR.new/lib"
    # Named redis-server: the binary picks its role from its name (redis-check-rdb is another).
    cp "$real" "$REDIS_DIR.new/libexec/redis-server"
    cp -L "$tmp/root/usr/bin/redis-cli" "$REDIS_DIR.new/libexec/redis-cli"
    local libdirs="$tmp/root/lib/x86_64-linux-gnu:$tmp/root/usr/lib/x86_64-linux-gnu"
    if [ "$(uname -m)" = x86_64 ] && command -v ldd >/dev/null; then
        # Only the libraries the two binaries load, as resolved inside the packages.
        local line so path
        for bin in "$REDIS_DIR.new/libexec/redis-server" "$REDIS_DIR.new/libexec/redis-cli"; do
            while read -r line; do
                so=$(awk '{print $1}' <<<"$line"); path=$(awk '{print $3}' <<<"$line")
                case "$line" in
                    *"not found"*) die "redis needs $so, which no downloaded package has" ;;
                esac
                case "$path" in
                    "$tmp"/root/*) cp -L "$path" "$REDIS_DIR.new/lib/$so" ;;
                    */libc.so.*|*/libm.so.*|*/ld-linux*|*/libpthread.so.*) ;;
                    */libdl.so.*|*/librt.so.*|*/libresolv.so.*) ;;
                    */libstdc++.so.*|*/libgcc_s.so.*|"") ;;
                    *) die "redis would load $path from this machine, not from the kit" ;;
                esac
            done < <(LD_LIBRARY_PATH=$libdirs ldd "$bin" | grep '=>')
        done
    else
        local f
        for f in "$tmp"/root/lib/x86_64-linux-gnu/*.so* "$tmp"/root/usr/lib/x86_64-linux-gnu/*.so*; do
            [ -e "$f" ] && cp -L "$f" "$REDIS_DIR.new/lib/"
        done
    fi
    for name in redis-server redis-cli; do
        cat >"$REDIS_DIR.new/bin/$name" <<EOF
#!/bin/sh
# Debian's $name with the shared libraries it needs from ../lib (polyfit GPU kit).
here=\$(cd "\$(dirname "\$0")/.." && pwd)
LD_LIBRARY_PATH="\$here/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "\$here/libexec/$name" "\$@"
EOF
        chmod +x "$REDIS_DIR.new/bin/$name"
    done
    # The newest glibc symbol version any carried file asks for: the device's must be as new.
    local glibc
    glibc=$("$PYTHON" - "$REDIS_DIR.new" <<'EOF'
import re, sys
from pathlib import Path
found = {int(m) for p in Path(sys.argv[1]).rglob("*") if p.is_file()
         for m in re.findall(rb"GLIBC_2\.(\d+)", p.read_bytes())}
print(f"2.{max(found)}")
EOF
)
    {
        echo "# Debian packages unpacked into this folder by benchmarks/gpu/prepare.sh"
        echo "# (libraries of glibc, libstdc++ and libgcc_s are the device's own)"
        echo "needs-glibc $glibc"
        for d in "$tmp"/*.deb; do
            dpkg-deb -f "$d" Package Version Architecture | sed 's/^[^:]*: //' | paste -sd' '
        done
    } >"$REDIS_DIR.new/MANIFEST"
    rm -rf "$REDIS_DIR"
    mv "$REDIS_DIR.new" "$REDIS_DIR"
    rm -rf "$tmp"
    trap - EXIT
}

if redis_ok; then
    say "have $REDIS_DIR ($(grep '^redis-tools ' "$REDIS_DIR/MANIFEST"))"
else
    build_redis
fi
if [ "$(uname -m)" = x86_64 ]; then
    # Smoke test: the carried server starts, answers and stops, on a free loopback port.
    port=$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    "$REDIS_DIR/bin/redis-server" --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
        --daemonize no --loglevel warning >/dev/null 2>&1 &
    rpid=$!
    ok=""
    for _ in $(seq 50); do
        if [ "$("$REDIS_DIR/bin/redis-cli" -p "$port" ping 2>/dev/null)" = PONG ]; then ok=1; break; fi
        sleep 0.1
    done
    kill "$rpid" 2>/dev/null || true
    wait "$rpid" 2>/dev/null || true
    [ -n "$ok" ] || die "the carried redis-server did not answer a ping"
    say "$("$REDIS_DIR/bin/redis-server" --version | cut -d' ' -f1-3) from the kit answers"
fi

# -- what would travel ---------------------------------------------------------------------------
say "sizes (what one device call would carry):"
tree=$(git ls-files -z --cached --others --exclude-standard \
       | "$PYTHON" -c 'import os, sys
paths = [p for p in sys.stdin.buffer.read().split(b"\0") if p]
print(sum(os.lstat(p).st_size for p in paths if os.path.lexists(p)))')
whl=$(du -sb "$WHL" | cut -f1)
kit=$(du -sb .gpu-kit | cut -f1)
total=$((tree + whl + kit))
mib() { awk -v b="$1" 'BEGIN {printf "%.2f MiB", b / 1048576}'; }
nwheels=$(wc -l <"$WHL/gpu-kit-wheels.txt")
nfallbacks=$(wc -l <"$WHL/fallback/gpu-kit-wheels.txt")
printf '  %-48s %s\n' "tracked + untracked-not-ignored files" "$(mib "$tree")" \
    "$WHL ($nwheels wheels + $nfallbacks fallbacks)" "$(mib "$whl")" \
    ".gpu-kit (redis-server and its libraries)" "$(mib "$kit")" \
    "total (limit 64 MiB)" "$(mib "$total")"
[ "$total" -le "$LIMIT" ] || die "that is over the 64 MiB the device call carries"
say "ready: carry .whl and .gpu-kit, run: bash benchmarks/gpu/run.sh"
