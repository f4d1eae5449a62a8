//! Which IP addresses a client-given URL may reach, and the resolver that enforces it.
//!
//! Every address comfyd connects to for a client passes [`AddressPolicy::check`]: literal addresses
//! when the URL is checked, names in [`PolicyResolver`], which awc's connector uses instead of its
//! own lookup. The resolver looks a name up once, refuses it when *any* of its addresses is refused,
//! and hands awc exactly the addresses it checked, so no second lookup can answer differently (DNS
//! rebinding). TLS SNI and the `Host` header still come from the URL, since only the address is ours.
//!
//! Classes: link-local, cloud metadata, unspecified, multicast and broadcast addresses are never
//! reached; loopback and private (RFC 1918, unique local, shared/CGNAT, documentation, benchmarking,
//! reserved) ones only when the settings allow. IPv6 forms that carry an IPv4 address (mapped
//! `::ffff:a.b.c.d`, compatible `::a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) are judged by
//! the IPv4 address they carry.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use actix_tls::connect::Resolve;
use futures_util::future::LocalBoxFuture;

/// Longest wait for a name lookup.
pub(super) const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// What kind of address an IP is, for the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressClass {
    /// Reachable by any client URL.
    Public,
    /// 127.0.0.0/8, ::1: allowed by `allow_loopback`.
    Loopback,
    /// Internal networks and reserved ranges (the name says which): allowed by `allow_private`.
    Private(&'static str),
    /// Never reached, whatever the settings (the name says why).
    Never(&'static str),
}

/// Cloud instance metadata services: the common one (AWS, GCP, Azure, OCI, ...; link-local, which is
/// refused anyway, but named so the error says what it is), Alibaba Cloud's, and AWS's IPv6 one.
const METADATA_V4: [Ipv4Addr; 2] = [
    Ipv4Addr::new(169, 254, 169, 254),
    Ipv4Addr::new(100, 100, 100, 200),
];
const METADATA_V6: [Ipv6Addr; 1] = [Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254)];

/// The class of an address.
pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    use AddressClass::*;
    let [a, b, ..] = ip.octets();
    if METADATA_V4.contains(&ip) {
        Never("cloud metadata")
    } else if ip.is_link_local() {
        Never("link-local")
    } else if a == 0 {
        // 0.0.0.0/8 "this network": 0.0.0.0 reaches the local host on Linux.
        Never("unspecified")
    } else if ip.is_broadcast() {
        Never("broadcast")
    } else if ip.is_multicast() {
        Never("multicast")
    } else if ip.is_loopback() {
        Loopback
    } else if ip.is_private() {
        Private("private")
    } else if a == 100 && (64..128).contains(&b) {
        Private("shared (carrier-grade NAT)")
    } else if ip.is_documentation() {
        Private("documentation")
    } else if a == 198 && (b == 18 || b == 19) {
        Private("benchmarking")
    } else if a == 192 && b == 0 && ip.octets()[2] == 0 {
        Private("IETF protocol assignment")
    } else if a >= 240 {
        Private("reserved")
    } else {
        Public
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    use AddressClass::*;
    let seg = ip.segments();
    if let Some(v4) = embedded_v4(ip) {
        return classify_v4(v4);
    }
    if METADATA_V6.contains(&ip) {
        Never("cloud metadata")
    } else if ip.is_unspecified() {
        Never("unspecified")
    } else if ip.is_loopback() {
        Loopback
    } else if (seg[0] & 0xffc0) == 0xfe80 {
        Never("link-local")
    } else if ip.is_multicast() {
        Never("multicast")
    } else if (seg[0] & 0xffc0) == 0xfec0 {
        // Deprecated site-local (RFC 3879), still routed inside some networks.
        Private("site-local")
    } else if (seg[0] & 0xfe00) == 0xfc00 {
        Private("unique local")
    } else if seg[0] == 0x2001 && seg[1] == 0x0db8 {
        Private("documentation")
    } else if seg[0] == 0x0100 && seg[1..4] == [0, 0, 0] {
        // 100::/64, discard-only.
        Private("reserved")
    } else {
        Public
    }
}

/// The IPv4 address an IPv6 address stands for, in the forms that reach it: mapped, compatible
/// (deprecated, but some stacks still route it), NAT64's well-known prefix and 6to4.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let seg = ip.segments();
    let low =
        |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    // ::a.b.c.d, but not :: and ::1, which are IPv6's own.
    if seg[..6] == [0; 6] && (seg[6] != 0 || seg[7] > 1) {
        return Some(low(seg[6], seg[7]));
    }
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(low(seg[6], seg[7]));
    }
    if seg[0] == 0x2002 {
        return Some(low(seg[1], seg[2]));
    }
    None
}

