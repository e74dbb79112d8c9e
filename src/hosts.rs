//! Which hosts this server answers for: the defence against DNS rebinding;
//! and how a `Host` value splits into host and port.
//!
//! A page of another site can make the browser resolve its own name to
//! this machine (DNS rebinding: the name's record is switched to
//! 127.0.0.1 once the page has loaded); its scripts then read and post as
//! a page of that name, which every same-origin check takes for this
//! site's own, since `Origin` and `Host` both carry the attacker's name.
//! Only the `Host` value tells: a request for a name this server is not
//! reached by is refused with 421 Misdirected Request (RFC 9110 §15.5.20:
//! "the server is not able or willing to produce an authoritative response
//! for the target URI") before it goes anywhere.
//!
//! The rule, from `allowed_hosts` and the address the server listens on:
//!
//! - An IP address (`127.0.0.1`, `[::1]`, `192.168.1.5`) is always
//!   answered: a browser's origin for it is that address, which no other
//!   site's page has.
//! - `localhost` and names under it (`chat.localhost`) are always
//!   answered: RFC 6761 §6.3 reserves them for this machine, so a page
//!   under one comes from this machine. Chrome and Firefox resolve them to
//!   loopback without asking DNS; Safari asks the system's resolver, but
//!   the root zone has no `localhost` and resolvers answer none of them,
//!   so only a resolver the attacker runs for the user could give one
//!   another address, and such a resolver could as well rebind any name
//!   `allowed_hosts` lists.
//! - Each name of `allowed_hosts` is answered; `*.example.com` answers the
//!   names under `example.com` (not `example.com` itself), and `*` any name.
//! - With `allowed_hosts` unset (the default), a server listening on a
//!   loopback address answers nothing more, since no other machine can
//!   reach it by name and a proxy in front can be named; one listening on
//!   any other address answers any name, as it is reachable by whatever
//!   names its network gives it. Jupyter's server makes the same choice
//!   (its `local_hostnames` check applies when it listens on localhost).
//!   Set to an empty list, it answers nothing more on any address: an
//!   operator who wrote `[]` asked for no names.
//!
//! The port of `Host` is not compared: a proxy may forward to another port
//! than the one the browser connected to.

use std::net::{IpAddr, Ipv6Addr};

/// The hosts a server answers for (see the module docs). Built once at
/// start; [`AllowedHosts::answers`] is called for every request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHosts {
    /// Every name answers (`*`, or no list on a non-loopback address).
    any: bool,
    /// Names answered exactly: lower case, no trailing dot.
    names: Vec<String>,
    /// Suffixes whose names answer (`*.example.com` as `.example.com`).
    suffixes: Vec<String>,
    /// Whether there was no list and the address is loopback: the refusal
    /// then says why a name that reaches the server is not answered.
    loopback_default: bool,
}

impl AllowedHosts {
    /// The hosts a server listening on `address` answers for, given the
    /// `allowed_hosts` entries `entries` (`None`: the setting is unset),
    /// each already checked by [`check_entry`] (lower case, no trailing
    /// dot).
    pub fn new(address: IpAddr, entries: Option<&[String]>) -> AllowedHosts {
        let loopback = address.to_canonical().is_loopback();
        let mut hosts = AllowedHosts {
            any: entries.is_none() && !loopback,
            names: Vec::new(),
            suffixes: Vec::new(),
            loopback_default: entries.is_none() && loopback,
        };
        let entries = entries.unwrap_or_default();
        for entry in entries {
            if entry == "*" {
                hosts.any = true;
            } else if let Some(suffix) = entry.strip_prefix('*') {
                hosts.suffixes.push(suffix.to_owned());
            } else {
                hosts.names.push(entry.clone());
            }
        }
        hosts
    }

    /// Whether every host is answered (`*`, or no list on an address that
    /// is not loopback).
    pub fn answers_any(&self) -> bool {
        self.any
    }

