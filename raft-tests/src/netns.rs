//! A network lab: one Linux network namespace per node, each with a veth into one bridge
//! in the host namespace, so any node or any link can be cut with iptables inside the
//! namespaces while the test harness (in the host namespace, on the bridge address)
//! still reaches whichever nodes the fault leaves reachable.
//!
//! Addresses: subnet 10.77.K.0/24 (K picked free per lab, so concurrent tests do not
//! collide), the host side is .1, node j is .(10 + j). Cuts are iptables DROP rules, so
//! packets vanish silently and peers see timeouts, as in a real partition (a blackhole
//! route would fail fast with EINVAL, which no real network does).
//!
//! Needs root (CAP_NET_ADMIN) and the `ip` and `iptables` commands; `NetLab::available`
//! says whether they work here, and callers fall back to 127.0.0.1 when not.

use anyhow::{bail, Context, Result};
use std::process::Command;

/// One namespace.
#[derive(Clone, Debug)]
pub struct NsNode {
    pub ns: String,
    pub ip: String,
    veth: String,
}

/// The namespaces, the bridge, and the cuts currently in place.
#[derive(Debug)]
pub struct NetLab {
    pub subnet: u8,
    bridge: String,
    pub nodes: Vec<NsNode>,
    /// (from, to) node indices whose packets are dropped (from -> to direction).
    cuts: Vec<(usize, usize)>,
    /// Nodes cut from the host (the harness and its clients).
    host_cuts: Vec<usize>,
}

