//! Configuration layering and the command line, through the real binary.

use std::path::Path;
use std::process::{Command, Output};

/// `exe` in `dir`, with only the configuration given in `env`.
pub fn command(exe: &Path, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(exe);
    command.args(args).current_dir(dir);
    for (key, _) in std::env::vars() {
        if key.starts_with("SIMPLECHAT_") || key.starts_with("ROCKET_") || key == "MONGO_URI" {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().copied());
    command
}

/// Copies the binary to `to`, as an install or a bundle would.
pub fn copy_binary(to: &Path) {
    std::fs::copy(env!("CARGO_BIN_EXE_simplechat"), to).expect("copy the binary");
}

/// Runs `attempt` (a spawn) again while the binary just copied is busy: a
/// process forked meanwhile by another test holds the copy's write handle
/// until it execs (ETXTBSY), which ends in moments.
pub fn retry_while_busy<T>(mut attempt: impl FnMut() -> std::io::Result<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match attempt() {
            Err(e)
                if e.kind() == std::io::ErrorKind::ExecutableFileBusy
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            result => return result.expect("start simplechat"),
        }
    }
}

fn simplechat(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let exe = Path::new(env!("CARGO_BIN_EXE_simplechat"));
    command(exe, dir, args, env)
        .output()
        .expect("run simplechat")
}

fn config_lines(dir: &Path, env: &[(&str, &str)]) -> String {
    let out = simplechat(dir, &["config"], env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn line<'a>(config: &'a str, key: &str) -> &'a str {
    config
        .lines()
        .find(|l| l.starts_with(&format!("{key} ")) || l.starts_with(&format!("# {key} ")))
        .unwrap_or_else(|| panic!("no line for {key} in:\n{config}"))
}

#[test]
fn defaults_then_file_then_environment() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_lines(dir.path(), &[]);
    assert!(
        line(&config, "port").starts_with("port = 8000  # from default"),
        "{config}"
    );
    assert!(line(&config, "address").starts_with(r#"address = "127.0.0.1""#));
    assert!(line(&config, "mongodb_uri").contains("embedded store"));
    assert!(line(&config, "write_timeout_secs").starts_with("write_timeout_secs = 30"));

    std::fs::write(
        dir.path().join("simplechat.toml"),
        "port = 9001\nwrite_timeout_secs = 7\n",
    )
    .unwrap();
    let config = config_lines(dir.path(), &[]);
    assert!(
        line(&config, "port").starts_with("port = 9001  # from simplechat.toml"),
        "{config}"
    );
    assert!(line(&config, "write_timeout_secs").starts_with("write_timeout_secs = 7"));

    let config = config_lines(dir.path(), &[("SIMPLECHAT_PORT", "9002")]);
    assert!(
        line(&config, "port").starts_with("port = 9002  # from SIMPLECHAT_PORT"),
        "{config}"
    );
    assert!(line(&config, "write_timeout_secs").starts_with("write_timeout_secs = 7"));

    let other = dir.path().join("other.toml");
    std::fs::write(&other, "port = 9003\n").unwrap();
    let config = config_lines(
        dir.path(),
        &[("SIMPLECHAT_CONFIG", other.to_str().unwrap())],
    );
    assert!(
        line(&config, "port").starts_with(&format!("port = 9003  # from {}", other.display())),
        "SIMPLECHAT_CONFIG replaces ./simplechat.toml: {config}"
    );
}

#[test]
fn config_names_each_source_in_the_users_terms() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("simplechat.toml"),
        "write_timeout_secs = 7\n",
    )
    .unwrap();
    let config = config_lines(
        dir.path(),
        &[
            ("SIMPLECHAT_PORT", "9002"),
            ("ROCKET_ADDRESS", "0.0.0.0"),
            ("MONGO_URI", "mongodb://h1:27017/messages?replicaSet=rs"),
        ],
    );
    assert_eq!(
        config,
        "address = \"0.0.0.0\"  # from ROCKET_ADDRESS\n\
         port = 9002  # from SIMPLECHAT_PORT\n\
         mongodb_uri = \"mongodb://h1:27017/messages?replicaSet=rs\"  # from MONGO_URI\n\
         # mongodb_uri_file unset\n\
         # mongodb_password_file unset\n\
         database = \"messages\"  # from the URI's path\n\
         # data_dir unused: MongoDB store\n\
         # cache_size_mib unused: MongoDB store\n\
         # template_dir unset: built-in templates\n\
         write_timeout_secs = 7  # from simplechat.toml\n\
         heartbeat_secs = 15  # from default\n\
         header_timeout_secs = 10  # from default\n\
         max_connections = 1024  # from default\n\
         max_connections_per_client = 256  # from default\n\
         secure_cookie = false  # from default\n\
         trust_proxy_headers = false  # from default\n\
         # allowed_hosts unset: any host, as address is not loopback\n\
         # Rocket's settings the server uses:\n\
         log_level = \"normal\"  # from default\n\
         ident = \"Rocket\"  # from default\n\
         shutdown.ctrlc = true  # from default\n\
         shutdown.signals = [\"term\"]  # from default\n\
         shutdown.grace = 2  # from default\n\
         shutdown.mercy = 3  # from default\n"
    );
    assert!(!config.contains(".rs:"), "no code locations: {config}");

    let config = config_lines(
        dir.path(),
        &[
            ("SIMPLECHAT_MONGODB_URI", "mongodb://h1:27017/messages"),
            ("SIMPLECHAT_DATABASE", "chat"),
        ],
    );
    assert_eq!(
        line(&config, "mongodb_uri"),
        r#"mongodb_uri = "mongodb://h1:27017/messages"  # from SIMPLECHAT_MONGODB_URI"#
    );
    assert_eq!(
        line(&config, "database"),
        r#"database = "chat"  # from SIMPLECHAT_DATABASE"#
    );
    let config = config_lines(dir.path(), &[("MONGO_URI", "mongodb://h1:27017")]);
    assert_eq!(
        line(&config, "database"),
        r#"database = "simplechat"  # from default"#
    );

    let config = config_lines(dir.path(), &[("SIMPLECHAT_DATA_DIR", "/srv/chat")]);
    assert_eq!(
        line(&config, "data_dir"),
        r#"data_dir = "/srv/chat"  # from SIMPLECHAT_DATA_DIR"#
    );
    assert_eq!(
        line(&config, "database"),
        "# database unused: embedded store"
    );
}

#[test]
fn templates_are_the_binarys_own_unless_configured() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_lines(dir.path(), &[]);
    assert_eq!(
        line(&config, "template_dir"),
        "# template_dir unset: built-in templates"
    );
    assert!(
        !config.contains(env!("CARGO_MANIFEST_DIR")),
        "nothing from the build's checkout: {config}"
    );

    let templates = dir.path().join("mine");
    std::fs::create_dir(&templates).unwrap();
    for name in ["index.html.j2", "messages.html.j2"] {
        std::fs::write(templates.join(name), "").unwrap();
    }
    let config = config_lines(
        dir.path(),
        &[("SIMPLECHAT_TEMPLATE_DIR", templates.to_str().unwrap())],
    );
    assert_eq!(
        line(&config, "template_dir"),
        format!(
            r#"template_dir = "{}"  # from SIMPLECHAT_TEMPLATE_DIR"#,
            templates.display()
        )
    );
}

/// The release bundle: `bin/simplechat` with `share/simplechat/templates`.
#[test]
fn a_bundle_uses_the_templates_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    let share = dir.path().join("share/simplechat/templates");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&share).unwrap();
    let exe = bin.join("simplechat");
    copy_binary(&exe);
    std::fs::write(share.join("index.html.j2"), "").unwrap();
    let run = |args: &[&str]| retry_while_busy(|| command(&exe, dir.path(), args, &[]).output());
    assert_one_line_failure(&run(&["config"]), "has no messages.html.j2");

    std::fs::write(share.join("messages.html.j2"), "").unwrap();
    let out = run(&["config"]);
    assert!(out.status.success(), "{out:?}");
    let config = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        line(&config, "template_dir"),
        format!(
            "# template_dir unset: the bundle's templates in {}",
            share.canonicalize().unwrap().display()
        )
    );
}

#[test]
fn rocket_settings_keep_working_below_simplechat_ones() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_lines(dir.path(), &[("ROCKET_PORT", "9100")]);
    assert_eq!(line(&config, "port"), "port = 9100  # from ROCKET_PORT");
    let config = config_lines(
        dir.path(),
        &[("ROCKET_PORT", "9100"), ("SIMPLECHAT_PORT", "9101")],
    );
    assert!(line(&config, "port").starts_with("port = 9101"), "{config}");
}

