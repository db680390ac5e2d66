//! Results of one run and their three renderings: a text table with ratios against the
//! baselines, JSON for machines, and a hand-written SVG bar chart (no plotting crate).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The systems a run compares; Cirrus is always the numerator of a ratio.
pub const SYSTEMS: [&str; 5] = ["cirrus", "local", "fuse-null", "gluster", "ceph"];

/// One measured number.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// Which comparison it belongs to, e.g. `seq R=1`, `meta R=1 16 threads`.
    pub section: String,
    /// What was run, e.g. `write direct`, `create`.
    pub job: String,
    /// `cirrus`, `local`, `fuse-null` (the FUSE ceiling), `gluster` or `ceph`.
    pub system: String,
    /// `MB/s` or `ops/s`.
    pub unit: String,
    pub value: f64,
}

/// The machine a run was taken on.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Machine {
    pub nproc: usize,
    pub mem_gib: f64,
    pub kernel: String,
    pub disk: String,
}

/// Everything a run produced.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub machine: Machine,
    /// The command-line parameters, as text.
    pub params: BTreeMap<String, String>,
    pub records: Vec<Record>,
    /// What did not run and why (a baseline that could not start, a failed job).
    pub notes: Vec<String>,
}

impl Report {
    pub fn push(&mut self, section: &str, job: &str, system: &str, unit: &str, value: f64) {
        self.records.push(Record {
            section: section.to_string(),
            job: job.to_string(),
            system: system.to_string(),
            unit: unit.to_string(),
            value,
        });
    }

    pub fn note(&mut self, text: impl Into<String>) {
        let text = text.into();
        eprintln!("note: {text}");
        self.notes.push(text);
    }

    /// Sections in first-seen order, each with its jobs in first-seen order.
    fn layout(&self) -> Vec<(String, Vec<(String, String)>)> {
        let mut out: Vec<(String, Vec<(String, String)>)> = Vec::new();
        for r in &self.records {
            let idx = match out.iter().position(|(s, _)| *s == r.section) {
                Some(i) => i,
                None => {
                    out.push((r.section.clone(), Vec::new()));
                    out.len() - 1
                }
            };
            let jobs = &mut out[idx].1;
            if !jobs.iter().any(|(j, _)| *j == r.job) {
                jobs.push((r.job.clone(), r.unit.clone()));
            }
        }
        out
    }

    fn value(&self, section: &str, job: &str, system: &str) -> Option<f64> {
        self.records
            .iter()
            .find(|r| r.section == section && r.job == job && r.system == system)
            .map(|r| r.value)
    }

