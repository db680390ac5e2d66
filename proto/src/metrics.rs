//! A small Prometheus registry and the HTTP endpoint every daemon serves: `/metrics`
//! (text exposition format 0.0.4) and `/healthz` (200 "ok" or 503 with the reason).
//!
//! Hand-rolled on purpose: the daemons need counters, gauges and latency histograms and
//! an HTTP/1.0-style GET, not a web framework. Handles are cheap clones of atomics, so a
//! hot path pays one relaxed atomic add.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Latency histogram bucket bounds, seconds.
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Clone, Default)]
pub struct Counter(Arc<AtomicU64>);
impl Counter {
    pub fn inc(&self) {
        self.add(1)
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A gauge holding an i64 (stored as u64 bits).
#[derive(Clone, Default)]
pub struct Gauge(Arc<AtomicU64>);
impl Gauge {
    pub fn set(&self, v: i64) {
        self.0.store(v as u64, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed) as i64
    }
}

#[derive(Clone, Default)]
pub struct Histogram(Arc<HistInner>);
#[derive(Default)]
pub struct HistInner {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_ns: AtomicU64,
}
impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                self.0.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.0.count.fetch_add(1, Ordering::Relaxed);
        self.0
            .sum_ns
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }
    pub fn count(&self) -> u64 {
        self.0.count.load(Ordering::Relaxed)
    }
}

enum Metric {
    Counter(Counter),
    Gauge(Gauge),
    Histogram(Histogram),
}

struct Family {
    help: String,
    kind: &'static str,
    series: BTreeMap<String, Metric>,
}

type HealthFn = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The registry of one daemon.
#[derive(Default)]
pub struct Registry {
    families: Mutex<BTreeMap<String, Family>>,
    health: Mutex<Option<HealthFn>>,
}

fn label_key(labels: &[(&str, &str)]) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    format!("{{{}}}", parts.join(","))
}

impl Registry {
    pub fn new() -> Arc<Self> {
        Arc::new(Registry::default())
    }

    fn get_or_insert(
        &self,
        name: &str,
        help: &str,
        kind: &'static str,
        labels: &[(&str, &str)],
        make: impl FnOnce() -> Metric,
    ) -> Option<Metric> {
        let mut g = cirrus_types::sync::lock(&self.families);
        let fam = g.entry(name.to_string()).or_insert_with(|| Family {
            help: help.to_string(),
            kind,
            series: BTreeMap::new(),
        });
        let m = fam.series.entry(label_key(labels)).or_insert_with(make);
        Some(match m {
            Metric::Counter(c) => Metric::Counter(c.clone()),
            Metric::Gauge(c) => Metric::Gauge(c.clone()),
            Metric::Histogram(c) => Metric::Histogram(c.clone()),
        })
    }

