#!/usr/bin/env bash
# setup-qemu-backports.sh — unpack Debian's QEMU 10.0 (bookworm-backports) into a
# private prefix, next to the system QEMU and without touching it.
#
# Usage: scripts/setup-qemu-backports.sh [--force] [PREFIX]
#
#   PREFIX   where to unpack (default:
#            ${MHARNESS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mharness}/builds/qemu-10.0)
#   --force  rebuild even if PREFIX already holds a working build
#
# Environment:
#   MHARNESS_CACHE_DIR       cache root (builds/, apt/ below it)
#   MHARNESS_APT_DIR         private apt state (lists, downloaded .debs);
#                            default $MHARNESS_CACHE_DIR/apt/<suite>-backports
#   MHARNESS_DEBIAN_SUITE    Debian release the backports come from (default: bookworm)
#   MHARNESS_DEBIAN_MIRROR   archive URI; default: the URI this machine's own apt
#                            configuration uses for that suite
#   MHARNESS_QEMU_SERIES     expected upstream series (default: 10.0)
#   MHARNESS_SYSTEM_APT_ETC  where to read the system's apt sources (default: /etc/apt)
#
# What it does:
#   1. If PREFIX/usr/bin/qemu-system-x86_64 reports version $SERIES.x and the stamp
#      file PREFIX/.mharness-stamp exists, it exits 0 at once (cached).
#   2. Otherwise it writes a private apt configuration (own sources list with
#      <suite>-backports and <suite>, own lists/cache/status, system keyring) and
#      runs `apt-get update` and `apt-get download` with it.  The system's apt
#      sources, lists and installed packages are never modified.
#   3. It `dpkg -x`es qemu-system-x86, qemu-system-common, qemu-system-data and
#      seabios (backports) and ipxe-qemu (<suite>) into a temporary directory beside
#      PREFIX, adds the symlink usr/bin/qemu-bundle -> ../.. (see below), checks
#      that every shared library resolves, that firmware and modules resolve inside
#      the prefix, and that the binary starts, answers QMP and dumps its VMState;
#      then it renames the directory to PREFIX.
#
# Running the build: PREFIX/usr/bin/qemu-system-x86_64 ... needs nothing else: no
# LD_LIBRARY_PATH, no -L, no QEMU_MODULE_DIR, no -audio none.  Passing
# -L PREFIX/usr/share/qemu -L PREFIX/usr/share/seabios -L PREFIX/usr/lib/ipxe/qemu
# is harmless and names the same files.
#
# Why the qemu-bundle symlink: QEMU (since 7.1, util/cutils.c get_relocated_path)
# resolves its compiled-in data, firmware and module directories under
# <directory of the binary>/qemu-bundle when that exists.  Without it the 10.0
# binary, unpacked beside the system's 7.2 (measured on Debian 12):
#   - silently loads the *system* firmware (/usr/share/seabios/bios-256k.bin of
#     seabios 1.16.2) unless given -L;
#   - loads the system's 7.2 modules from /usr/lib/x86_64-linux-gnu/qemu, which it
#     refuses ("Only modules from the same build can be loaded") and then aborts
#     (module_load_dso assertion): on audio probing without -nodefaults or
#     -audio none, and always on -dump-vmstate (it loads every module), even with
#     QEMU_MODULE_DIR set, since modules missing from the prefix (ui-opengl, ...)
#     are then looked up in the system directory;
#   - lacks module devices (virtio-gpu-pci, usb-host, ...) unless QEMU_MODULE_DIR
#     points at the prefix.
set -euo pipefail

prog=${0##*/}
die() { printf '%s: error: %s\n' "$prog" "$*" >&2; exit 1; }
say() { printf '%s: %s\n' "$prog" "$*"; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

usage() { sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"; }

force=0
prefix=""
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --force) force=1 ;;
        -*) die "unknown option '$1' (try --help)" ;;
        *) [ -z "$prefix" ] || die "only one PREFIX may be given"; prefix=$1 ;;
    esac
    shift
done

t0=$(now)
series=${MHARNESS_QEMU_SERIES:-10.0}
suite=${MHARNESS_DEBIAN_SUITE:-bookworm}
bpo="${suite}-backports"
cache_root=${MHARNESS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mharness}
prefix=${prefix:-$cache_root/builds/qemu-$series}
apt_dir=${MHARNESS_APT_DIR:-$cache_root/apt/$bpo}
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
binary_rel=usr/bin/qemu-system-x86_64
stamp_rel=.mharness-stamp
# Packages taken from backports, and from the suite itself.
bpo_pkgs=(qemu-system-x86 qemu-system-common qemu-system-data seabios)
main_pkgs=(ipxe-qemu)

