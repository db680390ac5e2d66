#!/usr/bin/env python3
"""Checks, through the emulator's own API (boto3 against moto), what `terraform apply`
of examples/basic created, or that `terraform destroy` left nothing behind.

    check_apply.py apply   --endpoint URL --name cirrus-demo ... (see --help)
    check_apply.py destroy --endpoint URL --name cirrus-demo ...

The expectations are written out here from the README's ports table and the module's
documented behaviour (security.tf, iam.tf, main.tf, network.tf), not read back from
Terraform, so a module that drifts from its documentation fails. Every mismatch is
reported (not only the first) and the exit status is 1 when there is any.
Called by scripts/terraform-check.sh; the credentials are the fake ones it exports.
"""

import argparse
import ipaddress
import json
import sys
import urllib.parse

import boto3

ROLES = ("meta", "data", "client")

# The README's ports table: (group that opens the port, port name, groups allowed in).
CLUSTER_PORTS = [
    ("meta", "meta_grpc", ("meta", "data", "client")),
    ("meta", "meta_metrics", ("meta", "data")),
    ("data", "data_grpc", ("meta", "data", "client")),
    ("data", "data_metrics", ("meta", "data")),
]
# Outbound to the world: apt (80) and the binary download / S3 (443), nothing else.
WEB_PORTS = (80, 443)


class Checker:
    def __init__(self):
        self.failures = []
        self.passed = 0

    def check(self, ok, what, detail=""):
        if ok:
            self.passed += 1
            print(f"  ok   {what}")
        else:
            self.failures.append(what)
            print(f"  FAIL {what}" + (f"\n       {detail}" if detail else ""))
        return ok

    def equal(self, actual, expected, what):
        return self.check(actual == expected, what, f"expected {expected!r}, got {actual!r}")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("phase", choices=["apply", "destroy"])
    p.add_argument("--endpoint", required=True, help="the emulator, e.g. http://127.0.0.1:5000")
    p.add_argument("--region", required=True)
    p.add_argument("--name", required=True, help="the module's name input (prefix and Cluster tag)")
    p.add_argument("--zones", required=True, help="comma-separated availability zones, in order")
    p.add_argument("--vpc-cidr", default="10.42.0.0/16")
    p.add_argument("--meta-count", type=int, default=3)
    p.add_argument("--data-count", type=int, required=True)
    p.add_argument("--client-count", type=int, required=True)
    p.add_argument("--admin-cidr", required=True)
    p.add_argument("--ports", default="meta_grpc=7001,meta_metrics=7002,data_grpc=7101,data_metrics=7102")
    p.add_argument("--binary-s3", required=True, help="bucket/key of the binary the role may read")
    p.add_argument("--ami", required=True, help="the AMI the module's Debian lookup must pick")
    p.add_argument("--root-volume-gb", type=int, default=30)
    return p.parse_args()


def tag(resource, key):
    for t in resource.get("Tags", []):
        if t["Key"] == key:
            return t["Value"]
    return None


def policy_doc(doc):
    # IAM returns policy documents URL-encoded; boto3 usually decodes them already.
    if isinstance(doc, str):
        doc = json.loads(urllib.parse.unquote(doc))
    return doc


def as_list(v):
    return v if isinstance(v, list) else [v]


def cluster_filter(args):
    return [{"Name": "tag:Cluster", "Values": [args.name]}]


def live_instances(ec2, args):
    out = []
    pages = ec2.get_paginator("describe_instances").paginate(
        Filters=cluster_filter(args)
        + [{"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped", "shutting-down"]}]
    )
    for page in pages:
        for r in page["Reservations"]:
            out.extend(r["Instances"])
    return out


