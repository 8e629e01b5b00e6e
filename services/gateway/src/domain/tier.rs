//! Who a request is charged to: the client address behind trusted proxies, and the rate-limit
//! tier (verified user, gateway-issued session, or IP address) whose quota applies. Pure.
//!
//! The highest tier present wins and only its quota is checked (one Redis round trip per
//! request). `X-Forwarded-For` is read only when the TCP peer is a configured proxy, walking the
//! list from the right and skipping trusted hops, so a client cannot choose its own key by
//! sending the header. IPv6 clients are keyed by their /64, the smallest block one subscriber
//! normally holds.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

/// A rate-limit tier, highest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    /// A verified token's subject.
    User,
    /// A valid gateway-issued `X-Session-Token`.
    Session,
    /// The client address.
    Ip,
}

impl Tier {
    /// `user`, `session` or `ip` (metric label, key segment, header value).
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::User => "user",
            Tier::Session => "session",
            Tier::Ip => "ip",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The identity a request is charged to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// Which tier.
    pub tier: Tier,
    /// The key within the tier (tenant and subject, session id, or address block).
    pub key: String,
}

/// Picks the highest tier present: a verified user (`tenant`, `subject`), else a verified
/// session id, else the client address.
pub fn select(user: Option<(&str, &str)>, session: Option<&str>, client: IpAddr) -> Charge {
    if let Some((tenant, subject)) = user {
        return Charge {
            tier: Tier::User,
            key: format!("{tenant}/{subject}"),
        };
    }
    if let Some(id) = session {
        return Charge {
            tier: Tier::Session,
            key: id.to_owned(),
        };
    }
    Charge {
        tier: Tier::Ip,
        key: address_key(client),
    }
}

/// The key of an address: IPv4 as is, IPv6 by its /64.
pub fn address_key(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let block = Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
            format!("{block}/64")
        }
    }
}

/// An address block such as `10.0.0.0/8`, `fd00::/8` or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

/// Why a block did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// Not an address, or a prefix out of range.
    #[error("`{0}` is not an address or an address block like 10.0.0.0/8")]
    Malformed(String),
    /// An IPv4-mapped IPv6 block (`::ffff:a.b.c.d/n`) wider than the mapped range.
    #[error(
        "`{0}` is an IPv4-mapped block with a prefix below /96, which would reach beyond the mapped IPv4 range; write the IPv4 block itself (such as 10.0.0.0/8), or use a prefix of 96 to 128"
    )]
    MappedPrefix(String),
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Cidr, CidrError> {
        let bad = || CidrError::Malformed(text.to_owned());
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| bad())?)),
            None => (text.trim(), None),
        };
        let network: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(bad());
        }
        // An IPv4-mapped block is kept as the IPv4 block it maps (`::ffff:10.0.0.0/104` is
        // `10.0.0.0/8`), the form `contains` compares addresses in; its prefix loses the 96
        // bits of the mapping prefix. Invariant: an IPv4 network has a prefix of at most 32.
        if let IpAddr::V6(v6) = network
            && let Some(v4) = v6.to_ipv4_mapped()
        {
            let Some(prefix) = prefix.checked_sub(96) else {
                return Err(CidrError::MappedPrefix(text.trim().to_owned()));
            };
            return Ok(Cidr {
                network: IpAddr::V4(v4),
                prefix,
            });
        }
        Ok(Cidr { network, prefix })
    }
}

impl Cidr {
    /// True when `ip` lies in this block (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let prefix = u32::from(self.prefix);
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32u32.saturating_sub(prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128u32.saturating_sub(prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// The client address of a request from TCP peer `peer` carrying `forwarded_for` (the
/// `X-Forwarded-For` values in order). Without a trusted peer the header is ignored; with one,
/// the right-most address that is not itself a trusted proxy is the client. Unparseable
/// entries stop the walk at the last trusted hop.
pub fn client_address<'a>(
    peer: IpAddr,
    forwarded_for: impl IntoIterator<Item = &'a str>,
    trusted: &[Cidr],
) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let hops: Vec<&str> = forwarded_for
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Some(ip) = parse_hop(hop) else {
            return client;
        };
        client = ip;
        if !is_trusted(ip) {
            return ip;
        }
    }
    client
}

