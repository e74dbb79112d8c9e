//! Connection strings as text: parsing them without leaking the password,
//! and showing them with the password hidden.

use mongodb::options::ConnectionString;

/// Parses a connection string without I/O.
///
/// Errors: why it does not parse. When the string carries a password the
/// driver's own reason is withheld, as it may quote pieces of a mangled
/// password.
pub fn parse(uri: &str) -> Result<ConnectionString, String> {
    ConnectionString::parse(uri).map_err(|e| match password(uri) {
        Some(_) => "it does not parse (the reason is withheld as it may quote the password; \
                    percent-encode special characters in passwords)"
            .to_owned(),
        None => e.kind.to_string(),
    })
}

/// Where the userinfo of a connection string lies: after `://`, up to the
/// last `@` before the options, which is how the driver splits it (so an
/// unescaped `/` or `@` in a password is still part of the password).
fn userinfo_span(uri: &str) -> Option<(usize, usize)> {
    let start = uri.find("://")? + 3;
    let end_of_authority = uri[start..].find('?').map_or(uri.len(), |i| start + i);
    // An unescaped `?` in a password hides the `@` from that rule; the string
    // is then invalid anyway, and hiding too much beats leaking.
    let at = start
        + uri[start..end_of_authority]
            .rfind('@')
            .or_else(|| uri[start..].rfind('@'))?;
    Some((start, at))
}

/// The password as written in a connection string (still percent-encoded),
/// to scrub it from messages that echo the string. `None` without one.
pub fn password(uri: &str) -> Option<&str> {
    let (start, at) = userinfo_span(uri)?;
    let userinfo = &uri[start..at];
    let colon = userinfo.find(':')?;
    Some(&userinfo[colon + 1..]).filter(|p| !p.is_empty())
}

/// The connection string with its password replaced by `****`; anything
/// that is not a connection string comes back unchanged.
pub fn redact(uri: &str) -> String {
    let Some((start, at)) = userinfo_span(uri) else {
        return uri.to_owned();
    };
    match uri[start..at].find(':') {
        Some(colon) => format!("{}:****{}", &uri[..start + colon], &uri[at..]),
        None => uri.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(
            redact("mongodb://app:s3cr%40t@h1:27017,h2:27017/db?replicaSet=rs"),
            "mongodb://app:****@h1:27017,h2:27017/db?replicaSet=rs"
        );
        assert_eq!(redact("mongodb://h1/db"), "mongodb://h1/db");
        assert_eq!(
            redact("mongodb://user@h1/?authMechanism=MONGODB-X509"),
            "mongodb://user@h1/?authMechanism=MONGODB-X509"
        );
        assert_eq!(redact("not a uri"), "not a uri");
        // Unescaped '/', '@' or '?' in a password: split as the driver does.
        assert_eq!(
            redact("mongodb://app:s3cr/et@h1/db"),
            "mongodb://app:****@h1/db"
        );
        assert_eq!(
            redact("mongodb://app:a@b@h1/db?x=1"),
            "mongodb://app:****@h1/db?x=1"
        );
        assert_eq!(password("mongodb://app:s3cr/et@h1/db"), Some("s3cr/et"));
        assert_eq!(password("mongodb://h1/db"), None);
        assert_eq!(
            redact("mongodb://u:hunt?er2@h1/db"),
            "mongodb://u:****@h1/db"
        );
    }

    #[test]
    fn parse_errors_withhold_the_reason_only_with_a_password() {
        let why = parse("mongodb://u:hunter2@h1:notaport/db").unwrap_err();
        assert!(
            why.contains("withheld") && !why.contains("hunter2"),
            "{why}"
        );
        let why = parse("mongodb://h1:notaport/db").unwrap_err();
        assert!(!why.contains("withheld"), "{why}");
        assert!(parse("mongodb://h1/messages").is_ok());
    }
}
