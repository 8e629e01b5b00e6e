//! Allow-listed egress: containers of `network = "allowlist"` templates sit on an internal
//! bridge with no route out; the only thing they reach is this proxy, bound on the bridge's
//! gateway address, which lets through exactly the destinations `[docker] egress_allow` names.
//!
//! The proxy speaks the two forms every HTTP client sends to an `HTTP(S)_PROXY`:
//! `CONNECT host:port` (a tunnel, for TLS and anything else) and an absolute-form request
//! (`GET http://host/path`), which is forwarded once with `Connection: close` so every request
//! on a connection goes to the host that was checked. A name is resolved here and the
//! connection goes to the address that was checked (no second lookup an attacker could
//! rebind); private, loopback and link-local addresses are refused unless
//! `egress_allow_private` is set (for tests).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::error::PoolError;

/// Proxy decisions by `decision` (allowed, denied).
pub const M_EGRESS: &str = "liquid_container_pool_egress_requests_total";
/// Largest request head the proxy reads.
const MAX_HEAD: usize = 16 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// One `[docker] egress_allow` entry: `host`, `*.domain` or either with `:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    /// Lower-case host, without the `*.` of a wildcard.
    host: String,
    /// `*.domain`: any name below `domain` (not `domain` itself).
    wildcard: bool,
    /// `None`: ports 80 and 443.
    port: Option<u16>,
}

/// The destinations allow-listed containers may reach.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    rules: Vec<Rule>,
    allow_private: bool,
}

impl EgressPolicy {
    /// Parses the allow-list; the error names the bad entry.
    pub fn new(entries: &[String], allow_private: bool) -> Result<Self, String> {
        let rules = entries
            .iter()
            .map(|e| {
                parse_rule(e).ok_or_else(|| {
                    format!("`{e}` is not `host`, `*.domain`, optionally with `:port`")
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(EgressPolicy {
            rules,
            allow_private,
        })
    }

    /// Whether `host:port` is on the list (names compared case-insensitively).
    pub fn allows(&self, host: &str, port: u16) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.rules.iter().any(|r| {
            let port_ok = r.port.map_or(port == 80 || port == 443, |p| p == port);
            let host_ok = if r.wildcard {
                host.strip_suffix(&r.host)
                    .is_some_and(|rest| rest.ends_with('.') && rest.len() > 1)
            } else {
                host == r.host
            };
            port_ok && host_ok
        })
    }

    /// Whether a resolved address may be connected to.
    pub fn address_allowed(&self, ip: IpAddr) -> bool {
        self.allow_private || is_public(ip)
    }
}

fn parse_rule(entry: &str) -> Option<Rule> {
    let entry = entry.trim().to_ascii_lowercase();
    let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        match after.strip_prefix(':') {
            Some(p) => (h, Some(p)),
            None if after.is_empty() => (h, None),
            None => return None,
        }
    } else if entry.parse::<IpAddr>().is_ok() {
        (entry.as_str(), None)
    } else {
        match entry.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (entry.as_str(), None),
        }
    };
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p != 0)?),
        None => None,
    };
    let (wildcard, host) = match host.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, host),
    };
    let valid = !host.is_empty()
        && host.len() <= 253
        && (host.parse::<IpAddr>().is_ok()
            || host.split('.').all(|l| {
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            }));
    valid.then(|| Rule {
        host: host.to_owned(),
        wildcard,
        port,
    })
}

/// Globally routable: not loopback, private, link-local, CGNAT, unique-local, multicast,
/// documentation or unspecified.
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_unspecified()
                || v4.is_documentation()
                || (a == 100 && (64..128).contains(&b))
                || a == 0)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