#[test]
fn the_labs_mongo_uri_is_an_alias_and_secrets_are_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_lines(
        dir.path(),
        &[(
            "MONGO_URI",
            "mongodb://chat:hunter2@storage1.local:27017/messages?replicaSet=rs",
        )],
    );
    assert!(!config.contains("hunter2"), "{config}");
    assert!(
        line(&config, "mongodb_uri").contains("mongodb://chat:****@storage1.local:27017/messages"),
        "{config}"
    );
    assert!(
        line(&config, "database").starts_with(r#"database = "messages""#),
        "{config}"
    );

    let config = config_lines(
        dir.path(),
        &[
            ("MONGO_URI", "mongodb://h1/a"),
            ("SIMPLECHAT_MONGODB_URI", "mongodb://h2/b"),
        ],
    );
    assert!(
        line(&config, "mongodb_uri").contains("mongodb://h2/b"),
        "{config}"
    );

    let secret = dir.path().join("uri");
    std::fs::write(
        &secret,
        "mongodb://app:s3cret@h3:27017/chat?replicaSet=rs\n",
    )
    .unwrap();
    let config = config_lines(
        dir.path(),
        &[("SIMPLECHAT_MONGODB_URI_FILE", secret.to_str().unwrap())],
    );
    assert!(!config.contains("s3cret"), "{config}");
    assert_eq!(
        line(&config, "mongodb_uri"),
        r#"mongodb_uri = "mongodb://app:****@h3:27017/chat?replicaSet=rs"  # from mongodb_uri_file"#
    );
    assert_eq!(
        line(&config, "mongodb_uri_file"),
        format!(
            r#"mongodb_uri_file = "{}"  # from SIMPLECHAT_MONGODB_URI_FILE"#,
            secret.display()
        )
    );
}

/// The exit statuses of a start that no restart mends (sysexits.h), as
/// the README documents them and the NixOS unit's
/// `RestartPreventExitStatus=` lists them; 1 is any other failure.
const EX_CONFIG: i32 = 78;
const EX_CANTCREAT: i32 = 73;

/// `out` ended with exit status `code`.
fn assert_status(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn assert_one_line_failure(out: &Output, expect: &str) {
    assert!(!out.status.success(), "must fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    let last = stderr.lines().last().unwrap_or("");
    assert!(
        last.starts_with("simplechat: ") && last.contains(expect),
        "{stderr}"
    );
}

/// A negative number or a word for a count or a time is refused in the
/// words of a value out of range, not serde's or figment's type names.
/// Before: "invalid value signed int `-5`, expected u64".
#[test]
fn a_negative_or_wordy_number_is_refused_saying_what_is_expected() {
    let dir = tempfile::tempdir().unwrap();
    for (var, value, expected) in [
        (
            "SIMPLECHAT_HEARTBEAT_SECS",
            "-5",
            "SIMPLECHAT_HEARTBEAT_SECS: invalid value: found number `-5`, expected a number \
             of seconds from 1 to 86400 (a day)",
        ),
        (
            "SIMPLECHAT_WRITE_TIMEOUT_SECS",
            "ten",
            "SIMPLECHAT_WRITE_TIMEOUT_SECS: invalid type: found string \"ten\", expected a \
             number of seconds from 1 to 86400 (a day)",
        ),
        (
            "SIMPLECHAT_MAX_CONNECTIONS_PER_CLIENT",
            "-1",
            "SIMPLECHAT_MAX_CONNECTIONS_PER_CLIENT: invalid value: found number `-1`, expected \
             a whole number, 0 or more",
        ),
    ] {
        let out = simplechat(dir.path(), &["config"], &[(var, value)]);
        assert_eq!(out.status.code(), Some(78), "{out:?}");
        assert_one_line_failure(&out, expected);
    }
}

/// A refused store setting names where it was set, so the operator knows
/// which variable or file to change: the database, the connection string
/// (its path too), its file. Before: "(set by database, SIMPLECHAT_DATABASE,
/// or the connection string's path)", and a space in a percent-encoded
/// path was the driver's "illegal character in database name: " followed by
/// nothing visible.
#[test]
fn a_refused_store_setting_names_where_it_was_set() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let refused = |env: &[(&str, &str)], expect: &str| {
        let out = simplechat(d, &["config"], env);
        assert_status(&out, EX_CONFIG);
        assert_one_line_failure(&out, expect);
    };
    let set = "mongodb://h1,h2,h3/messages?replicaSet=rs";
    refused(
        &[("MONGO_URI", set), ("SIMPLECHAT_DATABASE", "a.b")],
        "database \"a.b\" holds '.', which MongoDB does not take in a database name (set by \
         SIMPLECHAT_DATABASE)",
    );
    refused(
        &[("MONGO_URI", "mongodb://h1,h2,h3/a.b?replicaSet=rs")],
        "(set by the connection string's path, from MONGO_URI)",
    );
    refused(
        &[("MONGO_URI", "mongodb://h1,h2,h3/a%20b?replicaSet=rs")],
        "(from MONGO_URI): the database name in its path holds \" \", which MongoDB does not \
         take in a database name",
    );
    refused(
        &[("SIMPLECHAT_MONGODB_URI_FILE", "/nonexistent/uri")],
        "cannot read mongodb_uri_file /nonexistent/uri (set by SIMPLECHAT_MONGODB_URI_FILE)",
    );
    let file = d.join("uri");
    std::fs::write(&file, "http://h1/messages\n").unwrap();
    let file = file.to_str().unwrap();
    refused(
        &[("SIMPLECHAT_MONGODB_URI_FILE", file)],
        &format!(
            "(from mongodb_uri_file {file}, set by SIMPLECHAT_MONGODB_URI_FILE): An invalid \
             argument was provided: unsupported connection string scheme: http (a connection \
             string begins with mongodb:// or mongodb+srv://)"
        ),
    );
    refused(
        &[("MONGO_URI", set), ("SIMPLECHAT_MONGODB_URI_FILE", file)],
        "MONGO_URI sets the one and SIMPLECHAT_MONGODB_URI_FILE the other",
    );
    std::fs::write(
        d.join("simplechat.toml"),
        "database = \"config\"\nmax_connections = -5\n",
    )
    .unwrap();
    refused(
        &[],
        "max_connections in simplechat.toml: invalid value: found number `-5`, expected a whole \
         number, 1 or more",
    );
    std::fs::write(d.join("simplechat.toml"), "database = \"config\"\n").unwrap();
    refused(
        &[("MONGO_URI", set)],
        "(set by database in simplechat.toml)",
    );
    let user = "mongodb://chat@h1,h2,h3/messages?replicaSet=rs";
    refused(
        &[
            ("MONGO_URI", user),
            ("SIMPLECHAT_MONGODB_PASSWORD_FILE", "/nonexistent/pw"),
        ],
        "SIMPLECHAT_MONGODB_PASSWORD_FILE: cannot read the password file /nonexistent/pw",
    );
    std::fs::write(
        d.join("simplechat.toml"),
        "mongodb_password_file = \"/nonexistent/pw\"\n",
    )
    .unwrap();
    refused(
        &[("MONGO_URI", user)],
        "mongodb_password_file in simplechat.toml: cannot read the password file",
    );
    std::fs::remove_file(d.join("simplechat.toml")).unwrap();
    // MongoDB meant, and its connection string forgotten: said, not refused
    // (the embedded store serves).
    let out = simplechat(d, &["config"], &[("SIMPLECHAT_DATABASE", "messages")]);
    assert_status(&out, 0);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "simplechat: warning: database is set (SIMPLECHAT_DATABASE) but no MongoDB \
             connection string is: serving from the embedded store"
        ),
        "{stderr}"
    );
}

