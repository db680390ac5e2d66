#!/usr/bin/env python3
"""Boot check, called by scripts/terraform-check.sh after the apply against moto:
boots every emulated instance's user data for real, on this machine, and checks that
the result is a working cluster.

    boot.py run --endpoint URL --region R --name NAME --bin CIRRUS --mount-command CMD

For each instance of the cluster (read back from the emulator: user data, private IP,
Role tag) it makes a "host": a network namespace with a veth into one bridge, at the
instance's private address, and inside it a private mount namespace in which /etc,
/usr/local and /var/lib are overlays (writes go to the host's own directory) and /run,
/mnt are the host's own directories. There the user data runs as cloud-init would
(write_files, then runcmd in order), with these substitutions (deploy/terraform/README.md):

  * packages: not installed (no apt); the ones the units call (curl, fusermount3) must
    be on this machine; chrony is not run (all hosts share this machine's clock).
  * /usr/local/sbin/cirrus-install: installs --bin (this build) instead of downloading
    the release (no S3, no network).
  * /usr/local/sbin/cirrus-data-disk: bind-mounts a directory of the host at
    /var/lib/cirrus/data instead of finding, striping and formatting NVMe disks.
  * the instance metadata service (169.254.169.254, IMDSv2): a small one per host that
    answers the token PUT and meta-data/local-ipv4 with the instance's address, so
    cirrus-node-env runs unchanged.
  * systemctl: this file's unit runner (no systemd here). It parses the unit files the
    user data wrote (Requires/Wants/After, Type, Environment, EnvironmentFile,
    ExecStartPre/ExecStart/ExecStopPost with '-' and ${VAR}, Restart, RestartSec),
    starts units after their dependencies, waits for oneshot units, restarts simple
    units whose main process exits, running ExecStopPost and killing what is left of
    the unit's processes first (as systemd's KillMode=control-group does; processes are
    tracked by an environment marker instead of a cgroup), and logs each unit to
    <host dir>/journal/<unit>.log.

Then it waits for /run/cirrus/ready (written by cirrus-ready: `cirrus doctor --ready`
passed) on every host, runs the module's mount command (terraform output mount_command)
on the first client at a second mount point, writes a file there and reads it back
through the second client's boot mount, and prints the boot-to-mounted time. Last, the
firewall check (Boot.firewall_check): one rule closed (emulator and iptables), doctor and
cirrus-ready must name it and fail, then pass again once it is restored. Then the rolling
upgrade (Boot.upgrade_check): deploy/terraform/scripts/rolling-upgrade.sh replaces the
binary on every host (ssh replaced by a shell in the host; `systemctl restart` inside a
host reaches this file's unit runner through a socket) under a client workload that must
see no error.
Everything (processes, mounts, namespaces, bridge, directories) is removed on exit.
"""

import argparse
import base64
import hashlib
import http.server
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.abspath(__file__)
ROLES_ORDER = {"meta": 0, "data": 1, "client": 2}


def sh(*cmd, check=True, **kw):
    return subprocess.run(list(cmd), check=check, **kw)


# ---------------------------------------------------------------- processes by marker


def marked(key, value):
    """PIDs whose environment has key=value (our stand-in for a cgroup)."""
    want = f"{key}={value}".encode()
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit() or int(p) == os.getpid():
            continue
        try:
            with open(f"/proc/{p}/environ", "rb") as f:
                if want in f.read().split(b"\0"):
                    out.append(int(p))
        except OSError:
            pass
    return out


def kill_marked(key, value, grace=5.0):
    pids = marked(key, value)
    for p in pids:
        try:
            os.kill(p, signal.SIGTERM)
        except OSError:
            pass
    end = time.time() + grace
    while time.time() < end and marked(key, value):
        time.sleep(0.1)
    for p in marked(key, value):
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass


# ---------------------------------------------------------------- orchestrator


def fetch_instances(args):
    import boto3

    ec2 = boto3.session.Session(region_name=args.region).client("ec2", endpoint_url=args.endpoint)
    res = ec2.describe_instances(
        Filters=[
            {"Name": "tag:Cluster", "Values": [args.name]},
            {"Name": "instance-state-name", "Values": ["pending", "running"]},
        ]
    )
    hosts = []
    for r in res["Reservations"]:
        for i in r["Instances"]:
            tags = {t["Key"]: t["Value"] for t in i.get("Tags", [])}
            ud = ec2.describe_instance_attribute(InstanceId=i["InstanceId"], Attribute="userData")
            raw = ud.get("UserData", {}).get("Value")
            if not raw:
                sys.exit(f"boot: instance {i['InstanceId']} ({tags.get('Name')}) has no user data")
            vpc = ec2.describe_vpcs(VpcIds=[i["VpcId"]])["Vpcs"][0]
            hosts.append(
                {
                    "id": i["InstanceId"],
                    "name": tags.get("Name", i["InstanceId"]),
                    "role": tags.get("Role"),
                    "ip": i["PrivateIpAddress"],
                    "prefix": vpc["CidrBlock"].split("/")[1],
                    "user_data": base64.b64decode(raw).decode(),
                }
            )
    hosts.sort(key=lambda h: (ROLES_ORDER.get(h["role"], 9), h["name"]))
    return hosts


