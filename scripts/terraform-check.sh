#!/usr/bin/env bash
# Checks the Terraform module in deploy/terraform without an AWS account or a network:
#   1. terraform fmt -check (module, tests, examples)
#   2. terraform validate (module and examples/basic), with the AWS provider taken from a
#      local plugin directory (found on this machine, never hard-coded)
#   3. terraform test (tests/*.tftest.hcl, mock_provider "aws")
#   4. terraform apply, then destroy, of examples/basic with the real AWS provider against
#      moto_server (an AWS API emulator on 127.0.0.1, fake credentials; nothing reaches
#      AWS), each followed by deploy/terraform/tests/emulator/check_apply.py, which reads
#      back through the emulator's API what exists (instances per role, subnets and AZ
#      spread, every security group rule, IMDSv2, encrypted root volumes, the role's
#      policy) and, after destroy, that nothing is left. Between the two, a drift check
#      (tests/emulator/drift.py): one security group rule is removed through the
#      emulator's API, terraform plan must create exactly that rule again, and the
#      applied plan must pass the check again. Prints the apply and destroy wall times
#      and the resource count. The provider overrides are generated into the
#      temporary copy from tests/emulator/*_override.tf.in (each setting explained there
#      and in deploy/terraform/README.md).
#      Before the destroy, the boot check (tests/emulator/boot.py, as root only): every
#      instance's user data, read back from the emulator, is booted for real in its own
#      network namespace at its private address (this build's binary instead of the
#      download, a unit runner instead of systemd, a directory instead of the NVMe disk,
#      a stand-in IMDS); cirrus doctor --ready must pass on every host, the output's
#      mount command must mount on a client and a file written there must read back on
#      the second client. Prints the boot-to-mounted time. Then one port is closed (the
#      rule opening 7101/tcp to the clients, revoked in the emulator, plus an iptables DROP
#      between the namespaces): doctor and cirrus-ready on the first client must fail
#      naming the port, the peer and the fix, and pass again once the rule is back.
#      Last, the rolling upgrade: deploy/terraform/scripts/rolling-upgrade.sh replaces the
#      binary on every host in `cirrus upgrade plan` order (meta followers, the leader,
#      data servers one at a time, then the clients) while a workload on a client writes,
#      fsyncs, reads back and unlinks files: no error, progress during every step, every
#      server process on the new file, a remounted client reading the workload's files.
#   5. checkov over deploy/terraform: every skipped check is justified inline in the .tf
# When terraform is absent, steps 1-4 print a loud SKIPPED line and the script goes on;
# when checkov or moto cannot be installed (no PyPI), steps 5 and 4 say so loudly. Any
# real failure exits non-zero. Work happens in a temporary copy, so the tree stays clean;
# the emulator is killed on exit.
#
# Environment: CIRRUS_BIN (the cirrus binary the boot check installs on every host,
# default $CARGO_TARGET_DIR/debug/cirrus, else target/debug/cirrus; scripts/test.sh
# builds it first; absent: the boot check is SKIPPED loudly); TF_PLUGIN_DIR (folder holding registry.terraform.io/...) to skip the
# search; CHECKOV (path of a checkov executable); CIRRUS_CACHE_DIR (where the checkov and
# moto virtualenvs, checkov-venv and moto-venv, are kept, default ~/.cache/cirrus).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
module="$root/deploy/terraform"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT # replaced by cleanup (below), which also stops the emulator
failed=0

banner() { printf '\n=== %s\n' "$*"; }
skipped() {
	printf '\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n'
	printf '!!! SKIPPED: %s\n' "$*"
	printf '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\n'
}

# An empty CLI config keeps terraform from reading (or warning about) the user's own.
: >"$work/terraformrc"
export TF_CLI_CONFIG_FILE="$work/terraformrc" TF_IN_AUTOMATION=1 TF_INPUT=0 CHECKPOINT_DISABLE=1