#[test]
fn bad_configuration_ends_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Each is the configuration's fault: EX_CONFIG, for `serve` too,
    // which a service manager then does not restart.
    let refused = |args: &[&str], env: &[(&str, &str)], expect: &str| {
        for args in [args, &["serve"][..]] {
            let out = simplechat(d, args, env);
            assert_one_line_failure(&out, expect);
            assert_status(&out, EX_CONFIG);
        }
    };
    refused(
        &["config"],
        &[("SIMPLECHAT_MONGODB_URI", "http://nope")],
        "bad mongodb_uri",
    );
    refused(
        &["config"],
        &[("SIMPLECHAT_CONFIG", "/nonexistent/x.toml")],
        "cannot read config file",
    );
    refused(
        &["config"],
        &[("SIMPLECHAT_MONGODB_URI_FILE", "/nonexistent/uri")],
        "cannot read mongodb_uri_file",
    );
    // Set but blank: an empty chat of this machine's own would start.
    for (key, value) in [("MONGO_URI", ""), ("SIMPLECHAT_MONGODB_URI", "  ")] {
        refused(
            &["config"],
            &[(key, value)],
            "mongodb_uri (or MONGO_URI) is set but empty",
        );
    }
    std::fs::write(d.join("blank-uri"), "\u{feff}\n").unwrap();
    let blank = d.join("blank-uri");
    refused(
        &["config"],
        &[("SIMPLECHAT_MONGODB_URI_FILE", blank.to_str().unwrap())],
        "is empty: write the connection string into it",
    );
    refused(
        &["serve"],
        &[("SIMPLECHAT_TEMPLATE_DIR", "/nonexistent")],
        "template directory /nonexistent",
    );
    refused(
        &["config"],
        &[("SIMPLECHAT_PORT", "eighty")],
        "bad configuration",
    );
    // MongoDB meant, and not said how: a password file without a
    // connection string; a user without a password; a database name
    // MongoDB does not take.
    std::fs::write(d.join("pw"), "secret\n").unwrap();
    let pw = d.join("pw");
    refused(
        &["config"],
        &[("SIMPLECHAT_MONGODB_PASSWORD_FILE", pw.to_str().unwrap())],
        "is set but no connection string is",
    );
    refused(
        &["config"],
        &[
            (
                "MONGO_URI",
                "mongodb://chat@h1,h2,h3/messages?replicaSet=rs&authMechanism=MONGODB-X509",
            ),
            ("SIMPLECHAT_MONGODB_PASSWORD_FILE", pw.to_str().unwrap()),
        ],
        "whose client certificate takes no password: unset mongodb_password_file",
    );
    for uri in [
        "mongodb://chat@h1,h2,h3/messages?replicaSet=rs",
        "mongodb://chat:@h1,h2,h3/messages?replicaSet=rs",
    ] {
        refused(
            &["config"],
            &[("MONGO_URI", uri)],
            "names a user and no password: set mongodb_password_file",
        );
    }
    for database in [
        "",
        "a/b",
        "a b",
        "a.b",
        "x$",
        &"d".repeat(64),
        "admin",
        "local",
    ] {
        refused(
            &["config"],
            &[
                ("MONGO_URI", "mongodb://h1,h2,h3/messages?replicaSet=rs"),
                ("SIMPLECHAT_DATABASE", database),
            ],
            &format!("database {database:?} "),
        );
    }
    for (var, key) in [
        ("SIMPLECHAT_CACHE_SIZE_MIB", "cache_size_mib"),
        ("SIMPLECHAT_MAX_CONNECTIONS", "max_connections"),
    ] {
        refused(
            &["config"],
            &[(var, "0")],
            &format!("bad configuration: {var}: {key} is 0, expected a whole number, 1 or more"),
        );
        refused(
            &["config"],
            &[(var, "-3")],
            "expected a whole number, 1 or more",
        );
    }
    std::fs::write(d.join("simplechat.toml"), "port = = 1\n").unwrap();
    refused(&["config"], &[], "bad configuration");
}

/// The docs promise credentials never appear in errors: not in a syntax
/// error quoting the line, a type error quoting the value under any key, or
/// a refused connection string's options.
#[test]
fn configuration_errors_never_quote_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let check = |out: &Output, secrets: &[&str], expect: &str| {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        for secret in secrets {
            assert!(
                !stderr.contains(secret) && !stdout.contains(secret),
                "{secret}: {stderr}{stdout}"
            );
        }
        assert_one_line_failure(out, expect);
    };
    // The closing quote forgotten: the parser quotes the line.
    std::fs::write(
        d.join("simplechat.toml"),
        "mongodb_uri = \"mongodb://chat:TomlS3cret@127.0.0.1:27702/simplechat?replicaSet=rs\n",
    )
    .unwrap();
    check(
        &simplechat(d, &["config"], &[]),
        &["TomlS3cret"],
        "TOML parse error at line 1",
    );
    // A URI under a key that wants a number, with a space in the password.
    std::fs::write(
        d.join("simplechat.toml"),
        "port = \"mongodb://chat:Toml S3cret@h1/db?tlsCertificateKeyFilePassword=KeyPw\"\n",
    )
    .unwrap();
    check(
        &simplechat(d, &["config"], &[]),
        &["S3cret", "KeyPw"],
        "port in simplechat.toml: invalid type",
    );
    std::fs::remove_file(d.join("simplechat.toml")).unwrap();
    // A URI the driver takes: `config` shows the option, not its value.
    let config = config_lines(
        d,
        &[(
            "SIMPLECHAT_MONGODB_URI",
            "mongodb://u@h1/db?authMechanism=MONGODB-OIDC&\
             authMechanismProperties=ENVIRONMENT:azure,TOKEN_RESOURCE:S3cretRes",
        )],
    );
    assert!(!config.contains("S3cretRes"), "{config}");
    assert!(
        line(&config, "mongodb_uri").contains("&authMechanismProperties=****\""),
        "{config}"
    );
    for (uri, expect) in [
        (
            "mongodb://chat:Pw1@h1/db?tls=true&tlsCertificateKeyFilePassword=KeyPw&bogus=1",
            "tlsCertificateKeyFilePassword",
        ),
        (
            "mongodb://h1/db?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:Tok3n",
            "MONGODB-AWS",
        ),
        (
            "mongodb://h1/db?authMechanismProperties=Tok3n",
            "authMechanismProperties",
        ),
    ] {
        let secrets = ["Pw1", "KeyPw", "Tok3n"];
        check(
            &simplechat(d, &["config"], &[("SIMPLECHAT_MONGODB_URI", uri)]),
            &secrets,
            "bad mongodb_uri",
        );
        check(
            &simplechat(d, &["replset", "status", "--uri", uri], &[]),
            &secrets,
            expect,
        );
    }
}

/// A connection string split across the lines of a TOML multi-line string
/// (`"""` with line-ending backslashes, or `'''`): a syntax error there quotes
/// the line that broke, a piece of the password without the scheme, and
/// that piece is hidden too.
#[test]
fn configuration_errors_never_quote_a_secret_split_across_lines() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (toml, secrets) in [
        // Never closed: the error quotes the second line.
        (
            "mongodb_uri = \"\"\"mongodb://chat:\\\nTomlS3cret@127.0.0.1:27702/simplechat?replicaSet=rs\n",
            &["TomlS3cret"][..],
        ),
        // Something after the closing quotes, the password itself split.
        (
            "mongodb_uri = \"\"\"mongodb://chat:Toml\\\n    S3cret@127.0.0.1/simplechat\"\"\" x\n",
            &["Toml", "S3cret"][..],
        ),
        (
            "mongodb_uri = \"\"\"\\\n  mongodb+srv://chat:\\\n  TomlS3cret@db.example/chat\"\"\" x\n",
            &["TomlS3cret"][..],
        ),
        // A literal multi-line string, never closed.
        (
            "mongodb_uri = '''mongodb://chat:\nTomlS3cret@127.0.0.1/simplechat\n",
            &["TomlS3cret"][..],
        ),
    ] {
        std::fs::write(d.join("simplechat.toml"), toml).unwrap();
        let out = simplechat(d, &["config"], &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        for secret in secrets {
            assert!(!stderr.contains(secret), "{toml:?}: {stderr}");
        }
        assert_one_line_failure(&out, "TOML parse error at line");
    }
}

/// A typo in the file is refused, naming the key and the file; Rocket's
/// keys there, and Rocket's and simplechat's in Rocket.toml, are not.
#[test]
fn a_key_neither_simplechat_nor_rocket_reads_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("simplechat.toml"), "prot = 8200\n").unwrap();
    for command in ["config", "serve"] {
        assert_one_line_failure(
            &simplechat(d, &[command], &[]),
            "bad configuration: prot in simplechat.toml: unknown key",
        );
    }
    let other = d.join("other.toml");
    std::fs::write(&other, "port = 9005\nPort = 9006\n").unwrap();
    assert_one_line_failure(
        &simplechat(
            d,
            &["config"],
            &[("SIMPLECHAT_CONFIG", other.to_str().unwrap())],
        ),
        &format!("Port in {}: unknown key", other.display()),
    );
    std::fs::write(d.join("simplechat.toml"), "[release]\nport = 9007\n").unwrap();
    assert_one_line_failure(
        &simplechat(d, &["config"], &[]),
        "release in simplechat.toml: unknown key: this file has no profiles",
    );

    std::fs::write(
        d.join("simplechat.toml"),
        "port = 9008\nlog_level = \"critical\"\nkeep_alive = 3\nworkers = 2\n\
         [shutdown]\ngrace = 1\n[limits]\njson = \"2 MiB\"\n",
    )
    .unwrap();
    std::fs::write(
        d.join("Rocket.toml"),
        "[default]\naddress = \"0.0.0.0\"\nlog_level = \"off\"\n",
    )
    .unwrap();
    let config = config_lines(d, &[]);
    assert!(line(&config, "port").starts_with("port = 9008"), "{config}");
    assert!(
        line(&config, "address").starts_with(r#"address = "0.0.0.0""#),
        "{config}"
    );
}

