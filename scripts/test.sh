#!/usr/bin/env bash
# Runs vmtier's whole test suite: every crate's unit and integration tests, including the
# tier-3 suite against a real S3-compatible server (s3s-fs, installed on first use).
#
# Needs: Linux 6.7+ with userfaultfd (run as root, or with vm.unprivileged_userfaultfd=1).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${VMTIER_S3S_FS:-}" ]]; then
    scripts/s3-test-server.sh install >&2
    VMTIER_S3S_FS=$(scripts/s3-test-server.sh path)
    export VMTIER_S3S_FS
fi
exec cargo test --workspace --locked "$@"
