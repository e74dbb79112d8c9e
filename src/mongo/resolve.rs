//! Whether a server's name resolves from this machine, asked the way the
//! driver asks: the system resolver (`getaddrinfo`, which reads
//! /etc/hosts, DNS and whatever else nsswitch.conf lists, in its order).
//!
//! The driver looks a name up at each connection attempt
//! (`tokio::net::lookup_host`, the same `getaddrinfo`), and to it a name
//! that does not resolve is one more server it cannot reach: its monitor
//! marks the server Unknown with the I/O error ("failed to lookup address
//! information: Name or service not known") and tries again at the next
//! heartbeat, while an operation's server selection waits for the topology
//! to change until `serverSelectionTimeoutMS` has passed (Server Discovery
//! and Monitoring and Server Selection specifications:
//! <https://github.com/mongodb/specifications/blob/master/source/server-discovery-and-monitoring/server-monitoring.md>,
//! <https://github.com/mongodb/specifications/blob/master/source/server-selection/server-selection.md#multi-threaded-or-asynchronous-server-selection>).
//! So a caller that waits for a server asks here first, to tell a name the
//! resolver says does not exist, which no wait cures, from a resolver that
//! has not answered yet, which may.

use std::net::IpAddr;

use dns_lookup::{AddrInfoHints, LookupErrorKind, SockType};
use mongodb::options::ServerAddress;

/// What the system resolver says of a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// It has an address (or is an address, or a Unix socket's path).
    Found,
    /// The resolver answered that the name has no address: no such name
    /// in /etc/hosts or DNS (`EAI_NONAME`, also DNS's NXDOMAIN), or a name
    /// without addresses (`EAI_NODATA`). The resolver's words.
    NoSuchName(String),
    /// The resolver could not answer now, as while no name server answers
    /// (`EAI_AGAIN`): a later lookup may find it. The resolver's words.
    NoAnswer(String),
}

/// Looks `address`'s host up as the driver will, on a blocking thread
/// (`getaddrinfo` blocks). An IP address or a Unix socket is `Found`
/// without a lookup.
pub async fn lookup(address: &ServerAddress) -> Lookup {
    let host = match address {
        ServerAddress::Tcp { host, .. } => host.clone(),
        _ => return Lookup::Found,
    };
    if host.parse::<IpAddr>().is_ok() {
        return Lookup::Found;
    }
    tokio::task::spawn_blocking(move || with_dot_explained(&host, lookup_name(&host)))
        .await
        .unwrap_or_else(|e| Lookup::NoAnswer(format!("the lookup did not finish: {e}")))
}

/// When the resolver says of every one of `hosts` (each named as its
/// caller wants it shown) that the name does not exist: the names and the
/// resolver's words, as `a, b (why)`. `None` when any one resolves, or may
/// yet. A client reaches a replica set through any seed that answers, so
/// only when none ever can is there nothing to wait for.
pub async fn none_resolves(hosts: &[(String, ServerAddress)]) -> Option<String> {
    let found = futures::future::join_all(hosts.iter().map(|(_, a)| lookup(a))).await;
    let mut whys: Vec<String> = Vec::new();
    for found in found {
        let Lookup::NoSuchName(why) = found else {
            return None;
        };
        if !whys.contains(&why) {
            whys.push(why);
        }
    }
    let names: Vec<&str> = hosts.iter().map(|(name, _)| name.as_str()).collect();
    (!names.is_empty()).then(|| format!("{} ({})", names.join(", "), whys.join("; ")))
}

/// `found` for `host`, and when `host` ends in a dot and does not resolve
/// while the name without it does, why: a final dot makes a DNS name
/// absolute (the same name to DNS), but glibc's /etc/hosts lookup compares
/// names as written, so `storage1.local.` is not found where the line says
/// `storage1.local`; mongod, which looks names up the same way, would not
/// find it either.
fn with_dot_explained(host: &str, found: Lookup) -> Lookup {
    let bare = host.trim_end_matches('.');
    match found {
        Lookup::NoSuchName(why) if bare != host && !bare.is_empty() => {
            if lookup_name(bare) == Lookup::Found {
                Lookup::NoSuchName(format!(
                    "{why}; without its final dot, {bare} resolves: /etc/hosts matches a name \
                     as written, so write it without the dot"
                ))
            } else {
                Lookup::NoSuchName(why)
            }
        }
        other => other,
    }
}

fn lookup_name(host: &str) -> Lookup {
    let hints = AddrInfoHints {
        socktype: SockType::Stream.into(),
        ..AddrInfoHints::default()
    };
    match dns_lookup::getaddrinfo(Some(host), None, Some(hints)) {
        Ok(mut addresses) => match addresses.next() {
            Some(_) => Lookup::Found,
            None => Lookup::NoSuchName("no address".to_owned()),
        },
        Err(e) => match e.kind() {
            LookupErrorKind::NoName | LookupErrorKind::NoData => Lookup::NoSuchName(e.to_string()),
            _ => Lookup::NoAnswer(e.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(text: &str) -> ServerAddress {
        ServerAddress::parse(text).unwrap()
    }

    /// /etc/hosts has `localhost` (every system's does), not `localhost.`.
    #[tokio::test]
    async fn a_final_dot_that_keeps_a_name_from_resolving_is_explained() {
        match lookup(&address("localhost.:27017")).await {
            // A resolver that asks DNS for it may find it: nothing to explain.
            Lookup::Found => {}
            Lookup::NoSuchName(why) => assert!(
                why.ends_with(
                    "without its final dot, localhost resolves: /etc/hosts matches a name as \
                     written, so write it without the dot"
                ),
                "{why}"
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            with_dot_explained("a..b.", Lookup::NoSuchName("x".into())),
            Lookup::NoSuchName("x".into())
        );
    }

    #[tokio::test]
    async fn addresses_need_no_lookup_and_localhost_resolves() {
        for found in ["127.0.0.1:27017", "[::1]:27017", "localhost:27017"] {
            assert_eq!(lookup(&address(found)).await, Lookup::Found, "{found}");
        }
    }

    /// A name with an empty label is one glibc's resolver refuses before
    /// asking any name server (it cannot be put in a DNS query), so this
    /// runs the same without a network: the typo `storage1..local`.
    #[tokio::test]
    async fn a_name_that_cannot_exist_is_no_such_name() {
        match lookup(&address("storage1..local:27017")).await {
            Lookup::NoSuchName(why) => assert!(!why.is_empty()),
            other => panic!("{other:?}"),
        }
        let named = |text: &str| (text.to_owned(), address(text));
        let none = none_resolves(&[named("a..b:1"), named("c..d:2")])
            .await
            .unwrap();
        assert!(none.starts_with("a..b:1, c..d:2 ("), "{none}");
        assert_eq!(none.matches('(').count(), 1, "one reason for both: {none}");
        assert_eq!(
            none_resolves(&[named("a..b:1"), named("localhost:2")]).await,
            None
        );
        assert_eq!(none_resolves(&[]).await, None);
    }
}