/// Rocket's own settings are checked as simplechat's are: by `config` too,
/// and the line names the variable and the value.
#[test]
fn a_bad_rocket_setting_names_its_variable_and_value() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for command in ["config", "serve"] {
        assert_one_line_failure(
            &simplechat(d, &[command], &[("ROCKET_LOG_LEVEL", "loud")]),
            r#"bad configuration: ROCKET_LOG_LEVEL: invalid value string "loud""#,
        );
        assert_one_line_failure(
            &simplechat(d, &[command], &[("ROCKET_SHUTDOWN", "{grace=x}")]),
            r#"bad configuration: ROCKET_SHUTDOWN (shutdown.grace): invalid type: found string "x""#,
        );
    }
    std::fs::write(d.join("simplechat.toml"), "[shutdown]\ngrace = \"x\"\n").unwrap();
    assert_one_line_failure(
        &simplechat(d, &["config"], &[]),
        r#"bad configuration: shutdown.grace in simplechat.toml: invalid type: found string "x""#,
    );
}

/// A typo inside one of Rocket's tables is refused as one at the top is,
/// naming the key's path and where it was set: Rocket passes over it, and
/// the grace period would stay at its default unnoticed.
#[test]
fn a_typo_inside_a_rocket_table_is_refused_naming_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A port in use: a `serve` that got past its configuration stops there.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let port = ("SIMPLECHAT_PORT", port.as_str());
    const KNOWN: &str = "unknown key: Rocket's shutdown has ctrlc, force, grace, mercy, signals";
    std::fs::write(d.join("simplechat.toml"), "shutdown = { grase = 10 }\n").unwrap();
    for command in ["config", "serve"] {
        assert_one_line_failure(
            &simplechat(d, &[command], &[port]),
            &format!("bad configuration: shutdown.grase in simplechat.toml: {KNOWN}"),
        );
    }
    std::fs::remove_file(d.join("simplechat.toml")).unwrap();
    for command in ["config", "serve"] {
        assert_one_line_failure(
            &simplechat(d, &[command], &[("ROCKET_SHUTDOWN", "{grase=10}"), port]),
            &format!("bad configuration: ROCKET_SHUTDOWN (shutdown.grase): {KNOWN}"),
        );
    }
    std::fs::write(d.join("Rocket.toml"), "[default.shutdown]\ngrase = 10\n").unwrap();
    assert_one_line_failure(
        &simplechat(d, &["config"], &[]),
        &format!("Rocket.toml: {KNOWN}"),
    );
    // Spelled right, it is what the server uses.
    std::fs::write(d.join("Rocket.toml"), "[default.shutdown]\ngrace = 10\n").unwrap();
    let config = config_lines(d, &[]);
    assert!(
        line(&config, "shutdown.grace").starts_with("shutdown.grace = 10  # from ")
            && line(&config, "shutdown.grace").ends_with("Rocket.toml"),
        "{config}"
    );
}

/// `config` prints the Rocket settings the server uses, with where each
/// came from, as it does simplechat's.
#[test]
fn config_prints_the_rocket_settings_the_server_uses() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("simplechat.toml"),
        "log_level = \"critical\"\nident = false\n",
    )
    .unwrap();
    let config = config_lines(
        d,
        &[("ROCKET_SHUTDOWN", "{grace=10,signals=[\"term\",\"hup\"]}")],
    );
    let rocket = config.split_once("# Rocket's settings the server uses:\n");
    assert_eq!(
        rocket.map(|(_, rocket)| rocket),
        Some(
            "log_level = \"critical\"  # from simplechat.toml\n\
             ident = false  # from simplechat.toml\n\
             shutdown.ctrlc = true  # from default\n\
             shutdown.signals = [\"hup\", \"term\"]  # from ROCKET_SHUTDOWN\n\
             shutdown.grace = 10  # from ROCKET_SHUTDOWN\n\
             shutdown.mercy = 3  # from default\n"
        ),
        "{config}"
    );
}

/// TLS is refused wherever it is set, saying it is terminated in front:
/// this build has no TLS, and Rocket would take `ROCKET_TLS` and serve
/// plain HTTP.
#[test]
fn tls_is_refused_wherever_it_is_set_saying_it_is_terminated_in_front() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let port = ("SIMPLECHAT_PORT", port.as_str());
    const WHY: &str = "simplechat serves plain HTTP only: terminate TLS in front of it";
    let tls = "{certs=\"/etc/chat/cert.pem\",key=\"/etc/chat/key.pem\"}";
    for command in ["config", "serve"] {
        assert_one_line_failure(
            &simplechat(d, &[command], &[("ROCKET_TLS", tls), port]),
            &format!("bad configuration: ROCKET_TLS: {WHY}"),
        );
    }
    let table = "[tls]\ncerts = \"cert.pem\"\nkey = \"key.pem\"\n";
    std::fs::write(d.join("simplechat.toml"), table).unwrap();
    assert_one_line_failure(
        &simplechat(d, &["serve"], &[port]),
        &format!("bad configuration: tls in simplechat.toml: {WHY}"),
    );
    std::fs::remove_file(d.join("simplechat.toml")).unwrap();
    std::fs::write(d.join("Rocket.toml"), format!("[default.{}", &table[1..])).unwrap();
    assert_one_line_failure(
        &simplechat(d, &["serve"], &[port]),
        &format!("Rocket.toml: {WHY}"),
    );
}

/// A `ROCKET_` variable that nothing reads (a typo) warns as a
/// `SIMPLECHAT_` one does, naming the variable meant; one of Rocket's
/// settings that has no effect here says so, from a variable or a file.
#[test]
fn an_unknown_rocket_variable_warns_and_one_without_effect_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let honoured = [
        ("ROCKET_LOG_LEVEL", "critical"),
        ("ROCKET_SHUTDOWN", "{grace=4}"),
        ("ROCKET_IDENT", "chat"),
        ("ROCKET_PROFILE", "release"),
        ("ROCKET_ADDRESS", "127.0.0.1"),
        ("ROCKET_HEARTBEAT_SECS", "20"),
    ];
    let out = simplechat(d, &["config"], &honoured);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");

    let mut env = honoured.to_vec();
    env.extend([("ROCKET_PROT", "9000"), ("ROCKET_KEEP_ALIVE", "3")]);
    let out = simplechat(d, &["config"], &env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(line(&stdout, "port").starts_with("port = 8000  # from default"));
    let mut warnings: Vec<&str> = stderr.lines().collect();
    warnings.sort();
    assert_eq!(
        warnings,
        [
            "simplechat: warning: ROCKET_KEEP_ALIVE has no effect on simplechat and is \
             ignored: its front door serves every connection (see header_timeout_secs)",
            "simplechat: warning: ROCKET_PROT is not a setting and is ignored; \
             did you mean ROCKET_PORT?",
        ],
        "{stderr}"
    );

    std::fs::write(
        d.join("simplechat.toml"),
        "workers = 2\n[limits]\njson = \"2 MiB\"\n",
    )
    .unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = simplechat(d, &["serve"], &[("SIMPLECHAT_PORT", &port)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(
        warnings,
        [
            "simplechat: warning: workers in simplechat.toml has no effect on simplechat and \
             is ignored: it starts its own async runtime",
            "simplechat: warning: limits.json in simplechat.toml has no effect on simplechat \
             and is ignored: request bodies have a fixed cap derived from the message limits",
        ],
        "{stderr}"
    );
    assert_one_line_failure(&out, "cannot listen");
}

/// A path that starts with `~` is refused: nothing expands it but a shell,
/// and `~/chat` would make a directory named `~` in the working directory.
#[test]
fn a_path_starting_with_a_tilde_is_refused_saying_it_is_not_expanded() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let home = ("HOME", "/home/ann");
    for command in ["config", "serve"] {
        let out = simplechat(
            d,
            &[command],
            &[
                ("SIMPLECHAT_DATA_DIR", "~/chat"),
                ("SIMPLECHAT_PORT", &port),
                home,
            ],
        );
        assert_one_line_failure(
            &out,
            "bad configuration: SIMPLECHAT_DATA_DIR: invalid value: found string \"~/chat\", \
             expected a full path: `~` is not expanded here (only a shell expands it); write \
             the full path such as \"/home/ann/chat\", or ./~ for a directory named ~",
        );
    }
    std::fs::write(d.join("simplechat.toml"), "template_dir = \"~ann/t\"\n").unwrap();
    assert_one_line_failure(
        &simplechat(d, &["config"], &[home]),
        "bad configuration: template_dir in simplechat.toml: invalid value: found string \
         \"~ann/t\", expected a full path: `~` is not expanded here (only a shell expands \
         it); write the full path, or ./~ for a directory named ~",
    );
    assert!(!d.join("~").exists(), "no directory named ~");
}

/// A byte order mark at the start of a secret's file (Windows editors
/// write one) is no part of the secret; a secret's file other users may
/// open warns once, naming the file and the fix, never the secret.
#[test]
fn secret_files_lose_a_byte_order_mark_and_warn_when_others_may_open_them() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let uri = d.join("uri");
    std::fs::write(
        &uri,
        "\u{feff}mongodb://app:s3cret@h3:27017/chat?replicaSet=rs\r\n",
    )
    .unwrap();
    std::fs::set_permissions(&uri, std::fs::Permissions::from_mode(0o600)).unwrap();
    let env = [("SIMPLECHAT_MONGODB_URI_FILE", uri.to_str().unwrap())];
    let out = simplechat(d, &["config"], &env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stderr, "");
    let config = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        line(&config, "mongodb_uri"),
        r#"mongodb_uri = "mongodb://app:****@h3:27017/chat?replicaSet=rs"  # from mongodb_uri_file"#
    );

    std::fs::set_permissions(&uri, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = simplechat(d, &["config"], &env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "simplechat: warning: mongodb_uri_file {0} is open to other users (mode 644) and \
             holds a secret: chmod 600 {0}\n",
            uri.display()
        )
    );

    // The password file too; its password never shows.
    let password = d.join("password");
    std::fs::write(&password, "\u{feff}S3cretPw\n").unwrap();
    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = simplechat(
        d,
        &["config"],
        &[
            ("SIMPLECHAT_MONGODB_URI", "mongodb://app@h3:27017/chat"),
            (
                "SIMPLECHAT_MONGODB_PASSWORD_FILE",
                password.to_str().unwrap(),
            ),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("S3cretPw") && !stdout.contains("S3cretPw"));
    assert_eq!(
        stderr,
        format!(
            "simplechat: warning: mongodb_password_file {0} is open to other users (mode 640) \
             and holds a secret: chmod 600 {0}\n",
            password.display()
        )
    );
}

