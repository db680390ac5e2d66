//! Findings and how they are shown: one line per check naming the host, the port, what was
//! tried and the likely fix, as text for people or JSON for scripts. The exit status is
//! decided here too: any failure makes `cirrus doctor` exit non-zero.

use serde::Serialize;
use std::fmt::Write as _;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

/// One check's result.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub status: Status,
    /// Short name of the check: dns, tcp, grpc, metrics, cluster-id, clock, address,
    /// leader, server, o_direct, free-space, fuse, fusermount3, mountpoint.
    pub check: &'static str,
    /// What was checked: "meta 10.0.1.5:7001 (gRPC)", "local /var/lib/cirrus/data".
    pub target: String,
    pub host: Option<String>,
    pub port: Option<u16>,
    /// What was found.
    pub message: String,
    /// What doctor did to find it.
    pub tried: String,
    /// The likely fix, for warnings and failures.
    pub fix: Option<String>,
}

impl Finding {
    pub fn ok(check: &'static str, target: impl Into<String>, message: impl Into<String>) -> Self {
        Finding {
            status: Status::Ok,
            check,
            target: target.into(),
            host: None,
            port: None,
            message: message.into(),
            tried: String::new(),
            fix: None,
        }
    }

    pub fn warn(
        check: &'static str,
        target: impl Into<String>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Finding {
            status: Status::Warn,
            fix: Some(fix.into()),
            ..Finding::ok(check, target, message)
        }
    }

    pub fn fail(
        check: &'static str,
        target: impl Into<String>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Finding {
            status: Status::Fail,
            fix: Some(fix.into()),
            ..Finding::ok(check, target, message)
        }
    }

    pub fn at(mut self, host: &str, port: Option<u16>) -> Self {
        self.host = Some(host.to_string());
        self.port = port;
        self
    }

    pub fn tried(mut self, tried: impl Into<String>) -> Self {
        self.tried = tried.into();
        self
    }

    /// Turns a warning into a failure (used by `--ready`, where "not yet" is not ready).
    pub fn strict(mut self, strict: bool) -> Self {
        if strict && self.status == Status::Warn {
            self.status = Status::Fail;
        }
        self
    }
}

/// Everything doctor found, plus the few facts worth a header line.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub ok: bool,
    pub cluster_id: Option<String>,
    pub leader: Option<String>,
    pub meta_endpoints: Vec<String>,
    pub data_endpoints: Vec<String>,
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn failures(&self) -> usize {
        self.count(Status::Fail)
    }

    pub fn count(&self, s: Status) -> usize {
        self.findings.iter().filter(|f| f.status == s).count()
    }

    pub fn finish(&mut self) {
        self.ok = self.failures() == 0;
    }

    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "cirrus doctor: cluster {}, leader {}; {} meta and {} data endpoints",
            self.cluster_id.as_deref().unwrap_or("(unknown)"),
            self.leader.as_deref().unwrap_or("(none)"),
            self.meta_endpoints.len(),
            self.data_endpoints.len()
        );
        let width = self
            .findings
            .iter()
            .map(|f| f.target.len())
            .max()
            .unwrap_or(0)
            .min(48);
        for f in &self.findings {
            let tag = match f.status {
                Status::Ok => "ok  ",
                Status::Warn => "WARN",
                Status::Fail => "FAIL",
            };
            let _ = writeln!(
                out,
                "{tag}  {:<11} {:<width$}  {}",
                f.check, f.target, f.message
            );
            if f.status != Status::Ok {
                if !f.tried.is_empty() {
                    let _ = writeln!(out, "      tried: {}", f.tried);
                }
                if let Some(fix) = &f.fix {
                    let _ = writeln!(out, "      fix:   {fix}");
                }
            }
        }
        let _ = writeln!(
            out,
            "{}: {} ok, {} warnings, {} failures",
            if self.failures() == 0 {
                "PASS"
            } else {
                "FAILED"
            },
            self.count(Status::Ok),
            self.count(Status::Warn),
            self.failures()
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_shown_with_host_port_tried_and_fix_and_fails_the_report() {
        let mut r = Report::default();
        r.findings
            .push(Finding::ok("tcp", "meta 10.0.0.1:7001 (gRPC)", "connected"));
        r.findings.push(
            Finding::fail(
                "tcp",
                "data 10.0.1.12:7101 (gRPC)",
                "7101/tcp on 10.0.1.12 timed out after 3s",
                "a firewall or security group drops 7101/tcp to 10.0.1.12",
            )
            .at("10.0.1.12", Some(7101))
            .tried("TCP connect from this machine"),
        );
        r.finish();
        assert!(!r.ok);
        let text = r.to_text();
        assert!(text.contains("FAIL  tcp"), "{text}");
        assert!(text.contains("7101/tcp on 10.0.1.12 timed out"), "{text}");
        assert!(
            text.contains("tried: TCP connect from this machine"),
            "{text}"
        );
        assert!(
            text.contains("fix:   a firewall or security group"),
            "{text}"
        );
        assert!(
            text.contains("FAILED: 1 ok, 0 warnings, 1 failures"),
            "{text}"
        );
    }

    #[test]
    fn warnings_alone_pass_unless_made_strict() {
        let mut r = Report::default();
        r.findings.push(Finding::warn(
            "leader",
            "meta group",
            "no leader yet",
            "wait",
        ));
        r.finish();
        assert!(r.ok);
        let mut r = Report::default();
        r.findings
            .push(Finding::warn("leader", "meta group", "no leader yet", "wait").strict(true));
        r.finish();
        assert!(!r.ok);
    }
}
