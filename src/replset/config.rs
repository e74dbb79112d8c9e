//! The replica-set configuration `replset init` proposes, and how an existing
//! configuration is compared with the members asked for.

use std::collections::BTreeSet;

use mongodb::bson::{doc, Bson, Document};

/// A member as `host:port`, lower-cased, with the default port made explicit,
/// so `Storage1.local` and `storage1.local:27017` are the same member.
///
/// Errors say what a member is and, for the shapes an operator may give
/// instead, the member as it should be written: a connection string (its
/// hosts, one `--member` each, never its password), an IPv6 address
/// without the brackets the port needs.
pub fn normalize_member(member: &str) -> Result<String, String> {
    let m = member.trim();
    if m.is_empty() {
        return Err("a member must be HOST:PORT, got an empty string".into());
    }
    if let Some(why) = connection_string(m) {
        return Err(why);
    }
    if m.contains('/') || m.contains(',') || m.contains('@') || m.contains(char::is_whitespace) {
        return Err(format!("member {m:?} must be HOST:PORT"));
    }
    if m.starts_with('[') && !m.contains(']') {
        return Err(format!(
            "member {m:?} has no closing ']' after its IPv6 address: write [ADDRESS]:PORT"
        ));
    }
    let (host, port) = match m.rsplit_once(':') {
        // An IPv6 literal in brackets keeps its colons.
        Some((host, port)) if !port.contains(']') => (host, port),
        _ => (m, "27017"),
    };
    if !host.starts_with('[') && host.contains(':') {
        return Err(unbracketed(m, host, port));
    }
    if host.is_empty() {
        return Err(format!("member {m:?} has no host"));
    }
    let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(|| {
        format!("member {m:?} has an invalid port {port:?} (a port is a number from 1 to 65535)")
    })?;
    Ok(format!("{}:{port}", host.to_ascii_lowercase()))
}

/// Why `m`, a connection string, is no member, with its hosts as
/// `--member` arguments; `None` for anything else. The string itself is
/// never shown: it may carry a password.
fn connection_string(m: &str) -> Option<String> {
    let lower = m.to_ascii_lowercase();
    if lower.starts_with("mongodb+srv://") {
        return Some(
            "a member must be HOST:PORT, not a mongodb+srv:// connection string (which names a \
             DNS record, not the members): give each member as --member HOST:PORT, and the \
             string's credentials and options with --uri"
                .to_owned(),
        );
    }
    let rest = lower
        .strip_prefix("mongodb://")
        .map(|_| &m["mongodb://".len()..])?;
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    let hosts = authority
        .rsplit_once('@')
        .map_or(authority, |(_, hosts)| hosts);
    let each: Vec<String> = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|h| format!("--member {h}"))
        .collect();
    Some(format!(
        "a member must be HOST:PORT, not a connection string: give its hosts one each, {}, \
         and its credentials and options with --uri",
        each.join(" ")
    ))
}

/// Why `m`, whose host `host` holds a colon without brackets, is no
/// member: an IPv6 address needs brackets before a port (RFC 3986's
/// IP-literal, as connection strings write it). Suggests the bracketed
/// form when `m` reads as one.
fn unbracketed(m: &str, host: &str, port: &str) -> String {
    use std::net::Ipv6Addr;
    let with_port = host.parse::<Ipv6Addr>().is_ok() && port.parse::<u16>().is_ok();
    let suggestion = if with_port {
        format!(": write [{host}]:{port}")
    } else if m.parse::<Ipv6Addr>().is_ok() {
        format!(": write [{m}]:27017")
    } else {
        ": write [ADDRESS]:PORT".to_owned()
    };
    format!(
        "member {m:?} is an IPv6 address without brackets, so where its port begins cannot be \
         told{suggestion}"
    )
}

/// Checks and normalizes the requested members.
pub fn normalize_members(members: &[String]) -> Result<Vec<String>, String> {
    if members.is_empty() {
        return Err("at least one --member HOST:PORT is needed".into());
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(members.len());
    for m in members {
        let n = normalize_member(m)?;
        if !seen.insert(n.clone()) {
            return Err(format!("member {n} is listed twice"));
        }
        out.push(n);
    }
    Ok(out)
}

/// Refuses a replica-set name that is empty or holds `/`, `.`, a space or a
/// control character, before any member is contacted; the error is one line.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.contains(['/', ' ', '.']) || name.chars().any(char::is_control) {
        return Err(format!(
            "replica set name {name:?} must be non-empty without '/', '.' or spaces"
        ));
    }
    Ok(())
}