/// Runs a command to completion; its trimmed stdout, or an error naming the command and
/// its stderr. Shared with the disk faults.
pub(crate) fn run_cmd(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("run {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn run(args: &[&str]) -> Result<()> {
    run_cmd(args).map(drop)
}

impl NetLab {
    /// Whether namespaces can be made here (root, `ip`, `iptables`), with the reason if not.
    pub fn available() -> std::result::Result<(), String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root: network namespaces need CAP_NET_ADMIN".into());
        }
        for tool in ["ip", "iptables"] {
            let ok = Command::new(tool)
                .arg("-V")
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if !ok {
                return Err(format!(
                    "`{tool}` not found (apt-get install -y iproute2 iptables)"
                ));
            }
        }
        Ok(())
    }

    /// Creates `n` namespaces on a fresh bridge.
    pub fn create(n: usize) -> Result<NetLab> {
        let start = (std::process::id() % 200) as u8;
        let mut last = None;
        for k in 0..200u8 {
            let subnet = 20 + (start.wrapping_add(k)) % 200;
            let bridge = format!("czb{subnet}");
            // Creating the bridge is the atomic claim of subnet K.
            match run(&["ip", "link", "add", &bridge, "type", "bridge"]) {
                Ok(()) => {
                    let mut lab = NetLab {
                        subnet,
                        bridge,
                        nodes: Vec::new(),
                        cuts: Vec::new(),
                        host_cuts: Vec::new(),
                    };
                    lab.setup(n).context("set up the network lab")?;
                    return Ok(lab);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no free subnet")))
    }

    fn setup(&mut self, n: usize) -> Result<()> {
        let host_ip = format!("10.77.{}.1/24", self.subnet);
        run(&["ip", "addr", "add", &host_ip, "dev", &self.bridge])?;
        run(&["ip", "link", "set", &self.bridge, "up"])?;
        for j in 0..n {
            let ns = format!("cirrus-{}-{j}", self.subnet);
            let veth = format!("cz{}v{j}", self.subnet);
            let ip = format!("10.77.{}.{}", self.subnet, 10 + j);
            // Record first so Drop cleans up a half-made node too.
            self.nodes.push(NsNode {
                ns: ns.clone(),
                ip: ip.clone(),
                veth: veth.clone(),
            });
            run(&["ip", "netns", "add", &ns])?;
            run(&[
                "ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            run(&["ip", "link", "set", &veth, "master", &self.bridge, "up"])?;
            let cidr = format!("{ip}/24");
            run(&[
                "ip", "netns", "exec", &ns, "ip", "addr", "add", &cidr, "dev", "eth0",
            ])?;
            run(&[
                "ip", "netns", "exec", &ns, "ip", "link", "set", "eth0", "up",
            ])?;
            run(&["ip", "netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    pub fn host_ip(&self) -> String {
        format!("10.77.{}.1", self.subnet)
    }

    /// Drops packets from node `from` to node `to` (one direction only).
    pub fn cut(&mut self, from: usize, to: usize) -> Result<()> {
        let (f, t) = (&self.nodes[from], &self.nodes[to]);
        run(&[
            "ip", "netns", "exec", &f.ns, "iptables", "-A", "OUTPUT", "-d", &t.ip, "-j", "DROP",
        ])?;
        self.cuts.push((from, to));
        Ok(())
    }

    /// Drops packets for every (from, to) pair, with one `iptables-restore` per source
    /// namespace (a split of nine nodes is dozens of rules; one exec each is slow).
    pub fn cut_set(&mut self, pairs: &[(usize, usize)]) -> Result<()> {
        let mut by_src: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
        for &(f, t) in pairs {
            if f != t {
                by_src.entry(f).or_default().push(t);
            }
        }
        for (f, tos) in by_src {
            let mut rules = String::from("*filter\n");
            for t in &tos {
                rules.push_str(&format!("-A OUTPUT -d {}/32 -j DROP\n", self.nodes[*t].ip));
            }
            rules.push_str("COMMIT\n");
            let ns = self.nodes[f].ns.clone();
            let mut child = Command::new("ip")
                .args(["netns", "exec", &ns, "iptables-restore", "--noflush"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .context("spawn iptables-restore")?;
            if let Some(mut i) = child.stdin.take() {
                use std::io::Write;
                i.write_all(rules.as_bytes())
                    .context("write rules to iptables-restore")?;
            }
            let out = child.wait_with_output().context("wait iptables-restore")?;
            if !out.status.success() {
                bail!(
                    "iptables-restore in {ns} failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            self.cuts.extend(tos.iter().map(|&t| (f, t)));
        }
        Ok(())
    }

    /// Cuts both directions between `a` and `b`.
    pub fn cut_both(&mut self, a: usize, b: usize) -> Result<()> {
        self.cut(a, b)?;
        self.cut(b, a)
    }

    /// Cuts node `j` from the host (the harness and clients), both directions.
    pub fn cut_host(&mut self, j: usize) -> Result<()> {
        let host = self.host_ip();
        let n = &self.nodes[j];
        run(&[
            "ip", "netns", "exec", &n.ns, "iptables", "-A", "OUTPUT", "-d", &host, "-j", "DROP",
        ])?;
        run(&[
            "ip", "netns", "exec", &n.ns, "iptables", "-A", "INPUT", "-s", &host, "-j", "DROP",
        ])?;
        self.host_cuts.push(j);
        Ok(())
    }

    /// Cuts node `j` from every other node (not from the host).
    pub fn isolate(&mut self, j: usize) -> Result<()> {
        let pairs: Vec<(usize, usize)> = (0..self.nodes.len())
            .filter(|&k| k != j)
            .flat_map(|k| [(j, k), (k, j)])
            .collect();
        self.cut_set(&pairs)
    }

    /// Removes every cut.
    pub fn heal(&mut self) -> Result<()> {
        let mut first_err = None;
        for n in &self.nodes {
            if let Err(e) = run(&["ip", "netns", "exec", &n.ns, "iptables", "-F"]) {
                first_err.get_or_insert(e);
            }
        }
        self.cuts.clear();
        self.host_cuts.clear();
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Current cuts, for the report.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self.cuts.iter().map(|(a, b)| format!("{a}->{b}")).collect();
        parts.extend(self.host_cuts.iter().map(|j| format!("host<->{j}")));
        parts.join(" ")
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        for n in &self.nodes {
            let _ = run(&["ip", "netns", "del", &n.ns]);
            let _ = run(&["ip", "link", "del", &n.veth]);
        }
        let _ = run(&["ip", "link", "del", &self.bridge]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a one-shot TCP echo inside `ns` and connects to it from `from_ns` (None: host).
    fn reachable(from_ns: Option<&str>, ip: &str, port: u16, ns: &str) -> bool {
        let script = format!(
            "import socket;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);\
             s.bind(('{ip}',{port}));s.listen(1);s.settimeout(3)\n\
             try:\n  c,_=s.accept();c.send(b'ok');c.close()\nexcept Exception: pass"
        );
        let mut server = Command::new("ip")
            .args(["netns", "exec", ns, "python3", "-c", &script])
            .spawn()
            .expect("spawn listener");
        let probe = format!(
            "import socket,time\n\
             for i in range(40):\n  \
               try:\n    s=socket.create_connection(('{ip}',{port}),timeout=1);print(s.recv(2).decode());break\n  \
               except ConnectionRefusedError: time.sleep(0.05)\n  \
               except Exception: break"
        );
        let mut cmd = match from_ns {
            Some(f) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", f, "python3", "-c", &probe]);
                c
            }
            None => {
                let mut c = Command::new("python3");
                c.args(["-c", &probe]);
                c
            }
        };
        let out = cmd.output().expect("run probe");
        let _ = server.kill();
        let _ = server.wait();
        String::from_utf8_lossy(&out.stdout).contains("ok")
    }

    #[test]
    fn cut_drops_one_direction_and_heal_restores_it() {
        if let Err(why) = NetLab::available() {
            panic!("this test needs network namespaces: {why}");
        }
        let mut lab = NetLab::create(2).expect("create lab");
        let (a, b) = (lab.nodes[0].clone(), lab.nodes[1].clone());
        assert!(reachable(None, &b.ip, 9100, &b.ns), "host reaches node 1");
        assert!(
            reachable(Some(&a.ns), &b.ip, 9101, &b.ns),
            "node 0 reaches node 1"
        );
        lab.cut(0, 1).expect("cut");
        assert!(
            !reachable(Some(&a.ns), &b.ip, 9102, &b.ns),
            "cut 0->1 drops"
        );
        assert!(
            reachable(None, &b.ip, 9103, &b.ns),
            "host still reaches node 1"
        );
        lab.heal().expect("heal");
        assert!(reachable(Some(&a.ns), &b.ip, 9104, &b.ns), "healed");
    }
}