    /// A counter `name{labels}`; the same name and labels give the same counter.
    pub fn counter(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Counter {
        match self.get_or_insert(name, help, "counter", labels, || {
            Metric::Counter(Counter::default())
        }) {
            Some(Metric::Counter(c)) => c,
            _ => Counter::default(),
        }
    }

    pub fn gauge(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Gauge {
        match self.get_or_insert(name, help, "gauge", labels, || {
            Metric::Gauge(Gauge::default())
        }) {
            Some(Metric::Gauge(c)) => c,
            _ => Gauge::default(),
        }
    }

    pub fn histogram(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Histogram {
        match self.get_or_insert(name, help, "histogram", labels, || {
            Metric::Histogram(Histogram::default())
        }) {
            Some(Metric::Histogram(c)) => c,
            _ => Histogram::default(),
        }
    }

    /// What `/healthz` reports: `Ok` is 200 "ok", `Err(reason)` is 503 with the reason.
    pub fn set_health(&self, f: impl Fn() -> Result<(), String> + Send + Sync + 'static) {
        *cirrus_types::sync::lock(&self.health) = Some(Arc::new(f));
    }

    pub fn health(&self) -> Result<(), String> {
        let f = cirrus_types::sync::lock(&self.health).clone();
        match f {
            Some(f) => f(),
            None => Ok(()),
        }
    }

    /// Renders every family in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let Ok(g) = self.families.lock() else {
            return out;
        };
        for (name, fam) in g.iter() {
            let _ = writeln!(out, "# HELP {name} {}", fam.help);
            let _ = writeln!(out, "# TYPE {name} {}", fam.kind);
            for (labels, m) in &fam.series {
                match m {
                    Metric::Counter(c) => {
                        let _ = writeln!(out, "{name}{labels} {}", c.get());
                    }
                    Metric::Gauge(c) => {
                        let _ = writeln!(out, "{name}{labels} {}", c.get());
                    }
                    Metric::Histogram(h) => {
                        let inner = labels.trim_start_matches('{').trim_end_matches('}');
                        let sep = if inner.is_empty() { "" } else { "," };
                        for (i, b) in BUCKETS.iter().enumerate() {
                            let _ = writeln!(
                                out,
                                "{name}_bucket{{{inner}{sep}le=\"{b}\"}} {}",
                                h.0.buckets[i].load(Ordering::Relaxed)
                            );
                        }
                        let _ = writeln!(
                            out,
                            "{name}_bucket{{{inner}{sep}le=\"+Inf\"}} {}",
                            h.count()
                        );
                        let _ = writeln!(
                            out,
                            "{name}_sum{labels} {}",
                            h.0.sum_ns.load(Ordering::Relaxed) as f64 / 1e9
                        );
                        let _ = writeln!(out, "{name}_count{labels} {}", h.count());
                    }
                }
            }
        }
        drop(g);
        process_memory(&mut out);
        out
    }
}

/// The process's own memory, read at scrape time from `/proc/self/status`, in the
/// standard Prometheus names every daemon of the cluster shares: what operators (and the
/// chaos harness's ceiling) watch for a server that grows with a caller's numbers.
fn process_memory(out: &mut String) {
    let Ok(s) = std::fs::read_to_string("/proc/self/status") else {
        return;
    };
    let kib = |key: &str| {
        s.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|k| k * 1024)
    };
    for (name, key, help) in [
        (
            "process_resident_memory_bytes",
            "VmRSS:",
            "Resident memory size in bytes.",
        ),
        (
            "process_virtual_memory_bytes",
            "VmSize:",
            "Virtual memory size in bytes.",
        ),
    ] {
        if let Some(v) = kib(key) {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            let _ = writeln!(out, "{name} {v}");
        }
    }
}

/// Scrapes served at once by one daemon's metrics endpoint. A scraper or two and a
/// person with curl need a handful; each connection lives at most 10 s (5 s to send its
/// request, 5 s to take the reply) and holds one rendering of the registry.
const MAX_METRICS_CONNECTIONS: usize = 64;

/// Binds `addr` and serves `/metrics` and `/healthz` until the task is aborted. Binding
/// errors are returned at once, so a daemon can say which address it could not take.
pub async fn serve(
    addr: &str,
    registry: Arc<Registry>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    serve_within(addr, registry, MAX_METRICS_CONNECTIONS).await
}

/// [`serve`] with a ceiling of `max` connections at once.
async fn serve_within(
    addr: &str,
    registry: Arc<Registry>,
    max: usize,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    let limit = crate::net::ConnLimit::new("metrics", max).counted(&registry);
    let mut incoming = crate::net::incoming(listener, limit);
    Ok(tokio::spawn(async move {
        loop {
            let mut sock = incoming.accept().await;
            let reg = registry.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 2048];
                // A slow or silent peer gets 5 s to send its request line.
                let n =
                    match tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf)).await {
                        Ok(Ok(n)) => n,
                        _ => return,
                    };
                let req = String::from_utf8_lossy(&buf[..n]);
                let path = req.split_whitespace().nth(1).unwrap_or("");
                let (status, ctype, body) = match path {
                    "/metrics" => ("200 OK", "text/plain; version=0.0.4", reg.render()),
                    "/healthz" => match reg.health() {
                        Ok(()) => ("200 OK", "text/plain", "ok\n".to_string()),
                        Err(e) => ("503 Service Unavailable", "text/plain", format!("{e}\n")),
                    },
                    _ => (
                        "404 Not Found",
                        "text/plain",
                        "try /metrics or /healthz\n".to_string(),
                    ),
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), sock.write_all(resp.as_bytes()))
                        .await;
            });
        }
    }))
}