#[test]
fn a_port_in_use_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = simplechat(dir.path(), &["serve"], &[("SIMPLECHAT_PORT", &port)]);
    assert_one_line_failure(&out, &format!("cannot listen on 127.0.0.1:{port}"));
    assert_one_line_failure(&out, "choose another port (port, SIMPLECHAT_PORT)");
    // The port may be freed (an old instance still closing): 1, which a
    // service manager restarts on.
    assert_status(&out, 1);
}

/// `--help` lists exactly the keys `config` prints, and its configuration
/// summary keeps to 80 columns.
#[test]
fn the_help_lists_the_keys_config_prints() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_lines(dir.path(), &[]);
    let (own, _rocket) = config.split_once("# Rocket's settings").unwrap();
    let printed: Vec<&str> = own
        .lines()
        .map(|l| l.trim_start_matches("# "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    for args in [&["--help"][..], &["serve", "--help"], &["config", "--help"]] {
        let help = String::from_utf8(simplechat(dir.path(), args, &[]).stdout).unwrap();
        let summary = help
            .split("Configuration (later wins):")
            .nth(1)
            .unwrap_or_else(|| panic!("{args:?}: {help}"));
        for l in summary.lines() {
            assert!(l.chars().count() <= 80, "{args:?}: {l:?}");
        }
        let keys = summary.split("Keys: ").nth(1).unwrap().replace('\n', " ");
        let keys: Vec<&str> = keys.split(". ").next().unwrap().split(", ").collect();
        assert_eq!(keys, printed, "{args:?}");
    }
}

#[test]
fn help_version_and_replset_without_a_uri() {
    let dir = tempfile::tempdir().unwrap();
    let version = simplechat(dir.path(), &["--version"], &[]);
    assert!(version.status.success());
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("simplechat {}", env!("CARGO_PKG_VERSION"))
    );
    let help = String::from_utf8(simplechat(dir.path(), &["--help"], &[]).stdout).unwrap();
    for sub in ["serve", "config", "replset"] {
        assert!(help.contains(sub), "{help}");
    }
    // Where the settings come from, on the first screen a newcomer reads.
    for args in [&["--help"][..], &["serve", "--help"]] {
        let help = String::from_utf8(simplechat(dir.path(), args, &[]).stdout).unwrap();
        for needle in [
            "simplechat.toml",
            "SIMPLECHAT_CONFIG",
            "SIMPLECHAT_<KEY>",
            "SIMPLECHAT_PORT",
            "MONGO_URI",
            "simplechat config",
        ] {
            assert!(help.contains(needle), "{args:?} lacks {needle}: {help}");
        }
    }
    let init = simplechat(dir.path(), &["replset", "init", "--help"], &[]);
    let init = String::from_utf8(init.stdout).unwrap();
    assert!(init.contains("--member <HOST:PORT>"), "{init}");
    assert!(init.contains("repeat --member"), "{init}");
    assert!(!init.contains("<MEMBERS>"), "{init}");
    let status = simplechat(dir.path(), &["replset", "status"], &[]);
    assert_one_line_failure(&status, "needs a MongoDB URI");
}

/// `replset status --uri` reads the configuration only for a URI that
/// names a user and no password (the password file completes it): one
/// that needs nothing of it is not stopped by a broken simplechat.toml.
#[test]
fn replset_status_with_a_complete_uri_ignores_a_broken_configuration() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("simplechat.toml"), "port = [\n").unwrap();
    let complete = simplechat(
        dir.path(),
        &[
            "replset",
            "status",
            "--uri",
            "mongodb://u:p@127.0.0.1:1/db?serverSelectionTimeoutMS=300",
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&complete.stderr);
    assert!(!err.contains("bad configuration"), "{err}");
    // Nothing answers there: the report says so (exit 2), not the file.
    assert_eq!(complete.status.code(), Some(2), "{err}");
    let needs_the_file = simplechat(
        dir.path(),
        &["replset", "status", "--uri", "mongodb://u@127.0.0.1:1/db"],
        &[],
    );
    assert_one_line_failure(&needs_the_file, "bad configuration: simplechat.toml");
}

/// A data_dir that is a file, or that another instance has open, is one
/// line that says so (not "File exists", not a lock error twice prefixed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_taken_or_not_a_directory_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("a-file"), "").unwrap();
    let free_port = || {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port().to_string()
    };
    let port = free_port();
    let env = [
        ("SIMPLECHAT_DATA_DIR", "a-file"),
        ("SIMPLECHAT_PORT", &port),
    ];
    let out = tokio::task::block_in_place(|| simplechat(d, &["serve"], &env));
    assert_one_line_failure(&out, "data_dir a-file is not a directory");
    assert_status(&out, EX_CANTCREAT);

    let data_dir = d.join("shared-data");
    let running = crate::support::app::spawn_app_in(&data_dir, &[]).await;
    let port = free_port();
    let shared = data_dir.to_string_lossy().into_owned();
    let env = [
        ("SIMPLECHAT_DATA_DIR", shared.as_str()),
        ("SIMPLECHAT_PORT", &port),
    ];
    let out = tokio::task::block_in_place(|| simplechat(d, &["serve"], &env));
    assert_one_line_failure(&out, "another simplechat using the same data_dir");
    assert_status(&out, EX_CANTCREAT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("store error").count(), 1, "{stderr}");
    running.shutdown().await;
}

/// An empty path is refused as an empty port is, naming the variable,
/// rather than read as the working directory; an address that is no IP
/// address is refused quoting it and saying what is expected.
#[test]
fn an_empty_path_or_a_host_name_for_address_is_refused_saying_what_is_expected() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A port in use: a `serve` that got past its configuration would stop
    // there, not run on.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    for variable in [
        "SIMPLECHAT_DATA_DIR",
        "SIMPLECHAT_TEMPLATE_DIR",
        "SIMPLECHAT_MONGODB_URI_FILE",
        "SIMPLECHAT_MONGODB_PASSWORD_FILE",
    ] {
        for args in [&["config"][..], &["serve"][..]] {
            let out = simplechat(d, args, &[(variable, ""), ("SIMPLECHAT_PORT", &port)]);
            assert_one_line_failure(
                &out,
                &format!("bad configuration: {variable}: invalid value: found string \"\""),
            );
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains("expected a path"), "{stderr}");
        }
    }
    assert!(
        !d.join("messages.redb").exists(),
        "no store in the working directory"
    );
    std::fs::write(d.join("simplechat.toml"), "data_dir = \"\"\n").unwrap();
    assert_one_line_failure(
        &simplechat(d, &["config"], &[]),
        "bad configuration: data_dir in simplechat.toml: invalid value: found string \"\"",
    );
    std::fs::remove_file(d.join("simplechat.toml")).unwrap();

    for value in ["localhost", "chat.example", "127.0.0.1:8000"] {
        let out = simplechat(d, &["config"], &[("SIMPLECHAT_ADDRESS", value)]);
        assert_one_line_failure(
            &out,
            &format!(
                "bad configuration: SIMPLECHAT_ADDRESS: invalid value: found string \"{value}\", \
                 expected an IP address"
            ),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("127.0.0.1") && stderr.contains("0.0.0.0"),
            "{stderr}"
        );
    }
    // Bound, and never reached.
    for value in ["224.0.0.1", "255.255.255.255", "ff02::1"] {
        let out = simplechat(d, &["config"], &[("SIMPLECHAT_ADDRESS", value)]);
        assert_one_line_failure(
            &out,
            &format!(
                "bad configuration: SIMPLECHAT_ADDRESS: invalid value: found string \"{value}\", \
                 a multicast or broadcast address, which no client connects to, expected an IP \
                 address"
            ),
        );
    }
    for value in ["::1", "0.0.0.0"] {
        let config = config_lines(d, &[("SIMPLECHAT_ADDRESS", value)]);
        assert!(
            config.contains(&format!("address = \"{value}\"")),
            "{config}"
        );
    }
}

