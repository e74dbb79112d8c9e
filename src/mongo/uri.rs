//! Connection strings as text: parsing them without leaking the password,
//! showing them with the password hidden, and adding a password read from a
//! file.

use std::path::Path;

use mongodb::options::{AuthMechanism, ConnectionString};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// What a password keeps unescaped in a connection string: RFC 3986's
/// unreserved characters. Everything else, `%` included, is escaped, so
/// any password survives the driver's percent-decoding unchanged.
const USERINFO: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `text` percent-encoded for the userinfo of a connection string.
pub fn encode_userinfo(text: &str) -> String {
    utf8_percent_encode(text, USERINFO).to_string()
}

/// Adds `password` to a connection string that names a user and no
/// password (`mongodb://app@h1,h2/db?...`).
///
/// Errors (never quoting the password): the string names no user, or
/// already carries a password.
pub fn with_password(uri: &str, password: &str) -> Result<String, String> {
    let Some((start, at)) = userinfo_span(uri) else {
        return Err(format!(
            "the connection string {} names no user: write mongodb://USER@HOSTS/... to use a password file",
            redact(uri)
        ));
    };
    let user = &uri[start..at];
    if user.contains(':') {
        return Err(format!(
            "the connection string {} already has a password; leave it out when a password file is given",
            redact(uri)
        ));
    }
    if user.is_empty() {
        return Err("the connection string has an empty user name".to_owned());
    }
    Ok(format!(
        "{}:{}{}",
        &uri[..at],
        encode_userinfo(password),
        &uri[at..]
    ))
}

/// `text` without the UTF-8 byte order mark a Windows editor writes at the
/// start of a file (U+FEFF): invisible in every message, it would be the
/// first character of a connection string ("unsupported scheme") or a
/// password.
pub fn without_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

/// Reads a password file: its whole content but a leading byte order mark
/// ([`without_bom`]) and one final line break (a file written with `echo`
/// ends in one). The password may contain any other character.
///
/// Errors name the file, never its content: unreadable, not UTF-8, empty.
pub fn read_password_file(path: &Path) -> Result<String, String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("cannot read the password file {}: {e}", path.display()))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| format!("the password file {} is not UTF-8 text", path.display()))?;
    let text = without_bom(&text);
    let password = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(text);
    if password.is_empty() {
        return Err(format!("the password file {} is empty", path.display()));
    }
    Ok(password.to_owned())
}

/// The warning for a secret's file (`setting`, at `path`) that users other
/// than its owner may read or write (mode & 0o077), naming the file and
/// the fix, never its content; `None` for a private file, or one that
/// cannot be read (its error is told where it is read). The app says it
/// of `mongodb_uri_file` and `mongodb_password_file`, `replset init` of
/// `--password-file`.
#[cfg(unix)]
pub fn open_to_others(setting: &str, path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then(|| {
        format!(
            "{setting} {} is open to other users (mode {mode:o}) and holds a secret: \
             chmod 600 {}",
            path.display(),
            path.display()
        )
    })
}

/// Elsewhere no mode says who may read a file.
#[cfg(not(unix))]
pub fn open_to_others(_setting: &str, _path: &Path) -> Option<String> {
    None
}

/// Parses a connection string without I/O.
///
/// Errors: why it does not parse, with what to do for the options this
/// build refuses. The reason never quotes the password: when the string
/// may carry one ([`secret_span`]), the reason is the driver's for the same
/// string with that part replaced (and any copy of it scrubbed); when that
/// string parses, the password itself is what breaks it, and the reason is
/// withheld, as the driver's may quote pieces of a mangled password. A
/// string that parses is still refused when its user name begins or ends
/// with white space ([`check_user_name`]).
pub fn parse(uri: &str) -> Result<ConnectionString, String> {
    let parsed = parse_only(uri)?;
    if let Some(user) = parsed
        .credential
        .as_ref()
        .and_then(|c| c.username.as_deref())
    {
        check_user_name(user)?;
    }
    Ok(parsed)
}

/// Refuses a user name that begins or ends with white space. MongoDB
/// takes any string as a user name, so `" chat"` is another user than
/// `chat`, one that a stray space or a tab in a file or a command line
/// creates or names by mistake, and that reads the same in every message.
pub fn check_user_name(user: &str) -> Result<(), String> {
    if user.trim() != user {
        return Err(format!(
            "the user name {user:?} begins or ends with white space, which MongoDB would keep \
             as part of the name; remove it"
        ));
    }
    Ok(())
}