/// Which non-public addresses client URLs may reach (`[url_policy]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressPolicy {
    /// Private networks and reserved ranges.
    pub allow_private: bool,
    /// 127.0.0.0/8 and ::1.
    pub allow_loopback: bool,
}

impl AddressPolicy {
    /// Ok when `ip` may be reached; else why not, for the client.
    pub fn check(&self, ip: IpAddr) -> Result<(), String> {
        match classify(ip) {
            AddressClass::Public => Ok(()),
            AddressClass::Loopback if self.allow_loopback => Ok(()),
            AddressClass::Loopback => Err(format!(
                "{ip} is a loopback address (not allowed: url_policy.allow_loopback)"
            )),
            AddressClass::Private(_) if self.allow_private => Ok(()),
            AddressClass::Private(class) => Err(format!(
                "{ip} is a {class} address (not allowed: url_policy.allow_private_addresses)"
            )),
            AddressClass::Never(class) => Err(format!("{ip} is a {class} address")),
        }
    }
}

/// A lookup that failed, or found an address the policy refuses.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// The name resolves to a refused address.
    #[error("{host} resolves to {reason}")]
    Refused { host: String, reason: String },
    /// The name did not resolve (or not in time).
    #[error("could not resolve {host}: {reason}")]
    Failed { host: String, reason: String },
}

/// Where names are looked up: the system resolver, or a fixed table (tests: names that resolve to
/// the loopback test servers without touching /etc/hosts or DNS).
#[derive(Clone, Debug, Default)]
pub enum Lookup {
    #[default]
    System,
    Table(Arc<HashMap<String, Vec<IpAddr>>>),
}

impl Lookup {
    async fn ips(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        let ips: Vec<IpAddr> = match self {
            Lookup::System => {
                let found =
                    tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host((host, 0)))
                        .await
                        .map_err(|_| "timed out".to_string())?
                        .map_err(|e| e.to_string())?;
                found.map(|a| a.ip()).collect()
            }
            Lookup::Table(table) => table
                .get(&host.trim_end_matches('.').to_ascii_lowercase())
                .cloned()
                .unwrap_or_default(),
        };
        if ips.is_empty() {
            return Err("no address".into());
        }
        Ok(ips)
    }

    /// Resolves `host` (a name, or an address, bracketed or not) and checks every address.
    pub async fn resolve_checked(
        &self,
        policy: AddressPolicy,
        host: &str,
    ) -> Result<Vec<IpAddr>, LookupError> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let ips = match bare.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => self.ips(bare).await.map_err(|reason| LookupError::Failed {
                host: bare.to_string(),
                reason,
            })?,
        };
        // One refused address refuses the name: connecting to "the others" would leave the choice
        // to whoever controls the name's records.
        for ip in &ips {
            policy.check(*ip).map_err(|reason| LookupError::Refused {
                host: bare.to_string(),
                reason,
            })?;
        }
        Ok(ips)
    }
}

/// awc's resolver for client URLs: one lookup, every address checked, only those returned.
pub(super) struct PolicyResolver {
    pub policy: AddressPolicy,
    pub lookup: Lookup,
}

