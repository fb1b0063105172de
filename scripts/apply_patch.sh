#!/usr/bin/env bash
# Apply, check or revert nvfp4-kit's small edits to an installed vLLM or SGLang (patches/<engine>/).
#
#   scripts/apply_patch.sh vllm|sglang [--check|--revert] [--site-packages DIR]
#
# The engine is found through Python's package metadata ($PYTHON, default python3; or --site-packages),
# and its version is read from <engine>-*.dist-info/METADATA there. Only a version with a patch file
# patches/<engine>/<engine>-<version>.patch is touched. Every change is dry-run first (GNU patch, no fuzz)
# and the touched files are backed up for the duration of the run, so a failure leaves the tree as it was.
#
# Environment: PYTHON (interpreter whose packages are searched, default python3), PATCH (default patch).
# Exit status: 0 done (also "already applied" / "nothing to revert"; --check: patch applied),
#              1 --check: patch not applied, 2 usage or environment error,
#              3 the files match neither the pinned release nor the patched one (nothing changed),
#              4 installed version has no patch.
set -euo pipefail

prog=apply_patch.sh
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
    sed -n '4p' "${BASH_SOURCE[0]}" | sed 's/^#   //' >&2
    exit 2
}
die() { # die CODE MESSAGE
    echo "$prog: error: $2" >&2
    exit "$1"
}

engine="" action=apply site=""
while [ $# -gt 0 ]; do
    case "$1" in
        vllm | sglang) [ -z "$engine" ] || usage; engine=$1 ;;
        --check) action=check ;;
        --revert) action=revert ;;
        --site-packages) [ $# -ge 2 ] || usage; site=$2; shift ;;
        --site-packages=*) site=${1#--site-packages=} ;;
        -h | --help) usage ;;
        *) echo "$prog: unknown argument '$1'" >&2; usage ;;
    esac
    shift
done
[ -n "$engine" ] || usage

patch_cmd=${PATCH:-patch} # PATCH: the GNU patch program to use (default: patch on PATH)
command -v "$patch_cmd" >/dev/null 2>&1 ||
    die 2 "GNU patch is required but '$patch_cmd' was not found (Debian/Ubuntu: apt-get install -y patch)"

python=${PYTHON:-python3}
if [ -z "$site" ]; then
    command -v "$python" >/dev/null 2>&1 || die 2 "$python not found: set PYTHON or pass --site-packages DIR"
    site=$("$python" - "$engine" <<'EOF'
import importlib.metadata as md
import sys

try:
    print(md.distribution(sys.argv[1]).locate_file(""))
except md.PackageNotFoundError:
    sys.exit(1)
EOF
) || die 2 "$engine is not installed for $python (activate its environment, set PYTHON=..., or pass --site-packages DIR)"
fi
[ -d "$site" ] || die 2 "--site-packages '$site' is not a directory"

