#!/usr/bin/env python3
"""Drift check against the emulator, called by scripts/terraform-check.sh after the apply:

    drift.py revoke STATE_JSON ADDRESS --endpoint URL --region R
        removes, behind Terraform's back and through the emulator's EC2 API, the security
        group rule that `terraform show -json` (STATE_JSON) has at ADDRESS;
    drift.py expect-create PLAN_JSON ADDRESS
        checks that `terraform show -json PLAN` (PLAN_JSON) creates ADDRESS again and
        creates, deletes or replaces nothing else.

In-place updates are not counted: against moto, a plan right after the apply already
updates the rules in place (moto returns a referenced group as "account/sg-id" and no
rule description; see deploy/terraform/README.md).
"""

import argparse
import json
import sys


def resources(module):
    yield from module.get("resources", [])
    for child in module.get("child_modules", []):
        yield from resources(child)


def revoke(args):
    import boto3

    state = json.load(open(args.json))
    found = [r["values"] for r in resources(state["values"]["root_module"]) if r["address"] == args.address]
    if len(found) != 1:
        sys.exit(f"drift: {args.address} is not in the state")
    rule = found[0]
    ec2 = boto3.session.Session(region_name=args.region).client("ec2", endpoint_url=args.endpoint)
    ec2.revoke_security_group_ingress(GroupId=rule["security_group_id"], SecurityGroupRuleIds=[rule["id"]])
    left = ec2.describe_security_group_rules(Filters=[{"Name": "group-id", "Values": [rule["security_group_id"]]}])
    if any(r["SecurityGroupRuleId"] == rule["id"] for r in left["SecurityGroupRules"]):
        sys.exit(f"drift: rule {rule['id']} is still there after RevokeSecurityGroupIngress")
    print(f"drift: removed {args.address} ({rule['id']}, {rule['from_port']}/{rule['ip_protocol']} on {rule['security_group_id']}) through the emulator's API")


def expect_create(args):
    plan = json.load(open(args.json))
    changes = {r["address"]: r["change"]["actions"] for r in plan.get("resource_changes", [])}
    structural = {a: acts for a, acts in changes.items() if any(x in ("create", "delete") for x in acts)}
    want = {args.address: ["create"]}
    if structural != want:
        print(f"FAIL: terraform plan after the drift: expected exactly {want}, got {structural}")
        return 1
    updates = sum(1 for acts in changes.values() if acts == ["update"])
    print(f"drift: terraform plan detects it: {args.address} will be created again (and nothing else created or destroyed; {updates} in-place updates from moto's read-back)")
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("revoke")
    r.add_argument("json")
    r.add_argument("address")
    r.add_argument("--endpoint", required=True)
    r.add_argument("--region", required=True)
    e = sub.add_parser("expect-create")
    e.add_argument("json")
    e.add_argument("address")
    args = p.parse_args()
    if args.cmd == "revoke":
        revoke(args)
        return 0
    return expect_create(args)


if __name__ == "__main__":
    sys.exit(main())