impl Resolve for PolicyResolver {
    fn lookup<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> LocalBoxFuture<'a, Result<Vec<SocketAddr>, Box<dyn StdError>>> {
        Box::pin(async move {
            let ips = self.lookup.resolve_checked(self.policy, host).await?;
            Ok(ips
                .into_iter()
                .map(|ip| SocketAddr::new(ip, port))
                .collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AddressClass::*;

    fn class(ip: &str) -> AddressClass {
        classify(ip.parse().expect("an IP address"))
    }

    #[test]
    fn classes_of_ipv4_addresses() {
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "100.63.255.255",
            "100.128.0.1",
        ] {
            assert_eq!(class(ip), Public, "{ip}");
        }
        for ip in ["127.0.0.1", "127.255.255.254"] {
            assert_eq!(class(ip), Loopback, "{ip}");
        }
        for ip in [
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.255",
            "192.0.2.1",
            "198.18.0.1",
            "240.0.0.1",
        ] {
            assert!(matches!(class(ip), Private(_)), "{ip}: {:?}", class(ip));
        }
        for (ip, why) in [
            ("169.254.169.254", "cloud metadata"),
            ("169.254.170.2", "link-local"),
            ("169.254.0.1", "link-local"),
            ("100.100.100.200", "cloud metadata"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "unspecified"),
            ("255.255.255.255", "broadcast"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
        ] {
            assert_eq!(class(ip), Never(why), "{ip}");
        }
        // Just outside the private ranges.
        assert_eq!(class("172.32.0.1"), Public);
        assert_eq!(class("11.0.0.1"), Public);
    }

    #[test]
    fn classes_of_ipv6_addresses() {
        for ip in [
            "2606:4700::1111",
            "2a00:1450::1",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert_eq!(class(ip), Public, "{ip}");
        }
        assert_eq!(class("::1"), Loopback);
        for ip in ["fd00::1", "fc00::1", "2001:db8::1", "fec0::1"] {
            assert!(matches!(class(ip), Private(_)), "{ip}");
        }
        for (ip, why) in [
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("fd00:ec2::254", "cloud metadata"),
            ("::", "unspecified"),
            ("ff02::1", "multicast"),
        ] {
            assert_eq!(class(ip), Never(why), "{ip}");
        }
    }

    #[test]
    fn ipv6_forms_of_ipv4_addresses_are_judged_as_the_ipv4_address() {
        for (ip, expected) in [
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:7f00:1", Loopback),
            ("::127.0.0.1", Loopback),
            ("64:ff9b::7f00:1", Loopback),
            ("2002:7f00:1::", Loopback),
            ("::ffff:169.254.169.254", Never("cloud metadata")),
            ("::169.254.169.254", Never("cloud metadata")),
            ("64:ff9b::a9fe:a9fe", Never("cloud metadata")),
            ("2002:a9fe:a9fe::1", Never("cloud metadata")),
            ("::ffff:0.0.0.0", Never("unspecified")),
            ("::ffff:255.255.255.255", Never("broadcast")),
            ("::ffff:224.0.0.1", Never("multicast")),
            ("::ffff:10.0.0.1", Private("private")),
            ("::ffff:8.8.8.8", Public),
        ] {
            assert_eq!(class(ip), expected, "{ip}");
        }
    }

    #[test]
    fn the_policy_allows_loopback_and_private_separately_and_never_the_rest() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let none = AddressPolicy {
            allow_private: false,
            allow_loopback: false,
        };
        let loopback = AddressPolicy {
            allow_loopback: true,
            ..none
        };
        let private = AddressPolicy {
            allow_private: true,
            ..none
        };
        let all = AddressPolicy {
            allow_private: true,
            allow_loopback: true,
        };
        assert!(none.check(ip("8.8.8.8")).is_ok());
        let refused = none.check(ip("127.0.0.1")).expect_err("loopback refused");
        assert!(
            refused.contains("loopback") && refused.contains("allow_loopback"),
            "{refused}"
        );
        assert!(loopback.check(ip("127.0.0.1")).is_ok());
        assert!(loopback.check(ip("10.0.0.1")).is_err());
        assert!(private.check(ip("10.0.0.1")).is_ok());
        assert!(private.check(ip("::1")).is_err());
        for never in [
            "169.254.169.254",
            "::ffff:169.254.169.254",
            "fe80::1",
            "0.0.0.0",
            "ff02::1",
        ] {
            let reason = all.check(ip(never)).expect_err(never);
            assert!(
                !reason.contains("url_policy"),
                "no setting allows {never}: {reason}"
            );
        }
    }

    #[actix_web::test]
    async fn a_name_is_refused_when_any_of_its_addresses_is() {
        let lookup = Lookup::Table(Arc::new(HashMap::from([
            (
                "public.test".to_string(),
                vec!["8.8.8.8".parse().expect("ip")],
            ),
            (
                "mixed.test".to_string(),
                vec![
                    "8.8.8.8".parse().expect("ip"),
                    "10.0.0.1".parse().expect("ip"),
                ],
            ),
        ])));
        let policy = AddressPolicy {
            allow_private: false,
            allow_loopback: false,
        };
        assert!(lookup.resolve_checked(policy, "PUBLIC.test.").await.is_ok());
        assert!(matches!(
            lookup.resolve_checked(policy, "mixed.test").await,
            Err(LookupError::Refused { .. })
        ));
        assert!(matches!(
            lookup.resolve_checked(policy, "[::1]").await,
            Err(LookupError::Refused { .. })
        ));
        assert!(matches!(
            lookup.resolve_checked(policy, "unknown.test").await,
            Err(LookupError::Failed { .. })
        ));
    }

    #[actix_web::test]
    async fn the_system_resolver_is_checked_too() {
        // /etc/hosts maps localhost to 127.0.0.1 on every machine this runs on.
        let policy = AddressPolicy {
            allow_private: true,
            allow_loopback: false,
        };
        match Lookup::System.resolve_checked(policy, "localhost").await {
            Err(LookupError::Refused { reason, .. }) => assert!(reason.contains("loopback")),
            other => panic!("expected a refusal, got {other:?}"),
        }
        let allowed = AddressPolicy {
            allow_loopback: true,
            ..policy
        };
        let ips = Lookup::System
            .resolve_checked(allowed, "localhost")
            .await
            .expect("localhost resolves");
        assert!(ips.iter().all(|ip| ip.is_loopback()), "{ips:?}");
    }
}