def check_apply(c, ec2, iam, args):
    zones = args.zones.split(",")
    ports = {k: int(v) for k, v in (kv.split("=") for kv in args.ports.split(","))}
    instances = live_instances(ec2, args)
    by_role = {r: sorted((i for i in instances if tag(i, "Role") == r), key=lambda i: tag(i, "Name") or "") for r in ROLES}

    print("instances")
    c.equal(sum(1 for i in instances if tag(i, "Role") not in ROLES), 0, "every cluster instance has Role meta, data or client")
    for role, want in (("meta", args.meta_count), ("data", args.data_count), ("client", args.client_count)):
        c.equal(len(by_role[role]), want, f"{want} {role} instance(s) (tag Role={role}, Cluster={args.name})")
        c.equal(sorted(tag(i, "Name") for i in by_role[role]), sorted(f"{args.name}-{role}-{n + 1}" for n in range(want)), f"{role} instances are named {args.name}-{role}-1..{want}")
    c.equal(sorted({i["State"]["Name"] for i in instances}), ["running"], "every instance is running")
    c.equal(sorted({i["ImageId"] for i in instances}), [args.ami], "every instance runs the newest x86_64 Debian 12 AMI of Debian's account")

    print("network")
    vpcs = ec2.describe_vpcs(Filters=cluster_filter(args))["Vpcs"]
    c.equal([v["CidrBlock"] for v in vpcs], [args.vpc_cidr], "one VPC with the vpc_cidr")
    vpc_id = vpcs[0]["VpcId"] if vpcs else None
    subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc_id or "none"]}])["Subnets"]
    subnets.sort(key=lambda s: ipaddress.ip_network(s["CidrBlock"]))
    net = ipaddress.ip_network(args.vpc_cidr)
    want_cidrs = [str(s) for s in list(net.subnets(new_prefix=24))[: len(zones)]]
    c.equal([(s["CidrBlock"], s["AvailabilityZone"]) for s in subnets], list(zip(want_cidrs, zones)), "one /24 subnet per zone, in order")
    c.equal(sorted({s["MapPublicIpOnLaunch"] for s in subnets}), [False], "no subnet maps public IPs on launch")
    zone_of = {s["SubnetId"]: s["AvailabilityZone"] for s in subnets}
    first = subnets[0]["SubnetId"] if subnets else None

    metas = by_role["meta"]
    c.equal([i["Placement"]["AvailabilityZone"] for i in metas], [zones[n % len(zones)] for n in range(len(metas))], "meta node i sits in zone i % zones")
    if len(zones) >= args.meta_count:
        c.equal(len({i["Placement"]["AvailabilityZone"] for i in metas}), args.meta_count, "one meta node per availability zone")
    want_ips = [str(ipaddress.ip_network(want_cidrs[n % len(zones)])[10 + n]) for n in range(len(metas))]
    c.equal([i["PrivateIpAddress"] for i in metas], want_ips, "meta nodes at their fixed addresses (host 10+i of their subnet)")
    c.equal(sorted({zone_of.get(i["SubnetId"]) for i in metas}), sorted(set(zones[: len(metas)])), "meta nodes are in the cluster's subnets")
    others = by_role["data"] + by_role["client"]
    c.equal(sorted({i["SubnetId"] for i in others}), [first] if others else [], "data servers and clients are in the first zone's subnet")

    igws = ec2.describe_internet_gateways(Filters=[{"Name": "attachment.vpc-id", "Values": [vpc_id or "none"]}])["InternetGateways"]
    c.equal(len(igws), 1, "one internet gateway attached to the VPC")
    rts = ec2.describe_route_tables(Filters=cluster_filter(args))["RouteTables"]
    assoc = sorted(a.get("SubnetId") for rt in rts for a in rt.get("Associations", []) if a.get("SubnetId"))
    c.equal(assoc, sorted(s["SubnetId"] for s in subnets), "every subnet is associated with the cluster route table")
    default_routes = [r.get("GatewayId") for rt in rts for r in rt["Routes"] if r.get("DestinationCidrBlock") == "0.0.0.0/0"]
    c.equal(default_routes, [igws[0]["InternetGatewayId"]] if igws else [], "the default route goes to the internet gateway")

    print("security groups")
    groups = ec2.describe_security_groups(Filters=[{"Name": "vpc-id", "Values": [vpc_id or "none"]}])["SecurityGroups"]
    role_sg = {r: g["GroupId"] for g in groups for r in ROLES if g["GroupName"] == f"{args.name}-{r}"}
    c.equal(sorted(role_sg), sorted(ROLES), f"one security group per role ({args.name}-meta, -data, -client)")
    sg_role = {v: k for k, v in role_sg.items()}
    default = [g for g in groups if g["GroupName"] == "default"]
    c.equal([(len(g["IpPermissions"]), len(g["IpPermissionsEgress"])) for g in default], [(0, 0)], "the VPC's default security group has no rules at all")
    c.equal(sorted(g["GroupName"] for g in groups), sorted(["default"] + [f"{args.name}-{r}" for r in ROLES]), "no other security group in the VPC")

    def rules(group, key):
        out = []
        for perm in group[key]:
            span = f"{perm.get('FromPort')}-{perm.get('ToPort')}/{perm['IpProtocol']}"
            out += [f"{span} sg:{sg_role.get(p['GroupId'], p['GroupId'])}" for p in perm.get("UserIdGroupPairs", [])]
            out += [f"{span} cidr:{r['CidrIp']}" for r in perm.get("IpRanges", [])]
            out += [f"{span} cidr6:{r['CidrIpv6']}" for r in perm.get("Ipv6Ranges", [])]
            out += [f"{span} prefix-list:{r['PrefixListId']}" for r in perm.get("PrefixListIds", [])]
        return sorted(out)

    want_in = {r: [f"22-22/tcp cidr:{args.admin_cidr}"] for r in ROLES}
    want_out = {r: [f"{p}-{p}/tcp cidr:0.0.0.0/0" for p in WEB_PORTS] for r in ROLES}
    for to, port_name, froms in CLUSTER_PORTS:
        port = ports[port_name]
        for frm in froms:
            want_in[to].append(f"{port}-{port}/tcp sg:{frm}")
            want_out[frm].append(f"{port}-{port}/tcp sg:{to}")
    for g in groups:
        role = sg_role.get(g["GroupId"])
        if role is None:
            continue
        c.equal(rules(g, "IpPermissions"), sorted(want_in[role]), f"{role} group: inbound exactly the README ports from member groups and SSH from {args.admin_cidr}")
        c.equal(rules(g, "IpPermissionsEgress"), sorted(want_out[role]), f"{role} group: outbound exactly the cluster ports to member groups and 80/443")
        world = [x for x in rules(g, "IpPermissions") if x.endswith(" cidr:0.0.0.0/0") or " cidr6:" in x]
        c.equal(world, [], f"{role} group: nothing open to 0.0.0.0/0 (or any IPv6 range) inbound")
    for role in ROLES:
        got = sorted({tuple(sorted(x["GroupId"] for x in i["SecurityGroups"] or i["NetworkInterfaces"][0]["Groups"])) for i in by_role[role]})
        c.equal(got, [(role_sg.get(role),)] if by_role[role] else [], f"every {role} instance has exactly the {role} group")

    print("instance hardening")
    imds = sorted({(i["MetadataOptions"].get("HttpTokens"), i["MetadataOptions"].get("HttpEndpoint"), i["MetadataOptions"].get("HttpPutResponseHopLimit")) for i in instances})
    c.equal(imds, [("required", "enabled", 1)], "every instance requires IMDSv2 (http_tokens=required, hop limit 1)")
    root_vols = {}
    for i in instances:
        for m in i["BlockDeviceMappings"]:
            if m["DeviceName"] == i["RootDeviceName"]:
                root_vols[m["Ebs"]["VolumeId"]] = tag(i, "Name")
    c.equal(len(root_vols), len(instances), "every instance has a root EBS volume")
    vols = ec2.describe_volumes(VolumeIds=list(root_vols))["Volumes"] if root_vols else []
    c.equal(sorted({(v["Encrypted"], v["VolumeType"], v["Size"]) for v in vols}), [(True, "gp3", args.root_volume_gb)], f"every root volume is encrypted gp3 of {args.root_volume_gb} GB")

    print("iam")
    profile_name = role_name = f"{args.name}-node"
    c.equal(sorted({i.get("IamInstanceProfile", {}).get("Arn", "").rsplit("/", 1)[-1] for i in instances}), [profile_name], f"every instance has the instance profile {profile_name}")
    try:
        profile = iam.get_instance_profile(InstanceProfileName=profile_name)["InstanceProfile"]
        c.equal([r["RoleName"] for r in profile["Roles"]], [role_name], f"the profile holds the role {role_name} only")
    except iam.exceptions.NoSuchEntityException:
        c.check(False, f"instance profile {profile_name} exists")
    try:
        role = iam.get_role(RoleName=role_name)["Role"]
    except iam.exceptions.NoSuchEntityException:
        c.check(False, f"role {role_name} exists")
        return
    trust = [
        (s["Effect"], sorted(as_list(s["Action"])), sorted(as_list(s["Principal"].get("Service", []))))
        for s in policy_doc(role["AssumeRolePolicyDocument"])["Statement"]
    ]
    c.equal(trust, [("Allow", ["sts:AssumeRole"], ["ec2.amazonaws.com"])], "the role can be assumed by EC2 only")
    attached = iam.list_attached_role_policies(RoleName=role_name)["AttachedPolicies"]
    c.equal([p["PolicyName"] for p in attached], [], "no managed policy is attached to the role")
    names = iam.list_role_policies(RoleName=role_name)["PolicyNames"]
    c.equal(names, [f"{args.name}-read-binary"], "exactly one inline policy: read-binary")
    grants = []
    for n in names:
        doc = policy_doc(iam.get_role_policy(RoleName=role_name, PolicyName=n)["PolicyDocument"])
        for s in doc["Statement"]:
            grants.append((s["Effect"], sorted(as_list(s.get("Action", []))), sorted(as_list(s.get("Resource", []))), "NotAction" in s or "NotResource" in s))
    c.equal(grants, [("Allow", ["s3:GetObject"], [f"arn:aws:s3:::{args.binary_s3}"], False)], "the role may do s3:GetObject on the binary's object and nothing else")