find_plugin_dir() {
	if [[ -n "${TF_PLUGIN_DIR:-}" ]]; then
		echo "$TF_PLUGIN_DIR"
		return
	fi
	# .../<plugin dir>/registry.terraform.io/hashicorp/aws/<version>/<os_arch>/terraform-provider-aws_*
	local bin
	bin=$(find / -name 'terraform-provider-aws_*' -type f -not -path '/proc/*' -not -path '/sys/*' 2>/dev/null | sort -V | tail -n 1 || true)
	if [[ -z "$bin" ]]; then
		return
	fi
	local d
	d=$(dirname "$bin")
	while [[ "$d" != "/" && "$(basename "$d")" != "registry.terraform.io" ]]; do
		d=$(dirname "$d")
	done
	[[ "$d" != "/" ]] && dirname "$d"
}

# moto (server mode) and boto3: from a virtualenv this script makes once (PyPI) under the
# cache dir; prints its path, or nothing when it cannot be made.
find_moto_venv() {
	local venv="${CIRRUS_CACHE_DIR:-$HOME/.cache/cirrus}/moto-venv"
	if [[ ! -x "$venv/bin/moto_server" ]] || ! "$venv/bin/python" -c 'import moto, boto3' >/dev/null 2>&1; then
		echo "installing moto[server] and boto3 from PyPI into $venv (once)" >&2
		rm -rf "$venv"
		if ! { python3 -m venv "$venv" && "$venv/bin/pip" install --quiet --disable-pip-version-check 'moto[server]' boto3; } >"$work/pip-moto.log" 2>&1; then
			tail -n 20 "$work/pip-moto.log" >&2
			rm -rf "$venv"
			return
		fi
	fi
	echo "$venv"
}

moto_pid=""
cleanup() {
	if [[ -n "$moto_pid" ]]; then
		kill "$moto_pid" 2>/dev/null || true
		wait "$moto_pid" 2>/dev/null || true
	fi
	rm -rf "$work"
}
trap cleanup EXIT