    /// Whether a request whose `Host` (or absolute-form authority) is
    /// `host` is answered: `Ok` when it is, else the [`Misdirected`]
    /// refusal, which names the host. `host` is a valid
    /// `uri-host [ ":" port ]` (the front door checked it); `None`, a
    /// request without one (HTTP/1.0), is answered: no browser leaves
    /// `Host` out.
    pub fn answers(&self, host: Option<&str>) -> Result<(), Misdirected> {
        if self.any {
            return Ok(());
        }
        let Some(authority) = host.filter(|h| !h.is_empty()) else {
            return Ok(());
        };
        let name = split_port(authority).0;
        // `127.0.0.1.` is that address: a browser reads a host whose last
        // label is a number as an IPv4 address, a trailing dot dropped (the
        // WHATWG URL standard's host parser, "ends in a number").
        let name = name.strip_suffix('.').unwrap_or(name);
        let bare = name.trim_start_matches('[').trim_end_matches(']');
        if bare.parse::<IpAddr>().is_ok() {
            return Ok(());
        }
        let name = name.to_ascii_lowercase();
        if name == "localhost"
            || name.ends_with(".localhost")
            || self.names.contains(&name)
            || self.suffixes.iter().any(|s| name.ends_with(s.as_str()))
        {
            return Ok(());
        }
        Err(Misdirected {
            name: name.to_owned(),
            loopback_default: self.loopback_default,
        })
    }
}

/// A request for a host this server does not answer for (421).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Misdirected {
    /// The host refused: the client's, lower case, without port or
    /// trailing dot, and of any length (a `Host` may fill most of a
    /// request head).
    pub name: String,
    /// Whether `allowed_hosts` was left unset and the address is loopback.
    loopback_default: bool,
}

impl Misdirected {
    /// The refusal's text, which says what to set, naming the host as
    /// `shown`: [`Misdirected::name`] as the caller repeats client input in
    /// an error (bounded and escaped, `crate::api::echo`).
    pub fn explain(&self, shown: &str) -> String {
        if self.loopback_default {
            format!(
                "this server does not answer for host {shown}: it listens on a loopback \
                 address and answers localhost and IP addresses only, so that pages of \
                 other sites cannot reach it by DNS rebinding; if a proxy forwards this \
                 name, add it to allowed_hosts (SIMPLECHAT_ALLOWED_HOSTS)"
            )
        } else {
            format!(
                "this server does not answer for host {shown}: it is not in allowed_hosts \
                 (SIMPLECHAT_ALLOWED_HOSTS), which guards against DNS rebinding; add it \
                 there if the server is reached by that name"
            )
        }
    }
}