def check_destroy(c, ec2, iam, args):
    print("after destroy")
    left = [f"{i['InstanceId']} ({tag(i, 'Name')}, {i['State']['Name']})" for i in live_instances(ec2, args)]
    c.equal(left, [], "no cluster instance is left pending, running or stopped")
    for what, call, key in (
        ("VPC", ec2.describe_vpcs, "Vpcs"),
        ("subnet", ec2.describe_subnets, "Subnets"),
        ("security group", ec2.describe_security_groups, "SecurityGroups"),
        ("internet gateway", ec2.describe_internet_gateways, "InternetGateways"),
        ("route table", ec2.describe_route_tables, "RouteTables"),
    ):
        found = call(Filters=cluster_filter(args))[key]
        c.equal(len(found), 0, f"no {what} tagged Cluster={args.name} is left")
    named = [g["GroupName"] for g in ec2.describe_security_groups()["SecurityGroups"] if g["GroupName"].startswith(f"{args.name}-")]
    c.equal(named, [], f"no security group named {args.name}-* is left")
    vols = [v["VolumeId"] for v in ec2.describe_volumes()["Volumes"] if v["State"] != "deleted"]
    c.equal(vols, [], "no EBS volume is left")
    roles = [r["RoleName"] for r in iam.list_roles()["Roles"] if r["RoleName"].startswith(f"{args.name}-")]
    c.equal(roles, [], f"no IAM role {args.name}-* is left")
    profiles = [p["InstanceProfileName"] for p in iam.list_instance_profiles()["InstanceProfiles"] if p["InstanceProfileName"].startswith(f"{args.name}-")]
    c.equal(profiles, [], f"no instance profile {args.name}-* is left")


def main():
    args = parse_args()
    session = boto3.session.Session(region_name=args.region)
    ec2 = session.client("ec2", endpoint_url=args.endpoint)
    iam = session.client("iam", endpoint_url=args.endpoint)
    c = Checker()
    (check_apply if args.phase == "apply" else check_destroy)(c, ec2, iam, args)
    if c.failures:
        print(f"emulator check ({args.phase}): {len(c.failures)} FAILED, {c.passed} passed:")
        for f in c.failures:
            print(f"  - {f}")
        return 1
    print(f"emulator check ({args.phase}): all {c.passed} checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