now() { date +%s%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f s", (b - a) / 1e9 }'; }

# terraform apply, check, destroy, check of examples/basic with the real AWS provider
# against moto_server (the emulator's API; nothing reaches AWS). The overrides and the
# fake Debian AMIs come from deploy/terraform/tests/emulator; the reasons for each
# setting are in the override files and the README.
emulator_check() {
	if ! command -v python3 >/dev/null 2>&1; then
		skipped "python3 is not installed: the apply/destroy against the moto emulator was NOT run"
		return 0
	fi
	local venv
	venv=$(find_moto_venv || true)
	if [[ -z "$venv" ]]; then
		skipped "moto could not be installed (pip install 'moto[server]' boto3 failed: no PyPI?): the apply/destroy against the emulator was NOT run"
		return 0
	fi
	local py="$venv/bin/python" tests="$module/tests/emulator" dir="$work/emulator/examples/basic"
	echo "moto $("$py" -c 'import moto; print(moto.__version__)') from $venv"

	# The example's variables for this run, given to terraform and to the check alike.
	# data_count and client_count differ from the example's defaults on purpose: the
	# counts must follow the variables.
	local name=cirrus-demo region=eu-west-1 zones=eu-west-1a,eu-west-1b,eu-west-1c
	local admin_cidr=198.51.100.7/32 data_count=4 client_count=2
	local binary_s3=cirrus-emulator-releases/v0.1.0/cirrus ami=ami-0de12a0000000new0
	cat >"$work/emulator.tfvars" <<-EOF
		region             = "$region"
		availability_zones = ["${zones//,/\", \"}"]
		admin_cidr         = "$admin_cidr"
		ssh_key_name       = "ops"
		cirrus_binary_url  = "https://downloads.example.com/cirrus/v0.1.0/cirrus"
		data_count         = $data_count
		client_count       = $client_count
	EOF
	local tfvars=("-var-file=$work/emulator.tfvars")

	local port
	port=$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
	local endpoint="http://127.0.0.1:$port"
	# MOTO_AMIS_PATH: moto knows only these images (Debian's account id, decoys included),
	# so the module's own aws_ami lookup runs unchanged.
	MOTO_AMIS_PATH="$tests/amis.json" "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
	moto_pid=$!
	if ! "$py" - "$endpoint" "$moto_pid" <<-'PY'; then
		import os, sys, time, urllib.request
		url, pid, end = sys.argv[1] + "/moto-api/", int(sys.argv[2]), time.time() + 30
		while time.time() < end:
		    try:
		        os.kill(pid, 0)
		    except OSError:
		        sys.exit("moto_server exited")
		    try:
		        urllib.request.urlopen(url, timeout=2)
		        sys.exit(0)
		    except Exception:
		        time.sleep(0.2)
		sys.exit("moto_server did not answer within 30 s")
		PY
		tail -n 20 "$work/moto.log"
		echo "FAIL: could not start moto_server on $endpoint"
		return 1
	fi
	echo "moto_server on $endpoint (pid $moto_pid)"

	cp -r "$module" "$work/emulator"
	rm -rf "$work/emulator/.terraform" "$work/emulator/.terraform.lock.hcl" "$dir/.terraform" "$dir/.terraform.lock.hcl" "$dir"/terraform.tfstate*
	sed "s|@ENDPOINT@|$endpoint|g" "$tests/example_override.tf.in" >"$dir/emulator_override.tf"
	cp "$tests/module_override.tf.in" "$work/emulator/emulator_override.tf"
	if ! terraform fmt -check -diff "$dir/emulator_override.tf" "$work/emulator/emulator_override.tf"; then
		echo "FAIL: terraform fmt of deploy/terraform/tests/emulator/*_override.tf.in"
		return 1
	fi

	# Drift: remove one security group rule through the emulator's API (not Terraform),
	# show that terraform plan wants to create exactly that rule again, apply the plan and
	# check everything again. Runs in the subshell below (cwd, credentials).
	emulator_drift() {
		local rule='module.cirrus.aws_vpc_security_group_ingress_rule.cluster["meta_grpc_from_data"]'
		terraform show -json >"$work/state.json" &&
			"$py" "$tests/drift.py" revoke "$work/state.json" "$rule" --endpoint "$endpoint" --region "$region" &&
			terraform plan -out="$work/drift.plan" -input=false -no-color "${tfvars[@]}" >"$work/drift-plan.log" 2>&1 &&
			terraform show -json "$work/drift.plan" >"$work/drift-plan.json" &&
			"$py" "$tests/drift.py" expect-create "$work/drift-plan.json" "$rule" &&
			terraform apply -auto-approve -input=false -no-color "$work/drift.plan" >"$work/drift-apply.log" 2>&1 &&
			grep '^Apply complete' "$work/drift-apply.log" &&
			"${check[@]}" apply >"$work/drift-check.log" 2>&1 &&
			tail -n 1 "$work/drift-check.log" && return 0
		for f in drift-plan.log drift-apply.log drift-check.log; do
			[[ -s "$work/$f" ]] && grep -v 'Still \|Refreshing' "$work/$f" | tail -n 30
		done
		echo "FAIL: drift of $rule (removed through the emulator) was not detected and repaired"
		return 1
	}

	# Boot: run every instance's user data for real, each in its own network namespace
	# "host" (tests/emulator/boot.py; what it substitutes and why is in its docstring and
	# the README). Needs root (namespaces, mounts, FUSE) and the cirrus binary of this
	# build; without either it is SKIPPED loudly. Runs in the subshell below.
	emulator_boot() {
		local bin="${CIRRUS_BIN:-${CARGO_TARGET_DIR:-target}/debug/cirrus}"
		[[ "$bin" = /* ]] || bin="$root/$bin"
		if [[ "$(id -u)" != 0 ]]; then
			skipped "not root: the boot check (user data booted in network namespaces, cirrus doctor, a mount read back across clients) was NOT run"
			return 0
		fi
		if [[ ! -x "$bin" ]]; then
			skipped "no cirrus binary at $bin (set CIRRUS_BIN, or cargo build first): the boot check (user data booted in network namespaces, cirrus doctor, a mount read back across clients) was NOT run"
			return 0
		fi
		local missing=()
		for tool in ip unshare nsenter findmnt fusermount3 curl; do
			command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
		done
		if [[ ${#missing[@]} -gt 0 || ! -e /dev/fuse ]]; then
			skipped "missing ${missing[*]:-} $([[ -e /dev/fuse ]] || echo /dev/fuse): the boot check was NOT run"
			return 0
		fi
		local mount_command
		mount_command=$(terraform output -raw mount_command) || return 1
		echo "boot check: $bin ($("$bin" --version))"
		if ! timeout -s INT 480 "$py" "$tests/boot.py" run --endpoint "$endpoint" --region "$region" --name "$name" \
			--bin "$bin" --mount-command "$mount_command" --timeout 150; then
			echo "FAIL: the boot check: the user data did not boot into a working cluster (journal of each unit above)"
			return 1
		fi
	}

	(
		# Fake credentials, and nothing of the user's AWS configuration or any instance
		# metadata service: nothing here may reach (or authenticate to) real AWS.
		export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION="$region" AWS_DEFAULT_REGION="$region"
		export AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null AWS_EC2_METADATA_DISABLED=true
		unset AWS_PROFILE AWS_SESSION_TOKEN AWS_SECURITY_TOKEN
		cd "$dir"
		local init=(-input=false)
		[[ -n "$plugin_dir" ]] && init+=("-plugin-dir=$plugin_dir")
		if ! terraform init "${init[@]}" >"$work/init-emulator.log" 2>&1; then
			cat "$work/init-emulator.log"
			echo "FAIL: terraform init of examples/basic (emulator)"
			exit 1
		fi
		local check=("$py" "$tests/check_apply.py" --endpoint "$endpoint" --region "$region" --name "$name"
			--zones "$zones" --admin-cidr "$admin_cidr" --data-count "$data_count"
			--client-count "$client_count" --binary-s3 "$binary_s3" --ami "$ami")
		local t0 t1 t2 t3 rc=0
		t0=$(now)
		if ! terraform apply -auto-approve -input=false -no-color "${tfvars[@]}" >"$work/apply.log" 2>&1; then
			t1=$(now)
			grep -v 'Still creating' "$work/apply.log" | tail -n 40
			grep -h 'NotImplementedError' "$work/moto.log" | sort | uniq -c || true
			echo "FAIL: terraform apply against the emulator (after $(elapsed "$t0" "$t1"))"
			rc=1
		else
			t1=$(now)
			grep '^Apply complete' "$work/apply.log"
			local managed
			managed=$(terraform state list | grep -cvE '(^|\.)data\.' || true)
			echo "apply: $(elapsed "$t0" "$t1"), $managed resources in the state"
			"${check[@]}" apply || rc=1
			[[ "$rc" -eq 0 ]] && { emulator_drift || rc=1; }
			[[ "$rc" -eq 0 ]] && { emulator_boot || rc=1; }
		fi
		t2=$(now)
		if ! terraform destroy -auto-approve -input=false -no-color "${tfvars[@]}" >"$work/destroy.log" 2>&1; then
			t3=$(now)
			grep -v 'Still destroying' "$work/destroy.log" | tail -n 40
			echo "FAIL: terraform destroy against the emulator (after $(elapsed "$t2" "$t3"))"
			exit 1
		fi
		t3=$(now)
		grep '^Destroy complete' "$work/destroy.log"
		echo "destroy: $(elapsed "$t2" "$t3"), $(terraform state list | wc -l) resources left in the state"
		"${check[@]}" destroy || rc=1
		exit "$rc"
	) || return 1
}

if ! command -v terraform >/dev/null 2>&1; then
	skipped "terraform is not installed: fmt, validate, terraform test and the apply/destroy against the moto emulator of deploy/terraform were NOT run"
else
	banner "terraform $(terraform version | head -n 1)"

	banner "terraform fmt -check -recursive deploy/terraform"
	if ! terraform fmt -check -recursive -diff "$module"; then
		echo "FAIL: terraform fmt: run 'terraform fmt -recursive deploy/terraform'"
		failed=1
	fi

	plugin_dir=$(find_plugin_dir || true)
	init_args=(-backend=false -input=false)
	if [[ -n "$plugin_dir" ]]; then
		echo "AWS provider from local plugin dir: $plugin_dir"
		init_args+=("-plugin-dir=$plugin_dir")
	else
		echo "no local terraform-provider-aws found: terraform init will use the registry"
	fi

	cp -r "$module" "$work/module"
	rm -rf "$work/module/.terraform" "$work/module/.terraform.lock.hcl" "$work/module/examples/basic/.terraform"

	banner "terraform init + validate (module)"
	if (cd "$work/module" && terraform init "${init_args[@]}" >"$work/init.log" 2>&1); then
		(cd "$work/module" && terraform validate -no-color) || failed=1

		banner "terraform test (mock_provider aws)"
		(cd "$work/module" && terraform test -no-color) || failed=1
	else
		cat "$work/init.log"
		echo "FAIL: terraform init of the module"
		failed=1
	fi

	banner "terraform init + validate (examples/basic)"
	if (cd "$work/module/examples/basic" && terraform init "${init_args[@]}" >"$work/init-example.log" 2>&1); then
		(cd "$work/module/examples/basic" && terraform validate -no-color) || failed=1
	else
		cat "$work/init-example.log"
		echo "FAIL: terraform init of examples/basic"
		failed=1
	fi

	banner "terraform apply + destroy of examples/basic against the moto AWS emulator"
	emulator_check || failed=1
fi

# checkov: from PATH, $CHECKOV, or a virtualenv this script makes once (PyPI).
find_checkov() {
	if [[ -n "${CHECKOV:-}" && -x "${CHECKOV}" ]]; then
		echo "$CHECKOV"
		return
	fi
	if command -v checkov >/dev/null 2>&1; then
		command -v checkov
		return
	fi
	local venv="${CIRRUS_CACHE_DIR:-$HOME/.cache/cirrus}/checkov-venv"
	if [[ ! -x "$venv/bin/checkov" ]]; then
		echo "installing checkov from PyPI into $venv (once)" >&2
		if ! { python3 -m venv "$venv" && "$venv/bin/pip" install --quiet --disable-pip-version-check checkov; } >"$work/pip.log" 2>&1; then
			tail -n 20 "$work/pip.log" >&2
			rm -rf "$venv"
			return
		fi
	fi
	echo "$venv/bin/checkov"
}

banner "checkov (deploy/terraform)"
checkov_bin=$(find_checkov || true)
if [[ -z "$checkov_bin" ]]; then
	skipped "checkov could not be installed (pip install checkov failed: no PyPI?): the security scan was NOT run"
else
	# --download-external-modules false: the scan is offline; the example's module is local.
	if ! (cd "$root" && "$checkov_bin" --quiet --compact --framework terraform \
		--download-external-modules false --skip-download -d deploy/terraform); then
		echo "FAIL: checkov found a failing check: fix it, or skip it inline with a justification"
		failed=1
	fi
fi

if [[ "$failed" -ne 0 ]]; then
	echo
	echo "terraform-check: FAILED"
	exit 1
fi
echo
echo "terraform-check: OK"
