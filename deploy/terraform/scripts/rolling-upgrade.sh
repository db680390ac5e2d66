#!/usr/bin/env bash
# Rolling upgrade of a cluster this module deployed, run from the operator's machine
# (docs/design/0012-rolling-upgrade.md; deploy/terraform/README.md "Upgrading"):
#
#   rolling-upgrade.sh --bin FILE --meta-host HOST [--client HOST]... [--remote CMD] [--sudo CMD]
#
#   --bin FILE       the new cirrus binary; uploaded to each host before its step
#   --meta-host HOST any meta node: the restart order is asked there (`cirrus upgrade plan`)
#   --client HOST    a client host to install it on after the servers (repeatable); its
#                    mount moves to the new binary at its next remount
#   --remote CMD     runs one shell command on a host as `CMD HOST 'COMMAND'`
#                    (default: ssh; e.g. "ssh -l ubuntu -J admin@bastion")
#   --sudo CMD       prefix of the commands that need root there (default: sudo; '' if
#                    the remote user is root)
#
# The plan names the servers by their private addresses, so --remote must reach those.
# Each server step is the host's own /usr/local/sbin/cirrus-upgrade: wait until the
# cluster is healthy, install, restart the service, wait until healthy again. The first
# failing step stops the upgrade, with the cluster as that step left it (healthy, or
# named by `cirrus upgrade wait`): nothing later is touched.
set -euo pipefail

bin="" meta_host="" remote="ssh" sudo="sudo"
clients=()
while (($#)); do
	case "$1" in
	--bin) bin=$2; shift 2 ;;
	--meta-host) meta_host=$2; shift 2 ;;
	--client) clients+=("$2"); shift 2 ;;
	--remote) remote=$2; shift 2 ;;
	--sudo) sudo=$2; shift 2 ;;
	-h | --help) sed -n '2,22p' "$0"; exit 0 ;;
	*) echo "rolling-upgrade: unknown argument $1 (see --help)" >&2; exit 2 ;;
	esac
done
[[ -n "$bin" && -f "$bin" ]] || { echo "rolling-upgrade: --bin FILE: the new binary is required" >&2; exit 2; }
[[ -n "$meta_host" ]] || { echo "rolling-upgrade: --meta-host HOST is required" >&2; exit 2; }
read -ra rcmd <<<"$remote"
on() { local host=$1; shift; "${rcmd[@]}" "$host" "$*"; }
staged=/var/lib/cirrus/upgrade/cirrus.next

step() { # HOST WHAT
	local host=$1 what=$2 t0=$SECONDS
	echo "rolling-upgrade: $what on $host: uploading $(basename "$bin") ($(wc -c <"$bin") bytes)"
	on "$host" "$sudo sh -c 'mkdir -p ${staged%/*} && cat > $staged'" <"$bin"
	if ! on "$host" "$sudo /usr/local/sbin/cirrus-upgrade $staged" </dev/null; then
		echo "rolling-upgrade: FAILED at $what on $host; later hosts are untouched" >&2
		exit 1
	fi
	echo "rolling-upgrade: $what on $host: done in $((SECONDS - t0)) s"
}

start=$SECONDS
plan=$(on "$meta_host" 'cirrus upgrade plan --meta "$(cat /etc/cirrus/meta-addrs)"') || {
	echo "rolling-upgrade: no plan from $meta_host (above): nothing was changed" >&2
	exit 1
}
echo "rolling-upgrade: plan (from $meta_host):"
sed 's/^/    /' <<<"$plan"
mapfile -t steps <<<"$plan" # not a `while read` loop: the remote command reads stdin
for line in "${steps[@]}"; do
	read -r role id addr state <<<"$line"
	[[ -n "$role" ]] || continue
	step "${addr%:*}" "$role $id${state:+ ($state)}"
done
for c in "${clients[@]}"; do
	step "$c" "client"
done
echo "rolling-upgrade: OK: every server restarted on the new binary in $((SECONDS - start)) s"
