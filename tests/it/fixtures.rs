//! Fixtures every area shares: one scrape of a daemon's `/metrics`, and one way to wait
//! for something that must happen (`wait_until`, bounded by `HANG`).

use anyhow::{anyhow, bail, Context, Result};
use cirrus_client::{Client, ClientConfig};
use cirrus_raft_tests::cluster::{ClusterBuilder, TestCluster};
use std::io::{Read, Write};
use std::ops::ControlFlow;
use std::sync::Arc;
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

/// The one bound on how long a test waits for something that must happen: long enough
/// for a loaded 2-core CI machine, short enough to turn a hang into a failure. It is
/// never a claim about speed (timed assertions are forbidden; benches measure speed).
pub const HANG: Duration = Duration::from_secs(90);

/// How often the waits below look again.
const POLL: Duration = Duration::from_millis(100);

/// Polls `f` until it answers `Break(value)`, failing after `within` with `what` and the
/// last state `f` reported (`Continue(state)`); an error from `f` ends the wait at once.
pub async fn wait_until<T, F, Fut>(what: &str, within: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<ControlFlow<T, String>>>,
{
    let deadline = std::time::Instant::now() + within;
    loop {
        let state = match f().await? {
            ControlFlow::Break(v) => return Ok(v),
            ControlFlow::Continue(state) => state,
        };
        if std::time::Instant::now() > deadline {
            bail!("timed out after {within:?} waiting for {what}; last seen: {state}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `wait_until` for a test without a runtime (FUSE tests drive the mount from threads).
pub fn wait_until_blocking<T>(
    what: &str,
    within: Duration,
    mut f: impl FnMut() -> Result<ControlFlow<T, String>>,
) -> Result<T> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let state = match f()? {
            ControlFlow::Break(v) => return Ok(v),
            ControlFlow::Continue(state) => state,
        };
        if std::time::Instant::now() > deadline {
            bail!("timed out after {within:?} waiting for {what}; last seen: {state}");
        }
        std::thread::sleep(POLL);
    }
}

#[test]
fn a_wait_ends_with_the_value_or_with_what_it_last_saw() {
    let mut n = 0;
    let v = wait_until_blocking("n to reach 3", HANG, || {
        n += 1;
        Ok(if n == 3 {
            ControlFlow::Break(n)
        } else {
            ControlFlow::Continue(format!("n = {n}"))
        })
    })
    .unwrap();
    assert_eq!(v, 3);
    let e = wait_until_blocking::<()>("never", Duration::ZERO, || {
        Ok(ControlFlow::Continue("still 0".into()))
    })
    .unwrap_err();
    assert!(
        e.to_string().contains("never") && e.to_string().contains("still 0"),
        "{e}"
    );
}

/// The smallest whole cluster: three meta nodes and one data server, R = 1.
pub async fn single_server() -> Result<TestCluster> {
    ClusterBuilder::new()
        .data_servers(1)
        .replicas(1)
        .start()
        .await
}

/// A client library of `c` with `cfg` (a test's own deadlines, release window...).
pub async fn client_with(c: &TestCluster, cfg: ClientConfig) -> Result<Arc<Client>> {
    Client::connect(&c.meta_addrs(), cfg)
        .await
        .map_err(|e| anyhow!("connect the client library to {}: {e}", c.meta_addrs()))
}

/// The default client configuration with every call bounded by `deadline`.
pub fn deadline(deadline: Duration) -> ClientConfig {
    ClientConfig {
        deadline,
        ..ClientConfig::default()
    }
}
