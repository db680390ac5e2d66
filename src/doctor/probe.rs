//! Network probes of one endpoint, each under its own deadline: DNS, TCP connect and the
//! HTTP `/healthz` of a metrics port. Their failures are classified into what an operator
//! can act on: refused (nothing listens there), timed out (something drops the packets:
//! a firewall or security group), no route, name not found.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Why a connection did not work, in the operator's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectError {
    /// The name did not resolve (or resolved to nothing).
    Dns(String),
    /// RST: the host is up but nothing listens on that port.
    Refused,
    /// No answer within the deadline: packets are dropped on the way.
    Timeout(Duration),
    /// The network says the host or its network cannot be reached.
    Unreachable(String),
    Other(String),
}

impl ConnectError {
    /// "7101/tcp on 10.0.1.12 refused" and the like.
    pub fn describe(&self, host: &str, port: u16) -> String {
        match self {
            ConnectError::Dns(e) => format!("{host} does not resolve: {e}"),
            ConnectError::Refused => format!("{port}/tcp on {host} refused the connection"),
            ConnectError::Timeout(d) => {
                format!(
                    "{port}/tcp on {host} timed out after {}",
                    humantime::format_duration(*d)
                )
            }
            ConnectError::Unreachable(e) => format!("{port}/tcp on {host} unreachable: {e}"),
            ConnectError::Other(e) => format!("{port}/tcp on {host} failed: {e}"),
        }
    }

    /// The likely fix; `what` names the daemon ("meta node", "data server", "metrics
    /// endpoint of the data server") and `flag` its listen flag.
    pub fn fix(&self, host: &str, port: u16, what: &str, flag: &str) -> String {
        match self {
            ConnectError::Dns(_) => format!(
                "check the name {host} (a typo in --meta or --peers? /etc/hosts, the VPC's DNS)"
            ),
            ConnectError::Refused => format!(
                "is the {what} running on {host}? Or it listens on another address or port: \
                 check its {flag} and `ss -ltnp` on {host}"
            ),
            ConnectError::Timeout(_) => format!(
                "a firewall or security group drops {port}/tcp to {host}: open {port}/tcp between \
                 the cluster's machines (README port table), or the host is down"
            ),
            ConnectError::Unreachable(_) => format!(
                "no route to {host}: is the address right and the host up? check subnets and routes"
            ),
            ConnectError::Other(_) => format!("check that {host}:{port} is the {what}"),
        }
    }
}

/// Splits `host:port` (also `[v6]:port`).
pub fn split_host_port(addr: &str) -> Option<(String, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some((host.to_string(), port))
}

/// Resolves `host:port` within `deadline`.
pub async fn resolve(
    host: &str,
    port: u16,
    deadline: Duration,
) -> Result<Vec<SocketAddr>, ConnectError> {
    match tokio::time::timeout(deadline, tokio::net::lookup_host((host, port))).await {
        Err(_) => Err(ConnectError::Dns(format!(
            "no answer from the resolver within {}",
            humantime::format_duration(deadline)
        ))),
        Ok(Err(e)) => Err(ConnectError::Dns(e.to_string())),
        Ok(Ok(it)) => {
            let v: Vec<SocketAddr> = it.collect();
            if v.is_empty() {
                Err(ConnectError::Dns("no addresses".into()))
            } else {
                Ok(v)
            }
        }
    }
}

/// Connects to `addr` within `deadline`; returns the stream and the connect time.
pub async fn connect(
    addr: SocketAddr,
    deadline: Duration,
) -> Result<(TcpStream, Duration), ConnectError> {
    let start = Instant::now();
    match tokio::time::timeout(deadline, TcpStream::connect(addr)).await {
        Err(_) => Err(ConnectError::Timeout(deadline)),
        Ok(Ok(s)) => Ok((s, start.elapsed())),
        Ok(Err(e)) => Err(classify(&e)),
    }
}

fn classify(e: &std::io::Error) -> ConnectError {
    match e.kind() {
        ErrorKind::ConnectionRefused => ConnectError::Refused,
        ErrorKind::TimedOut => ConnectError::Timeout(Duration::ZERO),
        ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => {
            ConnectError::Unreachable(e.to_string())
        }
        _ => match e.raw_os_error() {
            Some(libc::EHOSTUNREACH) | Some(libc::ENETUNREACH) => {
                ConnectError::Unreachable(e.to_string())
            }
            _ => ConnectError::Other(e.to_string()),
        },
    }
}