/// A data_dir or a data file the server may not write stops the start with
/// one line that says the file cannot be opened (or created) and the
/// system's reason, not that the store "is reopening itself": nothing
/// retries at start. As root, which may write anything, the server runs
/// as `nobody` (uid 65534) from a copy of the binary the test can hand it.
#[test]
fn a_data_dir_or_file_the_server_may_not_write_is_one_plain_line() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::os::unix::process::CommandExt;

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let set_mode = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    set_mode(d, 0o755);
    let as_root = std::fs::metadata(d).unwrap().uid() == 0;
    let exe = d.join("simplechat");
    copy_binary(&exe);
    set_mode(&exe, 0o755);

    let read_only_dir = d.join("read-only-dir");
    std::fs::create_dir(&read_only_dir).unwrap();
    set_mode(&read_only_dir, 0o555);
    let read_only_file = d.join("read-only-file");
    std::fs::create_dir(&read_only_file).unwrap();
    set_mode(&read_only_file, 0o777);
    // An existing store, written by the user who owns it.
    let store = read_only_file.join("messages.redb");
    drop(redb::Database::create(&store).unwrap());
    set_mode(&store, 0o444);

    for (data_dir, expect) in [
        (
            &read_only_dir,
            format!(
                "cannot create {}: Permission denied (os error 13)",
                read_only_dir.join("messages.redb").display()
            ),
        ),
        (
            &read_only_file,
            format!(
                "cannot open {} for reading and writing: Permission denied (os error 13)",
                store.display()
            ),
        ),
    ] {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
            .to_string();
        let env = [
            ("SIMPLECHAT_DATA_DIR", data_dir.to_str().unwrap()),
            ("SIMPLECHAT_PORT", port.as_str()),
        ];
        let mut run = command(&exe, d, &["serve"], &env);
        if as_root {
            run.uid(65534).gid(65534);
        }
        let out = retry_while_busy(|| run.output());
        assert_one_line_failure(&out, &expect);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("reopening"), "{stderr}");
        assert_eq!(out.status.code(), Some(EX_CANTCREAT), "{stderr}");
    }
}

/// A setting given as a flag is refused, and the refusal says where
/// settings go.
#[test]
fn a_setting_given_as_a_flag_points_to_its_variable() {
    let dir = tempfile::tempdir().unwrap();
    for (args, variable) in [
        (&["serve", "--port", "9000"][..], "SIMPLECHAT_PORT"),
        (&["--data-dir=/srv/chat"][..], "SIMPLECHAT_DATA_DIR"),
        (&["--config", "x.toml"][..], "SIMPLECHAT_CONFIG"),
        (&["serve", "--config=x.toml"][..], "SIMPLECHAT_CONFIG"),
    ] {
        let out = simplechat(dir.path(), args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(variable), "{args:?}: {stderr}");
    }
    let out = simplechat(dir.path(), &["--bogus"], &[]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("SIMPLECHAT_"));
    // The value is not echoed: it may hold a password.
    let out = simplechat(
        dir.path(),
        &["serve", "--mongodb-uri=mongodb://chat:hunter2@h1/db"],
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("SIMPLECHAT_MONGODB_URI") && !stderr.contains("hunter2"),
        "{stderr}"
    );
}

/// A user name that begins or ends with white space is a mistake MongoDB
/// would keep (the name is any string): refused before anything is
/// contacted, in the connection string and for `--create-user` alike.
#[test]
fn a_user_name_with_surrounding_white_space_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for uri in [
        "mongodb://%20chat:S3cret@127.0.0.1:1/db?replicaSet=rs",
        "mongodb://chat%09:S3cret@127.0.0.1:1/db?replicaSet=rs",
        "mongodb://chat :S3cret@127.0.0.1:1/db?replicaSet=rs",
    ] {
        for (args, env) in [
            (&["config"][..], &[("SIMPLECHAT_MONGODB_URI", uri)][..]),
            (&["replset", "status", "--uri", uri][..], &[][..]),
        ] {
            let out = simplechat(d, args, env);
            assert_one_line_failure(&out, "begins or ends with white space");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!err.contains("S3cret"), "{err}");
        }
    }
    let password = d.join("pw");
    std::fs::write(&password, "S3cret\n").unwrap();
    let password = password.display().to_string();
    for name in [" app", "app ", "app\t"] {
        let out = simplechat(
            d,
            &[
                "replset",
                "init",
                "--name",
                "rs",
                "--member",
                "127.0.0.1:1",
                "--allow-fewer-than-three",
                "--wait-secs",
                "30",
                "--create-user",
                name,
                "--password-file",
                &password,
                "--role",
                "readWrite@simplechat",
            ],
            &[],
        );
        // At once: no member is waited for.
        assert_one_line_failure(&out, "begins or ends with white space");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("nothing changed"), "{err}");
    }
}

/// `allowed_hosts` comes as a list from the file or as names separated by
/// commas from the environment, is shown normalised by `config`, says
/// what its absence means for the configured address, and refuses what is
/// no host name (a port, a URL) naming the entry.
#[test]
fn allowed_hosts_from_a_file_or_a_variable_and_what_unset_means() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert_eq!(
        line(&config_lines(d, &[]), "allowed_hosts"),
        "# allowed_hosts unset: localhost and IP addresses only, as address is loopback"
    );
    let from_variable = config_lines(
        d,
        &[("SIMPLECHAT_ALLOWED_HOSTS", "chat.example, *.lab.example")],
    );
    assert_eq!(
        line(&from_variable, "allowed_hosts"),
        "allowed_hosts = [\"chat.example\", \"*.lab.example\"]  # from SIMPLECHAT_ALLOWED_HOSTS"
    );
    std::fs::write(
        d.join("simplechat.toml"),
        "allowed_hosts = [\"Chat.Example.\"]\n",
    )
    .unwrap();
    assert!(
        line(&config_lines(d, &[]), "allowed_hosts")
            .starts_with("allowed_hosts = [\"chat.example\"]  # from "),
        "trimmed, lower case, no trailing dot"
    );
    // Set to no names, it says so: not "unset", which means any name on
    // this address.
    std::fs::write(
        d.join("simplechat.toml"),
        "address = \"0.0.0.0\"\nallowed_hosts = []\n",
    )
    .unwrap();
    assert!(
        line(&config_lines(d, &[]), "allowed_hosts").starts_with("allowed_hosts = []  # from "),
        "an empty list is set"
    );
    assert_eq!(
        line(
            &config_lines(d, &[("SIMPLECHAT_ALLOWED_HOSTS", "")]),
            "allowed_hosts"
        ),
        "allowed_hosts = []  # from SIMPLECHAT_ALLOWED_HOSTS"
    );
    std::fs::write(d.join("simplechat.toml"), "address = \"0.0.0.0\"\n").unwrap();
    assert_eq!(
        line(&config_lines(d, &[]), "allowed_hosts"),
        "# allowed_hosts unset: any host, as address is not loopback"
    );
    for bad in ["chat.example:8000", "http://chat.example"] {
        let out = simplechat(d, &["config"], &[("SIMPLECHAT_ALLOWED_HOSTS", bad)]);
        assert_one_line_failure(&out, &format!("{bad:?} is not a host name"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.to_lowercase().contains("allowed_hosts"),
            "names the setting: {stderr}"
        );
    }
}

