//! What a run prints and writes: the summary table, `history.json`, `summary.json` (what
//! CI reads) and `timeline.html` (one self-contained page: an SVG of every operation and
//! fault over time, with tooltips).

use super::RunRecord;
use crate::check::Status;
use crate::history::Outcome;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// Percentile of sorted seconds.
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[derive(Default)]
struct Row {
    ok: usize,
    fail: usize,
    info: usize,
    lat: Vec<f64>,
}

/// The machine-readable summary (CI parses it).
#[derive(Serialize)]
pub struct Summary {
    pub seed: u64,
    pub violations: usize,
    pub checks: Vec<(String, String)>,
    pub faults_injected: usize,
    pub ops: usize,
    pub longest_call: (String, f64),
    pub failovers_s: Vec<f64>,
    pub failovers_by_kind: Vec<(String, f64)>,
    pub rebuilds_s: Vec<f64>,
    pub heal_serves_s: Option<f64>,
    pub heal_converged_s: Option<f64>,
    /// Peak resident memory of every node, MiB.
    pub peak_rss_mib: Vec<(String, f64)>,
}

fn stats(v: &[f64]) -> String {
    if v.is_empty() {
        return "none measured".into();
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    format!(
        "n={} min {:.2}s median {:.2}s max {:.2}s",
        s.len(),
        s[0],
        pct(&s, 0.5),
        s[s.len() - 1]
    )
}

/// The summary table (printed and written to `summary.txt`) and the JSON summary.
pub fn summary(r: &RunRecord) -> (String, Summary) {
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    let mut longest = (String::from("none"), 0.0f64);
    for (_, op) in &r.meta_history {
        let row = rows.entry(format!("meta {}", op.op.kind())).or_default();
        let d = op.complete_ns.saturating_sub(op.invoke_ns) as f64 / 1e9;
        match op.outcome {
            Outcome::Ok { .. } => {
                row.ok += 1;
                row.lat.push(d);
            }
            Outcome::Fail { .. } => row.fail += 1,
            Outcome::Info { .. } => row.info += 1,
        }
        if d > longest.1 {
            longest = (
                format!("meta {} #{} ({})", op.op.kind(), op.id, op.outcome_name()),
                d,
            );
        }
    }
    for e in &r.data_events {
        let row = rows.entry(format!("data {}", e.kind)).or_default();
        let d = e.complete_ns.saturating_sub(e.invoke_ns) as f64 / 1e9;
        match e.outcome.as_str() {
            "ok" => {
                row.ok += 1;
                row.lat.push(d);
            }
            "info" => row.info += 1,
            _ => row.fail += 1,
        }
        if d > longest.1 {
            longest = (
                format!(
                    "data {} file {} slot {} ({})",
                    e.kind, e.file, e.slot, e.outcome
                ),
                d,
            );
        }
    }
    for p in &r.posix {
        let row = rows.entry("posix exerciser run".into()).or_default();
        match p.outcome.as_str() {
            "ok" => row.ok += 1,
            "unavailable" => row.info += 1,
            _ => row.fail += 1,
        }
        row.lat.push(p.slowest_s);
        if p.slowest_s > longest.1 {
            longest = (
                format!("posix call in exerciser seed {}", p.seed),
                p.slowest_s,
            );
        }
    }
    let mut t = String::new();
    let _ = writeln!(t, "\n=== cirrus-chaos seed {} ===", r.seed);
    let _ = writeln!(t, "network: {}", r.net);
    let _ = writeln!(t, "options: {}", r.options);
    let _ = writeln!(
        t,
        "\n{:<22} {:>6} {:>6} {:>6} {:>8} {:>8} {:>8} {:>8}",
        "operation", "ok", "fail", "info", "p50 ms", "p90 ms", "p99 ms", "max ms"
    );
    let mut total = 0;
    for (k, row) in &mut rows {
        row.lat.sort_by(|a, b| a.total_cmp(b));
        total += row.ok + row.fail + row.info;
        let ms = |p: f64| pct(&row.lat, p) * 1e3;
        let _ = writeln!(
            t,
            "{:<22} {:>6} {:>6} {:>6} {:>8.1} {:>8.1} {:>8.1} {:>8.1}",
            k,
            row.ok,
            row.fail,
            row.info,
            ms(0.5),
            ms(0.9),
            ms(0.99),
            row.lat.last().copied().unwrap_or(0.0) * 1e3
        );
    }
    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    for f in &r.faults {
        *by_kind.entry(f.kind.as_str()).or_default() += 1;
    }
    let _ = writeln!(
        t,
        "\nfaults injected: {} ({})",
        r.faults.len(),
        by_kind
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(t, "longest call: {} {:.2}s", longest.0, longest.1);
    let _ = writeln!(
        t,
        "meta failover (leader-aimed faults -> new leader): {}",
        stats(&r.failovers_s)
    );
    let mut kinds: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for (k, v) in &r.failovers_by_kind {
        kinds.entry(k.as_str()).or_default().push(*v);
    }
    for (k, v) in kinds {
        let _ = writeln!(t, "    after {k}: {}", stats(&v));
    }
    let _ = writeln!(
        t,
        "chain rebuild (data server lost -> every chain at full R): {}",
        stats(&r.rebuilds_s)
    );
    let f = |x: Option<f64>| {
        x.map(|s| format!("{s:.2}s"))
            .unwrap_or_else(|| "never".into())
    };
    let _ = writeln!(
        t,
        "heal: serving again after {}, converged after a further {}",
        f(r.heal_serves_s),
        f(r.heal_converged_s)
    );
    let _ = writeln!(t, "\nchecks:");
    let mut violations = 0;
    for c in &r.checks {
        let st = match c.status {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Unknown => "UNKNOWN",
        };
        let _ = writeln!(t, "  {:<22} {:<7} {}", c.name, st, c.summary);
        for v in c.violations.iter().take(10) {
            let _ = writeln!(t, "      violation: {v}");
        }
        if c.violations.len() > 10 {
            let _ = writeln!(
                t,
                "      ... {} more in history.json",
                c.violations.len() - 10
            );
        }
        violations += c.violations.len();
    }
    for n in &r.notes {
        let _ = writeln!(t, "note: {n}");
    }
    let _ = writeln!(
        t,
        "\nviolations: {violations}   (seed {}; replay with --seed {})",
        r.seed, r.seed
    );
    let s = Summary {
        seed: r.seed,
        violations,
        checks: r
            .checks
            .iter()
            .map(|c| (c.name.to_string(), format!("{:?}", c.status).to_lowercase()))
            .collect(),
        faults_injected: r.faults.len(),
        ops: total,
        longest_call: longest,
        failovers_s: r.failovers_s.clone(),
        failovers_by_kind: r.failovers_by_kind.clone(),
        rebuilds_s: r.rebuilds_s.clone(),
        heal_serves_s: r.heal_serves_s,
        heal_converged_s: r.heal_converged_s,
        peak_rss_mib: r
            .memory
            .iter()
            .map(|m| (m.node.clone(), m.peak_rss_bytes as f64 / (1 << 20) as f64))
            .collect(),
    };
    (t, s)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The timeline page: lanes of faults per target, then metadata ops per client process
/// slot, data calls per file, POSIX runs; color by outcome; hover for details.
pub fn timeline_html(r: &RunRecord) -> String {
    let end_ns = r
        .meta_history
        .iter()
        .map(|(_, o)| o.complete_ns)
        .chain(r.data_events.iter().map(|e| e.complete_ns))
        .chain(r.faults.iter().map(|f| f.end_ns.unwrap_or(f.start_ns)))
        .chain(r.posix.iter().map(|p| p.end_ns))
        .max()
        .unwrap_or(1)
        .max(1);
    let width = 1600.0;
    let left = 160.0;
    let x = |ns: u64| left + (ns as f64 / end_ns as f64) * (width - left - 10.0);
    let lane_h = 14.0;
    let mut lanes: Vec<String> = Vec::new();
    let mut body = String::new();
    let lane_of = |name: String, lanes: &mut Vec<String>| -> usize {
        if let Some(i) = lanes.iter().position(|l| *l == name) {
            i
        } else {
            lanes.push(name);
            lanes.len() - 1
        }
    };
    let rect = |lane: usize, a: u64, b: u64, color: &str, tip: &str, body: &mut String| {
        let y = 30.0 + lane as f64 * lane_h;
        let (xa, xb) = (x(a), x(b));
        let _ = write!(
            body,
            "<rect x=\"{xa:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{color}\"><title>{}</title></rect>",
            (xb - xa).max(1.0),
            lane_h - 3.0,
            esc(tip)
        );
    };
    for f in &r.faults {
        let lane = lane_of(format!("fault {}", f.target), &mut lanes);
        let end = f.end_ns.unwrap_or(f.start_ns + end_ns / 400);
        rect(
            lane,
            f.start_ns,
            end,
            "#8e44ad",
            &format!(
                "{} {} {:.2}s..{:.2}s {}",
                f.kind,
                f.target,
                f.start_ns as f64 / 1e9,
                end as f64 / 1e9,
                f.note
            ),
            &mut body,
        );
    }
    for (g, o) in &r.meta_history {
        let lane = lane_of(
            format!("meta proc {}", o.process % 8 + (o.process >> 32) * 8),
            &mut lanes,
        );
        let color = match o.outcome {
            Outcome::Ok { .. } => "#27ae60",
            Outcome::Fail { .. } => "#e67e22",
            Outcome::Info { .. } => "#c0392b",
        };
        rect(
            lane,
            o.invoke_ns,
            o.complete_ns,
            color,
            &format!(
                "#{} group {g} {:?} -> {:?} via {}",
                o.id, o.op, o.outcome, o.node
            ),
            &mut body,
        );
    }
    for e in &r.data_events {
        let lane = lane_of(format!("data file {}", e.file), &mut lanes);
        let color = match e.outcome.as_str() {
            "ok" => "#2980b9",
            "info" => "#c0392b",
            _ => "#e67e22",
        };
        rect(
            lane,
            e.invoke_ns,
            e.complete_ns,
            color,
            &format!(
                "{} slot {} seq {} {} {}",
                e.kind, e.slot, e.seq, e.outcome, e.detail
            ),
            &mut body,
        );
    }
    for p in &r.posix {
        let lane = lane_of("posix exerciser".into(), &mut lanes);
        let color = match p.outcome.as_str() {
            "ok" => "#16a085",
            "unavailable" => "#c0392b",
            _ => "#000000",
        };
        rect(
            lane,
            p.start_ns,
            p.end_ns,
            color,
            &format!("seed {} {} ops, {}: {}", p.seed, p.ops, p.outcome, p.detail),
            &mut body,
        );
    }
    let height = 60.0 + lanes.len() as f64 * lane_h;
    let mut labels = String::new();
    for (i, l) in lanes.iter().enumerate() {
        let _ = write!(
            labels,
            "<text x=\"4\" y=\"{:.1}\" font-size=\"10\">{}</text>",
            30.0 + i as f64 * lane_h + 9.0,
            esc(l)
        );
    }
    let mut ticks = String::new();
    let secs = end_ns / 1_000_000_000;
    let step = (secs / 20).max(1);
    for s in (0..=secs).step_by(step as usize) {
        let xx = x(s * 1_000_000_000);
        let _ = write!(
            ticks,
            "<line x1=\"{xx:.1}\" y1=\"22\" x2=\"{xx:.1}\" y2=\"{height:.1}\" stroke=\"#eee\"/><text x=\"{xx:.1}\" y=\"18\" font-size=\"10\">{s}s</text>"
        );
    }
    let (summary, _) = summary(r);
    format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>cirrus-chaos seed {seed}</title>\
         <style>body{{font-family:sans-serif;margin:10px}} pre{{font-size:12px}}</style></head><body>\
         <h3>cirrus-chaos seed {seed}</h3>\
         <p>purple: faults; green/orange/red: metadata ok/fail/unknown; blue: data calls ok; \
         teal: POSIX exerciser runs. Hover for details.</p>\
         <svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\">{ticks}{labels}{body}</svg>\
         <pre>{summary}</pre></body></html>",
        seed = r.seed,
        summary = esc(&summary),
    )
}

/// Writes `history.json`, `summary.json`, `summary.txt` and `timeline.html` into `dir`;
/// returns the printed table and the violation count.
pub fn write_all(r: &RunRecord, dir: &Path) -> anyhow::Result<(String, usize)> {
    let (table, s) = summary(r);
    std::fs::write(dir.join("history.json"), serde_json::to_vec(r)?)?;
    std::fs::write(dir.join("summary.json"), serde_json::to_vec_pretty(&s)?)?;
    std::fs::write(dir.join("summary.txt"), &table)?;
    std::fs::write(dir.join("timeline.html"), timeline_html(r))?;
    Ok((table, s.violations))
}