    /// The text table: one block per section, a column per system, then the ratios.
    pub fn table(&self) -> String {
        let mut s = String::new();
        for (section, jobs) in self.layout() {
            let _ = writeln!(s, "\n## {section}");
            let _ = write!(s, "{:<22} {:>6}", "job", "unit");
            for sys in SYSTEMS {
                let _ = write!(s, " {sys:>10}");
            }
            for base in &SYSTEMS[1..] {
                let _ = write!(s, " {:>10}", format!("c/{}", short(base)));
            }
            s.push('\n');
            for (job, unit) in jobs {
                let _ = write!(s, "{job:<22} {unit:>6}");
                for sys in SYSTEMS {
                    match self.value(&section, &job, sys) {
                        Some(v) => {
                            let _ = write!(s, " {:>10}", fmt_num(v));
                        }
                        None => {
                            let _ = write!(s, " {:>10}", "-");
                        }
                    }
                }
                for base in &SYSTEMS[1..] {
                    let ratio = match (
                        self.value(&section, &job, "cirrus"),
                        self.value(&section, &job, base),
                    ) {
                        (Some(c), Some(b)) if b > 0.0 => format!("{:.2}x", c / b),
                        _ => "-".to_string(),
                    };
                    let _ = write!(s, " {ratio:>10}");
                }
                s.push('\n');
            }
        }
        if !self.notes.is_empty() {
            s.push_str("\nnotes:\n");
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        s
    }

    /// The same table as Markdown, for benches/README.md.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        for (section, jobs) in self.layout() {
            let _ = writeln!(s, "\n**{section}**\n");
            s.push_str("| job | unit |");
            for sys in SYSTEMS {
                let _ = write!(s, " {sys} |");
            }
            for base in &SYSTEMS[1..] {
                let _ = write!(s, " cirrus/{base} |");
            }
            s.push('\n');
            s.push_str(&"|---".repeat(2 + SYSTEMS.len() * 2 - 1));
            s.push_str("|\n");
            for (job, unit) in jobs {
                let _ = write!(s, "| {job} | {unit} |");
                for sys in SYSTEMS {
                    let v = self
                        .value(&section, &job, sys)
                        .map(fmt_num)
                        .unwrap_or_else(|| "-".into());
                    let _ = write!(s, " {v} |");
                }
                for base in &SYSTEMS[1..] {
                    let ratio = match (
                        self.value(&section, &job, "cirrus"),
                        self.value(&section, &job, base),
                    ) {
                        (Some(c), Some(b)) if b > 0.0 => format!("{:.2}x", c / b),
                        _ => "-".to_string(),
                    };
                    let _ = write!(s, " {ratio} |");
                }
                s.push('\n');
            }
        }
        s
    }

    /// A grouped horizontal bar chart: one group per (section, job), one bar per system,
    /// bar lengths relative to the largest value of the group (units differ between jobs).
    pub fn svg(&self) -> String {
        const W: f64 = 900.0;
        const LABEL: f64 = 260.0;
        const BAR_H: f64 = 12.0;
        const GAP: f64 = 10.0;
        let colors = [
            ("cirrus", "#1f77b4"),
            ("local", "#7f7f7f"),
            ("fuse-null", "#bcbd22"),
            ("gluster", "#ff7f0e"),
            ("ceph", "#d62728"),
        ];
        let mut body = String::new();
        let mut y = 40.0;
        for (section, jobs) in self.layout() {
            let _ = writeln!(
                body,
                r#"<text x="10" y="{y}" font-weight="bold" font-size="14">{}</text>"#,
                esc(&section)
            );
            y += 14.0;
            for (job, unit) in jobs {
                let vals: Vec<(&str, &str, f64)> = colors
                    .iter()
                    .filter_map(|(sys, c)| self.value(&section, &job, sys).map(|v| (*sys, *c, v)))
                    .collect();
                let max = vals.iter().map(|v| v.2).fold(0.0, f64::max);
                let group_h = vals.len() as f64 * BAR_H;
                let _ = writeln!(
                    body,
                    r#"<text x="20" y="{:.1}" font-size="12">{} ({})</text>"#,
                    y + group_h / 2.0 + 4.0,
                    esc(&job),
                    esc(&unit)
                );
                for (sys, color, v) in vals {
                    let len = if max > 0.0 {
                        (W - LABEL - 120.0) * v / max
                    } else {
                        0.0
                    };
                    let _ = writeln!(
                        body,
                        r#"<rect x="{LABEL}" y="{y:.1}" width="{len:.1}" height="{:.1}" fill="{color}"><title>{sys}: {}</title></rect><text x="{:.1}" y="{:.1}" font-size="10">{sys} {}</text>"#,
                        BAR_H - 2.0,
                        fmt_num(v),
                        LABEL + len + 4.0,
                        y + BAR_H - 3.0,
                        fmt_num(v)
                    );
                    y += BAR_H;
                }
                y += GAP;
            }
            y += GAP;
        }
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{:.0}" font-family="sans-serif">"#,
            y + 20.0
        );
        let _ = writeln!(
            s,
            r#"<rect width="100%" height="100%" fill="white"/><text x="10" y="20" font-size="16">Cirrus vs local disk, the FUSE ceiling, GlusterFS, CephFS (same run, same machine)</text>"#
        );
        s.push_str(&body);
        s.push_str("</svg>\n");
        s
    }
}

fn short(sys: &str) -> &str {
    match sys {
        "gluster" => "glus",
        "fuse-null" => "fuse",
        other => other,
    }
}

/// Three significant figures, no exponent.
pub fn fmt_num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        let mut r = Report::default();
        r.push("seq R=1", "write direct", "cirrus", "MB/s", 500.0);
        r.push("seq R=1", "write direct", "local", "MB/s", 550.0);
        r.push("seq R=1", "write direct", "gluster", "MB/s", 100.0);
        r.push("meta R=1 1 thread", "create", "cirrus", "ops/s", 3000.0);
        r.note("ceph: could not start");
        r
    }

    #[test]
    fn table_shows_ratios_against_each_baseline_and_dashes_for_missing() {
        let t = sample().table();
        let line = t
            .lines()
            .find(|l| l.starts_with("write direct"))
            .expect("row");
        assert!(line.contains("0.91x"), "{line}");
        assert!(line.contains("5.00x"), "{line}");
        // No ceph value: its column and its ratio are dashes.
        assert!(line.trim_end().ends_with('-'), "{line}");
        assert!(t.contains("ceph: could not start"));
    }

    #[test]
    fn json_round_trips() {
        let r = sample();
        let text = serde_json::to_string(&r).expect("json");
        let back: Report = serde_json::from_str(&text).expect("parse");
        assert_eq!(back.records, r.records);
    }

    #[test]
    fn svg_has_one_bar_per_value() {
        let svg = sample().svg();
        assert_eq!(svg.matches("<rect x=").count(), 4);
        assert!(svg.starts_with("<svg"));
    }
}