/// One `allowed_hosts` entry as [`AllowedHosts::new`] takes it: trimmed,
/// lower case, without a trailing dot. Accepted: `*`; a host name (ASCII
/// letters, digits, `-` and `_` in dot-separated labels); `*.` before a
/// host name; an IP address, an IPv6 one with or without its brackets
/// (answered anyway).
///
/// Errors: anything else, such as a port, a scheme, a path, or a name not
/// in ASCII (one line naming the entry as written and saying what an entry
/// is).
pub fn check_entry(entry: &str) -> Result<String, String> {
    let given = entry.trim();
    let entry = given.to_ascii_lowercase();
    if entry == "*" {
        return Ok(entry);
    }
    // `*.` is no name, not `*` with a trailing dot.
    let entry = match entry.strip_suffix('.') {
        Some(name) if name != "*" => name.to_owned(),
        _ => entry,
    };
    let is_address = match entry.strip_prefix('[').and_then(|e| e.strip_suffix(']')) {
        Some(literal) => literal.parse::<Ipv6Addr>().is_ok(),
        None => entry.parse::<IpAddr>().is_ok(),
    };
    if is_address {
        return Ok(entry);
    }
    let name = entry.strip_prefix("*.").unwrap_or(&entry);
    let label_ok = |label: &str| {
        !label.is_empty()
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if name.split('.').all(label_ok) {
        Ok(entry)
    } else if !given.is_ascii() {
        Err(format!(
            "{given:?} is not a host name: give a name with letters beyond ASCII as browsers \
             send it, in its xn-- form (punycode)"
        ))
    } else {
        Err(format!(
            "{given:?} is not a host name: give names only, without scheme, port or path \
             (chat.example.com, *.example.com for the names under it, or * for any)"
        ))
    }
}

/// `authority` as its host and its port with the `:` before it (empty
/// when there is none): the port follows the last `:` after any closing
/// bracket, as an IPv6 literal's colons are inside its brackets.
pub fn split_port(authority: &str) -> (&str, &str) {
    let after_brackets = authority.rfind(']').map_or(0, |end| end + 1);
    match authority[after_brackets..].rfind(':') {
        Some(colon) => authority.split_at(after_brackets + colon),
        None => (authority, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hosts answered on `address` with `entries`; none: unset.
    fn hosts(address: &str, entries: &[&str]) -> AllowedHosts {
        let entries: Vec<String> = entries.iter().map(|e| check_entry(e).unwrap()).collect();
        let entries = (!entries.is_empty()).then_some(entries.as_slice());
        AllowedHosts::new(address.parse().unwrap(), entries)
    }

    #[test]
    fn a_loopback_server_answers_loopback_names_and_addresses_only() {
        let local = hosts("127.0.0.1", &[]);
        for ok in [
            "127.0.0.1:8000",
            "localhost",
            "LocalHost:8000",
            "localhost.",
            "chat.localhost:80",
            "[::1]:8000",
            "192.168.1.5",
            "127.0.0.1.:8000",
        ] {
            assert_eq!(local.answers(Some(ok)), Ok(()), "{ok}");
        }
        assert_eq!(local.answers(None), Ok(()));
        for refused in ["evil.example:8000", "localhost.evil.example", "x"] {
            let refusal = local.answers(Some(refused)).unwrap_err();
            assert_eq!(refusal.name, refused.split(':').next().unwrap());
            let why = refusal.explain(&refusal.name);
            assert!(why.contains("allowed_hosts"), "{why}");
        }
        assert!(hosts("::1", &[]).answers(Some("evil.example")).is_err());
        assert!(hosts("::ffff:127.0.0.1", &[])
            .answers(Some("evil.example"))
            .is_err());
    }

    #[test]
    fn a_server_on_another_address_answers_any_name_unless_given_a_list() {
        assert_eq!(hosts("0.0.0.0", &[]).answers(Some("chat.example")), Ok(()));
        assert_eq!(hosts("::", &[]).answers(Some("chat.example")), Ok(()));
        let listed = hosts("0.0.0.0", &["Chat.Example.", "*.lab.example"]);
        assert_eq!(listed.answers(Some("chat.example:8000")), Ok(()));
        assert_eq!(listed.answers(Some("a.lab.example")), Ok(()));
        assert_eq!(listed.answers(Some("10.0.0.5:8000")), Ok(()));
        assert_eq!(listed.answers(Some("localhost")), Ok(()));
        assert!(listed.answers(Some("lab.example")).is_err());
        assert!(listed.answers(Some("evil.example")).is_err());
        assert!(listed.answers(Some("xlab.example")).is_err());
        let any = hosts("127.0.0.1", &["*"]);
        assert_eq!(any.answers(Some("evil.example")), Ok(()));
        assert!(any.answers_any() && hosts("::", &[]).answers_any());
        assert!(!listed.answers_any() && !hosts("::1", &[]).answers_any());
    }

    #[test]
    fn an_empty_list_answers_no_names_on_any_address() {
        for address in ["0.0.0.0", "::", "127.0.0.1"] {
            let empty = AllowedHosts::new(address.parse().unwrap(), Some(&[]));
            assert!(!empty.answers_any(), "{address}");
            let refusal = empty.answers(Some("evil.example")).unwrap_err();
            let why = refusal.explain(&refusal.name);
            assert!(why.contains("not in allowed_hosts"), "{address}: {why}");
            assert_eq!(empty.answers(Some("chat.localhost")), Ok(()), "{address}");
            assert_eq!(empty.answers(Some("[::1]:8000")), Ok(()), "{address}");
        }
    }

    #[test]
    fn entries_are_names_not_addresses_with_ports_or_urls() {
        assert_eq!(check_entry(" Chat.Example. ").unwrap(), "chat.example");
        assert_eq!(check_entry("*.example.com").unwrap(), "*.example.com");
        assert_eq!(check_entry("[::1]").unwrap(), "[::1]");
        for bad in [
            "",
            "chat.example:8000",
            "http://chat.example",
            "chat.example/",
            "*example.com",
            "a..b",
            "*.",
            ".",
            "[[::1]]",
            "[::1",
            "::1]",
            "[127.0.0.1]",
            "Chat.Example:80",
        ] {
            let why = check_entry(bad).unwrap_err();
            assert!(why.contains("not a host name"), "{bad}: {why}");
            // Named as written, not as it would have been stored.
            assert!(
                why.starts_with(&format!("{:?} ", bad.trim())),
                "{bad}: {why}"
            );
        }
        assert_eq!(check_entry("::1").unwrap(), "::1");
        assert_eq!(check_entry("127.0.0.1").unwrap(), "127.0.0.1");
        // A name that is not ASCII is asked for as browsers send it.
        let why = check_entry("bücher.example").unwrap_err();
        assert!(why.contains("xn--"), "{why}");
    }
}
