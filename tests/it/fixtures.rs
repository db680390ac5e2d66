//! Fixtures every area shares: one scrape of a daemon's `/metrics`.

use anyhow::{anyhow, bail, Context, Result};
use std::io::{Read, Write};
use std::time::Duration;

/// The body of `addr`'s `/metrics` (an HTTP 200 answer), within 5 s.
pub fn metrics_text(addr: &str) -> Result<String> {
    let to: std::net::SocketAddr = addr.parse().with_context(|| format!("address {addr}"))?;
    let limit = Duration::from_secs(5);
    let mut s = std::net::TcpStream::connect_timeout(&to, limit)
        .with_context(|| format!("connect {addr}"))?;
    s.set_read_timeout(Some(limit))?;
    s.set_write_timeout(Some(limit))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)
        .with_context(|| format!("read {addr}/metrics"))?;
    let (head, text) = body
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("{addr}: not HTTP: {body:?}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("{addr}/metrics: {head}");
    }
    Ok(text.to_string())
}

/// Every sample of a scrape: (series with its labels, value); comments left out.
pub fn samples(text: &str) -> Result<Vec<(String, f64)>> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|line| {
            let (k, v) = line
                .rsplit_once(' ')
                .ok_or_else(|| anyhow!("bad line {line:?}"))?;
            let v: f64 = v.parse().with_context(|| format!("value of {line:?}"))?;
            Ok((k.to_string(), v))
        })
        .collect()
}

/// The sum of every series named `name` on `addr` whose labels contain `label` ("" for
/// any); 0 when there is none.
pub fn metric_sum(addr: &str, name: &str, label: &str) -> Result<f64> {
    Ok(samples(&metrics_text(addr)?)?
        .into_iter()
        .filter(|(k, _)| k.split('{').next() == Some(name) && k.contains(label))
        .map(|(_, v)| v)
        .sum())
}