/// A `SIMPLECHAT_` variable that is no setting (a typo) is not silently
/// ignored, as a typo in the TOML file is not: one warning line each,
/// naming the setting meant when one is close, and the command goes on.
/// The variables the project's own tests, bench and CI read do not warn.
#[test]
fn an_unknown_simplechat_variable_warns_naming_the_setting_meant() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("other.toml");
    std::fs::write(&file, "").unwrap();
    let ours = [
        ("SIMPLECHAT_CONFIG", file.to_str().unwrap()),
        ("SIMPLECHAT_TEST_MONGOD", "/nonexistent/mongod"),
        ("SIMPLECHAT_REQUIRE_BROWSER", "1"),
        ("SIMPLECHAT_BENCH_SERVER", "/nonexistent/simplechat"),
        ("SIMPLECHAT_CHROMIUM", "/nonexistent/chromium"),
    ];
    let out = simplechat(dir.path(), &["config"], &ours);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");

    let mut env = ours.to_vec();
    env.extend([
        ("SIMPLECHAT_PROT", "8200"),
        ("SIMPLECHAT_FROBNICATE", "secret"),
        ("SIMPLECHAT_LOG_LEVEL", "debug"),
    ]);
    let out = simplechat(dir.path(), &["config"], &env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(line(&stdout, "port").starts_with("port = 8000  # from default"));
    let mut warnings: Vec<&str> = stderr.lines().collect();
    warnings.sort();
    assert_eq!(
        warnings,
        [
            "simplechat: warning: SIMPLECHAT_FROBNICATE is not a setting and is ignored \
             (see simplechat --help)",
            "simplechat: warning: SIMPLECHAT_LOG_LEVEL is not a setting and is ignored; \
             Rocket's log_level is set with ROCKET_LOG_LEVEL",
            "simplechat: warning: SIMPLECHAT_PROT is not a setting and is ignored; \
             did you mean SIMPLECHAT_PORT?",
        ],
        "{stderr}"
    );

    // `serve` warns too, before anything else can stop it.
    let out = simplechat(
        dir.path(),
        &["serve"],
        &[
            ("SIMPLECHAT_PROT", "8200"),
            ("SIMPLECHAT_HEARTBEAT_SECS", "0"),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.lines().next(),
        Some(
            "simplechat: warning: SIMPLECHAT_PROT is not a setting and is ignored; \
             did you mean SIMPLECHAT_PORT?"
        ),
        "{stderr}"
    );
    assert_one_line_failure(
        &out,
        "heartbeat_secs is 0, expected a number of seconds from 1",
    );
}

/// A port out of range or not a number is refused saying what a port is,
/// with the variable or file it came from and the value quoted.
#[test]
fn a_bad_port_is_refused_saying_what_a_port_is() {
    let dir = tempfile::tempdir().unwrap();
    const PORT: &str = "expected a port: a number from 0 to 65535 (0: any free one)";
    for (value, found) in [
        ("70000", "value: found number `70000`"),
        ("-1", "value: found number `-1`"),
        ("abc", "type: found string \"abc\""),
        (
            "1.5",
            "type: found a floating-point number 1.5, expected an integer: a port",
        ),
    ] {
        let out = simplechat(dir.path(), &["config"], &[("SIMPLECHAT_PORT", value)]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_one_line_failure(&out, &format!("SIMPLECHAT_PORT: invalid {found}"));
        let what = PORT.trim_start_matches("expected ");
        assert!(stderr.trim_end().ends_with(what), "{stderr}");
    }
    // Not "found number `8000`", a value that looks valid.
    let file = dir.path().join("simplechat.toml");
    std::fs::write(&file, "port = 8000.0\n").unwrap();
    assert_one_line_failure(
        &simplechat(dir.path(), &["config"], &[]),
        "port in simplechat.toml: invalid type: found a floating-point number 8000.0, \
         expected an integer: a port: a number from 0 to 65535 (0: any free one)",
    );
    std::fs::remove_file(&file).unwrap();
    let file = dir.path().join("simplechat.toml");
    std::fs::write(&file, "port = 65536\n").unwrap();
    assert_one_line_failure(
        &simplechat(dir.path(), &["config"], &[]),
        &format!("port in simplechat.toml: invalid value: found number `65536`, {PORT}"),
    );
    std::fs::remove_file(&file).unwrap();
    // 0 stays a port: the system picks a free one, and the startup line
    // names it.
    let config = config_lines(dir.path(), &[("SIMPLECHAT_PORT", "0")]);
    assert!(line(&config, "port").starts_with("port = 0  # from SIMPLECHAT_PORT"));
}

/// A template directory that is missing, or a file, is refused saying so,
/// not as if one template were missing from it.
#[test]
fn a_template_dir_that_is_no_directory_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, "").unwrap();
    let file = file.to_str().unwrap();
    for (path, why) in [
        (
            "/nonexistent",
            "template directory /nonexistent does not exist",
        ),
        (
            file,
            &format!("template directory {file} is not a directory"),
        ),
    ] {
        for command in ["config", "serve"] {
            let out = simplechat(dir.path(), &[command], &[("SIMPLECHAT_TEMPLATE_DIR", path)]);
            assert_one_line_failure(&out, &format!("{why} (SIMPLECHAT_TEMPLATE_DIR)"));
        }
    }
    // One that exists without a template still names the template.
    assert_one_line_failure(
        &simplechat(
            dir.path(),
            &["config"],
            &[("SIMPLECHAT_TEMPLATE_DIR", dir.path().to_str().unwrap())],
        ),
        "has no index.html.j2",
    );
}

/// The built-in templates' directory of a server killed with SIGKILL is
/// removed by the next start, and nothing else is: not a live process's,
/// not one of another naming, not a symbolic link or a file of that name.
#[test]
fn a_start_removes_the_template_directories_killed_servers_left() {
    let root = tempfile::tempdir().unwrap();
    let (tmp, run, elsewhere) = (
        root.path().join("tmp"),
        root.path().join("run"),
        root.path().join("elsewhere"),
    );
    for dir in [&tmp, &run, &elsewhere] {
        std::fs::create_dir(dir).unwrap();
    }
    std::fs::write(elsewhere.join("keep"), "").unwrap();
    let uuid = "0190f0c4-9b1e-7cc2-8a4f-4b5e3f6a7d21";
    // No process has this id: Linux caps them at 2^22.
    let gone = i32::MAX;
    let stale = tmp.join(format!("simplechat-templates-{gone}-{uuid}"));
    std::fs::create_dir(&stale).unwrap();
    std::fs::write(stale.join("index.html.j2"), "old").unwrap();
    let kept = [
        // This test's own process runs.
        format!("simplechat-templates-{}-{uuid}", std::process::id()),
        // Before the name carried the process: whose it is is unknown.
        format!("simplechat-templates-{uuid}"),
        format!("simplechat-templates-0-{uuid}"),
        format!("simplechat-templates-{gone}-not-a-uuid"),
        format!("other-{gone}-{uuid}"),
    ];
    for name in &kept {
        std::fs::create_dir(tmp.join(name)).unwrap();
    }
    let link = format!("simplechat-templates-{}-{uuid}", gone - 1);
    std::os::unix::fs::symlink(&elsewhere, tmp.join(&link)).unwrap();
    let file = format!("simplechat-templates-{}-{uuid}", gone - 2);
    std::fs::write(tmp.join(&file), "").unwrap();

    let server = crate::first_run::Server::start(
        Path::new(env!("CARGO_BIN_EXE_simplechat")),
        &run,
        &[("TMPDIR", tmp.to_str().unwrap())],
    );
    let (status, output) = server.stop();
    assert!(status.success(), "{status}: {}", output.join("\n"));
    let mut left: Vec<String> = std::fs::read_dir(&tmp)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    let mut expected: Vec<String> = kept.iter().cloned().chain([link, file]).collect();
    expected.sort();
    assert_eq!(left, expected, "{}", output.join("\n"));
    assert!(elsewhere.join("keep").exists(), "a link is never followed");
}

/// Every seconds setting is bounded, 1 to 86400 (a day): a value near
/// `u64::MAX` was accepted at start and then panicked every event stream
/// (`heartbeat_secs`) or every connection (`header_timeout_secs`) with an
/// overflow. `config` and `serve` refuse it with one line naming where it
/// came from, the setting and the range; the bound itself is accepted.
#[test]
fn seconds_out_of_range_are_refused_naming_the_setting_and_the_range() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for key in [
        "write_timeout_secs",
        "heartbeat_secs",
        "header_timeout_secs",
    ] {
        let var = format!("SIMPLECHAT_{}", key.to_ascii_uppercase());
        for value in ["18446744073709551615", "86401", "0"] {
            assert_one_line_failure(
                &simplechat(d, &["config"], &[(&var, value)]),
                &format!(
                    "bad configuration: {var}: {key} is {value}, expected a number of \
                     seconds from 1 to 86400 (a day)"
                ),
            );
        }
        let config = config_lines(d, &[(&var, "86400")]);
        assert_eq!(line(&config, key), format!("{key} = 86400  # from {var}"));
    }

    let file = d.join("simplechat.toml");
    std::fs::write(&file, "heartbeat_secs = 86401\n").unwrap();
    assert_one_line_failure(
        &simplechat(d, &["config"], &[]),
        "heartbeat_secs in simplechat.toml: heartbeat_secs is 86401",
    );
    std::fs::remove_file(&file).unwrap();

    // The start is refused, not the first event stream or connection.
    for var in [
        "SIMPLECHAT_HEARTBEAT_SECS",
        "SIMPLECHAT_HEADER_TIMEOUT_SECS",
    ] {
        let exe = Path::new(env!("CARGO_BIN_EXE_simplechat"));
        let mut serve = command(
            exe,
            d,
            &["serve"],
            &[(var, "18446744073709551615"), ("SIMPLECHAT_PORT", "0")],
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start simplechat");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while serve.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = serve.kill();
                let _ = serve.wait();
                panic!("serve started with {var}=18446744073709551615");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_one_line_failure(&serve.wait_with_output().unwrap(), &format!("{var}: "));
    }
}