/// What `/healthz` said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Healthy,
    /// Answered, but not 200: the status line and the body (the daemon's reason).
    Unhealthy(String),
    /// Answered with something that is not HTTP.
    NotHttp(String),
}

/// GET /healthz over an open connection, within `deadline`.
pub async fn healthz(
    mut s: TcpStream,
    host: &str,
    deadline: Duration,
) -> Result<Health, ConnectError> {
    let req = format!("GET /healthz HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let work = async {
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::with_capacity(1024);
        // The endpoint closes after one reply; cap what we read in case it is not ours.
        let mut chunk = [0u8; 1024];
        loop {
            let n = s.read(&mut chunk).await?;
            if n == 0 || buf.len() > 16 * 1024 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(buf)
    };
    let buf = match tokio::time::timeout(deadline, work).await {
        Err(_) => return Err(ConnectError::Timeout(deadline)),
        Ok(Err(e)) => return Err(classify(&e)),
        Ok(Ok(b)) => b,
    };
    let text = String::from_utf8_lossy(&buf);
    let status_line = text.lines().next().unwrap_or("").trim().to_string();
    if !status_line.starts_with("HTTP/") {
        return Ok(Health::NotHttp(status_line.chars().take(60).collect()));
    }
    if status_line.split_whitespace().nth(1) == Some("200") {
        return Ok(Health::Healthy);
    }
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.trim().to_string())
        .unwrap_or_default();
    Ok(Health::Unhealthy(format!("{status_line}: {body}")))
}

/// True for 127.0.0.0/8, ::1, 0.0.0.0 and ::, the addresses another machine cannot use.
pub fn is_local_only(host: &str) -> bool {
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback() || ip.is_unspecified(),
        Err(_) => host == "localhost",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_splits_and_rejects_garbage() {
        assert_eq!(
            split_host_port("10.0.1.12:7101"),
            Some(("10.0.1.12".into(), 7101))
        );
        assert_eq!(split_host_port("[::1]:7001"), Some(("::1".into(), 7001)));
        assert_eq!(
            split_host_port("meta-1:7001"),
            Some(("meta-1".into(), 7001))
        );
        assert_eq!(split_host_port("meta-1"), None);
        assert_eq!(split_host_port(":7001"), None);
        assert_eq!(split_host_port("h:99999"), None);
    }

    #[tokio::test]
    async fn a_closed_port_is_reported_refused_with_the_daemon_fix() {
        // Bind then drop: the port is (almost certainly) closed right after.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let e = connect(addr, Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(e, ConnectError::Refused);
        let msg = e.describe("127.0.0.1", addr.port());
        assert_eq!(
            msg,
            format!("{}/tcp on 127.0.0.1 refused the connection", addr.port())
        );
        assert!(e
            .fix("127.0.0.1", addr.port(), "data server", "--listen")
            .contains("is the data server running on 127.0.0.1?"));
    }

    #[tokio::test]
    async fn an_unknown_name_is_a_dns_failure() {
        let e = resolve("no-such-host.invalid", 7001, Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(matches!(e, ConnectError::Dns(_)), "{e:?}");
        assert!(e
            .describe("no-such-host.invalid", 7001)
            .contains("does not resolve"));
    }

    #[tokio::test]
    async fn healthz_reads_200_and_503_with_the_reason() {
        for (reply, want) in [
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n",
                Health::Healthy,
            ),
            (
                "HTTP/1.1 503 Service Unavailable\r\n\r\nno leader\n",
                Health::Unhealthy("HTTP/1.1 503 Service Unavailable: no leader".into()),
            ),
            (
                "SSH-2.0-OpenSSH_9.2\r\n",
                Health::NotHttp("SSH-2.0-OpenSSH_9.2".into()),
            ),
        ] {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let server = tokio::spawn(async move {
                let (mut s, _) = l.accept().await.unwrap();
                let mut b = [0u8; 512];
                let _ = s.read(&mut b).await;
                s.write_all(reply.as_bytes()).await.unwrap();
            });
            let (s, _) = connect(addr, Duration::from_secs(5)).await.unwrap();
            let h = healthz(s, "127.0.0.1", Duration::from_secs(5))
                .await
                .unwrap();
            assert_eq!(h, want);
            server.await.unwrap();
        }
    }

    #[test]
    fn loopback_and_unspecified_are_local_only() {
        assert!(is_local_only("127.0.0.1"));
        assert!(is_local_only("0.0.0.0"));
        assert!(is_local_only("::1"));
        assert!(is_local_only("localhost"));
        assert!(!is_local_only("10.0.1.12"));
        assert!(!is_local_only("meta-1.example"));
    }
}