fn parse_only(uri: &str) -> Result<ConnectionString, String> {
    ConnectionString::parse(uri).map_err(|e| {
        let Some((start, end)) = secret_span(uri) else {
            return explained(scrub_options(&e.kind.to_string(), uri), uri);
        };
        let stand_in = format!("{}PASSWORD{}", &uri[..start], &uri[end..]);
        match ConnectionString::parse(&stand_in) {
            Err(e) => explained(
                scrub_options(&hide_secret(&e.kind.to_string(), &uri[start..end]), uri),
                uri,
            ),
            Ok(_) => "the password does not parse (the driver's reason is withheld as it may \
                      quote the password; percent-encode special characters in passwords)"
                .to_owned(),
        }
    })
}

/// The database the user of `parsed` is looked up in when the string chose
/// it only by its path: it names a user, no `authSource` and no mechanism
/// other than SCRAM, and a database other than `admin`. MongoDB's
/// connection-string reference: "If authSource is unspecified, authSource
/// defaults to the defaultauthdb specified in the connection string. If
/// defaultauthdb is unspecified, then authSource defaults to admin"
/// (<https://www.mongodb.com/docs/manual/reference/connection-string-options/#mongodb-urioption-urioption.authSource>);
/// the driver does the same (`ClientOptions::parse`). A user created in
/// `admin`, as most are, is then not found.
pub fn implied_user_database(parsed: &ConnectionString) -> Option<String> {
    let credential = parsed.credential.as_ref()?;
    credential.username.as_ref()?;
    if credential.source.is_some() {
        return None;
    }
    let scram = match &credential.mechanism {
        None => true,
        Some(m) => matches!(m, AuthMechanism::ScramSha1 | AuthMechanism::ScramSha256),
    };
    let db = parsed.default_database.as_deref()?;
    (scram && db != "admin").then(|| db.to_owned())
}

/// Where a password may lie in a string that may not parse, read more
/// widely than the driver reads a valid one, because hiding too much beats
/// leaking: after the scheme (`mongodb://`, or the first `:` when the
/// slashes are missing), from the first `:` up to the last `@` anywhere
/// (an unescaped `@`, `/` or `?` in a password moves where the driver
/// splits); without any `@`, what follows a `:` of the first host unless it
/// is a port (`mongodb://user:pass/db`, the host forgotten).
fn secret_span(uri: &str) -> Option<(usize, usize)> {
    let start = match uri.find("://") {
        Some(at)
            if uri[..at]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+') =>
        {
            at + 3
        }
        _ => uri.find(':')? + 1,
    };
    let rest = &uri[start..];
    let (colon, end) = match rest.rfind('@') {
        Some(at) => (rest[..at].find(':')?, at),
        None => {
            let authority = rest.find(['/', '?']).map_or(rest, |end| &rest[..end]);
            let colon = authority.find(':')?;
            if is_port_list(&authority[colon + 1..]) {
                return None;
            }
            (colon, authority.len())
        }
    };
    Some((start + colon + 1, start + end)).filter(|(from, to)| from < to)
}

/// Whether `text` is a port and maybe more `host:port` seeds
/// (`27017,h2:27017`): what follows the first host's `:` in a list of seeds.
fn is_port_list(text: &str) -> bool {
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    let mut pieces = text.split(',');
    pieces.next().is_some_and(digits)
        && pieces.all(|seed| seed.rsplit_once(':').is_none_or(|(_, port)| digits(port)))
}

/// `text` with every copy of `secret` replaced by `****`: as given, and
/// percent-encoded and percent-decoded, as a connection string carries it
/// and the driver may quote it. An empty secret hides nothing (replacing
/// "" would put `****` between every character); any other is hidden
/// however short: a mangled message beats a leaked one.
pub fn hide_secret(text: &str, secret: &str) -> String {
    if secret.is_empty() {
        return text.to_owned();
    }
    let mut out = text.replace(secret, "****");
    let encoded = encode_userinfo(secret);
    if encoded != secret {
        out = out.replace(&encoded, "****");
    }
    if let Ok(decoded) = percent_encoding::percent_decode_str(secret).decode_utf8() {
        if !decoded.is_empty() && decoded != secret {
            out = out.replace(decoded.as_ref(), "****");
        }
    }
    out
}