/// A running proxy.
#[derive(Debug)]
pub struct EgressProxy {
    addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for EgressProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl EgressProxy {
    /// Listens on `ip` (a free port) until dropped.
    pub async fn start(ip: IpAddr, policy: EgressPolicy) -> Result<Self, PoolError> {
        let listener = TcpListener::bind((ip, 0)).await.map_err(|e| {
            PoolError::FailedPrecondition(format!(
                "the egress proxy cannot listen on {ip}: {e} (allow-listed egress needs the pool \
                 to run on the Docker host itself)"
            ))
        })?;
        let addr = listener
            .local_addr()
            .map_err(|e| PoolError::FailedPrecondition(e.to_string()))?;
        let stop = CancellationToken::new();
        let policy = Arc::new(policy);
        let token = stop.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = token.cancelled() => return,
                    a = listener.accept() => a,
                };
                match accepted {
                    Ok((stream, peer)) => {
                        let policy = policy.clone();
                        let token = token.clone();
                        tokio::spawn(async move {
                            tokio::select! {
                                () = token.cancelled() => {}
                                () = serve(stream, peer, &policy) => {}
                            }
                        });
                    }
                    Err(error) => {
                        tracing::warn!(%error, "egress proxy accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
        tracing::info!(%addr, "egress proxy listening");
        Ok(EgressProxy { addr, stop })
    }

    /// Where containers send their requests.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The environment that points a container's HTTP clients at the proxy.
    pub fn env(&self) -> Vec<String> {
        let url = format!("http://{}", self.addr);
        ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"]
            .iter()
            .map(|k| format!("{k}={url}"))
            .chain([
                "NO_PROXY=localhost,127.0.0.1".to_owned(),
                "no_proxy=localhost,127.0.0.1".to_owned(),
            ])
            .collect()
    }
}

/// What a client asked for.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    connect: bool,
    host: String,
    port: u16,
    /// Absolute-form only: the head rewritten for the origin.
    forward_head: Vec<u8>,
}

async fn serve(stream: TcpStream, peer: SocketAddr, policy: &EgressPolicy) {
    let mut client = BufReader::new(stream);
    let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut client)).await {
        Ok(Ok(h)) => h,
        Ok(Err(reason)) => return refuse(client.get_mut(), 400, &reason).await,
        Err(_) => return,
    };
    let target = match parse_head(&head) {
        Ok(t) => t,
        Err(reason) => return refuse(client.get_mut(), 400, &reason).await,
    };
    let dest = format!("{}:{}", target.host, target.port);
    if !policy.allows(&target.host, target.port) {
        metrics::counter!(M_EGRESS, "decision" => "denied").increment(1);
        tracing::info!(target: "security", %peer, destination = %dest, "egress denied: not on the allow-list");
        return refuse(
            client.get_mut(),
            403,
            &format!("{dest} is not on the egress allow-list"),
        )
        .await;
    }
    let upstream = match connect(&target, policy).await {
        Ok(s) => s,
        Err((status, reason)) => {
            metrics::counter!(M_EGRESS, "decision" => "denied").increment(1);
            tracing::info!(target: "security", %peer, destination = %dest, %reason, "egress refused");
            return refuse(client.get_mut(), status, &reason).await;
        }
    };
    metrics::counter!(M_EGRESS, "decision" => "allowed").increment(1);
    tracing::debug!(%peer, destination = %dest, connect = target.connect, "egress allowed");
    let mut upstream = upstream;
    if target.connect {
        if client
            .get_mut()
            .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            .await
            .is_err()
        {
            return;
        }
    } else if upstream.write_all(&target.forward_head).await.is_err() {
        return;
    }
    // Bytes the client sent after the head (a request body, TLS hello) go first.
    let buffered = client.buffer().to_vec();
    if !buffered.is_empty() && upstream.write_all(&buffered).await.is_err() {
        return;
    }
    let mut client = client.into_inner();
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

/// Reads up to the blank line that ends a request head.
async fn read_head(client: &mut BufReader<TcpStream>) -> Result<Vec<u8>, String> {
    let mut head = Vec::new();
    loop {
        let before = head.len();
        let n = client
            .read_until(b'\n', &mut head)
            .await
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the connection closed inside the request head".into());
        }
        if head.len() > MAX_HEAD {
            return Err("request head too large".into());
        }
        let line = &head[before..];
        if line == b"\r\n" || line == b"\n" {
            return Ok(head);
        }
    }
}

