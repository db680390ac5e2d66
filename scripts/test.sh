#!/usr/bin/env bash
# The whole Cirrus test suite: exactly what CI runs (.ci/run calls this file) and what a
# developer runs. It installs what it needs when missing (Debian packages, cargo-nextest),
# then: format check, clippy with warnings denied, build, every test, the Terraform checks.
# Needs root (FUSE mounts, network namespaces), as the README says.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n==> %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
  echo "scripts/test.sh: the suite mounts FUSE filesystems and creates network namespaces; run it as root" >&2
  exit 1
fi

need=()
command -v fusermount3 >/dev/null || need+=(fuse3)
command -v fio >/dev/null || need+=(fio)
command -v iptables >/dev/null || need+=(iptables)
command -v ip >/dev/null || need+=(iproute2)
command -v git >/dev/null || need+=(git)
command -v sqlite3 >/dev/null || need+=(sqlite3)
command -v flock >/dev/null || need+=(util-linux)
command -v python3 >/dev/null || need+=(python3)
command -v setfacl >/dev/null || need+=(acl)
if [ ${#need[@]} -gt 0 ]; then
  say "installing Debian packages: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  say "installing cargo-nextest"
  cargo install cargo-nextest --locked
fi
# A full run needs about 4 GiB under target/ (build + clippy + test data); a CI run on a
# nearly full disk once died inside rustc with ENOSPC. Say so plainly before building.
target_dir="${CARGO_TARGET_DIR:-target}"
mkdir -p "$target_dir"
free_kib=$(df -Pk "$target_dir" | awk 'NR==2 {print $4}')
if [ "$free_kib" -lt $((5 * 1024 * 1024)) ]; then
  echo "scripts/test.sh: only $((free_kib / 1024)) MiB free under $target_dir; the build and tests need 5 GiB" >&2
  exit 1
fi
[ -e /dev/fuse ] || { echo "scripts/test.sh: /dev/fuse is missing: the FUSE tests cannot run (modprobe fuse)" >&2; exit 1; }

say "format"
cargo fmt --all --check
say "clippy"
cargo clippy --workspace --all-targets -- -D warnings
say "build"
cargo build --workspace --all-targets
say "tests"
cargo nextest run --workspace --no-fail-fast
say "terraform"
bash scripts/terraform-check.sh