case "$prefix" in /*) ;; *) prefix="$PWD/$prefix" ;; esac
prefix=${prefix%/}

# ---- 1. cached? --------------------------------------------------------------
build_is_current() {  # $1 = directory holding a build
    local dir=$1 out
    [ -x "$dir/$binary_rel" ] && [ -s "$dir/$stamp_rel" ] || return 1
    grep -q '^package qemu-system-x86=' "$dir/$stamp_rel" || return 1
    [ -L "$dir/usr/bin/qemu-bundle" ] || return 1
    out=$("$dir/$binary_rel" --version 2>/dev/null | head -n1) || return 1
    case "$out" in *"version $series."*) return 0 ;; *) return 1 ;; esac
}

if [ "$force" = 0 ] && build_is_current "$prefix"; then
    say "cached: $prefix holds $("$prefix/$binary_rel" --version | head -n1) ($(elapsed "$t0") s)"
    exit 0
fi

for tool in apt-get dpkg dpkg-deb flock ldd; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found: this script needs a Debian system"
done
[ -r "$keyring" ] || die "$keyring is missing: install debian-archive-keyring"

mkdir -p "$(dirname "$prefix")" "$apt_dir"
# One setup at a time per prefix; a second run waits, then finds the build cached.
exec 9>"$prefix.lock"
flock 9
# One apt run at a time per private apt directory (prefixes may share it).
exec 8>"$apt_dir/.lock"
flock 8
if [ "$force" = 0 ] && build_is_current "$prefix"; then
    say "cached (built by a concurrent run): $prefix ($(elapsed "$t0") s)"
    exit 0
fi

# ---- 2. the mirror URI, from this machine's apt configuration ----------------
# Prints the first URI of an enabled "deb" entry for suite $1: deb822 *.sources
# files first, then one-line sources.list / *.list files.
system_mirror() {
    local want=$1 f etc=${MHARNESS_SYSTEM_APT_ETC:-/etc/apt}
    for f in "$etc"/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        awk -v want="$want" '
            function flush() {
                if (types ~ /(^| )deb( |$)/ && enabled != "no" && uris != "") {
                    n = split(suites, s, " ")
                    for (i = 1; i <= n; i++) if (s[i] == want) { split(uris, u, " "); print u[1]; found = 1; exit }
                }
                types = suites = uris = ""; enabled = "yes"
            }
            BEGIN { enabled = "yes" }
            /^[ \t]*#/ { next }
            /^[ \t]*$/ { flush(); next }
            /^[ \t]/ {  # continuation of a multi-line field
                line = $0; sub(/^[ \t]+/, "", line)
                if (key == "types") types = types " " line
                else if (key == "suites") suites = suites " " line
                else if (key == "uris") uris = uris " " line
                next
            }
            {
                key = tolower($1); sub(/:$/, "", key); $1 = ""; sub(/^ +/, ""); val = $0
                if (key == "types") types = val
                else if (key == "suites") suites = val
                else if (key == "uris") uris = val
                else if (key == "enabled") enabled = tolower(val)
            }
            END { if (!found) flush() }
        ' "$f" | head -n1 | grep . && return 0
    done
    for f in "$etc"/sources.list "$etc"/sources.list.d/*.list; do
        [ -r "$f" ] || continue
        awk -v want="$want" '
            $1 != "deb" { next }
            { sub(/\[[^]]*\]/, ""); if ($3 == want) { print $2; exit } }
        ' "$f" | head -n1 | grep . && return 0
    done
    return 1
}

mirror=${MHARNESS_DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
    mirror=$(system_mirror "$suite") || die "no enabled 'deb' source for suite '$suite' in /etc/apt/sources.list or /etc/apt/sources.list.d/: cannot derive the archive URI (set MHARNESS_DEBIAN_MIRROR)"
fi
mirror=${mirror%/}

# ---- 3. private apt configuration --------------------------------------------
mkdir -p "$apt_dir/etc/sources.list.d" "$apt_dir/etc/preferences.d" \
         "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/debs"
cat >"$apt_dir/etc/sources.list" <<EOF
# Written by $prog: private to the mharness build cache, not used by the system's apt.
deb [signed-by=$keyring] $mirror $bpo main
deb [signed-by=$keyring] $mirror $suite main
EOF
: >"$apt_dir/status"
apt_opts=(
    -o "Dir::Etc::SourceList=$apt_dir/etc/sources.list"
    -o "Dir::Etc::SourceParts=$apt_dir/etc/sources.list.d"
    -o "Dir::Etc::Preferences=$apt_dir/etc/preferences"
    -o "Dir::Etc::PreferencesParts=$apt_dir/etc/preferences.d"
    -o "Dir::State::Lists=$apt_dir/lists"
    -o "Dir::State::Status=$apt_dir/status"
    -o "Dir::Cache=$apt_dir/cache"
    -o "Acquire::Languages=none"
    -o "APT::Get::List-Cleanup=true"
    -q
)
# As root apt drops to the _apt user to download, which cannot write a private
# cache under root's home; stay root for these private directories instead.
[ "$(id -u)" = 0 ] && apt_opts+=(-o "APT::Sandbox::User=root")

t=$(now)
say "apt-get update ($bpo + $suite, private lists in $apt_dir)"
if ! apt-get "${apt_opts[@]}" update >"$apt_dir/update.log" 2>&1; then
    tail -n 20 "$apt_dir/update.log" >&2
    die "apt-get update failed (full log: $apt_dir/update.log)"
fi
if grep -E '^(W|E):' "$apt_dir/update.log" >&2; then
    die "apt-get update reported problems (full log: $apt_dir/update.log)"
fi
say "  done in $(elapsed "$t") s"

# Resolve exact versions: backports packages from $bpo, the rest from $suite.
# `apt-cache madison` lists "pkg | version | uri suite/main arch"; one call for all
# packages, since each apt-cache run parses the whole package lists.
madison=$(apt-cache "${apt_opts[@]}" madison "${bpo_pkgs[@]}" "${main_pkgs[@]}" 2>&1) \
    || die "apt-cache madison failed: $madison"
pick_version() {  # $1 pkg, $2 suite -> version
    printf '%s\n' "$madison" | awk -F'|' -v p="$1" -v s=" $2/" '
        { name = $1; gsub(/ /, "", name) }
        name == p && index($3, s) { gsub(/ /, "", $2); print $2; exit }'
}
declare -A version
for p in "${bpo_pkgs[@]}"; do
    v=$(pick_version "$p" "$bpo")
    [ -n "$v" ] || die "package '$p' not found in $bpo at $mirror"
    version[$p]=$v
done
for p in "${main_pkgs[@]}"; do
    v=$(pick_version "$p" "$suite")
    [ -n "$v" ] || die "package '$p' not found in $suite at $mirror"
    version[$p]=$v
done
case "${version[qemu-system-x86]}" in
    *:"$series".*|"$series".*) ;;
    *) die "$bpo offers qemu-system-x86 ${version[qemu-system-x86]}, not $series.x (set MHARNESS_QEMU_SERIES and a matching PREFIX to take it)" ;;
esac
for p in qemu-system-common qemu-system-data; do
    [ "${version[$p]}" = "${version[qemu-system-x86]}" ] \
        || die "$p ${version[$p]} does not match qemu-system-x86 ${version[qemu-system-x86]} in $bpo"
done

# ---- 4. download (kept in $apt_dir/debs; apt verifies the hashes) -------------
t=$(now)
specs=()
for p in "${bpo_pkgs[@]}" "${main_pkgs[@]}"; do specs+=("$p=${version[$p]}"); done
say "apt-get download ${specs[*]}"
# Drop .debs of other versions so the directory holds exactly this set.
( cd "$apt_dir/debs" && for f in *.deb; do
      [ -e "$f" ] || continue
      keep=0
      for p in "${bpo_pkgs[@]}" "${main_pkgs[@]}"; do
          v=${version[$p]}; v=${v/:/%3a}
          case "$f" in "${p}_${v}_"*.deb) keep=1 ;; esac
      done
      [ "$keep" = 1 ] || rm -f -- "$f"
  done )
if ! (cd "$apt_dir/debs" && apt-get "${apt_opts[@]}" download "${specs[@]}") >"$apt_dir/download.log" 2>&1; then
    tail -n 20 "$apt_dir/download.log" >&2
    die "apt-get download failed (full log: $apt_dir/download.log)"
fi
debs=()
for p in "${bpo_pkgs[@]}" "${main_pkgs[@]}"; do
    v=${version[$p]}; v=${v/:/%3a}
    f=$(ls "$apt_dir/debs/${p}_${v}_"*.deb 2>/dev/null | head -n1) || true
    [ -n "$f" ] || die "apt-get download did not produce $p ${version[$p]} (log: $apt_dir/download.log)"
    debs+=("$f")
done
say "  done in $(elapsed "$t") s ($(du -ch "${debs[@]}" | tail -n1 | cut -f1))"

# ---- 5. unpack into a temporary directory beside the prefix, verify, rename --
t=$(now)
tmp=$(mktemp -d "$prefix.tmp.XXXXXX")
cleanup() { rm -rf -- "$tmp" "${old:-}"; }
trap cleanup EXIT
for f in "${debs[@]}"; do
    dpkg-deb -x "$f" "$tmp" || die "dpkg-deb -x $f failed"
done
# Make the prefix relocatable (see the header): compiled-in /usr/... paths then
# resolve to $prefix/usr/bin/qemu-bundle/usr/... = $prefix/usr/...
ln -s ../.. "$tmp/usr/bin/qemu-bundle"
say "unpacked ${#debs[@]} packages in $(elapsed "$t") s"

bin="$tmp/$binary_rel"
[ -x "$bin" ] || die "$binary_rel is missing after unpacking"
missing=$(ldd "$bin" | awk '/not found/ { print $1 }' | sort -u | tr '\n' ' ')
[ -z "$missing" ] || die "the 10.0 binary needs shared libraries this system lacks: $missing(install them from $suite with apt-get; this script does not change installed packages)"
ver_line=$("$bin" --version 2>&1 | head -n1) || die "'$binary_rel --version' failed: $ver_line"
case "$ver_line" in *"version $series."*) ;; *) die "unexpected version from the unpacked binary: $ver_line" ;; esac

# Every firmware directory must now resolve inside the prefix.
data_dirs=$("$bin" -L help 2>&1) || die "'$binary_rel -L help' failed: $data_dirs"
while IFS= read -r d; do
    case "$d" in "$tmp/usr/bin/qemu-bundle/"*) ;; *) die "firmware directory outside the prefix: '$d' (is usr/bin/qemu-bundle honoured?)" ;; esac
done <<<"$data_dirs"

# Start it with defaults (audio probing loads modules) and talk QMP over stdio,
# without -L or QEMU_MODULE_DIR: the relocation alone must be enough.
t=$(now)
qmp_out=$(printf '%s\n' '{"execute":"qmp_capabilities"}' '{"execute":"query-version"}' '{"execute":"quit"}' \
    | env -u QEMU_MODULE_DIR timeout 30 "$bin" -display none -M q35 -accel tcg -S -qmp stdio 2>&1) \
    || die "the unpacked binary failed to start and quit via QMP: $(printf '%s' "$qmp_out" | tail -n 5)"
case "$qmp_out" in *'"major": 10'*'"return": {}'*) ;; *) die "unexpected QMP transcript: $qmp_out" ;; esac
# -dump-vmstate loads every module the build knows: a foreign module aborts it.
dump_err=$(env -u QEMU_MODULE_DIR timeout 30 "$bin" -M q35 -nodefaults -display none \
    -dump-vmstate "$tmp/.vmstate-check.json" 2>&1) \
    || die "'-dump-vmstate' failed: $(printf '%s' "$dump_err" | tail -n 5)"
[ -s "$tmp/.vmstate-check.json" ] || die "'-dump-vmstate' wrote nothing: $dump_err"
rm -f "$tmp/.vmstate-check.json"
say "smoke test (firmware path, QMP start/quit on q35/tcg, -dump-vmstate) passed in $(elapsed "$t") s"

{
    echo "# Written by $prog on $(date -u +%Y-%m-%dT%H:%M:%SZ); do not edit."
    echo "series $series"
    echo "source $bpo"
    for p in "${bpo_pkgs[@]}" "${main_pkgs[@]}"; do echo "package $p=${version[$p]}"; done
    echo "binary $binary_rel"
    echo "relocation usr/bin/qemu-bundle -> ../.."
    echo "data-dirs usr/share/qemu usr/share/seabios usr/lib/ipxe/qemu"
    echo "module-dir usr/lib/x86_64-linux-gnu/qemu"
    echo "version $ver_line"
} >"$tmp/$stamp_rel"
chmod 755 "$tmp"

old=""
if [ -e "$prefix" ] || [ -L "$prefix" ]; then
    old=$(mktemp -u "$prefix.old.XXXXXX")
    mv -T -- "$prefix" "$old"
fi
mv -T -- "$tmp" "$prefix"
tmp=""

say "installed $ver_line"
say "  prefix: $prefix ($(du -sh "$prefix" | cut -f1))"
say "  run:    $prefix/$binary_rel ...   (relocatable: no -L, LD_LIBRARY_PATH or QEMU_MODULE_DIR needed)"
say "total $(elapsed "$t0") s"
