#!/usr/bin/env bash
# s3-test-server.sh — the S3-compatible server vmtier's tier-3 tests run against.
#
#   scripts/s3-test-server.sh install   install s3s-fs 0.14.1 into ~/.cargo/bin (no-op if present)
#   scripts/s3-test-server.sh path      print the path of the s3s-fs binary (exit 1 if missing)
#   scripts/s3-test-server.sh run DIR [PORT]
#                                       serve DIR on 127.0.0.1:PORT (default 8014) with the test
#                                       credentials vmtier-test / vmtier-test-secret; a bucket is a
#                                       directory under DIR (e.g. mkdir DIR/vmtier-test)
#
# The tests in crates/vmtier-storage/tests/object.rs start their own server; they find the binary
# through $VMTIER_S3S_FS or PATH (~/.cargo/bin), and fail with install instructions when it is
# missing unless VMTIER_SKIP_S3=1 is set.
set -euo pipefail

VERSION=0.14.1

find_bin() {
    if [[ -n "${VMTIER_S3S_FS:-}" && -x "$VMTIER_S3S_FS" ]]; then echo "$VMTIER_S3S_FS"; return 0; fi
    if command -v s3s-fs >/dev/null 2>&1; then command -v s3s-fs; return 0; fi
    local home_bin="${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs"
    if [[ -x "$home_bin" ]]; then echo "$home_bin"; return 0; fi
    return 1
}

case "${1:-}" in
    install)
        if bin=$(find_bin) && "$bin" --version 2>/dev/null | grep -q "$VERSION"; then
            echo "s3s-fs $VERSION already installed: $bin"
            exit 0
        fi
        CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$(mktemp -d)}" \
            cargo install s3s-fs --version "$VERSION" --features binary --locked
        ;;
    path)
        find_bin || { echo "s3s-fs not found; run: $0 install" >&2; exit 1; }
        ;;
    run)
        dir="${2:?usage: $0 run DIR [PORT]}"
        port="${3:-8014}"
        bin=$(find_bin) || { echo "s3s-fs not found; run: $0 install" >&2; exit 1; }
        mkdir -p "$dir"
        exec "$bin" --host 127.0.0.1 --port "$port" \
            --access-key vmtier-test --secret-key vmtier-test-secret "$dir"
        ;;
    *)
        sed -n '2,15p' "$0"
        exit 2
        ;;
esac