# ---- version from the dist-info METADATA
shopt -s nullglob nocaseglob
metas=("$site"/"$engine"-*.dist-info/METADATA)
shopt -u nocaseglob
[ ${#metas[@]} -gt 0 ] || die 2 "no $engine-*.dist-info/METADATA under $site: is $engine installed there?"
[ ${#metas[@]} -eq 1 ] || die 2 "several $engine installations under $site: ${metas[*]}"
version=$(sed -n 's/^Version:[[:space:]]*//p' "${metas[0]}" | head -n 1 | tr -d '\r')
[ -n "$version" ] || die 2 "${metas[0]} has no Version: line"

patch_file="$root/patches/$engine/$engine-$version.patch"
if [ ! -f "$patch_file" ]; then
    supported=""
    for f in "$root/patches/$engine/$engine"-*.patch; do
        v=${f##*/"$engine"-}
        supported+="${supported:+, }$engine==${v%.patch}"
    done
    die 4 "$engine $version is installed at $site, but nvfp4-kit only has a patch for ${supported:-no version}; install that version (pip install '${supported%%,*}') or use the plugin (NVFP4_KIT_$(echo "$engine" | tr a-z A-Z)=1, see docs/engines.md)"
fi

mapfile -t files < <(sed -n 's#^+++ b/##p' "$patch_file")
for f in "${files[@]}"; do
    [ -f "$site/$f" ] || die 3 "$site/$f is missing: this is not a complete $engine $version installation"
done

run_patch() { # run_patch [-R] [--dry-run]: the patch, strict (no fuzz), no questions, no .orig/.rej
    "$patch_cmd" -p1 -f -F0 -s --no-backup-if-mismatch -r - -d "$site" -i "$patch_file" "$@"
}

state() {
    if run_patch -R --dry-run >/dev/null 2>&1; then
        echo applied
    elif run_patch --dry-run >/dev/null 2>&1; then
        echo not-applied
    else
        echo unknown
    fi
}

per_file_state() { # one line per touched file: applied / not applied / changed (for error messages)
    local tmp i=0
    tmp=$(mktemp -d)
    awk -v dir="$tmp" '/^diff /{n++} n{print > (dir "/" n ".patch")}' "$patch_file"
    for f in "${files[@]}"; do
        i=$((i + 1))
        if "$patch_cmd" -p1 -f -F0 -s -R --dry-run -d "$site" -i "$tmp/$i.patch" >/dev/null 2>&1; then
            echo "  $f: patched"
        elif "$patch_cmd" -p1 -f -F0 -s --dry-run -d "$site" -i "$tmp/$i.patch" >/dev/null 2>&1; then
            echo "  $f: as released"
        else
            echo "  $f: changed by something else"
        fi
    done
    rm -rf "$tmp"
}

backup=""
cleanup() { [ -z "$backup" ] || rm -rf "$backup"; }
trap cleanup EXIT

restore() { # put every touched file back as it was before this run
    for f in "${files[@]}"; do cp -p "$backup/$f" "$site/$f"; done
}

change() { # change DESCRIPTION [-R]: dry-run checked by the caller; back up, patch, compile-check
    local what=$1
    shift
    backup=$(mktemp -d)
    for f in "${files[@]}"; do
        mkdir -p "$backup/$(dirname "$f")"
        cp -p "$site/$f" "$backup/$f"
    done
    trap 'restore; cleanup; exit 130' INT TERM
    if ! out=$(run_patch "$@" 2>&1); then
        restore
        die 3 "$what failed and was rolled back; nothing changed:
$out"
    fi
    if command -v "$python" >/dev/null 2>&1; then
        if ! out=$("$python" - "$site" "${files[@]}" 2>&1 <<'EOF'
import py_compile
import sys
import tempfile

site, files = sys.argv[1], sys.argv[2:]
with tempfile.TemporaryDirectory() as tmp:  # compile only: leave no .pyc in site-packages
    for i, f in enumerate(files):
        py_compile.compile(f"{site}/{f}", cfile=f"{tmp}/{i}.pyc", doraise=True)
EOF
        ); then
            restore
            die 3 "$what produced files that do not compile; rolled back, nothing changed:
$out"
        fi
    fi
    trap - INT TERM
}

current=$(state)
case "$action:$current" in
    check:applied)
        echo "$engine $version at $site: nvfp4-kit patch is applied"
        exit 0 ;;
    check:not-applied)
        echo "$engine $version at $site: nvfp4-kit patch is not applied"
        exit 1 ;;
    apply:applied)
        echo "$engine $version at $site: nvfp4-kit patch already applied; nothing changed"
        exit 0 ;;
    revert:not-applied)
        echo "$engine $version at $site: nvfp4-kit patch is not applied; nothing to revert"
        exit 0 ;;
    *:unknown)
        die 3 "$engine $version at $site matches neither the released $engine $version nor the patched files; nothing changed:
$(per_file_state)
Reinstall $engine==$version (pip install --force-reinstall --no-deps '$engine==$version') and retry." ;;
    apply:not-applied)
        change "applying $patch_file"
        echo "$engine $version at $site: applied nvfp4-kit patch ($(basename "$patch_file")) to:"
        printf '  %s\n' "${files[@]}"
        echo "Select the kit with: $([ "$engine" = vllm ] && echo '--linear-backend nvfp4_kit' || echo '--fp4-gemm-backend nvfp4_kit')" ;;
    revert:applied)
        change "reverting $patch_file" -R
        echo "$engine $version at $site: reverted nvfp4-kit patch; restored:"
        printf '  %s\n' "${files[@]}" ;;
esac