/// The `replSetInitiate` document: members in the order given, ids 0, 1, ...
/// Every member votes and may become primary, as in the lab's `rs.initiate()`.
pub fn initiate_document(name: &str, members: &[String]) -> Document {
    let members: Vec<Bson> = members
        .iter()
        .enumerate()
        .map(|(i, host)| {
            Bson::Document(doc! { "_id": i32::try_from(i).unwrap_or(i32::MAX), "host": host })
        })
        .collect();
    doc! { "_id": name, "members": members }
}

/// What an existing configuration says, reduced to what `init` compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingConfig {
    /// The set's name (its `_id`, mongod's `replSetName`).
    pub name: String,
    /// The members as normalized `host:port` ([`normalize_member`]), in the
    /// order the reply lists them.
    pub members: Vec<String>,
    /// The same members' hosts as the configuration writes them.
    pub configured: Vec<String>,
}

/// Host names are case-insensitive (RFC 4343) and `host` means
/// `host:27017`: each member normalized for comparing, and as written for
/// showing.
fn existing(name: String, hosts: Vec<&str>) -> ExistingConfig {
    ExistingConfig {
        name,
        members: hosts.iter().map(|h| comparable(h)).collect(),
        configured: hosts.into_iter().map(str::to_owned).collect(),
    }
}

/// A host as written in a configuration, normalized for comparing
/// ([`normalize_member`]); one it cannot read, lower-cased.
pub fn comparable(host: &str) -> String {
    normalize_member(host).unwrap_or_else(|_| host.to_ascii_lowercase())
}