/// The options this build leaves out: the driver is built without network
/// compression and Kerberos. Lower case: option names are case-insensitive.
const LEFT_OUT: [&str; 3] = ["compressors", "zlibcompressionlevel", "gssapiservicename"];

/// The driver's reason, with a database name's character it refuses quoted,
/// the schemes a string begins with when it has none of them, and what to
/// do when it refuses an option this
/// build leaves out ([`LEFT_OUT`]): its message for `compressors` ("an
/// option with a similar name exists: compressors") does not say so, and it
/// names only the first such option, so every one `uri` holds is named, as
/// written, and a second start does not fail on the next.
fn explained(reason: String, uri: &str) -> String {
    // The driver names the character bare, so a space (`/a%20b`) reads as
    // nothing at all; the rule is MongoDB's, as for a name set elsewhere.
    if let Some((_, c)) = reason.split_once("illegal character in database name: ") {
        return format!(
            "the database name in its path holds {c:?}, which MongoDB does not take in a \
             database name"
        );
    }
    if reason.contains("no scheme") || reason.contains("unsupported connection string scheme") {
        return format!("{reason} (a connection string begins with mongodb:// or mongodb+srv://)");
    }
    let lower = reason.to_ascii_lowercase();
    let refused = LEFT_OUT.into_iter().any(|option| {
        lower.contains(&format!("{option} is an invalid option"))
            || lower.contains(&format!("{option} may not be specified"))
    });
    if !refused {
        return reason;
    }
    let query = uri.split_once('?').map_or("", |(_, query)| query);
    let mut named: Vec<String> = Vec::new();
    for key in query
        .split(['&', ';'])
        .filter_map(|pair| pair.split('=').next())
    {
        let shown = format!("{key}=");
        if LEFT_OUT.contains(&key.to_ascii_lowercase().as_str()) && !named.contains(&shown) {
            named.push(shown);
        }
    }
    let remove = if named.is_empty() {
        String::new()
    } else {
        format!(
            ": remove {} from the connection string",
            named.join(" and ")
        )
    };
    format!(
        "{reason} (this build of simplechat has no network compression and no Kerberos{remove})"
    )
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

/// Whether the connection string names a user and no password: the
/// shape a password file completes.
pub fn names_user_without_password(uri: &str) -> bool {
    userinfo_span(uri).is_some_and(|(start, at)| start < at && !uri[start..at].contains(':'))
}

/// The password as written in a connection string (still percent-encoded),
/// to scrub it from messages that echo the string. `None` without one.
pub fn password(uri: &str) -> Option<&str> {
    let (start, at) = userinfo_span(uri)?;
    let userinfo = &uri[start..at];
    let colon = userinfo.find(':')?;
    Some(&userinfo[colon + 1..]).filter(|p| !p.is_empty())
}

/// The connection string with its password replaced by `****`; one that
/// does not parse has all that may be a password replaced
/// ([`secret_span`]); anything else comes back unchanged.
pub fn redact(uri: &str) -> String {
    hide_options(&redact_password(uri))
}

fn redact_password(uri: &str) -> String {
    if ConnectionString::parse(uri).is_err() {
        if let Some((start, end)) = secret_span(uri) {
            return format!("{}****{}", &uri[..start], &uri[end..]);
        }
    }
    let Some((start, at)) = userinfo_span(uri) else {
        return uri.to_owned();
    };
    match uri[start..at].find(':') {
        Some(colon) => format!("{}:****{}", &uri[..start + colon], &uri[at..]),
        None => uri.to_owned(),
    }
}

/// The options whose values are secrets, lower-cased (the driver matches
/// option names case-insensitively): the key file's password, the
/// mechanism's properties (`AWS_SESSION_TOKEN:...`), the SOCKS5 proxy's
/// password, and the legacy spellings some tools still write. MongoDB lists
/// them among the connection string's authentication, TLS and proxy
/// options: <https://www.mongodb.com/docs/manual/reference/connection-string-options/>.
const SECRET_OPTIONS: &[&str] = &[
    "tlscertificatekeyfilepassword",
    "sslclientcertificatekeypassword",
    "sslpemkeypassword",
    "authmechanismproperties",
    "proxypassword",
];

/// Where the values of [`SECRET_OPTIONS`] lie in `text`, a connection
/// string or any message that may quote one: after `name=` that follows
/// `?`, `&` or `;` (wherever the `?` is: one in a password moves it), up to
/// the next separator, quote or white space.
fn option_spans(text: &str) -> Vec<(usize, usize)> {
    let lower = text.to_ascii_lowercase();
    let mut spans = Vec::new();
    for (at, _) in lower.match_indices(['?', '&', ';']) {
        let rest = &lower[at + 1..];
        let Some(name) = SECRET_OPTIONS
            .iter()
            .find(|name| rest.starts_with(*name) && rest[name.len()..].starts_with('='))
        else {
            continue;
        };
        let start = at + 1 + name.len() + 1;
        let end = text[start..]
            .find(|c: char| matches!(c, '&' | ';' | '"' | '\'' | '`') || c.is_whitespace())
            .map_or(text.len(), |i| start + i);
        if start < end {
            spans.push((start, end));
        }
    }
    spans
}

/// `text` with the value of every secret option replaced by `****`.
fn hide_options(text: &str) -> String {
    let mut out = text.to_owned();
    for (start, end) in option_spans(text).into_iter().rev() {
        out.replace_range(start..end, "****");
    }
    out
}

/// `text` (a driver's message about `uri`) with every copy of a secret
/// option's value of `uri` scrubbed: whole, and each `key:value` entry and
/// value of a list such as `authMechanismProperties`, which the driver
/// quotes one at a time.
pub fn scrub_options(text: &str, uri: &str) -> String {
    let mut out = hide_options(text);
    for (start, end) in option_spans(uri) {
        let value = &uri[start..end];
        out = hide_secret(&out, value);
        for entry in value.split(',') {
            out = hide_secret(&out, entry);
            if let Some((_, secret)) = entry.split_once(':') {
                out = hide_secret(&out, secret);
            }
        }
    }
    out
}

/// `text`, any message, with what may be a secret of any connection string
/// it quotes replaced by `****`: the password ([`secret_span`], read up to
/// the end of the line, as a password may hold anything) and the secret
/// options' values. For messages whose source is not known to be a
/// connection string: a configuration file's syntax error quotes whichever
/// line broke, a type error any value.
pub fn scrub(text: &str) -> String {
    let lines: Vec<String> = text
        .split('\n')
        .map(|line| {
            let lower = line.to_ascii_lowercase();
            // A scheme, not a word such as the key `mongodb_uri`.
            let starts: Vec<usize> = lower
                .match_indices("mongodb")
                .map(|(at, _)| at)
                .filter(|&at| {
                    let after = &lower[at + "mongodb".len()..];
                    after.starts_with(':') || after.starts_with("+srv:")
                })
                .collect();
            let mut out = String::new();
            let mut done = 0;
            for (i, &at) in starts.iter().enumerate() {
                if at < done {
                    continue;
                }
                let end = starts.get(i + 1).copied().unwrap_or(line.len());
                let candidate = &line[at..end];
                if let Some((from, to)) = secret_span(candidate) {
                    // Without an `@`, the password runs to the end of the
                    // authority, which here also ends at a quote or a space.
                    let to = candidate[from..to]
                        .find(|c: char| matches!(c, '"' | '\'' | '`') || c.is_whitespace())
                        .filter(|_| !candidate[from..].contains('@'))
                        .map_or(to, |i| from + i);
                    if from < to {
                        out.push_str(&line[done..at + from]);
                        out.push_str("****");
                        done = at + to;
                    }
                }
            }
            out.push_str(&line[done..]);
            hide_options(&out)
        })
        .collect();
    lines.join("\n")
}

/// The passwords of the connection strings in a TOML document, piece by
/// piece as its lines hold them: for a message that may quote any one line
/// of it. A syntax error quotes only the line that broke, which, in a
/// multi-line string (`"""` or `'''`, or a basic one whose lines end in a
/// backslash), may be a line with a piece of a password and no scheme,
/// where [`scrub`] sees no connection string. A string is read as TOML
/// joins it (a backslash at the end of a line drops the line break and the
/// white space after it), and its line breaks are dropped too, so that a
/// password broken by one is still found: hiding too much beats leaking.
pub fn toml_secrets(toml: &str) -> Vec<String> {
    let lower = toml.to_ascii_lowercase();
    let mut pieces = Vec::new();
    for (at, _) in lower.match_indices("mongodb") {
        let after = &lower[at + "mongodb".len()..];
        if !(after.starts_with(':') || after.starts_with("+srv:")) {
            continue;
        }
        let end = string_end(toml, at);
        // The string from the scheme on, joined, with where each of its
        // bytes lies in `toml`.
        let text = &toml[at..end];
        let mut joined = String::new();
        let mut origin = Vec::new();
        let mut i = 0;
        while i < text.len() {
            let rest = &text[i..];
            let c = rest.chars().next().unwrap_or(' ');
            if c == '\\' {
                let blank = rest[1..].trim_start_matches([' ', '\t']);
                if blank.starts_with('\n') || blank.starts_with("\r\n") {
                    i = text.len() - rest[1..].trim_start().len();
                    continue;
                }
            }
            if c != '\n' && c != '\r' {
                joined.push(c);
                origin.extend((0..c.len_utf8()).map(|k| at + i + k));
            }
            i += c.len_utf8();
        }
        let Some((from, to)) = secret_span(&joined) else {
            continue;
        };
        let (start, stop) = (origin[from], origin[to - 1] + 1);
        pieces.extend(
            toml[start..stop]
                .split('\n')
                .map(|line| line.trim().trim_end_matches('\\').trim())
                .filter(|piece| !piece.is_empty())
                .map(str::to_owned),
        );
    }
    pieces
}

/// Where the TOML string holding the text at `at` ends: at the closing
/// `"""` or `'''` when `at` lies within such a multi-line string (an odd
/// number of them before it), or at the end of the document when it is
/// never closed; otherwise at the end of the line.
fn string_end(toml: &str, at: usize) -> usize {
    let before = &toml[..at];
    for delimiter in ["\"\"\"", "'''"] {
        if before.matches(delimiter).count() % 2 == 1 {
            return toml[at..].find(delimiter).map_or(toml.len(), |i| at + i);
        }
    }
    toml[at..].find('\n').map_or(toml.len(), |i| at + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_database_is_implied_only_by_a_path_without_auth_source() {
        let implied = |uri: &str| implied_user_database(&parse(uri).unwrap());
        let uri = "mongodb://chat:pw@h1,h2,h3/messages?replicaSet=rs0";
        assert_eq!(implied(uri).as_deref(), Some("messages"));
        for chosen in [
            "mongodb://chat:pw@h1/messages?authSource=admin",
            "mongodb://chat:pw@h1/messages?authSource=messages",
            "mongodb://chat:pw@h1/admin",
            "mongodb://chat:pw@h1/",
            "mongodb://h1/messages",
            "mongodb://CN=x@h1/messages?authMechanism=MONGODB-X509&tls=true",
        ] {
            assert_eq!(implied(chosen), None, "{chosen}");
        }
        assert_eq!(
            implied("mongodb://chat@h1/messages?authMechanism=SCRAM-SHA-256").as_deref(),
            Some("messages")
        );
    }

    #[test]
    fn passwords_split_across_toml_lines_are_found_piece_by_piece() {
        let toml = "port = 1\nmongodb_uri = \"\"\"mongodb://chat:Pa\\\n    ss@h1/db\"\"\"\n\
                    other = \"\"\"\nmongodb://u:\nSecond@h2/db\n\"\"\"\n\
                    single = \"mongodb://u:Third@h3/db\" # ops@example.org\n\
                    plain = \"mongodb://h1:27017,h2:27017/db\"\n";
        let pieces = toml_secrets(toml);
        assert_eq!(
            pieces,
            ["Pa", "ss", "Second", "Third@h3/db\" # ops"],
            "{toml}"
        );
        assert_eq!(
            toml_secrets("x = '''mongodb://u:Lit\neral@h1/db"),
            ["Lit", "eral"]
        );
        assert!(toml_secrets("mongodb_uri = 5").is_empty());
    }

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
    fn a_password_from_a_file_is_escaped_and_reads_back_unchanged() {
        for password in [
            "plain",
            "p@ss:w/rd?#[]%25 +é\u{1F600}",
            "%",
            "a%2Fb",
            "trailing space ",
        ] {
            let uri =
                with_password("mongodb://app@h1:27017,h2/chat?replicaSet=rs", password).unwrap();
            let parsed = ConnectionString::parse(&uri).unwrap();
            let credential = parsed.credential.unwrap();
            assert_eq!(credential.username.as_deref(), Some("app"));
            assert_eq!(credential.password.as_deref(), Some(password), "{uri}");
            assert_eq!(parsed.default_database.as_deref(), Some("chat"));
            assert_eq!(
                redact(&uri),
                "mongodb://app:****@h1:27017,h2/chat?replicaSet=rs"
            );
        }
        let no_user = with_password("mongodb://h1/chat", "hunter22").unwrap_err();
        assert!(no_user.contains("names no user"), "{no_user}");
        let twice = with_password("mongodb://app:old@h1/chat", "hunter22").unwrap_err();
        assert!(
            twice.contains("already has a password") && !twice.contains("old"),
            "{twice}"
        );
    }

    #[test]
    fn password_files_lose_one_final_line_break_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        for (content, want) in [
            ("s3cret\n", "s3cret"),
            ("s3cret\r\n", "s3cret"),
            (" s3 \n\n", " s3 \n"),
            ("\u{feff}s3cret\n", "s3cret"),
            ("\u{feff}\u{feff}s3cret", "\u{feff}s3cret"),
        ] {
            std::fs::write(&path, content).unwrap();
            assert_eq!(read_password_file(&path).unwrap(), want);
        }
        std::fs::write(&path, "\n").unwrap();
        assert!(read_password_file(&path).unwrap_err().contains("is empty"));
        let missing = read_password_file(&dir.path().join("nope")).unwrap_err();
        assert!(
            missing.starts_with("cannot read the password file"),
            "{missing}"
        );
    }

    #[test]
    fn parse_errors_withhold_the_reason_only_when_the_password_breaks_it() {
        // The password is what does not parse: nothing of it is quoted.
        let why = parse("mongodb://u:hunt%zzer2@h1/db").unwrap_err();
        assert!(why.contains("withheld") && !why.contains("zzer"), "{why}");
        // Something else does: the driver's reason, without the password.
        let why = parse("mongodb://u:hunter2@h1:notaport/db").unwrap_err();
        assert!(
            !why.contains("withheld") && !why.contains("hunter2"),
            "{why}"
        );
        assert!(why.contains("port"), "{why}");
        // Without a user, what follows a host's `:` and is no port may be a
        // password with the host forgotten: hidden, the reason kept.
        let without = parse("mongodb://h1:notaport/db").unwrap_err();
        assert!(
            without.contains("port must be") && !without.contains("notaport"),
            "{without}"
        );
        assert!(parse("mongodb://h1/messages").is_ok());
    }

    #[test]
    fn no_mangled_connection_string_quotes_its_password() {
        for (uri, secret) in [
            // The slashes missing, and a `://` in an option.
            (
                "mongodb:chat:hunter2@h1/simplechat?appName=x://y",
                "hunter2",
            ),
            // The host forgotten after the credentials.
            ("mongodb://chat:hunter2/simplechat", "hunter2"),
            // An unescaped `@` before an unescaped `?` in the password.
            ("mongodb://chat:ab@cd?ef@h1/db", "cd?ef"),
            ("mongodb://chat:ab@cd?ef@h1/db", "ef@h1"),
            ("mongodb://u:hunter2@h1:notaport/db", "hunter2"),
        ] {
            let why = parse(uri).unwrap_err();
            assert!(!why.contains(secret), "{uri}: {why}");
            let shown = redact(uri);
            assert!(
                !shown.contains("hunter2") && !shown.contains("cd?ef"),
                "{uri}: {shown}"
            );
        }
        // Seeds with ports are no password.
        let why = parse("mongodb://h1:27017,h2:27017/db?replicaSet=rs&nope=1").unwrap_err();
        assert!(!why.contains("****"), "{why}");
        assert_eq!(
            redact("mongodb://h1:27017,h2:bad/db"),
            "mongodb://h1:****/db",
            "a port that is no port may be a password"
        );
    }

    #[test]
    fn options_this_build_leaves_out_say_what_to_do() {
        for (uri, option) in [
            ("mongodb://h1/messages?compressors=disabled", "compressors"),
            ("mongodb://u:s3cr3t@h1/db?compressors=zlib", "compressors"),
            (
                "mongodb://h1/?zlibCompressionLevel=4",
                "zlibcompressionlevel",
            ),
            (
                "mongodb://h1/?gssapiServiceName=mongodb",
                "gssapiservicename",
            ),
        ] {
            let why = parse(uri).unwrap_err();
            assert!(
                why.to_ascii_lowercase()
                    .contains(&format!("remove {option}= from"))
                    && !why.contains("s3cr3t"),
                "{uri}: {why}"
            );
        }
        // The lab's shell printed two: both are named, as written.
        let why =
            parse("mongodb://127.0.0.1:27017/?compressors=disabled&gssapiServiceName=mongodb")
                .unwrap_err();
        assert!(
            why.contains("remove compressors= and gssapiServiceName= from"),
            "{why}"
        );
    }

    #[test]
    fn secret_options_are_hidden_wherever_the_string_is_shown() {
        let uri = "mongodb://u:pw1@h1/db?tls=true&tlsCertificateKeyFilePassword=KeyPw&\
                   AUTHMECHANISMPROPERTIES=AWS_SESSION_TOKEN:Tok3n,X:y;proxyPassword=Pr0xy&appName=a";
        let shown = redact(uri);
        assert_eq!(
            shown,
            "mongodb://u:****@h1/db?tls=true&tlsCertificateKeyFilePassword=****&\
             AUTHMECHANISMPROPERTIES=****;proxyPassword=****&appName=a"
        );
        // The driver refuses these in this build, and says why without them.
        for uri in [
            "mongodb://h1/db?tlsCertificateKeyFilePassword=KeyPw",
            "mongodb://h1/db?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:Tok3n",
            "mongodb://u:pw1@h1/db?authMechanismProperties=Tok3n",
            "mongodb://h1/db?authMechanismProperties=AWS_SESSION_TOKEN:Tok3n&nope=1",
        ] {
            let why = parse(uri).unwrap_err();
            for secret in ["KeyPw", "Tok3n", "pw1"] {
                assert!(!why.contains(secret), "{uri}: {why}");
                assert!(!redact(uri).contains(secret), "{uri}");
            }
            assert!(!why.is_empty());
        }
    }

    #[test]
    fn an_empty_secret_option_leaves_the_message_readable() {
        for uri in [
            "mongodb://h1/db?authMechanismProperties=SERVICE_NAME:",
            "mongodb://h1/db?authMechanismProperties=A:b,",
        ] {
            let text = "invalid authMechanismProperties";
            assert_eq!(scrub_options(text, uri), text, "{uri}");
        }
        assert_eq!(hide_secret("p@ss and p%40ss", "p@ss"), "**** and ****");
        assert_eq!(hide_secret("p@ss and p%40ss", "p%40ss"), "**** and ****");
        assert_eq!(hide_secret("text", ""), "text");
    }

    #[test]
    fn scrub_hides_connection_string_secrets_in_any_text() {
        for (text, secret, kept) in [
            (
                "1 | mongodb_uri = \"mongodb://chat:TomlS3cret@127.0.0.1:27702/simplechat?replicaSet=rs",
                "TomlS3cret",
                "mongodb_uri = \"mongodb://chat:****@127.0.0.1:27702/simplechat?replicaSet=rs",
            ),
            (
                "invalid type: found string \"mongodb+srv://chat:hunter2@db.example\", expected u16",
                "hunter2",
                "found string \"mongodb+srv://chat:****@db.example\", expected u16",
            ),
            (
                "x = 'MONGODB://chat:hunter2' ; y",
                "hunter2",
                "x = 'MONGODB://chat:****' ; y",
            ),
            (
                "a password with a space: mongodb://chat:hun ter2@h1/db\"",
                "ter2",
                "mongodb://chat:****@h1/db",
            ),
            (
                "u = \"mongodb://h1/db?tlsCertificateKeyFilePassword=KeyPw\"",
                "KeyPw",
                "tlsCertificateKeyFilePassword=****\"",
            ),
        ] {
            let scrubbed = scrub(text);
            assert!(!scrubbed.contains(secret), "{scrubbed}");
            assert!(scrubbed.contains(kept), "{scrubbed}");
        }
        for plain in [
            "mongodb_uri in simplechat.toml: invalid type: found integer 5",
            "found string \"mongodb://h1:27017,h2:27017/db\", expected u16",
        ] {
            assert_eq!(scrub(plain), plain);
        }
    }
}