/// A temporary directory that takes no built-in templates (full, or not a
/// directory at all) stops the start with one line naming it and both ways
/// out: another `TMPDIR`, or a `template_dir`.
#[test]
fn a_temporary_directory_that_takes_no_templates_says_both_ways_out() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_dir = dir.path().join("tmp-is-a-file");
    std::fs::write(&not_a_dir, "").unwrap();
    let tmpdir = not_a_dir.to_str().unwrap();
    let out = simplechat(
        dir.path(),
        &["serve"],
        &[("TMPDIR", tmpdir), ("SIMPLECHAT_PORT", "0")],
    );
    assert_one_line_failure(
        &out,
        &format!(
            "cannot write the built-in templates to {tmpdir} (the temporary directory, TMPDIR)"
        ),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("set TMPDIR to another directory")
            && stderr.contains(
                "or set template_dir to a directory holding index.html.j2 and messages.html.j2"
            ),
        "{stderr}"
    );
}

/// The NixOS unit is told not to restart on exactly the statuses of a
/// start that no restart mends, and the tests above check the statuses
/// the binary gives: a status added to one place and not the other fails
/// here.
#[test]
fn the_unit_restarts_on_every_status_but_those_no_restart_mends() {
    use simplechat::app::Cause;
    use simplechat::cli::exit_status;
    let module = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/nixos-modules/simplechat.nix"
    ))
    .unwrap();
    let list = module
        .split("RestartPreventExitStatus = [")
        .nth(1)
        .and_then(|rest| rest.split(']').next())
        .expect("RestartPreventExitStatus in the module");
    let mut listed: Vec<u8> = list
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    listed.sort();
    let mut lasting = [Cause::Configuration, Cause::Damaged, Cause::Unwritable].map(exit_status);
    lasting.sort();
    assert_eq!(listed, lasting);
    assert_eq!(
        [EX_CONFIG, EX_CANTCREAT].map(|c| u8::try_from(c).unwrap()),
        [simplechat::cli::EX_CONFIG, simplechat::cli::EX_CANTCREAT]
    );
    assert_eq!(exit_status(Cause::Other), 1);
}

/// `config` names the data directory as the server uses it and its
/// startup line names it: absolute, whatever the working directory, so it
/// can be copied into a backup command.
#[test]
fn config_names_the_data_directory_the_startup_line_names() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let here = d.canonicalize().unwrap();
    for (env, expect) in [
        (&[][..], r#"  # from default"#),
        (
            &[("SIMPLECHAT_DATA_DIR", "./chat")][..],
            "  # from SIMPLECHAT_DATA_DIR",
        ),
    ] {
        let data_dir = match env {
            [] => here.join("simplechat-data"),
            _ => here.join("chat"),
        };
        let config = config_lines(d, env);
        assert_eq!(
            line(&config, "data_dir"),
            format!("data_dir = \"{}\"{expect}", data_dir.display())
        );
        let server =
            crate::first_run::Server::start(Path::new(env!("CARGO_BIN_EXE_simplechat")), d, env);
        let (status, log) = server.stop();
        assert!(status.success(), "{}", log.join("\n"));
        let startup = log
            .iter()
            .find(|l| l.starts_with("simplechat listening on "))
            .expect("the startup line");
        assert!(
            startup.ends_with(&format!("store: embedded at {}", data_dir.display())),
            "{startup}"
        );
    }
}

/// `config` names the other files it was given as the server opens them:
/// absolute, as the data directory, so a path set relative to where the
/// server starts reads the same from anywhere. Before, they were printed
/// as written (`./tpl`).
#[test]
fn config_names_the_template_directory_and_secret_files_as_the_server_opens_them() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let here = d.canonicalize().unwrap();
    let templates = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
    std::fs::create_dir(d.join("tpl")).unwrap();
    for entry in std::fs::read_dir(&templates).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), d.join("tpl").join(entry.file_name())).unwrap();
    }
    std::fs::write(
        d.join("uri"),
        "mongodb://app@127.0.0.1:27017/chat?replicaSet=rs\n",
    )
    .unwrap();
    std::fs::write(d.join("pw"), "s3cret\n").unwrap();
    for file in ["uri", "pw"] {
        std::fs::set_permissions(d.join(file), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let config = config_lines(
        d,
        &[
            ("SIMPLECHAT_TEMPLATE_DIR", "./tpl"),
            ("SIMPLECHAT_MONGODB_URI_FILE", "uri"),
            ("SIMPLECHAT_MONGODB_PASSWORD_FILE", "./pw"),
        ],
    );
    for (key, file, from) in [
        ("template_dir", "tpl", "SIMPLECHAT_TEMPLATE_DIR"),
        ("mongodb_uri_file", "uri", "SIMPLECHAT_MONGODB_URI_FILE"),
        (
            "mongodb_password_file",
            "pw",
            "SIMPLECHAT_MONGODB_PASSWORD_FILE",
        ),
    ] {
        assert_eq!(
            line(&config, key),
            format!("{key} = \"{}\"  # from {from}", here.join(file).display()),
            "{config}"
        );
    }
    assert!(!config.contains("s3cret"), "{config}");
}

/// A top-level key of Rocket.toml that neither Rocket nor simplechat reads
/// (a typo) is refused, in any profile, naming the file, the profile and
/// the key meant, as one in simplechat.toml is: Rocket passes over it,
/// and the default would stay in force unnoticed.
#[test]
fn an_unknown_key_in_rocket_toml_is_refused_naming_the_key_meant() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let port = ("SIMPLECHAT_PORT", port.as_str());
    for (toml, expect) in [
        (
            "[default]\nprot = 8200\n",
            "prot in {file}: unknown key in its [default] profile: not a setting of \
             simplechat (see simplechat --help) or of Rocket; did you mean port?",
        ),
        (
            "[release]\nlog_levle = \"normal\"\n",
            "log_levle in {file}: unknown key in its [release] profile: not a setting of \
             simplechat (see simplechat --help) or of Rocket; did you mean log_level?",
        ),
        (
            "[global]\nxyzzy = 1\n",
            "xyzzy in {file}: unknown key in its [global] profile: not a setting of \
             simplechat (see simplechat --help) or of Rocket",
        ),
    ] {
        std::fs::write(d.join("Rocket.toml"), toml).unwrap();
        let file = d.canonicalize().unwrap().join("Rocket.toml");
        let expect = format!(
            "bad configuration: {}",
            expect.replace("{file}", &file.display().to_string())
        );
        for command in ["config", "serve"] {
            let out = simplechat(d, &[command], &[port]);
            assert_one_line_failure(&out, &expect);
            assert_status(&out, EX_CONFIG);
        }
    }
    std::fs::remove_file(d.join("Rocket.toml")).unwrap();
    std::fs::write(d.join("simplechat.toml"), "prot = 8200\n").unwrap();
    assert_one_line_failure(
        &simplechat(d, &["config"], &[]),
        "bad configuration: prot in simplechat.toml: unknown key: not a setting of simplechat \
         (see simplechat --help) or of Rocket; did you mean port?",
    );
}

/// Rocket's `shutdown.force` has no effect here, and says so wherever it
/// is set, as Rocket's other settings without effect do; the server
/// starts all the same.
#[test]
fn shutdown_force_warns_that_it_has_no_effect() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    const WHY: &str = "has no effect on simplechat and is ignored: Rocket ends by force only \
                       a runtime it started itself, and simplechat runs its own; connections \
                       still open once shutdown.grace + shutdown.mercy have passed are closed \
                       all the same";
    let warnings = |out: &Output| -> Vec<String> {
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .map(str::to_owned)
            .collect()
    };
    let out = simplechat(
        d,
        &["config"],
        &[("ROCKET_SHUTDOWN", "{force=false,grace=4}")],
    );
    assert_eq!(
        warnings(&out),
        [format!("simplechat: warning: ROCKET_SHUTDOWN {WHY}")]
    );
    std::fs::write(d.join("simplechat.toml"), "[shutdown]\nforce = false\n").unwrap();
    assert_eq!(
        warnings(&simplechat(d, &["config"], &[])),
        [format!(
            "simplechat: warning: shutdown.force in simplechat.toml {WHY}"
        )]
    );
    std::fs::remove_file(d.join("simplechat.toml")).unwrap();
    std::fs::write(d.join("Rocket.toml"), "[default.shutdown]\nforce = true\n").unwrap();
    let file = d.canonicalize().unwrap().join("Rocket.toml");
    assert_eq!(
        warnings(&simplechat(d, &["config"], &[])),
        [format!(
            "simplechat: warning: shutdown.force in {} {WHY}",
            file.display()
        )]
    );
    // Set nowhere, nothing is said.
    std::fs::remove_file(d.join("Rocket.toml")).unwrap();
    assert_eq!(
        warnings(&simplechat(d, &["config"], &[])),
        Vec::<String>::new()
    );
}