/// A gRPC service wrapped so that every call is counted and timed by method:
/// `cirrus_requests_total{op,code}` (code = the gRPC status, "Ok" on success) and
/// `cirrus_latency_seconds{op}` (until the response head, which for unary calls is after
/// the handler finished). `op` is the method name of the path (`/cirrus.Meta/Lookup` ->
/// `Lookup`), so the series cover every RPC without each handler doing anything.
#[derive(Clone)]
pub struct Metered<S> {
    inner: S,
    registry: Arc<Registry>,
}

impl<S> Metered<S> {
    pub fn new(inner: S, registry: Arc<Registry>) -> Self {
        Metered { inner, registry }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for Metered<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B, RB> tonic::codegen::Service<tonic::codegen::http::Request<B>> for Metered<S>
where
    S: tonic::codegen::Service<
        tonic::codegen::http::Request<B>,
        Response = tonic::codegen::http::Response<RB>,
    >,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: tonic::codegen::http::Request<B>) -> Self::Future {
        let op = req
            .uri()
            .path()
            .rsplit('/')
            .next()
            .filter(|s| !s.is_empty())
            .unwrap_or("unknown")
            .to_string();
        let start = std::time::Instant::now();
        let fut = self.inner.call(req);
        let reg = self.registry.clone();
        Box::pin(async move {
            let r = fut.await;
            let code = match &r {
                Ok(resp) => match resp.headers().get("grpc-status") {
                    Some(v) => format!("{:?}", tonic::Code::from_bytes(v.as_bytes())),
                    None => "Ok".to_string(),
                },
                Err(_) => "transport".to_string(),
            };
            reg.histogram(
                "cirrus_latency_seconds",
                "gRPC call latency by method, seconds",
                &[("op", &op)],
            )
            .observe(start.elapsed());
            reg.counter(
                "cirrus_requests_total",
                "gRPC calls served, by method and status",
                &[("op", &op), ("code", &code)],
            )
            .inc();
            r
        })
    }
}