fn parse_head(head: &[u8]) -> Result<Target, String> {
    let text = std::str::from_utf8(head).map_err(|_| "the request head is not UTF-8".to_owned())?;
    let mut lines = text.split("\r\n").flat_map(|l| l.split('\n'));
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("malformed request line".into());
    };
    if !version.starts_with("HTTP/1.") {
        return Err("only HTTP/1.x proxy requests are understood".into());
    }
    if method.eq_ignore_ascii_case("CONNECT") {
        let (host, port) = split_host_port(target, None)?;
        return Ok(Target {
            connect: true,
            host,
            port,
            forward_head: Vec::new(),
        });
    }
    let rest = target
        .strip_prefix("http://")
        .ok_or("only CONNECT and absolute http:// requests go through the egress proxy")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.contains('@') {
        return Err("credentials in the URL are not forwarded".into());
    }
    let (host, port) = split_host_port(authority, Some(80))?;
    let mut out = format!("{method} {path} {version}\r\n");
    for line in lines.filter(|l| !l.is_empty()) {
        let name = line.split(':').next().unwrap_or_default().trim();
        if [
            "connection",
            "proxy-connection",
            "proxy-authorization",
            "keep-alive",
        ]
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
        {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    Ok(Target {
        connect: false,
        host,
        port,
        forward_head: out.into_bytes(),
    })
}

fn split_host_port(authority: &str, default: Option<u16>) -> Result<(String, u16), String> {
    let bad = || format!("`{authority}` is not host:port");
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or_else(bad)?;
        (h, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(p) => p.parse::<u16>().map_err(|_| bad())?,
        None => default.ok_or_else(bad)?,
    };
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((host.to_ascii_lowercase(), port))
}

async fn connect(target: &Target, policy: &EgressPolicy) -> Result<TcpStream, (u16, String)> {
    let dest = format!("{}:{}", target.host, target.port);
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await
        .map_err(|e| (502, format!("{dest} does not resolve: {e}")))?
        .collect();
    let Some(addr) = addrs
        .iter()
        .copied()
        .find(|a| policy.address_allowed(a.ip()))
    else {
        return Err((
            403,
            format!(
                "{dest} resolves only to private or local addresses, which egress never reaches"
            ),
        ));
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err((502, format!("{dest} refused the connection: {e}"))),
        Err(_) => Err((
            504,
            format!("{dest} did not answer within {CONNECT_TIMEOUT:?}"),
        )),
    }
}

async fn refuse(client: &mut TcpStream, status: u16, reason: &str) {
    let text = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        502 => "Bad Gateway",
        _ => "Gateway Timeout",
    };
    let body = format!("liquid egress: {reason}\n");
    let response = format!(
        "HTTP/1.1 {status} {text}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.write_all(response.as_bytes()).await;
    let _ = client.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(entries: &[&str]) -> EgressPolicy {
        EgressPolicy::new(
            &entries.iter().map(|e| (*e).to_owned()).collect::<Vec<_>>(),
            false,
        )
        .unwrap()
    }

    #[test]
    fn hosts_wildcards_and_ports() {
        let p = policy(&["api.github.com", "*.pypi.org", "registry.example:5000"]);
        assert!(p.allows("api.github.com", 443));
        assert!(
            p.allows("API.GitHub.com.", 80),
            "case and a trailing dot do not matter"
        );
        assert!(
            !p.allows("api.github.com", 22),
            "only 80 and 443 without a port"
        );
        assert!(!p.allows("evil-api.github.com", 443));
        assert!(!p.allows("github.com", 443));
        assert!(p.allows("files.pypi.org", 443));
        assert!(!p.allows("pypi.org", 443), "a wildcard is below the domain");
        assert!(!p.allows("notpypi.org", 443));
        assert!(p.allows("registry.example", 5000));
        assert!(!p.allows("registry.example", 443));
    }

    #[test]
    fn bad_entries_are_named() {
        for bad in ["", "a b", "host:0", "host:x", "*.", "ex*ample.com"] {
            let err = EgressPolicy::new(&[bad.to_owned()], false).unwrap_err();
            assert!(
                err.contains(&format!("`{}`", bad.trim().to_ascii_lowercase())),
                "{err}"
            );
        }
        assert!(
            EgressPolicy::new(
                &[
                    "::1".to_owned(),
                    "[::1]:8080".to_owned(),
                    "10.0.0.1:80".to_owned()
                ],
                false
            )
            .is_ok()
        );
    }

    #[test]
    fn private_addresses_are_refused_unless_allowed() {
        let p = policy(&[]);
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!p.address_allowed(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "2606:4700::1111"] {
            assert!(p.address_allowed(ip.parse().unwrap()), "{ip}");
        }
        let test = EgressPolicy::new(&[], true).unwrap();
        assert!(test.address_allowed("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn absolute_form_is_rewritten_and_keep_alive_dropped() {
        let t = parse_head(b"GET http://Example.com:8080/a?b=1 HTTP/1.1\r\nHost: example.com:8080\r\nProxy-Connection: keep-alive\r\nProxy-Authorization: x\r\nAccept: */*\r\n\r\n").unwrap();
        assert_eq!(
            (t.connect, t.host.as_str(), t.port),
            (false, "example.com", 8080)
        );
        assert_eq!(
            String::from_utf8(t.forward_head).unwrap(),
            "GET /a?b=1 HTTP/1.1\r\nHost: example.com:8080\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        let c = parse_head(b"CONNECT [::1]:443 HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!((c.connect, c.host.as_str(), c.port), (true, "::1", 443));
        for bad in [
            &b"GET /relative HTTP/1.1\r\n\r\n"[..],
            b"GET https://x/ HTTP/1.1\r\n\r\n",
            b"CONNECT host HTTP/1.1\r\n\r\n",
            b"GET http://u:p@x/ HTTP/1.1\r\n\r\n",
            b"GARBAGE\r\n\r\n",
        ] {
            assert!(parse_head(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