class Boot:
    def __init__(self, args):
        self.args = args
        self.run_id = f"{os.getpid()}"
        self.bridge = f"cbr{self.run_id}"[:15]
        # Not below /tmp: each host gets its own /tmp, which would hide it.
        self.root = tempfile.mkdtemp(prefix="cirrus-boot-", dir=args.workdir)
        self.bin = os.path.join(self.root, "cirrus")
        shutil.copy2(args.bin, self.bin)
        self.hosts = []
        self.procs = []
        self.netns = []
        self.bridge_made = False

    def log(self, msg):
        print(f"boot: {msg}", flush=True)

    def setup_network(self):
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        self.bridge_made = True
        sh("ip", "link", "set", self.bridge, "up")
        for n, h in enumerate(self.hosts):
            ns = f"cirrus-boot-{self.run_id}-{n}"
            h["ns"] = ns
            sh("ip", "netns", "add", ns)
            self.netns.append(ns)
            a, b = f"cb{self.run_id}h{n}"[:15], f"cb{self.run_id}p{n}"[:15]
            sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
            sh("ip", "link", "set", a, "master", self.bridge, "up")
            sh("ip", "link", "set", b, "netns", ns)
            x = ("ip", "netns", "exec", ns, "ip")
            sh(*x, "link", "set", "lo", "up")
            sh(*x, "link", "set", b, "name", "eth0")
            # The VPC's prefix on one L2 segment: every subnet reaches every other
            # directly, as the VPC's implicit router makes them on AWS.
            sh(*x, "addr", "add", f"{h['ip']}/{h['prefix']}", "dev", "eth0")
            sh(*x, "link", "set", "eth0", "up")
            # The instance metadata service's address, answered by the host's own IMDS.
            sh(*x, "addr", "add", "169.254.169.254/32", "dev", "lo")

    def start_hosts(self):
        for h in self.hosts:
            d = os.path.join(self.root, h["name"])
            h["dir"] = d
            for sub in ("etc-up", "etc-work", "usr-up", "usr-work", "var-up", "var-work", "run", "mnt", "tmp", "disk", "journal"):
                os.makedirs(os.path.join(d, sub))
            with open(os.path.join(d, "user-data"), "w") as f:
                f.write(h["user_data"])
            env = dict(os.environ, CIRRUS_BOOT_RUN=self.run_id, CIRRUS_BOOT_HOST=f"{self.run_id}:{h['name']}")
            cmd = [
                "ip", "netns", "exec", h["ns"], "unshare", "--mount", "--propagation", "private",
                sys.executable, HERE, "host", "--dir", d, "--ip", h["ip"], "--bin", self.bin, "--name", h["name"],
            ]
            out = open(os.path.join(d, "journal", "cloud-init.log"), "w")
            p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            h["proc"] = p
            self.procs.append(p)

    def in_host(self, h, *cmd, **kw):
        """A command in the host's network and mount namespaces."""
        return subprocess.run(["nsenter", "-t", str(h["proc"].pid), "-n", "-m", "--", *cmd], **kw)

    def wait_ready(self, t0):
        end = t0 + self.args.timeout
        pending = {h["name"]: h for h in self.hosts}
        ready_at = {}
        while pending:
            for name, h in list(pending.items()):
                if os.path.exists(os.path.join(h["dir"], "run", "cirrus", "ready")):
                    ready_at[name] = time.time() - t0
                    del pending[name]
                elif h["proc"].poll() is not None:
                    self.fail(h, f"its cloud-init (runcmd) ended with {h['proc'].returncode} before the node was ready")
            if time.time() > end:
                for h in pending.values():
                    self.dump(h)
                sys.exit(f"boot: FAIL: not ready after {self.args.timeout}s: {', '.join(pending)}")
            time.sleep(0.2)
        return ready_at

    def dump(self, h):
        print(f"--- {h['name']} ({h['role']}, {h['ip']}): journal", flush=True)
        jd = os.path.join(h["dir"], "journal")
        for f in sorted(os.listdir(jd)):
            with open(os.path.join(jd, f), errors="replace") as fh:
                lines = fh.readlines()[-25:]
            print(f"    == {f}")
            for line in lines:
                print(f"    {line.rstrip()}")
        doc = os.path.join(h["dir"], "run", "cirrus", "doctor.txt")
        if os.path.exists(doc):
            print("    == /run/cirrus/doctor.txt")
            for line in open(doc, errors="replace").readlines()[-40:]:
                print(f"    {line.rstrip()}")

    def fail(self, h, msg):
        self.dump(h)
        sys.exit(f"boot: FAIL: {h['name']}: {msg}")

    def check_mounts(self, t0):
        clients = [h for h in self.hosts if h["role"] == "client"]
        if len(clients) < 2:
            sys.exit(f"boot: FAIL: the check needs 2 clients, the cluster has {len(clients)}")
        c1, c2 = clients[0], clients[1]
        argv = shlex.split(self.args.mount_command)
        if argv[:1] == ["sudo"]:
            argv = argv[1:]  # the hosts run as root
        if argv[:2] != ["cirrus", "mount"] or len(argv) != 4:
            sys.exit(f"boot: FAIL: unexpected mount_command output: {self.args.mount_command!r}")
        boot_mnt = argv[3]
        self.boot_mnt = boot_mnt
        for c in clients:
            r = self.in_host(c, "findmnt", "-n", "-o", "FSTYPE", boot_mnt, capture_output=True, text=True)
            if r.returncode != 0:
                self.fail(c, f"{boot_mnt} is not mounted although cirrus-ready passed")
            self.log(f"{c['name']}: {boot_mnt} mounted by cirrus-mount.service ({r.stdout.strip()})")
        # The output's command, on the first client, at a second mount point (the boot's
        # own mount holds the first one).
        second = boot_mnt.rstrip("/") + "-output"
        argv[3] = second
        self.in_host(c1, "mkdir", "-p", second, check=True)
        r = self.in_host(c1, "/usr/local/bin/" + argv[0], *argv[1:], capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            self.fail(c1, f"the module's mount command `{' '.join(argv)}` failed: {r.stdout}{r.stderr}")
        t_mounted = time.time() - t0
        self.log(f"{c1['name']}: `{' '.join(argv)}` (terraform output mount_command) mounted")
        payload = f"written on {c1['name']} at {time.time()}\n" + "x" * 100000
        digest = hashlib.sha256(payload.encode()).hexdigest()
        fname = f"boot-check-{self.run_id}.txt"
        r = self.in_host(c1, "sh", "-c", f'cat > "$1" && sync', "sh", f"{second}/{fname}", input=payload, text=True, capture_output=True)
        if r.returncode != 0:
            self.fail(c1, f"writing {second}/{fname} failed: {r.stderr}")
        end = time.time() + 30
        while True:
            r = self.in_host(c2, "cat", f"{boot_mnt}/{fname}", capture_output=True, text=True)
            if r.returncode == 0 and hashlib.sha256(r.stdout.encode()).hexdigest() == digest:
                break
            if time.time() > end:
                self.fail(c2, f"{boot_mnt}/{fname} written on {c1['name']} does not read back here: rc={r.returncode} {r.stderr.strip()} ({len(r.stdout)} bytes)")
            time.sleep(0.5)
        self.log(f"{c2['name']}: {boot_mnt}/{fname} written through {c1['name']}:{second} reads back ({len(payload)} bytes, sha256 equal)")
        self.in_host(c1, "umount", second)
        return t_mounted

    def firewall_check(self):
        """A closed port is named, not waited on: with the cluster up and read-back done,
        the rule that opens the data servers' 7101/tcp to the client group is removed from
        the emulator and the same drop applied between the namespaces (on the first data
        host's INPUT, from the first client); doctor, exactly as cirrus-ready runs it,
        must fail within its own timeouts naming the port, the peer and the fix, and so
        must the cirrus-ready script; then the rule is restored and doctor passes again."""
        import boto3

        t0 = time.time()
        client = next(h for h in self.hosts if h["role"] == "client")
        data = next(h for h in self.hosts if h["role"] == "data")
        port = 7101
        ec2 = boto3.session.Session(region_name=self.args.region).client("ec2", endpoint_url=self.args.endpoint)
        sgs = {g["GroupName"]: g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]}
        data_sg, client_sg = sgs[f"{self.args.name}-data"], sgs[f"{self.args.name}-client"]
        rules = ec2.describe_security_group_rules(Filters=[{"Name": "group-id", "Values": [data_sg]}])["SecurityGroupRules"]
        match = [
            r for r in rules
            if not r["IsEgress"] and r.get("IpProtocol") == "tcp" and r.get("FromPort") == port
            and r.get("ReferencedGroupInfo", {}).get("GroupId", "").split("/")[-1] == client_sg
        ]
        if len(match) != 1:
            sys.exit(f"boot: FAIL: firewall check: expected one rule {port}/tcp from {client_sg} into {data_sg}, found {len(match)}")
        rule = match[0]
        ec2.revoke_security_group_ingress(GroupId=data_sg, SecurityGroupRuleIds=[rule["SecurityGroupRuleId"]])
        self.log(f"firewall: removed data_grpc_from_client ({rule['SecurityGroupRuleId']}, {port}/tcp from {client_sg} into {data_sg}) through the emulator's API")
        drop = ["iptables", "-p", "tcp", "--dport", str(port), "-s", client["ip"], "-j", "DROP"]
        self.in_host(data, drop[0], "-I", "INPUT", *drop[1:], check=True)
        self.log(f"firewall: {data['name']} ({data['ip']}) drops {port}/tcp from {client['name']} ({client['ip']}): iptables -I INPUT {' '.join(drop[1:])}")
        script = self.in_host(client, "cat", "/usr/local/sbin/cirrus-ready", capture_output=True, text=True, check=True).stdout
        unit = Unit("cirrus-ready.service", self.in_host(client, "cat", "/etc/systemd/system/cirrus-ready.service", capture_output=True, text=True, check=True).stdout)
        if unit.one("Service", "ExecStart") != "/usr/local/sbin/cirrus-ready":
            sys.exit(f"boot: FAIL: firewall check: cirrus-ready.service runs {unit.one('Service', 'ExecStart')!r}, not /usr/local/sbin/cirrus-ready")
        m = re.search(r"^\s*if (/usr/local/bin/cirrus doctor --ready [^>]*?) >/run/cirrus/doctor.txt", script, re.M)
        if not m:
            sys.exit("boot: FAIL: firewall check: no `cirrus doctor --ready ...` line in /usr/local/sbin/cirrus-ready")
        doctor = shlex.split(m.group(1))
        restored = False
        try:
            t = time.time()
            r = self.in_host(client, *doctor, capture_output=True, text=True, timeout=60)
            took = time.time() - t
            out = r.stdout + r.stderr
            want = [f"{port}/tcp on {data['ip']} timed out", f"fix:   a firewall or security group drops {port}/tcp to {data['ip']}: open {port}/tcp"]
            if r.returncode == 0 or any(w not in out for w in want):
                self.dump(client)
                sys.exit(f"boot: FAIL: firewall check: `{' '.join(doctor)}` on {client['name']} exited {r.returncode} without naming {want}:\n{out}")
            self.log(f"firewall: `{' '.join(doctor)}` on {client['name']} exits {r.returncode} after {took:.1f} s (its own --timeout per check), saying:")
            for line in out.splitlines():
                if str(port) in line and data["ip"] in line or line.startswith(("FAILED", "PASS")):
                    print(f"    | {line}", flush=True)
            # The unit's ExecStart, the script itself, with its deadline (ready_timeout_seconds)
            # cut to 0 so that the first failed doctor is the last: what journalctl shows.
            short, n = re.subn(r"^deadline=\$\(\( \$\(date \+%s\) \+ \d+ \)\)$", "deadline=$(( $(date +%s) + 0 ))", script, flags=re.M)
            if n != 1:
                sys.exit("boot: FAIL: firewall check: no deadline=... line in /usr/local/sbin/cirrus-ready")
            t = time.time()
            r = self.in_host(client, "sh", "-c", short, "cirrus-ready", capture_output=True, text=True, timeout=60)
            took = time.time() - t
            out = r.stdout + r.stderr
            if r.returncode == 0 or any(w not in out for w in want) or "NOT ready" not in out:
                sys.exit(f"boot: FAIL: firewall check: cirrus-ready on {client['name']} exited {r.returncode} without the doctor report:\n{out}")
            self.log(f"firewall: cirrus-ready.service's ExecStart (its deadline cut to 0 s) exits {r.returncode} after {took:.1f} s, its journal naming the port: "
                     f"`systemctl start` fails, so ready.tf's wait exits 2 at once and prints it (no silent timeout):")
            for line in out.splitlines():
                if "NOT ready" in line:
                    print(f"    | {line}", flush=True)
            # Restore: the rule in the emulator, the path between the namespaces.
            self.in_host(data, drop[0], "-D", "INPUT", *drop[1:], check=True)
            perm = {"IpProtocol": "tcp", "FromPort": port, "ToPort": port, "UserIdGroupPairs": [{"GroupId": client_sg}]}
            if rule.get("Description"):
                perm["UserIdGroupPairs"][0]["Description"] = rule["Description"]
            ec2.authorize_security_group_ingress(GroupId=data_sg, IpPermissions=[perm])
            restored = True
            self.log(f"firewall: restored ({port}/tcp from {client_sg} into {data_sg} authorized again, iptables rule deleted)")
            end = time.time() + 20
            while True:
                r = self.in_host(client, *doctor, capture_output=True, text=True, timeout=60)
                if r.returncode == 0:
                    break
                if time.time() > end:
                    sys.exit(f"boot: FAIL: firewall check: doctor still fails on {client['name']} after the rule came back:\n{r.stdout}{r.stderr}")
                time.sleep(1)
            r = self.in_host(client, "/usr/local/sbin/cirrus-ready", capture_output=True, text=True, timeout=60)
            if r.returncode != 0 or not os.path.exists(os.path.join(client["dir"], "run", "cirrus", "ready")):
                sys.exit(f"boot: FAIL: firewall check: cirrus-ready on {client['name']} exited {r.returncode} after the rule came back:\n{r.stdout}{r.stderr}")
            self.log(f"firewall: OK: doctor and cirrus-ready pass again on {client['name']}; the step took {time.time() - t0:.1f} s")
        finally:
            if not restored:
                self.in_host(data, drop[0], "-D", "INPUT", *drop[1:], check=False, stderr=subprocess.DEVNULL)

    def upgrade_check(self):
        """The rolling upgrade, as an operator runs it: deploy/terraform/scripts/
        rolling-upgrade.sh with a new binary file, its --remote being HOSTEXEC (ssh's
        stand-in: a shell in the host whose address it is given), while a workload on
        the first client writes, fsyncs, reads back, lists and unlinks files on the boot
        mount. The workload must see no error and make progress during every server's
        step; afterwards every meta and data process runs the newly installed file (none
        runs a deleted one), the second client is remounted onto it by the documented
        `systemctl restart cirrus-mount.service`, and there reads back what the first wrote."""
        import json

        t0 = time.time()
        clients = [h for h in self.hosts if h["role"] == "client"]
        c1, c2 = clients[0], clients[1]
        meta = next(h for h in self.hosts if h["role"] == "meta")
        os.makedirs(os.path.join(self.root, "pids"))
        for h in self.hosts:
            with open(os.path.join(self.root, "pids", h["ip"]), "w") as f:
                f.write(str(h["proc"].pid))
        hostexec = os.path.join(self.root, "hostexec")
        with open(hostexec, "w") as f:
            f.write(HOSTEXEC.format(root=self.root))
        os.chmod(hostexec, 0o755)
        new_bin = os.path.join(self.root, "cirrus-next")
        shutil.copy2(self.bin, new_bin)

        load_dir = f"{self.boot_mnt}/upgrade-load-{self.run_id}"
        status = os.path.join(c1["dir"], "run", "upgrade-load.json")
        stop = os.path.join(c1["dir"], "run", "upgrade-load.stop")
        load = subprocess.Popen(
            ["nsenter", "-t", str(c1["proc"].pid), "-n", "-m", "--", sys.executable, "-c", WORKLOAD,
             load_dir, "/run/upgrade-load.stop", "/run/upgrade-load.json"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

        def progress():
            try:
                with open(status) as f:
                    return json.load(f)
            except (OSError, ValueError):
                return {"ok": 0, "errors": [], "slowest": 0.0}

        try:
            end = time.time() + 30
            while progress()["ok"] < 5:
                if time.time() > end or load.poll() is not None:
                    sys.exit(f"boot: FAIL: upgrade check: the workload on {c1['name']} did not start: {progress()} {load.stdout.read() if load.poll() is not None else ''}")
                time.sleep(0.2)
            driver = [os.path.join(os.path.dirname(HERE), "..", "..", "scripts", "rolling-upgrade.sh"),
                      "--bin", new_bin, "--meta-host", meta["ip"], "--client", c1["ip"], "--client", c2["ip"],
                      "--remote", hostexec, "--sudo", ""]
            shown = ["deploy/terraform/scripts/rolling-upgrade.sh"] + [a.replace(self.root, "$BOOT") for a in driver[1:]]
            self.log(f"upgrade: {shlex.join(shown)} ($BOOT/hostexec stands in for ssh), with the workload running on {c1['name']}:{load_dir}")
            t = time.time()
            d = subprocess.Popen(driver, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            marks = [progress()["ok"]]
            for line in d.stdout:
                print(f"    | {line.rstrip()}", flush=True)
                if ": done in " in line and "client" not in line.split(":")[1]:
                    marks.append(progress()["ok"])
            rc = d.wait()
            took = time.time() - t
            if rc != 0:
                for h in self.hosts:
                    self.dump(h)
                sys.exit(f"boot: FAIL: upgrade check: rolling-upgrade.sh exited {rc}")
            servers = sum(1 for h in self.hosts if h["role"] in ("meta", "data"))
            if len(marks) != servers + 1:
                sys.exit(f"boot: FAIL: upgrade check: {len(marks) - 1} server steps done, the cluster has {servers} servers")
            stalled = [i + 1 for i in range(servers) if marks[i + 1] <= marks[i]]
            if stalled:
                sys.exit(f"boot: FAIL: upgrade check: the workload made no progress during server step(s) {stalled} (ops done at each step's end: {marks})")
        finally:
            open(stop, "w").close()
            try:
                out, _ = load.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                load.kill()
                out, _ = load.communicate()
        p = progress()
        if load.returncode != 0 or p["errors"]:
            sys.exit(f"boot: FAIL: upgrade check: the workload on {c1['name']} saw {len(p['errors'])} error(s) during the upgrade: {p['errors'][:10]}\n{out}")
        self.log(f"upgrade: the workload on {c1['name']} ran {p['ok']} rounds (write+fsync, 3 read-backs, stat, readdir, unlink) with no error; "
                 f"rounds done at the end of each server step: {marks}; slowest round {p['slowest']:.1f} s")
        # Every server process runs the new file: a process still on the replaced binary
        # shows its executable as deleted.
        for h in self.hosts:
            if h["role"] not in ("meta", "data"):
                continue
            unit = f"cirrus-{h['role']}.service"
            exes = {os.readlink(f"/proc/{pid}/exe") for pid in marked("CIRRUS_BOOT_UNIT", f"{self.run_id}:{h['name']}:{unit}")}
            if exes != {"/usr/local/bin/cirrus"}:
                sys.exit(f"boot: FAIL: upgrade check: {h['name']} {unit} runs {exes or 'nothing'}, not the new /usr/local/bin/cirrus")
        self.log("upgrade: every meta and data process runs the new /usr/local/bin/cirrus (none runs the deleted old one)")
        mounts = {os.readlink(f"/proc/{pid}/exe") for pid in marked("CIRRUS_BOOT_UNIT", f"{self.run_id}:{c2['name']}:cirrus-mount.service")}
        r = self.in_host(c2, "systemctl", "restart", "cirrus-mount.service", env=dict(os.environ, PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"))
        if r.returncode != 0:
            self.fail(c2, "systemctl restart cirrus-mount.service failed")
        end = time.time() + 60
        while True:
            r = self.in_host(c2, "sh", "-c", 'sha256sum "$1"/*', "sh", load_dir, capture_output=True, text=True)
            got = dict(reversed(line.split(None, 1)) for line in r.stdout.splitlines())
            if r.returncode == 0 and got == p["files"]:
                break
            if time.time() > end:
                self.fail(c2, f"after its remount, {load_dir} does not read back as {c1['name']} wrote it: {got} != {p['files']} ({r.stderr.strip()})")
            time.sleep(0.5)
        now = {os.readlink(f"/proc/{pid}/exe") for pid in marked("CIRRUS_BOOT_UNIT", f"{self.run_id}:{c2['name']}:cirrus-mount.service")}
        if now != {"/usr/local/bin/cirrus"}:
            sys.exit(f"boot: FAIL: upgrade check: {c2['name']}'s mount runs {now} after its restart")
        self.log(f"upgrade: {c2['name']}'s mount ran {sorted(mounts)} until `systemctl restart cirrus-mount.service`, now the new binary; "
                 f"the {len(got)} files left by the workload read back there (sha256 equal)")
        self.log(f"upgrade: OK: rolling upgrade of {servers} servers and {len(clients)} clients in {took:.1f} s; the check took {time.time() - t0:.1f} s")

    def cleanup(self):
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGTERM)
                except OSError:
                    pass
        end = time.time() + 20
        for p in self.procs:
            try:
                p.wait(max(0.1, end - time.time()))
            except subprocess.TimeoutExpired:
                pass
        kill_marked("CIRRUS_BOOT_RUN", self.run_id, grace=3)
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for ns in self.netns:
            sh("ip", "netns", "del", ns, check=False, stderr=subprocess.DEVNULL)
        if self.bridge_made:
            sh("ip", "link", "del", self.bridge, check=False, stderr=subprocess.DEVNULL)
        # Nothing may still be mounted below the root (the mount namespaces are gone).
        with open("/proc/self/mounts") as f:
            left = [line.split()[1] for line in f if line.split()[1].startswith(self.root)]
        for m in reversed(left):
            sh("umount", "-l", m, check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def cmd_run(args):
    if os.geteuid() != 0:
        sys.exit("boot: needs root")
    hosts = fetch_instances(args)
    roles = {}
    for h in hosts:
        roles[h["role"]] = roles.get(h["role"], 0) + 1
    start = time.time()
    b = Boot(args)
    b.hosts = hosts

    def on_signal(signum, _frame):
        raise SystemExit(f"boot: signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        b.log(f"{len(hosts)} hosts from the emulator: " + ", ".join(f"{h['name']} ({h['role']}) {h['ip']}" for h in hosts))
        b.setup_network()
        t0 = time.time()
        b.start_hosts()
        ready_at = b.wait_ready(t0)
        t_ready = max(ready_at.values())
        for role in ROLES_ORDER:
            ts = [ready_at[h["name"]] for h in hosts if h["role"] == role]
            if ts:
                b.log(f"{len(ts)} {role} host(s): cirrus doctor --ready passed after {min(ts):.1f}-{max(ts):.1f} s")
        t_mounted = b.check_mounts(t0)
        b.firewall_check()
        b.upgrade_check()
        counts = ", ".join(f"{roles[r]} {r}" for r in ROLES_ORDER if r in roles)
        print(f"boot: OK: {len(hosts)} hosts ({counts}) booted from their user data: every node ready (cirrus doctor --ready) {t_ready:.1f} s after boot, mount command from the outputs mounted and a file read back across clients {t_mounted:.1f} s after boot")
        return 0
    finally:
        b.cleanup()
        print(f"boot: cleaned up (namespaces, processes, mounts, directories); the boot check took {time.time() - start:.1f} s in all", flush=True)


# ---------------------------------------------------------------- one host (cloud-init)


class Unit:
    def __init__(self, name, text):
        self.name = name
        self.sec = {}
        cur = None
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("[") and line.endswith("]"):
                cur = self.sec.setdefault(line[1:-1], {})
                continue
            k, _, v = line.partition("=")
            cur.setdefault(k.strip(), []).append(v.strip())

    def get(self, sec, key):
        return self.sec.get(sec, {}).get(key, [])

    def one(self, sec, key, default=None):
        v = self.get(sec, key)
        return v[-1] if v else default

    def deps(self):
        out = []
        for k in ("Requires", "Wants"):
            for v in self.get("Unit", k):
                out += v.split()
        return out


def seconds(v):
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|min|ms)?", v.strip())
    if not m:
        return 0.0
    n = float(m.group(1))
    return {"min": n * 60, "ms": n / 1000}.get(m.group(2), n)


class Runner:
    """systemctl for one host: starts the units the user data wrote."""

    def __init__(self, name, journal):
        self.name = name
        self.journal = journal
        self.units = {}
        self.state = {}  # unit -> "active" | "failed" | "activating"
        self.lock = threading.RLock()
        self.stopping = threading.Event()
        self.threads = []
        self.restart_wanted = set()  # units whose next exit is a `systemctl restart`
        self.generation = {}  # unit -> how many times its main process was started

    def daemon_reload(self):
        d = "/etc/systemd/system"
        for f in sorted(os.listdir(d)):
            if f.endswith(".service"):
                with open(os.path.join(d, f)) as fh:
                    self.units[f] = Unit(f, fh.read())

    def env_of(self, u):
        env = {k: v for k, v in os.environ.items()}
        env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        env["CIRRUS_BOOT_UNIT"] = f"{os.environ.get('CIRRUS_BOOT_HOST')}:{u.name}"
        for line in u.get("Service", "Environment"):
            for kv in shlex.split(line):
                k, _, v = kv.partition("=")
                env[k] = v
        for f in u.get("Service", "EnvironmentFile"):
            optional = f.startswith("-")
            f = f.lstrip("-")
            try:
                for line in open(f):
                    line = line.strip()
                    if line and not line.startswith("#") and "=" in line:
                        k, _, v = line.partition("=")
                        env[k.strip()] = v.strip().strip('"')
            except OSError:
                if not optional:
                    raise RuntimeError(f"{u.name}: EnvironmentFile {f} is missing")
        return env

    def exec_line(self, u, line, env, log, wait=True):
        ignore = False
        while line[:1] in "-@+!:":
            ignore |= line[0] == "-"
            line = line[1:]
        line = re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), ""), line)
        argv = [re.sub(r"^\$(\w+)$", lambda m: env.get(m.group(1), ""), a) for a in shlex.split(line)]
        log.write(f"[runner] {' '.join(argv)}\n")
        log.flush()
        p = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if not wait:
            return p
        rc = p.wait()
        log.write(f"[runner] exit {rc}\n")
        log.flush()
        return 0 if ignore else rc

    def stop_unit_processes(self, u):
        kill_marked("CIRRUS_BOOT_UNIT", f"{os.environ.get('CIRRUS_BOOT_HOST')}:{u.name}", grace=float(seconds(u.one("Service", "TimeoutStopSec", "10"))) / 3)

    def start(self, name, stack=()):
        with self.lock:
            if self.state.get(name) in ("active", "activating"):
                return True
            u = self.units.get(name)
            if u is None:
                if name.endswith(".target"):
                    return True  # targets: reached (network is up before boot)
                print(f"[runner] {name}: no such unit", flush=True)
                return False
            self.state[name] = "activating"
        for d in u.deps():
            if d not in stack and not self.start(d, stack + (name,)) and d in " ".join(u.get("Unit", "Requires")).split():
                self.state[name] = "failed"
                print(f"[runner] {name}: dependency {d} failed", flush=True)
                return False
        log = open(os.path.join(self.journal, name + ".log"), "a")
        typ = u.one("Service", "Type", "simple")
        print(f"[runner] starting {name} (Type={typ})", flush=True)
        try:
            env = self.env_of(u)
        except RuntimeError as e:
            print(f"[runner] {e}", flush=True)
            self.state[name] = "failed"
            return False
        if typ == "oneshot":
            for line in u.get("Service", "ExecStartPre") + u.get("Service", "ExecStart"):
                if self.exec_line(u, line, env, log) != 0:
                    self.state[name] = "failed"
                    print(f"[runner] {name}: failed", flush=True)
                    return False
            self.state[name] = "active"
            print(f"[runner] {name}: done", flush=True)
            return True
        t = threading.Thread(target=self.supervise, args=(u, log), daemon=True)
        t.start()
        self.threads.append(t)
        self.state[name] = "active"
        return True

    def supervise(self, u, log):
        restart = u.one("Service", "Restart", "no")
        delay = seconds(u.one("Service", "RestartSec", "0.1"))
        while not self.stopping.is_set():
            env = self.env_of(u)
            ok = all(self.exec_line(u, line, env, log) == 0 for line in u.get("Service", "ExecStartPre"))
            rc = None
            if ok:
                p = self.exec_line(u, u.one("Service", "ExecStart"), env, log, wait=False)
                with self.lock:
                    self.generation[u.name] = self.generation.get(u.name, 0) + 1
                while p.poll() is None and not self.stopping.is_set():
                    time.sleep(0.2)
                if p.poll() is None:
                    return
                rc = p.returncode
                log.write(f"[runner] main process exited {rc}: the unit is stopped (ExecStopPost, then its remaining processes are killed)\n")
            else:
                log.write("[runner] ExecStartPre failed\n")
            log.flush()
            if self.stopping.is_set():
                return
            for line in u.get("Service", "ExecStopPost"):
                self.exec_line(u, line, env, log)
            self.stop_unit_processes(u)
            with self.lock:
                asked = u.name in self.restart_wanted
                self.restart_wanted.discard(u.name)
            if asked:
                log.write("[runner] systemctl restart: starting it again\n")
                log.flush()
                continue
            if restart == "no" or (restart == "on-failure" and rc == 0):
                self.state[u.name] = "inactive" if rc == 0 else "failed"
                return
            log.write(f"[runner] Restart={restart}: again in {delay}s\n")
            log.flush()
            self.stopping.wait(delay)

    def systemctl(self, argv):
        verb, rest = argv[0], argv[1:]
        now = "--now" in rest
        names = [a for a in rest if not a.startswith("-")]
        if verb == "daemon-reload":
            self.daemon_reload()
            return 0
        if verb == "enable":
            # [Install] WantedBy=multi-user.target: nothing to link; --now starts them.
            return 0 if not now or all(self.start(n) for n in names) else 1
        if verb == "start":
            return 0 if all(self.start(n) for n in names) else 1
        if verb == "restart":
            return 0 if all(self.restart(n) for n in names) else 1
        print(f"[runner] systemctl {' '.join(argv)}: not supported", flush=True)
        return 1

    def restart(self, name):
        """systemctl restart of a simple unit: stop it as systemd does (SIGTERM to the
        unit's processes, SIGKILL after a third of TimeoutStopSec), run ExecStopPost, start
        it again at once (no RestartSec); returns once the new main process runs."""
        u = self.units.get(name)
        if u is None or u.one("Service", "Type", "simple") != "simple":
            print(f"[runner] systemctl restart {name}: not a simple unit of this host", flush=True)
            return False
        with self.lock:
            if self.state.get(name) != "active":
                return self.start(name)
            before = self.generation.get(name, 0)
            self.restart_wanted.add(name)
        print(f"[runner] restarting {name}", flush=True)
        self.stop_unit_processes(u)
        end = time.time() + 60
        while time.time() < end:
            with self.lock:
                if self.generation.get(name, 0) > before:
                    return True
            time.sleep(0.1)
        print(f"[runner] systemctl restart {name}: not started again within 60 s", flush=True)
        return False

    def serve(self, path):
        """systemctl for commands run in this host later (the shim SYSTEMCTL_SHIM
        installs as /usr/local/sbin/systemctl talks to this socket)."""
        import socketserver

        runner = self

        class H(socketserver.StreamRequestHandler):
            def handle(self):
                import json

                argv = json.loads(self.rfile.readline())
                rc = runner.systemctl(argv)
                self.wfile.write(json.dumps({"rc": rc}).encode() + b"\n")

        if os.path.exists(path):
            os.unlink(path)
        srv = socketserver.ThreadingUnixStreamServer(path, H)
        threading.Thread(target=srv.serve_forever, daemon=True).start()

    def shutdown(self):
        self.stopping.set()
        kill_marked("CIRRUS_BOOT_HOST", os.environ.get("CIRRUS_BOOT_HOST"), grace=5)


def imds(ip):
    """IMDSv2 stand-in on 169.254.169.254:80 of this host's network namespace."""
    token = "boot-check-token"

    class H(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def reply(self, code, body=""):
            b = body.encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(b)))
            self.end_headers()
            self.wfile.write(b)

        def do_PUT(self):
            if self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                self.reply(200, token)
            else:
                self.reply(400)

        def do_GET(self):
            if self.headers.get("X-aws-ec2-metadata-token") != token:
                self.reply(401)
            elif self.path == "/latest/meta-data/local-ipv4":
                self.reply(200, ip)
            else:
                self.reply(404)

    srv = http.server.ThreadingHTTPServer(("169.254.169.254", 80), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()


INSTALL = """#!/bin/sh
# boot check: installs this build ({bin}) instead of downloading the release.
set -eu
install -m 0755 '{bin}' /usr/local/bin/cirrus
/usr/local/bin/cirrus --version
"""

DATA_DISK = """#!/bin/sh
# boot check: a directory of this host stands for the NVMe instance store (no disks to
# find, stripe or format here); mounted where the real script mounts the XFS file system.
set -eu
mnt='{mount}'
mkdir -p "$mnt"
mountpoint -q "$mnt" || mount --bind '{disk}' "$mnt"
mkdir -p "$mnt/objects"
"""

# ssh's stand-in for rolling-upgrade.sh: HOSTEXEC IP 'COMMAND' runs COMMAND in the host
# of that address (its network and mount namespaces), as root, with stdin passed through.
HOSTEXEC = """#!/bin/sh
set -eu
ip=$1
shift
pid=$(cat '{root}/pids/'"$ip")
exec nsenter -t "$pid" -n -m -- env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root sh -c "$*"
"""

# The client workload of the upgrade check: rounds of write + fsync of a new file, read
# back of the last three, stat, readdir, unlink of the one five back, until the stop file
# exists. Each error is recorded (never retried), and the state is written after each round.
WORKLOAD = r"""
import hashlib, json, os, random, sys, time
d, stop, out = sys.argv[1:4]
os.makedirs(d, exist_ok=True)
rng = random.Random(24)
st = {"ok": 0, "errors": [], "slowest": 0.0, "files": {}}
k = 0
while not os.path.exists(stop):
    t = time.time()
    p = f"{d}/f{k}"
    try:
        data = rng.randbytes(rng.choice([4096, 65536, 1 << 20]))
        with open(p, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        st["files"][p] = hashlib.sha256(data).hexdigest()
        for q in list(st["files"])[-3:]:
            with open(q, "rb") as f:
                if hashlib.sha256(f.read()).hexdigest() != st["files"][q]:
                    st["errors"].append(f"round {k}: {q} reads back different bytes")
        os.stat(p)
        names = set(os.listdir(d))
        if not {os.path.basename(q) for q in st["files"]} <= names:
            st["errors"].append(f"round {k}: readdir misses files: {sorted(names)}")
        old = f"{d}/f{k - 5}"
        if old in st["files"]:
            os.unlink(old)
            del st["files"][old]
        st["ok"] += 1
    except OSError as e:
        st["errors"].append(f"round {k}: {e}")
    st["slowest"] = max(st["slowest"], time.time() - t)
    k += 1
    with open(out + ".tmp", "w") as f:
        json.dump(st, f)
    os.replace(out + ".tmp", out)
"""

SYSTEMCTL_SOCKET = "/run/cirrus-boot-systemctl.sock"

SYSTEMCTL_SHIM = """#!{python}
# boot check: systemctl of this host is the unit runner of boot.py (no systemd here).
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect({socket!r})
s.sendall(json.dumps(sys.argv[1:]).encode() + b"\\n")
sys.exit(json.loads(s.makefile().readline())["rc"])
"""


def mount_ids():
    with open("/proc/self/mountinfo") as f:
        return {line.split()[0]: line.split()[4] for line in f}


def cmd_host(args):
    import yaml

    d = args.dir
    # This host's own /etc, /usr/local, /var/lib (overlays: the machine's files below,
    # the host's writes in its directory), /run and /mnt.
    for target, up in (("/etc", "etc"), ("/usr/local", "usr"), ("/var/lib", "var")):
        sh("mount", "-t", "overlay", "overlay", "-o", f"lowerdir={target},upperdir={d}/{up}-up,workdir={d}/{up}-work", target)
    sh("mount", "--bind", f"{d}/run", "/run")
    sh("mount", "--bind", f"{d}/mnt", "/mnt")
    sh("mount", "--bind", f"{d}/tmp", "/tmp")  # e.g. the mount daemon's log file
    # No units of this machine: only the ones the user data writes.
    if os.path.isdir("/etc/systemd/system"):
        sh("mount", "-t", "tmpfs", "tmpfs", "/etc/systemd/system")
    os.makedirs("/etc/systemd/system", exist_ok=True)
    before = mount_ids()
    imds(args.ip)

    ud = open(f"{d}/user-data").read()
    if not ud.startswith("#cloud-config\n"):
        sys.exit("cloud-init: the user data is not a #cloud-config")
    cfg = yaml.safe_load(ud)
    known = {"package_update", "packages", "write_files", "runcmd"}
    if set(cfg) - known:
        sys.exit(f"cloud-init: keys this check does not run: {sorted(set(cfg) - known)}")
    missing = [p for p, exe in (("curl", "curl"), ("fuse3", "fusermount3")) if p in cfg.get("packages", []) and not shutil.which(exe)]
    if missing:
        sys.exit(f"cloud-init: packages {missing} are not installed on this machine")
    print(f"cloud-init: packages {cfg.get('packages', [])}: not installed (no apt here; curl and fusermount3 come from this machine)", flush=True)

    for f in cfg.get("write_files", []):
        path, content = f["path"], f.get("content", "")
        if path == "/usr/local/sbin/cirrus-install":
            content = INSTALL.format(bin=args.bin)
        elif path == "/usr/local/sbin/cirrus-data-disk":
            m = re.search(r"^mnt='([^']+)'$", content, re.M)
            if not m:
                sys.exit("cloud-init: cirrus-data-disk has no mnt='...' line to take the mount point from")
            content = DATA_DISK.format(mount=m.group(1), disk=f"{d}/disk")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as fh:
            fh.write(content)
        os.chmod(path, int(str(f.get("permissions", "0644")), 8))
        print(f"cloud-init: wrote {path}", flush=True)

    runner = Runner(args.name, f"{d}/journal")
    runner.serve(SYSTEMCTL_SOCKET)
    with open("/usr/local/sbin/systemctl", "w") as fh:
        fh.write(SYSTEMCTL_SHIM.format(python=sys.executable, socket=SYSTEMCTL_SOCKET))
    os.chmod("/usr/local/sbin/systemctl", 0o755)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    rc = 0
    for argv in cfg.get("runcmd", []):
        argv = [str(a) for a in argv] if isinstance(argv, list) else ["sh", "-c", argv]
        print(f"cloud-init: runcmd {' '.join(argv)}", flush=True)
        if argv[0] == "systemctl":
            rc = runner.systemctl(argv[1:])
        else:
            rc = subprocess.run(argv).returncode
        if rc != 0:
            print(f"cloud-init: runcmd {' '.join(argv)} failed ({rc})", flush=True)
            break
    if rc == 0:
        print("cloud-init: done; the units keep running", flush=True)
        stop.wait()
    runner.shutdown()
    # Unmount what the units mounted (FUSE, the data directory), newest first, before the
    # namespace goes (only mounts made after the host's own set-up above).
    for mid, m in reversed(list(mount_ids().items())):
        if mid not in before:
            subprocess.run(["umount", "-l", m])
    return 0 if rc == 0 else 1


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--endpoint", required=True)
    r.add_argument("--region", required=True)
    r.add_argument("--name", required=True)
    r.add_argument("--bin", required=True)
    r.add_argument("--mount-command", required=True)
    r.add_argument("--timeout", type=float, default=150)
    r.add_argument("--workdir", default="/var/tmp")
    h = sub.add_parser("host")
    h.add_argument("--dir", required=True)
    h.add_argument("--ip", required=True)
    h.add_argument("--bin", required=True)
    h.add_argument("--name", required=True)
    args = p.parse_args()
    return cmd_run(args) if args.cmd == "run" else cmd_host(args)


if __name__ == "__main__":
    sys.exit(main())
