#!/usr/bin/env bash
# Checks the Terraform module in deploy/terraform without an AWS account or a network:
#   1. terraform fmt -check (module, tests, examples)
#   2. terraform validate (module and examples/basic), with the AWS provider taken from a
#      local plugin directory (found on this machine, never hard-coded)
#   3. terraform test (tests/*.tftest.hcl, mock_provider "aws")
#   4. checkov over deploy/terraform: every skipped check is justified inline in the .tf
# When terraform is absent, steps 1-3 print a loud SKIPPED line and the script goes on;
# when checkov cannot be installed (no PyPI), step 4 says so loudly. Any real failure
# exits non-zero. Work happens in a temporary copy, so the tree stays clean.
#
# Environment: TF_PLUGIN_DIR (folder holding registry.terraform.io/...) to skip the
# search; CHECKOV (path of a checkov executable); CIRRUS_CACHE_DIR (where checkov's
# virtualenv is kept, default ~/.cache/cirrus).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
module="$root/deploy/terraform"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
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

if ! command -v terraform >/dev/null 2>&1; then
	skipped "terraform is not installed: fmt, validate and terraform test of deploy/terraform were NOT run"
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