/// The members' hosts as a replica-set configuration document
/// (`{_id, members: [{host}]}`) writes them, in its order.
pub fn member_hosts(config: &Document) -> Vec<&str> {
    config
        .get_array("members")
        .map(|members| {
            members
                .iter()
                .filter_map(|m| m.as_document())
                .filter_map(|m| m.get_str("host").ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Reads a `replSetGetConfig` reply (`{config: {_id, members: [{host}]}}`).
pub fn parse_config_reply(reply: &Document) -> Result<ExistingConfig, String> {
    let config = reply
        .get_document("config")
        .map_err(|_| "replSetGetConfig answered without a config document".to_owned())?;
    let name = config
        .get_str("_id")
        .map_err(|_| "the replica-set config has no _id".to_owned())?
        .to_owned();
    if config.get_array("members").is_err() {
        return Err("the replica-set config has no members".to_owned());
    }
    Ok(existing(name, member_hosts(config)))
}

/// Reads what `hello` says of the set: its name and the members in its
/// `hosts`, `passives` and `arbiters`.
pub fn parse_hello(hello: &Document) -> Result<ExistingConfig, String> {
    let name = hello
        .get_str("setName")
        .map_err(|_| "the member is not in an initiated replica set".to_owned())?
        .to_owned();
    let hosts = ["hosts", "passives", "arbiters"]
        .iter()
        .filter_map(|key| hello.get_array(key).ok())
        .flatten()
        .filter_map(Bson::as_str)
        .collect();
    Ok(existing(name, hosts))
}

/// `Ok` when the set was initiated with exactly these name and members (in
/// any order); otherwise what differs, in words. `renamed` pairs a requested
/// member with the host the configuration names it by, for a member that
/// answered as a configured one (its `hello`'s `me`) under another name
/// (`127.0.0.1:27017` for `localhost:27017`): said first, as that is then
/// the difference to fix.
pub fn compare(
    existing: &ExistingConfig,
    name: &str,
    members: &[String],
    renamed: &[(String, String)],
) -> Result<(), String> {
    let mut differences = Vec::new();
    if existing.name != name {
        differences.push(format!("its name is {:?}, not {name:?}", existing.name));
    }
    let have: BTreeSet<&str> = existing.members.iter().map(String::as_str).collect();
    let want: BTreeSet<&str> = members.iter().map(String::as_str).collect();
    let missing: Vec<&str> = want.difference(&have).copied().collect();
    let extra: Vec<&str> = have.difference(&want).copied().collect();
    if !missing.is_empty() {
        differences.push(format!("it lacks {}", missing.join(", ")));
    }
    if !extra.is_empty() {
        differences.push(format!("it also has {}", extra.join(", ")));
    }
    if differences.is_empty() {
        return Ok(());
    }
    if !renamed.is_empty() {
        let each: Vec<String> = renamed
            .iter()
            .map(|(asked, configured)| format!("{asked} is the member it names {configured}"))
            .collect();
        differences.insert(
            0,
            format!(
                "a member is named by another spelling than its configuration uses ({})",
                each.join(", ")
            ),
        );
    }
    // apply changes members but cannot rename a set (mongod refuses a new
    // `_id` in replSetReconfig), so a name that differs is the request's.
    let what_to_do = if !renamed.is_empty() && existing.name == name {
        format!(
            "name each member as the configuration does: {}",
            existing.configured.join(", ")
        )
    } else if existing.name != name {
        format!(
            "a replica set cannot be renamed: give --name {:?} if that set is meant",
            existing.name
        )
    } else {
        "to change its members to these, run `simplechat replset apply --name ... --member ...` \
         with the same options: it reconfigures a running set in safe steps"
            .to_owned()
    };
    Err(format!(
        "the replica set is already initiated with other settings: {} (its members: {}). \
         Nothing was changed; {what_to_do}",
        differences.join("; "),
        existing.configured.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn members_are_normalized_and_checked() {
        assert_eq!(
            normalize_member("Storage1.LOCAL").unwrap(),
            "storage1.local:27017"
        );
        assert_eq!(normalize_member(" h:27018 ").unwrap(), "h:27018");
        assert_eq!(normalize_member("[::1]:27019").unwrap(), "[::1]:27019");
        assert_eq!(normalize_member("[::1]").unwrap(), "[::1]:27017");
        assert!(normalize_member("h:0").is_err());
        assert!(normalize_member("h:x").is_err());
        assert!(normalize_member("mongodb://h:1").is_err());
        let port = normalize_member("h:65536").unwrap_err();
        assert!(port.contains("a number from 1 to 65535"), "{port}");
        assert!(normalize_member(":27017").is_err());
        assert!(normalize_members(&[]).is_err());
        let dup = normalize_members(&strings(&["h:27017", "H"])).unwrap_err();
        assert!(dup.contains("twice"), "{dup}");
        assert!(check_name("rs").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a/b").is_err());
    }

    #[test]
    fn a_connection_string_given_as_a_member_is_written_as_members() {
        let e = normalize_member(
            "mongodb://admin:hunter22@Storage1.local:27017,storage2.local/simplechat?replicaSet=rs",
        )
        .unwrap_err();
        assert_eq!(
            e,
            "a member must be HOST:PORT, not a connection string: give its hosts one each, \
             --member Storage1.local:27017 --member storage2.local, and its credentials and \
             options with --uri"
        );
        let srv = normalize_member("MONGODB+SRV://u:hunter22@cluster.example/").unwrap_err();
        assert!(
            srv.contains("names a DNS record") && !srv.contains("hunter22"),
            "{srv}"
        );
        let odd = normalize_member("mongodb://u:p@w@h1?x=1").unwrap_err();
        assert!(
            odd.contains("--member h1,") && !odd.contains("p@w"),
            "{odd}"
        );
    }

    #[test]
    fn an_ipv6_address_needs_its_brackets() {
        assert_eq!(normalize_member("[::1]:27019").unwrap(), "[::1]:27019");
        assert_eq!(normalize_member("[FE80::1]").unwrap(), "[fe80::1]:27017");
        for (written, fix) in [
            ("::1:28101", "write [::1]:28101"),
            ("fe80::1", "write [fe80::1]:27017"),
            ("::1", "write [::1]:27017"),
            ("a:b:c", "write [ADDRESS]:PORT"),
        ] {
            let e = normalize_member(written).unwrap_err();
            assert!(
                e.starts_with(&format!(
                    "member {written:?} is an IPv6 address without brackets"
                )) && e.ends_with(fix),
                "{written}: {e}"
            );
        }
        let open = normalize_member("[::1").unwrap_err();
        assert!(open.contains("no closing ']'"), "{open}");
    }

    #[test]
    fn initiate_document_lists_members_in_order() {
        let members = strings(&["s1.local:27017", "s2.local:27017", "s3.local:27017"]);
        let d = initiate_document("rs", &members);
        assert_eq!(
            d,
            doc! {
                "_id": "rs",
                "members": [
                    { "_id": 0, "host": "s1.local:27017" },
                    { "_id": 1, "host": "s2.local:27017" },
                    { "_id": 2, "host": "s3.local:27017" },
                ]
            }
        );
    }

    fn reply(name: &str, hosts: &[&str]) -> Document {
        let members: Vec<Bson> = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| {
                Bson::Document(doc! { "_id": i as i32, "host": *h, "priority": 1.0, "votes": 1 })
            })
            .collect();
        doc! { "config": { "_id": name, "version": 1, "term": 1, "members": members }, "ok": 1.0 }
    }

    #[test]
    fn same_members_in_any_order_and_spelling_match() {
        let existing = parse_config_reply(&reply(
            "rs",
            &["S2.local:27017", "s1.local", "s3.local:27017"],
        ))
        .unwrap();
        let want =
            normalize_members(&strings(&["s1.local:27017", "s2.local", "s3.local:27017"])).unwrap();
        assert_eq!(compare(&existing, "rs", &want, &[]), Ok(()));
    }

    #[test]
    fn differences_are_spelled_out() {
        let existing =
            parse_config_reply(&reply("lab", &["s1:27017", "s2:27017", "old:27017"])).unwrap();
        let want = strings(&["s1:27017", "s2:27017", "s3:27017"]);
        let err = compare(&existing, "rs", &want, &[]).unwrap_err();
        assert!(err.contains("its name is \"lab\", not \"rs\""), "{err}");
        assert!(err.contains("it lacks s3:27017"), "{err}");
        assert!(err.contains("it also has old:27017"), "{err}");
        assert!(err.contains("Nothing was changed"), "{err}");
        assert!(err.contains("cannot be renamed"), "{err}");
        assert!(!err.contains("rs.reconfig"), "{err}");
        let members_only = compare(&existing, "lab", &want, &[]).unwrap_err();
        assert!(
            members_only.contains("run `simplechat replset apply --name"),
            "{members_only}"
        );
        assert!(!members_only.contains("rs.reconfig"), "{members_only}");
    }

    #[test]
    fn another_spelling_is_named_with_the_configured_hosts_as_written() {
        let existing =
            parse_config_reply(&reply("rs", &["LocalHost:1", "localhost:2", "localhost:3"]))
                .unwrap();
        assert_eq!(
            existing.members,
            ["localhost:1", "localhost:2", "localhost:3"]
        );
        assert_eq!(
            existing.configured,
            ["LocalHost:1", "localhost:2", "localhost:3"]
        );
        let same = strings(&["LOCALHOST:1", "localhost:2", "localhost:3"]);
        assert_eq!(
            compare(&existing, "rs", &normalize_members(&same).unwrap(), &[]),
            Ok(())
        );
        let want = strings(&["127.0.0.1:1", "localhost:2", "localhost:3"]);
        let renamed = [("127.0.0.1:1".to_owned(), "LocalHost:1".to_owned())];
        let err = compare(&existing, "rs", &want, &renamed).unwrap_err();
        assert!(
            err.contains("named by another spelling than its configuration uses (127.0.0.1:1 is the member it names LocalHost:1)")
                && err.ends_with(
                    "name each member as the configuration does: LocalHost:1, localhost:2, localhost:3"
                ),
            "{err}"
        );
    }

    #[test]
    fn hello_lists_the_members_too() {
        let hello = doc! {
            "isWritablePrimary": false, "setName": "rs",
            "hosts": ["s1:27017", "s2:27017"], "passives": ["s3:27017"],
            "primary": "s1:27017",
        };
        let existing = parse_hello(&hello).unwrap();
        assert_eq!(existing.name, "rs");
        let want = strings(&["s1:27017", "s2:27017", "s3:27017"]);
        assert_eq!(compare(&existing, "rs", &want, &[]), Ok(()));
        assert!(parse_hello(&doc! { "isreplicaset": true }).is_err());
    }

    #[test]
    fn malformed_replies_are_errors() {
        assert!(parse_config_reply(&doc! { "ok": 1 }).is_err());
        assert!(parse_config_reply(&doc! { "config": { "members": [] } }).is_err());
    }
}