/// An address from one `X-Forwarded-For` entry (`1.2.3.4`, `1.2.3.4:5678`, `[::1]:80`, `::1`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sock) = hop.parse::<std::net::SocketAddr>() {
        return Some(sock.ip());
    }
    hop.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .and_then(|h| h.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|c| c.parse().unwrap()).collect()
    }

    #[test]
    fn the_highest_tier_present_wins() {
        let client = ip("203.0.113.9");
        let c = select(Some(("acme", "bob")), Some("s1"), client);
        assert_eq!((c.tier, c.key.as_str()), (Tier::User, "acme/bob"));
        let c = select(None, Some("s1"), client);
        assert_eq!((c.tier, c.key.as_str()), (Tier::Session, "s1"));
        let c = select(None, None, client);
        assert_eq!((c.tier, c.key.as_str()), (Tier::Ip, "203.0.113.9"));
        assert!(Tier::User < Tier::Session && Tier::Session < Tier::Ip);
    }

    #[test]
    fn the_same_subject_in_two_tenants_is_two_keys() {
        let a = select(Some(("t1", "bob")), None, ip("127.0.0.1"));
        let b = select(Some(("t2", "bob")), None, ip("127.0.0.1"));
        assert_ne!(a.key, b.key);
    }

    #[test]
    fn ipv6_clients_share_their_64_and_mapped_ipv4_is_ipv4() {
        assert_eq!(address_key(ip("2001:db8:1:2:aaaa::1")), "2001:db8:1:2::/64");
        assert_eq!(
            address_key(ip("2001:db8:1:2:bbbb::9")),
            address_key(ip("2001:db8:1:2:aaaa::1"))
        );
        assert_eq!(address_key(ip("::ffff:192.0.2.1")), "192.0.2.1");
    }

    #[test]
    fn blocks_parse_and_contain() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains(ip("10.255.1.2")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.1.1.1")));
        let single: Cidr = "192.0.2.7".parse().unwrap();
        assert!(single.contains(ip("192.0.2.7")));
        assert!(!single.contains(ip("192.0.2.8")));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")));
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "nope",
            "10.0.0.0/x",
            "10.0.0/8",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn mapped_ipv4_blocks_are_the_ipv4_blocks_they_map() {
        let c: Cidr = "::ffff:10.0.0.0/104".parse().unwrap();
        assert_eq!(c, "10.0.0.0/8".parse().unwrap());
        assert!(c.contains(ip("10.9.8.7")));
        assert!(c.contains(ip("::ffff:10.9.8.7")));
        assert!(
            !c.contains(ip("192.0.2.1")),
            "an address outside the block is not trusted"
        );
        assert!(!c.contains(ip("203.0.113.5")));
        let single: Cidr = "::ffff:192.0.2.7".parse().unwrap();
        assert!(single.contains(ip("192.0.2.7")));
        assert!(!single.contains(ip("192.0.2.8")));
        let all_mapped: Cidr = "::ffff:0:0/96".parse().unwrap();
        assert!(all_mapped.contains(ip("198.51.100.1")));
        assert!(!all_mapped.contains(ip("2001:db8::1")));
    }

    #[test]
    fn mapped_blocks_wider_than_the_mapping_are_refused() {
        for wide in ["::ffff:0:0/95", "::ffff:10.0.0.0/80", "::ffff:0:0/0"] {
            let e = wide.parse::<Cidr>().unwrap_err();
            assert_eq!(e, CidrError::MappedPrefix(wide.to_owned()));
            assert!(e.to_string().contains("prefix below /96"), "{e}");
        }
    }

    #[test]
    fn a_mapped_block_does_not_let_a_client_choose_its_key() {
        // A proxy configured as a mapped block: a client outside it sending X-Forwarded-For is
        // keyed by its own address.
        let trusted = cidrs(&["::ffff:10.0.0.0/104"]);
        let got = client_address(ip("203.0.113.9"), ["1.2.3.4"], &trusted);
        assert_eq!(got, ip("203.0.113.9"));
        let got = client_address(ip("10.0.0.2"), ["1.2.3.4"], &trusted);
        assert_eq!(got, ip("1.2.3.4"));
    }

    #[test]
    fn forwarded_for_from_an_untrusted_peer_is_ignored() {
        let trusted = cidrs(&["10.0.0.0/8"]);
        let got = client_address(ip("198.51.100.1"), ["1.2.3.4"], &trusted);
        assert_eq!(got, ip("198.51.100.1"));
        let got = client_address(ip("127.0.0.1"), ["1.2.3.4"], &[]);
        assert_eq!(
            got,
            ip("127.0.0.1"),
            "no trusted proxies: the header never counts"
        );
    }

    #[test]
    fn forwarded_for_from_a_trusted_proxy_names_the_right_most_untrusted_hop() {
        let trusted = cidrs(&["10.0.0.0/8", "127.0.0.1"]);
        // The client put a fake address first; the proxies appended the real one.
        let got = client_address(
            ip("127.0.0.1"),
            ["6.6.6.6, 203.0.113.5", "10.1.1.1"],
            &trusted,
        );
        assert_eq!(got, ip("203.0.113.5"));
        let got = client_address(ip("10.0.0.2"), ["[2001:db8::1]:443"], &trusted);
        assert_eq!(got, ip("2001:db8::1"));
        let got = client_address(ip("10.0.0.2"), ["203.0.113.5:1234"], &trusted);
        assert_eq!(got, ip("203.0.113.5"));
    }

    #[test]
    fn a_chain_of_only_proxies_or_garbage_stops_at_the_last_trusted_hop() {
        let trusted = cidrs(&["10.0.0.0/8"]);
        assert_eq!(
            client_address(ip("10.0.0.2"), ["10.0.0.3"], &trusted),
            ip("10.0.0.3")
        );
        assert_eq!(
            client_address(ip("10.0.0.2"), ["garbage, 10.0.0.3"], &trusted),
            ip("10.0.0.3")
        );
        assert_eq!(
            client_address(ip("10.0.0.2"), Vec::<&str>::new(), &trusted),
            ip("10.0.0.2")
        );
    }
}