/// The default metrics address for a role: the listen host with `port + 1`.
pub fn default_metrics_addr(listen: &str) -> String {
    match listen.rsplit_once(':') {
        Some((host, port)) => match port.parse::<u16>() {
            Ok(p) => format!("{host}:{}", p.wrapping_add(1)),
            Err(_) => listen.to_string(),
        },
        None => listen.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_shows_counters_gauges_and_histograms() {
        let r = Registry::new();
        r.counter("cirrus_requests_total", "requests", &[("op", "read")])
            .add(3);
        r.counter("cirrus_requests_total", "requests", &[("op", "read")])
            .inc();
        r.gauge("cirrus_raft_term", "term", &[]).set(7);
        r.histogram("cirrus_latency_seconds", "lat", &[("op", "write")])
            .observe(Duration::from_millis(2));
        let text = r.render();
        assert!(
            text.contains("cirrus_requests_total{op=\"read\"} 4"),
            "{text}"
        );
        assert!(text.contains("cirrus_raft_term 7"), "{text}");
        let rss: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no resident memory in:\n{text}"));
        assert!(rss > 1 << 20, "resident memory {rss}");
        assert!(
            text.contains("cirrus_latency_seconds_bucket{op=\"write\",le=\"0.0025\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("cirrus_latency_seconds_count{op=\"write\"} 1"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn http_endpoint_serves_metrics_and_health() {
        let r = Registry::new();
        r.counter("x_total", "x", &[]).inc();
        r.set_health(|| Err("no leader".into()));
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        let h = serve(&addr, r).await.unwrap();
        let get = |path: &'static str| {
            let addr = addr.clone();
            async move {
                let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
                s.write_all(format!("GET {path} HTTP/1.1\r\n\r\n").as_bytes())
                    .await
                    .unwrap();
                let mut out = String::new();
                s.read_to_string(&mut out).await.unwrap();
                out
            }
        };
        let m = get("/metrics").await;
        assert!(
            m.starts_with("HTTP/1.1 200") && m.contains("x_total 1"),
            "{m}"
        );
        let hz = get("/healthz").await;
        assert!(
            hz.starts_with("HTTP/1.1 503") && hz.contains("no leader"),
            "{hz}"
        );
        h.abort();
    }

    #[test]
    fn metrics_port_is_next_to_the_service_port() {
        assert_eq!(default_metrics_addr("0.0.0.0:7001"), "0.0.0.0:7002");
        assert_eq!(default_metrics_addr("127.0.0.1:7101"), "127.0.0.1:7102");
    }

    /// A stand-in gRPC service: paths ending in "Bad" answer NOT_FOUND (trailers-only).
    #[derive(Clone)]
    struct Fake;
    impl tonic::codegen::Service<tonic::codegen::http::Request<()>> for Fake {
        type Response = tonic::codegen::http::Response<()>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Self::Response, Self::Error>>;
        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn call(&mut self, req: tonic::codegen::http::Request<()>) -> Self::Future {
            let mut resp = tonic::codegen::http::Response::new(());
            if req.uri().path().ends_with("Bad") {
                resp.headers_mut().insert(
                    "grpc-status",
                    tonic::codegen::http::HeaderValue::from_static("5"),
                );
            }
            std::future::ready(Ok(resp))
        }
    }

    #[tokio::test]
    async fn metered_counts_and_times_each_method_with_its_status() {
        use tonic::codegen::Service;
        let r = Registry::new();
        let mut svc = Metered::new(Fake, r.clone());
        for path in [
            "/cirrus.v1.Meta/Lookup",
            "/cirrus.v1.Meta/Lookup",
            "/cirrus.v1.Meta/Bad",
        ] {
            let req = tonic::codegen::http::Request::builder()
                .uri(path)
                .body(())
                .unwrap();
            svc.call(req).await.unwrap();
        }
        let text = r.render();
        assert!(
            text.contains("cirrus_requests_total{op=\"Lookup\",code=\"Ok\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("cirrus_requests_total{op=\"Bad\",code=\"NotFound\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("cirrus_latency_seconds_count{op=\"Lookup\"} 2"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn scrapes_past_the_connection_ceiling_are_closed_and_counted() {
        use crate::net::tests::{assert_closed_at_once, HANG};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        let h = serve_within(&addr, Registry::new(), 2).await.unwrap();
        // Two silent connections fill the ceiling (the server gives each 5 s to speak;
        // connections are accepted in the order they were made).
        let silent = [
            tokio::net::TcpStream::connect(&addr).await.unwrap(),
            tokio::net::TcpStream::connect(&addr).await.unwrap(),
        ];
        assert_closed_at_once(&addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        drop(silent);
        let deadline = std::time::Instant::now() + HANG;
        let text = loop {
            let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let _ = s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await;
            let mut out = String::new();
            let _ = tokio::time::timeout(HANG, s.read_to_string(&mut out)).await;
            if out.starts_with("HTTP/1.1 200") {
                break out;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no scrape served after the silent connections closed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // At least the one above (the retries may have been refused too).
        let refused: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("cirrus_connections_refused_total{listener=\"metrics\"} "))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no refusal count in:\n{text}"));
        assert!(refused >= 1, "{text}");
        h.abort();
    }
}
