//! Every setting simplechat has, where it comes from, and its checks.
//!
//! Layers, later wins: built-in defaults, Rocket's own (`Rocket.toml`,
//! `ROCKET_*`), the TOML file (`SIMPLECHAT_CONFIG`, else `./simplechat.toml`;
//! no profiles, and a key there must be simplechat's or Rocket's), the lab's
//! `MONGO_URI`, then `SIMPLECHAT_<KEY>`.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Map};
use figment::{Figment, Metadata, Profile, Provider, Source};
use serde::{Deserialize, Serialize};

use crate::hosts::AllowedHosts;
use crate::mongo::uri::redact as redact_uri;
use crate::text::one_line;

/// Every setting of simplechat, in the order `simplechat config` prints
/// them and `--help` lists them; the keys a `SIMPLECHAT_<KEY>` variable may
/// set (`SIMPLECHAT_PORT` sets `port`): other variables with that prefix are
/// ignored, with a warning unless they are [`NOT_SETTINGS`].
pub const KEYS: &[&str] = &[
    "address",
    "port",
    "mongodb_uri",
    "mongodb_uri_file",
    "mongodb_password_file",
    "database",
    "data_dir",
    "cache_size_mib",
    "template_dir",
    "write_timeout_secs",
    "heartbeat_secs",
    "header_timeout_secs",
    "max_connections",
    "max_connections_per_client",
    "secure_cookie",
    "trust_proxy_headers",
    "allowed_hosts",
];

/// The page templates the app renders; all must be in `template_dir`.
pub const TEMPLATES: &[&str] = &["index.html.j2", "messages.html.j2"];

/// The same templates, compiled in: what the binary serves when no
/// `template_dir` is set and no bundle lies beside it.
const BUILT_IN_TEMPLATES: &[(&str, &str)] = &[
    ("index.html.j2", include_str!("../templates/index.html.j2")),
    (
        "messages.html.j2",
        include_str!("../templates/messages.html.j2"),
    ),
];

/// The settings as written by the user, before files are read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    /// The address to listen on; the front door binds it (Rocket runs in
    /// the same process behind it and opens no port of its own).
    #[serde(deserialize_with = "ip_address")]
    pub address: IpAddr,
    /// The TCP port to listen on; 0: any free one, which the startup line
    /// names.
    #[serde(deserialize_with = "port")]
    pub port: u16,
    /// A MongoDB connection string (`MONGO_URI` is an alias); unset selects
    /// the embedded store. Blank is refused ([`Config::from_figment`]).
    pub mongodb_uri: Option<String>,
    /// A file holding the connection string, trimmed; exclusive with
    /// `mongodb_uri`.
    #[serde(default, deserialize_with = "some_path")]
    pub mongodb_uri_file: Option<PathBuf>,
    /// A file holding the password of the URI's user, percent-encoded into
    /// the URI at start (systemd `LoadCredential`).
    #[serde(default, deserialize_with = "some_path")]
    pub mongodb_password_file: Option<PathBuf>,
    /// The MongoDB database; unset, the URI's path, else `simplechat`.
    pub database: Option<String>,
    /// The embedded store's directory.
    #[serde(deserialize_with = "path")]
    pub data_dir: PathBuf,
    /// A directory holding [`TEMPLATES`]; unset, the release bundle's, else
    /// the built-in ones.
    #[serde(default, deserialize_with = "some_path")]
    pub template_dir: Option<PathBuf>,
    /// The write deadline, in seconds; 1 to [`MAX_SECS`].
    pub write_timeout_secs: u64,
    /// Seconds between heartbeat comments on each event stream, which keep
    /// proxies and browsers from closing it; 1 to [`MAX_SECS`].
    pub heartbeat_secs: u64,
    /// The embedded store's page cache, in MiB.
    pub cache_size_mib: u64,
    /// Seconds a connection may take to send a request's headers, counted
    /// from when it opens or its previous response ends; 1 to [`MAX_SECS`].
    pub header_timeout_secs: u64,
    /// The most connections open at once; more are refused with 503.
    pub max_connections: usize,
    /// The most connections open at once from one client address; more
    /// from it are refused with 503. 0: no bound but `max_connections`.
    pub max_connections_per_client: usize,
    /// The name cookie gets `Secure` (the site is served over HTTPS).
    pub secure_cookie: bool,
    /// A proxy in front sets `X-Forwarded-Proto`; take its word.
    pub trust_proxy_headers: bool,
    /// The host names this server answers for beside IP addresses and
    /// `localhost` ([`crate::hosts`]); a list, or one string of names
    /// separated by commas or spaces (`SIMPLECHAT_ALLOWED_HOSTS=a,b`).
    /// Unset: none on a loopback address, any on another; empty (`[]`, or
    /// an empty variable): none on any address.
    #[serde(default, deserialize_with = "some_host_list")]
    pub allowed_hosts: Option<Vec<String>>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            address: IpAddr::from([127, 0, 0, 1]),
            // The lab's gunicorn listened on 8000.
            port: 8000,
            mongodb_uri: None,
            mongodb_uri_file: None,
            mongodb_password_file: None,
            database: None,
            data_dir: PathBuf::from("./simplechat-data"),
            template_dir: None,
            write_timeout_secs: 30,
            heartbeat_secs: 15,
            cache_size_mib: 64,
            header_timeout_secs: 10,
            max_connections: 1024,
            // A classroom behind one NAT address: 40 browsers with up to 6
            // connections each (README, `max_connections_per_client`).
            max_connections_per_client: 256,
            secure_cookie: false,
            trust_proxy_headers: false,
            allowed_hosts: None,
        }
    }
}

/// An IP address, as [`IpAddr`] reads it; the refusal of anything else
/// quotes the value and says what is expected (std's says only "invalid
/// IP address syntax").
fn ip_address<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<IpAddr, D::Error> {
    const EXPECTED: &str = "an IP address, not a host name or a port: 127.0.0.1 or ::1 for \
                            this machine only, 0.0.0.0 or :: for every interface";
    struct Address;
    impl serde::de::Visitor<'_> for Address {
        type Value = IpAddr;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(EXPECTED)
        }

        fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<IpAddr, E> {
            // In the words figment gives a value of the wrong type.
            let refused = |what: &str| {
                E::custom(format_args!(
                    "invalid value: found string {value:?}{what}, expected {EXPECTED}"
                ))
            };
            match value.parse::<IpAddr>() {
                // The kernel lets a server bind one, and no client can
                // connect to it: the server would start and be unreachable.
                Ok(ip) if ip.is_multicast() || ip == IpAddr::from([255, 255, 255, 255]) => Err(
                    refused(", a multicast or broadcast address, which no client connects to"),
                ),
                Ok(ip) => Ok(ip),
                Err(_) => Err(refused("")),
            }
        }
    }
    deserializer.deserialize_str(Address)
}

/// A TCP port, as `u16` reads one; the refusal of anything else quotes the
/// value and says what a port is (serde's says only "expected u16").
fn port<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u16, D::Error> {
    // 0 asks the system for a free port: the front door binds it and the
    // startup line names the one it got (`app::start`).
    const EXPECTED: &str = "a port: a number from 0 to 65535 (0: any free one)";
    // In the words figment gives a value it refuses: "invalid type" for
    // one that is no integer, "invalid value" for one out of range.
    fn refuse<E: serde::de::Error>(what: &str, found: std::fmt::Arguments<'_>) -> E {
        E::custom(format_args!(
            "invalid {what}: found {found}, expected {EXPECTED}"
        ))
    }
    struct Port;
    impl serde::de::Visitor<'_> for Port {
        type Value = u16;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(EXPECTED)
        }

        fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<u16, E> {
            self.visit_u128(value.into())
        }

        fn visit_u128<E: serde::de::Error>(self, value: u128) -> Result<u16, E> {
            u16::try_from(value).map_err(|_| refuse("value", format_args!("number `{value}`")))
        }

        fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<u16, E> {
            self.visit_i128(value.into())
        }

        fn visit_i128<E: serde::de::Error>(self, value: i128) -> Result<u16, E> {
            u16::try_from(value).map_err(|_| refuse("value", format_args!("number `{value}`")))
        }

        fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<u16, E> {
            // `{value}` would print 8000.0 as `8000`, a value that looks
            // valid; `{value:?}` keeps the decimal point.
            Err(E::custom(format_args!(
                "invalid type: found a floating-point number {value:?}, expected an \
                 integer: {EXPECTED}"
            )))
        }

        fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<u16, E> {
            // A number in a variable reaches `visit_u64`; a string here is
            // no number, or one quoted in the TOML file, which `u16`
            // refuses too.
            Err(refuse("type", format_args!("string {value:?}")))
        }
    }
    deserializer.deserialize_u16(Port)
}

/// `allowed_hosts`: a list of names, or one string of them separated by
/// commas or white space (what an environment variable can hold), each
/// checked by [`crate::hosts::check_entry`].
fn host_list<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    struct Hosts;
    impl<'de> serde::de::Visitor<'de> for Hosts {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list of host names, or one string of names separated by commas")
        }

        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Vec<String>, E> {
            text.split(|c: char| c == ',' || c.is_whitespace())
                .filter(|e| !e.is_empty())
                .map(|e| crate::hosts::check_entry(e).map_err(E::custom))
                .collect()
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Vec<String>, A::Error> {
            let mut entries = Vec::new();
            while let Some(entry) = seq.next_element::<String>()? {
                entries.push(crate::hosts::check_entry(&entry).map_err(serde::de::Error::custom)?);
            }
            Ok(entries)
        }
    }
    deserializer.deserialize_any(Hosts)
}

/// [`host_list`] for a setting that may be unset.
fn some_host_list<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    struct Hosts(#[serde(deserialize_with = "host_list")] Vec<String>);
    Ok(Option::<Hosts>::deserialize(deserializer)?.map(|Hosts(hosts)| hosts))
}

/// A path that is not empty and does not start with `~`: an empty one
/// (`SIMPLECHAT_DATA_DIR=`) would be read as the working directory, or name
/// no file at all; `~` is expanded by a shell, never in a file or a
/// variable a service manager sets, so `~/chat` would name a directory
/// `~` in the working directory, which reads like the home directory (and
/// `rm -rf ~` to remove it removes that).
fn path<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<PathBuf, D::Error> {
    let path = PathBuf::deserialize(deserializer)?;
    if path.as_os_str().is_empty() {
        // As figment refuses an empty port.
        return Err(serde::de::Error::custom(
            "invalid value: found string \"\", expected a path",
        ));
    }
    if path.as_os_str().as_encoded_bytes().starts_with(b"~") {
        // The full path meant, when it can be told: `~/x` with HOME set.
        let meant = std::env::var_os("HOME")
            .filter(|home| !home.is_empty())
            .zip(path.strip_prefix("~").ok())
            .map(|(home, rest)| format!(" such as {:?}", Path::new(&home).join(rest)))
            .unwrap_or_default();
        return Err(serde::de::Error::custom(format_args!(
            "invalid value: found string {path:?}, expected a full path: `~` is not \
             expanded here (only a shell expands it); write the full path{meant}, or \
             ./~ for a directory named ~"
        )));
    }
    Ok(path)
}

/// [`path`] for a setting that may be unset.
fn some_path<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<PathBuf>, D::Error> {
    #[derive(Deserialize)]
    struct Path(#[serde(deserialize_with = "path")] PathBuf);
    Ok(Option::<Path>::deserialize(deserializer)?.map(|Path(path)| path))
}

/// Which store the settings select.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// The embedded (redb) store, chosen when no MongoDB URI is set.
    Embedded {
        /// The directory of the store's file (`data_dir`).
        data_dir: PathBuf,
        /// redb's page cache, in bytes (`cache_size_mib`).
        cache_bytes: usize,
    },
    /// A MongoDB deployment, normally a replica set.
    MongoDb {
        /// The connection string, checked, with the password from
        /// `mongodb_password_file` filled in: a secret, redact it before
        /// showing it.
        uri: String,
        /// The database name (`database`, else the URI's path, else
        /// `simplechat`).
        database: String,
    },
}

/// Where the page templates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Templates {
    /// `template_dir`, as configured.
    Configured(PathBuf),
    /// The release bundle's: `<prefix>/share/simplechat/templates` beside
    /// `<prefix>/bin/simplechat`.
    Bundle(PathBuf),
    /// Compiled into the binary.
    BuiltIn,
}

/// The effective configuration: settings checked and resolved.
#[derive(Debug, Clone)]
pub struct Config {
    /// The address to listen on (`address`).
    pub address: IpAddr,
    /// The TCP port to listen on (`port`).
    pub port: u16,
    /// Which store holds the messages.
    pub store: StoreConfig,
    /// Where the page templates come from.
    pub templates: Templates,
    /// The write deadline (`write_timeout_secs`), at least 1 s.
    pub write_timeout: Duration,
    /// How often an idle event stream gets a heartbeat comment.
    pub heartbeat: Duration,
    /// How long a connection may take to send a request's headers, and
    /// stay idle between requests (`header_timeout_secs`).
    pub header_timeout: Duration,
    /// The most connections open at once (`max_connections`).
    pub max_connections: usize,
    /// The most connections open at once from one client address
    /// (`max_connections_per_client`); `None`: no such bound.
    pub max_connections_per_client: Option<usize>,
    /// The `Host` values answered (`allowed_hosts` and `address`).
    pub allowed_hosts: AllowedHosts,
    /// The settings as the layers gave them, for `simplechat config`.
    pub settings: Settings,
    /// Rocket's settings, from the one extraction of them that checked
    /// them; the server uses `log_level`, `ident` and `shutdown`
    /// ([`ROCKET_USED`]).
    pub rocket: rocket::Config,
    /// What is set but has no effect, one line each, for the command to
    /// show before it goes on.
    pub warnings: Vec<String>,
    /// The layers, for Rocket's own settings and for `simplechat config`.
    pub figment: Figment,
}

/// A figment provider with the name a user knows it by: figment names
/// environment layers by their prefix and values by their key only.
struct Named<P> {
    provider: P,
    metadata: Metadata,
}

impl<P: Provider> Provider for Named<P> {
    fn metadata(&self) -> Metadata {
        self.metadata.clone()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        self.provider.data()
    }

    fn profile(&self) -> Option<Profile> {
        self.provider.profile()
    }
}

/// Names an environment layer: `var` turns a key into the variable that set it.
fn environment<P: Provider>(provider: P, var: fn(&str) -> String) -> Named<P> {
    let metadata = Metadata::named(ENVIRONMENT)
        .interpolater(move |_: &Profile, keys: &[&str]| var(&keys.join(".")));
    Named { provider, metadata }
}

const ENVIRONMENT: &str = "environment variable";

/// Rocket's top-level keys, read from its own `Config` once: every
/// extraction asks the layers for their data again.
static ROCKET_KEYS: LazyLock<BTreeSet<String>> =
    LazyLock::new(
        || match figment::value::Value::serialize(rocket::Config::default()) {
            Ok(figment::value::Value::Dict(_, keys)) => keys.into_keys().collect(),
            _ => BTreeSet::new(),
        },
    );

/// Rocket's settings the server uses besides `address` and `port`, which
/// are simplechat's keys too: the log's level, the `Server` header, and
/// when and how gracefully it shuts down (`app::start` watches the
/// `shutdown` signals and gives connections `grace` + `mercy` seconds).
pub const ROCKET_USED: &[&str] = &["log_level", "ident", "shutdown"];

/// Rocket's settings that have no effect here, and why: they configure
/// Rocket's own listener and runtime, which never run (the front door,
/// `api::front`, serves every connection, on simplechat's runtime).
pub const ROCKET_UNUSED: &[(&str, &str)] = &[
    ("workers", "it starts its own async runtime"),
    ("max_blocking", "it starts its own async runtime"),
    (
        "keep_alive",
        "its front door serves every connection (see header_timeout_secs)",
    ),
    (
        "limits",
        "request bodies have a fixed cap derived from the message limits",
    ),
    (
        "ip_header",
        "a client's address is always the connection's peer",
    ),
    ("temp_dir", "nothing is uploaded to a file"),
    ("cli_colors", "its log is never coloured"),
];

/// Keys inside Rocket's used tables ([`ROCKET_USED`]) that have no effect
/// here, and why; warned about as [`ROCKET_UNUSED`] are.
pub const ROCKET_UNUSED_INSIDE: &[(&str, &str)] = &[(
    "shutdown.force",
    "Rocket ends by force only a runtime it started itself, and simplechat runs its own; \
     connections still open once shutdown.grace + shutdown.mercy have passed are closed \
     all the same",
)];

/// Why `tls` (Rocket's, in a build with its `tls` feature) is refused
/// wherever it is set: this build would take it and serve plain HTTP.
const NO_TLS: &str = "simplechat serves plain HTTP only: terminate TLS in front of it, in \
                      a reverse proxy (nginx, Caddy), and set secure_cookie or \
                      trust_proxy_headers";

/// Refuses, in any layer, `tls` ([`NO_TLS`]) and a key inside one of
/// Rocket's tables that Rocket does not read (`shutdown.grase`): Rocket
/// passes over both, so the setting meant would be missing unnoticed.
/// `limits` is left alone: its names are open, a data guard may ask for
/// any (and it has no effect here, [`ROCKET_UNUSED`]).
fn check_rocket_keys(figment: &Figment) -> Result<(), Box<figment::Error>> {
    use figment::value::Value;
    let at = |path: &str, why: String| {
        let mut error = figment::Error::from(why).with_path(path);
        error.metadata = figment.find_metadata(path).cloned();
        error.profile = Some(figment.profile().clone());
        Box::new(error)
    };
    if figment.contains("tls") {
        return Err(at("tls", NO_TLS.to_owned()));
    }
    let Ok(Value::Dict(_, defaults)) = Value::serialize(rocket::Config::default()) else {
        return Ok(());
    };
    for (table, default) in defaults.iter().filter(|(key, _)| *key != "limits") {
        let (Value::Dict(_, known), Ok(Value::Dict(_, set))) = (default, figment.find_value(table))
        else {
            continue;
        };
        if let Some(key) = set.keys().find(|key| !known.contains_key(*key)) {
            let keys: Vec<&str> = known.keys().map(String::as_str).collect();
            return Err(at(
                &format!("{table}.{key}"),
                format!("unknown key: Rocket's {table} has {}", keys.join(", ")),
            ));
        }
    }
    Ok(())
}

/// Refuses a top-level key that neither simplechat nor Rocket reads when
/// it comes from a file outside simplechat's own ([`KnownKeys`] checks
/// that one): Rocket's `Rocket.toml`, in any of its profiles. Rocket
/// passes over such a key, so a typo (`prot = 8200`) would leave the
/// default in force unnoticed. `ROCKET_<KEY>` variables only warn
/// ([`unknown_variables`]): the environment is shared.
fn check_rocket_file_keys(figment: &Figment) -> Result<(), Box<figment::Error>> {
    let data = Provider::data(figment).map_err(Box::new)?;
    for (profile, dict) in &data {
        for (key, value) in dict {
            // `tls` is refused by `check_rocket_keys`, saying why.
            if KEYS.contains(&key.as_str()) || ROCKET_KEYS.contains(key) || key == "tls" {
                continue;
            }
            let Some(metadata) = figment.get_metadata(value.tag()) else {
                continue;
            };
            if !matches!(metadata.source, Some(Source::File(_))) {
                continue;
            }
            let mut error = figment::Error::from(format!(
                "unknown key in its [{profile}] profile: {}",
                unknown_key(key)
            ))
            .with_path(key);
            error.metadata = Some(metadata.clone());
            error.profile = Some(profile.clone());
            return Err(Box::new(error));
        }
    }
    Ok(())
}

/// Why `key`, at the top level of a file, is refused: it is nobody's
/// setting, and the key meant when one is close.
fn unknown_key(key: &str) -> String {
    let known = KEYS
        .iter()
        .copied()
        .chain(ROCKET_KEYS.iter().map(String::as_str));
    let hint = match closest(key, known) {
        Some(meant) => format!("; did you mean {meant}?"),
        None => String::new(),
    };
    format!("not a setting of simplechat (see simplechat --help) or of Rocket{hint}")
}

/// Where a layer other than the defaults sets `path`, or a key inside it
/// ([`place`]); `None` when none does.
fn set_at(figment: &Figment, path: &str) -> Option<String> {
    match figment.find_value(path).ok()? {
        figment::value::Value::Dict(_, dict) => dict
            .keys()
            .find_map(|key| set_at(figment, &format!("{path}.{key}"))),
        _ => (source(figment, path) != "default").then(|| place(figment, path)),
    }
}

/// Where `key` was set, to name it in a message: `key in FILE`, the
/// variable that set it, or the bare key.
fn place(figment: &Figment, key: &str) -> String {
    match figment.find_metadata(key).and_then(|m| m.source.as_ref()) {
        Some(Source::File(path)) => format!("{key} in {}", path.display()),
        _ => match source(figment, key).as_str() {
            "default" => key.to_owned(),
            variable => variable.to_owned(),
        },
    }
}

/// simplechat's TOML file, refusing a top-level key that neither simplechat
/// nor Rocket reads: figment passes over keys nothing extracts, so a typo
/// (`prot = 8200`) would otherwise leave the default in force unnoticed.
/// Rocket's keys are allowed because Rocket reads this same figment.
struct KnownKeys<P>(P);

impl<P: Provider> Provider for KnownKeys<P> {
    fn metadata(&self) -> Metadata {
        self.0.metadata()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let data = self.0.data()?;
        for (key, value) in data.values().flatten() {
            if KEYS.contains(&key.as_str()) || ROCKET_KEYS.contains(key) {
                continue;
            }
            // The file is read into the global profile (see `layered`);
            // profiles are Rocket.toml's.
            let profile = matches!(value, figment::value::Value::Dict(..))
                && [
                    Profile::Default,
                    Profile::Global,
                    "debug".into(),
                    "release".into(),
                ]
                .iter()
                .any(|p| p == key.as_str());
            let why = if key == "tls" {
                NO_TLS.to_owned()
            } else if profile {
                "unknown key: this file has no profiles; write its keys at the top level, \
                 or use Rocket.toml's profiles"
                    .to_owned()
            } else {
                format!("unknown key: {}", unknown_key(key))
            };
            return Err(figment::Error::from(why).with_path(key));
        }
        Ok(data)
    }

    fn profile(&self) -> Option<Profile> {
        self.0.profile()
    }
}

/// Why the configuration cannot be used: one line naming the key or file
/// at fault, without secrets, shown to the user as is.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// The figment with every layer, as `serve` and `config` use it.
pub fn figment() -> Figment {
    let file = std::env::var_os("SIMPLECHAT_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("simplechat.toml"));
    layered(rocket::Config::figment(), &file)
}

/// Puts simplechat's layers on top of `base` (Rocket's layers, or a test's).
/// `file` is read if it exists, from the working directory if relative; a
/// key in it that neither simplechat nor Rocket reads fails the extraction.
pub fn layered(base: Figment, file: &Path) -> Figment {
    // Global profile: Rocket selects a debug/release profile, and values in
    // the global profile win over it, so these layers do what their order says.
    let mut figment = base.join(Serialized::defaults(Settings::default()));
    if file.exists() {
        figment = figment.merge(KnownKeys(Toml::file_exact(file).profile(Profile::Global)));
    }
    figment
        .merge(environment(
            Env::raw()
                .only(&["MONGO_URI"])
                .map(|_| "mongodb_uri".into())
                .global(),
            |_| "MONGO_URI".into(),
        ))
        .merge(environment(
            Env::prefixed("SIMPLECHAT_").only(KEYS).global(),
            |key| format!("SIMPLECHAT_{}", key.to_ascii_uppercase()),
        ))
}

/// The variables with simplechat's prefix that are not settings: the TOML
/// file's path, and what the project's tests, bench and CI read
/// (`SIMPLECHAT_TEST_MONGOD`, `SIMPLECHAT_REQUIRE_BROWSER`,
/// `SIMPLECHAT_BENCH_SERVER`, ...). A name here, or under a prefix in
/// [`NOT_SETTING_PREFIXES`], never warns; one used anywhere else in the
/// project belongs here too.
pub const NOT_SETTINGS: &[&str] = &[
    "SIMPLECHAT_CONFIG",
    "SIMPLECHAT_CHROMIUM",
    "SIMPLECHAT_CHROMEDRIVER",
];

/// Prefixes of variables that are not settings: the test suites'
/// (`SIMPLECHAT_TEST_`, `SIMPLECHAT_REQUIRE_`) and the bench's.
pub const NOT_SETTING_PREFIXES: &[&str] = &[
    "SIMPLECHAT_TEST_",
    "SIMPLECHAT_REQUIRE_",
    "SIMPLECHAT_BENCH_",
];

/// One warning per variable of the environment with simplechat's prefix
/// that is neither a setting nor one of [`NOT_SETTINGS`]: a typo there
/// (`SIMPLECHAT_PROT=8200`) would leave the default in force unnoticed.
///
/// A warning, not an error as a typo in the TOML file is: the environment
/// is shared. CI and test harnesses export their own `SIMPLECHAT_*`
/// variables to every process they start, and an older or newer
/// simplechat's settings may be there too; refusing to start over a
/// variable this binary does not read would break those runs.
pub fn unknown_variables() -> Vec<String> {
    unknown_variable_warnings(
        std::env::vars_os().map(|(name, _)| name.to_string_lossy().into_owned()),
    )
}

fn unknown_variable_warnings(names: impl Iterator<Item = String>) -> Vec<String> {
    const PREFIX: &str = "SIMPLECHAT_";
    let mut warnings = Vec::new();
    for name in names {
        // As figment matches them: the prefix in any case, the key trimmed
        // and lower-cased (`simplechat_port` sets `port` too).
        let trimmed = name.trim();
        let key_after = |prefix: &str| {
            trimmed
                .get(..prefix.len())
                .filter(|p| p.eq_ignore_ascii_case(prefix))
                .map(|_| trimmed[prefix.len()..].to_ascii_lowercase())
        };
        if let Some(key) = key_after(ROCKET_PREFIX) {
            warnings.extend(unknown_rocket_variable(&name, &key));
            continue;
        }
        let Some(key) = key_after(PREFIX) else {
            continue;
        };
        let upper = trimmed.to_ascii_uppercase();
        if KEYS.contains(&key.as_str())
            || NOT_SETTINGS.contains(&upper.as_str())
            || NOT_SETTING_PREFIXES.iter().any(|p| upper.starts_with(p))
        {
            continue;
        }
        // The value is never quoted: it may be a password.
        let hint = if ROCKET_KEYS.contains(&key) {
            format!(
                "; Rocket's {key} is set with ROCKET_{}",
                key.to_ascii_uppercase()
            )
        } else {
            match closest(&key, KEYS.iter().copied().chain(["config"])) {
                Some(meant) => format!("; did you mean {PREFIX}{}?", meant.to_ascii_uppercase()),
                None => " (see simplechat --help)".to_owned(),
            }
        };
        warnings.push(format!("{name} is not a setting and is ignored{hint}"));
    }
    warnings.sort();
    warnings
}

/// The prefix of Rocket's variables.
const ROCKET_PREFIX: &str = "ROCKET_";

/// The variables Rocket reads that are no key: `ROCKET_PROFILE` selects
/// the profile of `Rocket.toml`, `ROCKET_CONFIG` names that file.
const ROCKET_NOT_KEYS: &[&str] = &["profile", "config"];

/// The warning for `ROCKET_<KEY>` (`name`), if any: Rocket's layer takes
/// every such variable, and nothing reads a key that is neither Rocket's
/// nor simplechat's, so `ROCKET_PROT=9000` would leave the port as it was
/// unnoticed. Rocket's keys that have no effect here are named by
/// [`Config::warnings`] from whichever layer sets them, and `tls` is
/// refused; simplechat's keys are taken from this layer too, below
/// simplechat's own.
fn unknown_rocket_variable(name: &str, key: &str) -> Option<String> {
    // `tls` is refused at load, with why.
    if KEYS.contains(&key)
        || ROCKET_KEYS.contains(key)
        || ROCKET_NOT_KEYS.contains(&key)
        || key == "tls"
    {
        return None;
    }
    let rocket_own = |k: &str| {
        ["address", "port"].contains(&k) || ROCKET_USED.contains(&k) || ROCKET_NOT_KEYS.contains(&k)
    };
    let candidates = KEYS
        .iter()
        .chain(ROCKET_USED)
        .chain(ROCKET_NOT_KEYS)
        .copied();
    let hint = match closest(key, candidates) {
        // Rocket's own keys by Rocket's variable; simplechat's by its own.
        Some(meant) if rocket_own(meant) => {
            format!(
                "; did you mean {ROCKET_PREFIX}{}?",
                meant.to_ascii_uppercase()
            )
        }
        Some(meant) => format!("; did you mean SIMPLECHAT_{}?", meant.to_ascii_uppercase()),
        None => " (see simplechat --help)".to_owned(),
    };
    Some(format!("{name} is not a setting and is ignored{hint}"))
}

/// The candidate closest to `key`, if one is close: Jaro similarity above
/// 0.7, as clap suggests a subcommand.
fn closest(key: &str, candidates: impl Iterator<Item = &'static str>) -> Option<&'static str> {
    candidates
        .map(|candidate| (strsim::jaro(key, candidate), candidate))
        .filter(|(similarity, _)| *similarity > 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, candidate)| candidate)
}

impl Config {
    /// Reads every layer ([`figment()`]) and checks the result as
    /// [`Config::from_figment`] does; a file named by `SIMPLECHAT_CONFIG`
    /// that cannot be read is an error too.
    pub fn load() -> Result<Config, ConfigError> {
        // A missing ./simplechat.toml is fine; a file named explicitly must exist.
        if let Some(path) = std::env::var_os("SIMPLECHAT_CONFIG") {
            if let Err(e) = std::fs::metadata(&path) {
                return Err(ConfigError(format!(
                    "cannot read config file {} (SIMPLECHAT_CONFIG): {e}",
                    Path::new(&path).display()
                )));
            }
        }
        Config::from_figment(figment())
    }

    /// Checks and resolves the settings `figment` gives. Errors: a value of
    /// the wrong type, simplechat's or Rocket's (naming the key, where it
    /// came from and the value); both `mongodb_uri` and `mongodb_uri_file`;
    /// an unreadable URI or password file; a bad connection string; a
    /// template directory missing a template; a count of 0; seconds out of
    /// range (1 to [`MAX_SECS`]).
    pub fn from_figment(figment: Figment) -> Result<Config, ConfigError> {
        let bad = |e: figment::Error| ConfigError(format!("bad configuration: {}", explain(e)));
        let settings: Settings = figment.extract().map_err(bad)?;
        // Rocket reads its own settings from the same figment only when it
        // ignites, and then says no more than "failed to extract
        // configuration"; checked here, `config` refuses them too.
        let rocket = figment.extract::<rocket::Config>().map_err(bad)?;
        check_rocket_keys(&figment).map_err(|e| bad(*e))?;
        check_rocket_file_keys(&figment).map_err(|e| bad(*e))?;
        let mut warnings: Vec<String> = ROCKET_UNUSED
            .iter()
            .chain(ROCKET_UNUSED_INSIDE)
            .filter_map(|(key, why)| {
                let place = set_at(&figment, key)?;
                Some(format!(
                    "{place} has no effect on simplechat and is ignored: {why}"
                ))
            })
            .collect();
        let store = store_config(&settings, &|key| whence_of(&figment, key))?;
        // MongoDB was meant, and the connection string forgotten: the
        // embedded store serves a chat of this machine's own.
        if let (StoreConfig::Embedded { .. }, Some(_)) = (&store, &settings.database) {
            warnings.push(format!(
                "database is set ({}) but no MongoDB connection string is: serving from the \
                 embedded store, where database has no effect; set mongodb_uri (MONGO_URI) to \
                 use MongoDB",
                whence_of(&figment, "database")
            ));
        }
        warnings.extend(
            [
                ("mongodb_uri_file", &settings.mongodb_uri_file),
                ("mongodb_password_file", &settings.mongodb_password_file),
            ]
            .into_iter()
            .filter_map(|(setting, path)| {
                crate::mongo::uri::open_to_others(setting, path.as_deref()?)
            }),
        );
        let templates = resolve_templates(settings.template_dir.as_deref(), || {
            place(&figment, "template_dir")
        })?;
        let write_timeout = seconds(&figment, "write_timeout_secs", settings.write_timeout_secs)?;
        let heartbeat = seconds(&figment, "heartbeat_secs", settings.heartbeat_secs)?;
        for (key, value) in [
            ("cache_size_mib", settings.cache_size_mib),
            ("max_connections", settings.max_connections as u64),
        ] {
            if value == 0 {
                return Err(ConfigError(format!(
                    "bad configuration: {}: {key} is 0, expected a whole number, 1 or more",
                    whence_of(&figment, key)
                )));
            }
        }
        let header_timeout = seconds(
            &figment,
            "header_timeout_secs",
            settings.header_timeout_secs,
        )?;
        Ok(Config {
            address: settings.address,
            port: settings.port,
            store,
            templates,
            write_timeout,
            heartbeat,
            header_timeout,
            max_connections: settings.max_connections,
            max_connections_per_client: (settings.max_connections_per_client > 0)
                .then_some(settings.max_connections_per_client),
            allowed_hosts: AllowedHosts::new(settings.address, settings.allowed_hosts.as_deref()),
            settings,
            rocket,
            warnings,
            figment,
        })
    }
}

/// The most seconds any `*_secs` setting may hold: a day. A wait longer
/// than that means nothing to a client, a proxy or a browser's
/// `EventSource`, and a value near `u64::MAX` was accepted, then panicked
/// each event stream or connection it timed ("overflow when adding
/// duration to instant").
pub const MAX_SECS: u64 = 24 * 60 * 60;

/// The `*_secs` setting `key`, whose value is `value`, as a duration.
///
/// Errors: below 1 or above [`MAX_SECS`], naming where the value came
/// from (the variable, or the key and the file), the key and the range.
fn seconds(figment: &Figment, key: &str, value: u64) -> Result<Duration, ConfigError> {
    if (1..=MAX_SECS).contains(&value) {
        return Ok(Duration::from_secs(value));
    }
    Err(ConfigError(format!(
        "bad configuration: {}: {key} is {value}, expected a number of seconds \
         from 1 to {MAX_SECS} (a day)",
        whence_of(figment, key)
    )))
}

/// The counts that must be 1 or more (0 is refused, not taken for "off").
const AT_LEAST_ONE: [&str; 2] = ["cache_size_mib", "max_connections"];

/// Where `key`'s value came from, for an error: the key and its file, or
/// the variable.
fn whence_of(figment: &Figment, key: &str) -> String {
    match figment.find_metadata(key).and_then(|m| m.source.as_ref()) {
        Some(Source::File(path)) => format!("{key} in {}", path.display()),
        _ => source(figment, key),
    }
}

/// `mongodb_password_file` from every layer, for a command given its own
/// connection string (`replset status --uri`): the rest of the
/// configuration is not checked, as that command does not use it.
pub fn password_file() -> Result<Option<PathBuf>, ConfigError> {
    #[derive(Deserialize)]
    struct Only {
        #[serde(default, deserialize_with = "some_path")]
        mongodb_password_file: Option<PathBuf>,
    }
    figment()
        .extract::<Only>()
        .map(|only| only.mongodb_password_file)
        .map_err(|e| ConfigError(format!("bad configuration: {}", explain(e))))
}

/// `uri` with the password from `file` filled in, when it names a user
/// and no password; any other connection string is used as written.
pub fn with_password_file(uri: &str, file: Option<&Path>) -> Result<String, ConfigError> {
    let Some(path) = file else {
        return Ok(uri.to_owned());
    };
    if !crate::mongo::uri::names_user_without_password(uri) {
        return Ok(uri.to_owned());
    }
    fill_password(uri, path)
}

/// `uri` with the password read from `path` (`mongodb_password_file`).
/// Errors: the file cannot be read, or the URI names no user or already
/// carries a password.
fn fill_password(uri: &str, path: &Path) -> Result<String, ConfigError> {
    let password = crate::mongo::uri::read_password_file(path).map_err(ConfigError)?;
    crate::mongo::uri::with_password(uri, &password)
        .map_err(|why| ConfigError(format!("mongodb_password_file: {why}")))
}

/// The store `s` selects. `whence` names where a key's value came from (its
/// variable, or the key and its file: [`whence_of`]), so that a refusal
/// says which setting to change.
///
/// Errors: a connection string that is set but empty, does not parse, names
/// a user without a password, or is given twice (`mongodb_uri` and
/// `mongodb_uri_file`); a file that cannot be read; a database name MongoDB
/// does not take ([`check_database_name`]); a password file with no
/// connection string or beside an X.509 login.
fn store_config(s: &Settings, whence: &dyn Fn(&str) -> String) -> Result<StoreConfig, ConfigError> {
    let uri = match (&s.mongodb_uri, &s.mongodb_uri_file) {
        (Some(_), Some(_)) => {
            return Err(ConfigError(format!(
                "set only one of mongodb_uri (or MONGO_URI) and mongodb_uri_file: {} sets the \
                 one and {} the other",
                whence("mongodb_uri"),
                whence("mongodb_uri_file")
            )))
        }
        // Set, yet blank: a variable or a credential file never filled in.
        // Taken for unset, it would start an empty chat of this machine's
        // own, beside the replica set's, with no word said.
        (Some(uri), None) if uri.trim().is_empty() => {
            return Err(ConfigError(
                "mongodb_uri (or MONGO_URI) is set but empty: give the connection string, or \
                 unset it to use the embedded store"
                    .into(),
            ))
        }
        (Some(uri), None) => Some(uri.trim().to_owned()),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError(format!(
                    "cannot read mongodb_uri_file {} (set by {}): {e}",
                    path.display(),
                    whence("mongodb_uri_file")
                ))
            })?;
            let uri = crate::mongo::uri::without_bom(&text).trim().to_owned();
            if uri.is_empty() {
                return Err(ConfigError(format!(
                    "mongodb_uri_file {} (set by {}) is empty: write the connection string \
                     into it",
                    path.display(),
                    whence("mongodb_uri_file")
                )));
            }
            Some(uri)
        }
        (None, None) => None,
    };
    let Some(mut uri) = uri else {
        // A password for MongoDB says MongoDB was meant: served from the
        // embedded store, this machine would hold a chat of its own.
        if let Some(path) = &s.mongodb_password_file {
            return Err(ConfigError(format!(
                "mongodb_password_file ({}, set by {}) is set but no connection string is: set \
                 mongodb_uri (MONGO_URI) or mongodb_uri_file naming the user, or unset \
                 mongodb_password_file to use the embedded store",
                path.display(),
                whence("mongodb_password_file")
            )));
        }
        return Ok(StoreConfig::Embedded {
            data_dir: s.data_dir.clone(),
            cache_bytes: usize::try_from(s.cache_size_mib.saturating_mul(1024 * 1024))
                .unwrap_or(usize::MAX),
        });
    };
    if let Some(path) = &s.mongodb_password_file {
        // An X.509 login is the client certificate's: the driver refuses a
        // password beside it, and its words would blame the string.
        let mechanism = crate::mongo::uri::parse(&uri)
            .ok()
            .and_then(|c| c.credential)
            .and_then(|c| c.mechanism);
        if mechanism == Some(mongodb::options::AuthMechanism::MongoDbX509) {
            return Err(ConfigError(format!(
                "mongodb_password_file ({}, set by {}) is set, but the connection string signs \
                 in with authMechanism=MONGODB-X509, whose client certificate takes no password: \
                 unset mongodb_password_file",
                path.display(),
                whence("mongodb_password_file")
            )));
        }
        uri = fill_password(&uri, path).map_err(|ConfigError(why)| {
            ConfigError(format!("{}: {why}", whence("mongodb_password_file")))
        })?;
    }
    // The variable or file a refusal of the string names.
    let uri_whence = match &s.mongodb_uri_file {
        Some(path) => format!(
            "mongodb_uri_file {}, set by {}",
            path.display(),
            whence("mongodb_uri_file")
        ),
        None => whence("mongodb_uri"),
    };
    let parsed = crate::mongo::uri::parse(&uri).map_err(|why| {
        ConfigError(format!(
            "bad mongodb_uri {} (from {uri_whence}): {why}",
            redact_uri(&uri)
        ))
    })?;
    if let Some(credential) = &parsed.credential {
        use mongodb::options::AuthMechanism;
        // X.509, AWS and Kerberos logins need no password; the others
        // refuse every login without one ("no password supplied"), and the
        // app would serve on, never ready.
        let needs_password = matches!(
            credential.mechanism,
            None | Some(
                AuthMechanism::ScramSha1 | AuthMechanism::ScramSha256 | AuthMechanism::Plain
            )
        );
        // MongoDB takes no empty password (`chat:@host` gives one).
        let no_password = credential.password.as_deref().is_none_or(str::is_empty);
        if needs_password && credential.username.is_some() && no_password {
            return Err(ConfigError(format!(
                "mongodb_uri {} (from {uri_whence}) names a user and no password: set \
                 mongodb_password_file to a file holding the password (or write it into the \
                 connection string)",
                redact_uri(&uri)
            )));
        }
    }
    let (database, database_whence) = match (&s.database, &parsed.default_database) {
        (Some(name), _) => (name.clone(), whence("database")),
        (None, Some(name)) => (
            name.clone(),
            format!("the connection string's path, from {uri_whence}"),
        ),
        (None, None) => ("simplechat".to_owned(), "default".to_owned()),
    };
    check_database_name(&database, &database_whence)?;
    Ok(StoreConfig::MongoDb { uri, database })
}

/// Refuses a database name MongoDB does not take: empty, 64 bytes or more,
/// or holding `/\. "$` or NUL (the rules for Unix:
/// <https://www.mongodb.com/docs/manual/reference/limits/#naming-restrictions>);
/// mongod would refuse it only at the first write, with the app up. And
/// `admin`, `local` and `config`, on which no change stream opens ("You
/// cannot open a change stream against the admin, local, or config
/// database": <https://www.mongodb.com/docs/manual/changeStreams/>), so
/// no instance would see another's messages.
///
/// `whence` says where the name was set, for the error.
fn check_database_name(name: &str, whence: &str) -> Result<(), ConfigError> {
    let why = if matches!(name, "admin" | "local" | "config") {
        Some(
            "is one of MongoDB's own, on which no change stream opens (live updates need one)"
                .to_owned(),
        )
    } else if name.is_empty() {
        Some("is empty".to_owned())
    } else if name.len() >= 64 {
        Some(format!(
            "is {} bytes long; MongoDB takes under 64",
            name.len()
        ))
    } else {
        name.chars()
            .find(|c| matches!(c, '/' | '\\' | '.' | ' ' | '"' | '$' | '\0'))
            .map(|c| format!("holds {c:?}, which MongoDB does not take in a database name"))
    };
    match why {
        Some(why) => Err(ConfigError(format!(
            "bad configuration: database {name:?} {why} (set by {whence})"
        ))),
        None => Ok(()),
    }
}

/// `template_dir` if set; else the bundle's templates, installed at
/// `<prefix>/share/simplechat/templates` beside `<prefix>/bin/simplechat`;
/// else the ones compiled into the binary, so a binary copied anywhere
/// serves its own page.
///
/// `whence` names where `template_dir` was set (its variable, or the key
/// and the file), for a directory that is not there.
fn resolve_templates(
    configured: Option<&Path>,
    whence: impl FnOnce() -> String,
) -> Result<Templates, ConfigError> {
    let templates = match configured {
        Some(dir) => Templates::Configured(dir.to_path_buf()),
        None => match bundle_template_dir() {
            Some(dir) => Templates::Bundle(dir),
            None => return Ok(Templates::BuiltIn),
        },
    };
    if let Templates::Configured(dir) = &templates {
        // Not "has no index.html.j2" for a directory that is not there.
        let why = match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => None,
            Ok(_) => Some("is not a directory".to_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some("does not exist".to_owned()),
            Err(e) => Some(format!("cannot be read: {e}")),
        };
        if let Some(why) = why {
            return Err(ConfigError(format!(
                "template directory {} {why} ({})",
                dir.display(),
                whence()
            )));
        }
    }
    if let Templates::Configured(dir) | Templates::Bundle(dir) = &templates {
        for template in TEMPLATES {
            if !dir.join(template).is_file() {
                return Err(ConfigError(format!(
                    "template directory {} has no {template} (set template_dir)",
                    dir.display()
                )));
            }
        }
    }
    Ok(templates)
}

fn bundle_template_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?.canonicalize().ok()?;
    let dir = exe.parent()?.parent()?.join("share/simplechat/templates");
    dir.is_dir().then_some(dir)
}

impl Config {
    /// The figment Rocket runs with (rocket_dyn_templates reads
    /// `template_dir` from it), and what must live as long as Rocket does.
    ///
    /// rocket_dyn_templates only reads templates from a directory, so
    /// built-in templates are written to a private one, removed on drop.
    pub fn rocket_figment(&self) -> Result<(Figment, Option<BuiltInTemplateDir>), ConfigError> {
        let (dir, written) = match &self.templates {
            Templates::Configured(dir) | Templates::Bundle(dir) => (dir.clone(), None),
            Templates::BuiltIn => {
                // rocket_dyn_templates 0.2 finds templates only by walking
                // `template_dir` (`Context::initialize`), and its MiniJinja
                // loader reads each file from there, so the built-in ones
                // must be files; what the user can do about a temporary
                // directory that takes none is said in full.
                let written = BuiltInTemplateDir::write().map_err(|e| {
                    ConfigError(format!(
                        "cannot write the built-in templates to {} (the temporary directory, \
                         TMPDIR): {e}; free space there or set TMPDIR to another directory, \
                         or set template_dir to a directory holding {}, which needs no writing",
                        std::env::temp_dir().display(),
                        TEMPLATES.join(" and ")
                    ))
                })?;
                (written.path().to_path_buf(), Some(written))
            }
        };
        let figment = self
            .figment
            .clone()
            .merge(Serialized::default("template_dir", &dir).profile(Profile::Global))
            // Rocket paints its records with ANSI codes on a terminal; the
            // process's logger (`crate::logging`) escapes every control
            // character a record holds, the escape that starts a colour
            // too, so colours would print as `\u{1b}[32m`.
            .merge(Serialized::default("cli_colors", false).profile(Profile::Global));
        Ok((figment, written))
    }
}

/// A private directory holding the built-in templates; removed on drop.
///
/// Its name, `simplechat-templates-<pid>-<uuid>` in the system's temporary
/// directory, carries the id of the process that wrote it: a process
/// killed with SIGKILL never drops it, and the next start removes it
/// ([`remove_stale_template_dirs`]) once that process is gone.
///
/// Not one fixed directory per user (`simplechat-templates-<uid>`), though
/// that would leave at most one behind: in a temporary directory shared by
/// every local user, another user could create that name first (a
/// directory they own, or a link to one), so each start would have to
/// check its owner and mode and refuse to serve when they are wrong; and
/// two servers of one user (another `data_dir`, another version) would
/// write, and on exit remove, each other's templates. A fresh name that
/// creation refuses when it exists needs no such checks.
#[derive(Debug)]
pub struct BuiltInTemplateDir(PathBuf);

/// The start of a built-in templates' directory's name.
const TEMPLATE_DIR_PREFIX: &str = "simplechat-templates-";

impl BuiltInTemplateDir {
    fn write() -> std::io::Result<BuiltInTemplateDir> {
        let temp = std::env::temp_dir();
        #[cfg(unix)]
        remove_stale_template_dirs(&temp);
        let dir = temp.join(format!(
            "{TEMPLATE_DIR_PREFIX}{}-{}",
            std::process::id(),
            uuid::Uuid::now_v7()
        ));
        let mut builder = std::fs::DirBuilder::new();
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        // Fails if the name exists: nobody else's directory is ever used.
        builder.create(&dir)?;
        let written = BuiltInTemplateDir(dir);
        for (name, text) in BUILT_IN_TEMPLATES {
            std::fs::write(written.0.join(name), text)?;
        }
        Ok(written)
    }

    /// The directory, to give Rocket as `template_dir`.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for BuiltInTemplateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Removes from `temp` the built-in templates' directories that processes
/// no longer running left behind, and nothing else: only an entry named
/// as [`BuiltInTemplateDir`] names them (with a process id and a UUID;
/// older names carry no process and are left alone), that is a directory
/// itself (a symbolic link is never followed or removed), that the
/// current user owns, and whose process `kill(pid, 0)` says does not
/// exist (ESRCH; a process of another user answers EPERM, and stays).
/// A process id taken again by another process only keeps a directory
/// longer. Failures are ignored: this is housekeeping, and the start
/// goes on.
///
/// The probe sees this machine's processes in this process's PID
/// namespace: two containers that run as one user and share one
/// temporary directory (not the usual setup; each has its own `/tmp`)
/// could remove each other's directory. Such a setup can set
/// `template_dir`, which writes no directory at all.
#[cfg(unix)]
fn remove_stale_template_dirs(temp: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(temp) else {
        return;
    };
    let me = rustix::process::geteuid().as_raw();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(template_dir_pid) else {
            continue;
        };
        if pid == rustix::process::getpid() {
            continue;
        }
        let path = entry.path();
        // Of the entry itself, never of what a link names.
        let Ok(metadata) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !metadata.file_type().is_dir() || metadata.uid() != me {
            continue;
        }
        if rustix::process::test_kill_process(pid) != Err(rustix::io::Errno::SRCH) {
            continue;
        }
        // Removes a link inside as a link, never what it names.
        let _ = std::fs::remove_dir_all(&path);
    }
}

/// The process id in a built-in templates' directory's name,
/// `simplechat-templates-<pid>-<uuid>`; `None` for any other name (and
/// for pid 0, which `kill` reads as "my process group").
#[cfg(unix)]
fn template_dir_pid(name: &str) -> Option<rustix::process::Pid> {
    let (pid, uuid) = name.strip_prefix(TEMPLATE_DIR_PREFIX)?.split_once('-')?;
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // As `Uuid`'s `Display` writes one: 36 characters, hyphenated.
    if uuid.len() != 36 || uuid::Uuid::try_parse(uuid).is_err() {
        return None;
    }
    rustix::process::Pid::from_raw(pid.parse().ok()?)
}

/// The database a MongoDB store uses, and whether it came from the URI's path.
fn uri_database(uri: &str) -> Option<String> {
    crate::mongo::uri::parse(uri).ok()?.default_database
}

/// Where the value of `key` came from, in the user's terms: `default`, the
/// TOML file's path, or the environment variable that set it.
pub fn source(figment: &Figment, key: &str) -> String {
    let Some(metadata) = figment.find_metadata(key) else {
        return "default".into();
    };
    match &metadata.source {
        Some(Source::File(path)) => path.display().to_string(),
        // A variable holds a whole top-level value: `ROCKET_SHUTDOWN`
        // sets `shutdown.grace`.
        _ if metadata.name.contains(ENVIRONMENT) => {
            let top = key.split('.').next().unwrap_or(key);
            variable(metadata, figment.profile(), top)
        }
        // Rocket's and simplechat's built-in values.
        _ => "default".into(),
    }
}

/// The environment variable an environment layer read `key` from.
fn variable(metadata: &Metadata, profile: &Profile, key: &str) -> String {
    let var = metadata.interpolate(profile, &[key]);
    // figment's own environment layers (Rocket's `ROCKET_`) name their
    // prefix only in the layer's name: "`ROCKET_` environment variable(s)";
    // the variable is the prefix and the key.
    match metadata.name.split('`').nth(1) {
        Some(prefix) if !var.starts_with(prefix) => format!("{prefix}{var}"),
        _ => var,
    }
}

/// A figment error as one line per fault, in the user's terms: where the
/// value came from (the variable, or the key and the file), then what is
/// wrong with it (figment's kind, which quotes the value and says what was
/// expected).
fn explain(error: figment::Error) -> String {
    // A syntax error in a multi-line string quotes the line that broke,
    // which may hold a piece of a password without its connection string's
    // scheme: every piece of every password in the files named is hidden.
    let mut files: Vec<std::path::PathBuf> = Vec::new();
    for e in error.clone() {
        if let Some(Source::File(path)) = e.metadata.as_ref().and_then(|m| m.source.as_ref()) {
            if !files.contains(path) {
                files.push(path.clone());
            }
        }
    }
    let pieces: Vec<String> = files
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .flat_map(|text| crate::mongo::uri::toml_secrets(&text))
        .collect();
    let faults: Vec<String> = error
        .into_iter()
        .map(in_words)
        .map(|e| match whence(&e) {
            Some(place) => format!("{place}: {}", e.kind),
            None => e.kind.to_string(),
        })
        // A syntax error quotes the line that broke, a type error the
        // value, whichever key it is: a connection string's secrets there
        // are hidden as `config` hides them.
        .map(|fault| crate::mongo::uri::scrub(&fault))
        .map(|fault| {
            pieces.iter().fold(fault, |text, piece| {
                crate::mongo::uri::hide_secret(&text, piece)
            })
        })
        .collect();
    one_line(&faults.join("; "))
}

/// `e` with serde's "expected u64" (any unsigned integer type: a negative
/// number or a word given for a count or a time) in the words a range
/// error says: seconds from 1 to [`MAX_SECS`] for a `*_secs` key, else a
/// whole number.
fn in_words(mut e: figment::Error) -> figment::Error {
    use figment::error::Kind;
    let key = e.path.last().map(String::as_str).unwrap_or_default();
    let seconds = key.ends_with("_secs");
    if let Kind::InvalidType(_, expected) | Kind::InvalidValue(_, expected) = &mut e.kind {
        if ["u8", "u16", "u32", "u64", "usize"].contains(&expected.as_str()) {
            *expected = if seconds {
                format!("a number of seconds from 1 to {MAX_SECS} (a day)")
            } else if AT_LEAST_ONE.contains(&key) {
                "a whole number, 1 or more".to_owned()
            } else {
                "a whole number, 0 or more".to_owned()
            };
        }
    }
    // figment words a negative number "invalid value signed int `-5`",
    // a type's name; said as a port's or an address's refusal says it.
    if let Kind::InvalidValue(figment::error::Actual::Signed(n), expected) = &e.kind {
        e.kind = Kind::Message(format!(
            "invalid value: found number `{n}`, expected {expected}"
        ));
    }
    e
}

/// `ROCKET_LOG_LEVEL`, `ROCKET_SHUTDOWN (shutdown.grace)`, `port in
/// simplechat.toml`, or the bare key; `None` when figment knows neither.
fn whence(e: &figment::Error) -> Option<String> {
    let key = e.path.join(".");
    let metadata = e.metadata.as_ref();
    match (metadata, metadata.and_then(|m| m.source.as_ref())) {
        (_, Some(Source::File(path))) if key.is_empty() => Some(path.display().to_string()),
        (_, Some(Source::File(path))) => Some(format!("{key} in {}", path.display())),
        (Some(m), _) if m.name.contains(ENVIRONMENT) && !e.path.is_empty() => {
            let profile = e.profile.clone().unwrap_or_default();
            // A variable holds a whole value: `ROCKET_SHUTDOWN='{grace=x}'`
            // fails at `shutdown.grace`.
            let var = variable(m, &profile, &e.path[0]);
            Some(match e.path.len() {
                1 => var,
                _ => format!("{var} ({key})"),
            })
        }
        _ if !key.is_empty() => Some(key),
        _ => None,
    }
}

/// `simplechat config`: each key, its effective value and where it came from.
pub fn describe(config: &Config) -> String {
    let settings = &config.settings;
    let from = |key: &str| source(&config.figment, key);
    let set = |key: &str, value: String, from: String| format!("{key} = {value}  # from {from}\n");
    let note = |key: &str, note: &str| format!("# {key} {note}\n");
    let quoted = |p: &Path| format!("\"{}\"", p.display());
    // Files as the server opens them ([`absolute`]), like the data
    // directory: the same whatever the reader's working directory.
    let opened = |p: &Path| quoted(&absolute(p));
    let mut out = String::new();
    out += &set(
        "address",
        format!("\"{}\"", config.address),
        from("address"),
    );
    out += &set("port", config.port.to_string(), from("port"));
    out += &match (&config.store, &settings.mongodb_uri) {
        (StoreConfig::Embedded { .. }, _) => note("mongodb_uri", "unset: embedded store"),
        (StoreConfig::MongoDb { uri, .. }, Some(_)) => set(
            "mongodb_uri",
            format!("\"{}\"", redact_uri(uri)),
            from("mongodb_uri"),
        ),
        (StoreConfig::MongoDb { uri, .. }, None) => set(
            "mongodb_uri",
            format!("\"{}\"", redact_uri(uri)),
            "mongodb_uri_file".into(),
        ),
    };
    out += &match &settings.mongodb_uri_file {
        Some(path) => set("mongodb_uri_file", opened(path), from("mongodb_uri_file")),
        None => note("mongodb_uri_file", "unset"),
    };
    out += &match &settings.mongodb_password_file {
        Some(path) => set(
            "mongodb_password_file",
            opened(path),
            from("mongodb_password_file"),
        ),
        None => note("mongodb_password_file", "unset"),
    };
    out += &match &config.store {
        StoreConfig::Embedded { .. } => note("database", "unused: embedded store"),
        StoreConfig::MongoDb { uri, database } => {
            let from = match (&settings.database, uri_database(uri)) {
                (Some(_), _) => from("database"),
                (None, Some(_)) => "the URI's path".into(),
                (None, None) => "default".into(),
            };
            set("database", format!("\"{database}\""), from)
        }
    };
    out += &match &config.store {
        // As the startup line names it: the directory the server uses,
        // whatever the reader's working directory.
        StoreConfig::Embedded { data_dir, .. } => {
            set("data_dir", opened(data_dir), from("data_dir"))
        }
        StoreConfig::MongoDb { .. } => note("data_dir", "unused: MongoDB store"),
    };
    out += &match &config.store {
        StoreConfig::Embedded { .. } => set(
            "cache_size_mib",
            settings.cache_size_mib.to_string(),
            from("cache_size_mib"),
        ),
        StoreConfig::MongoDb { .. } => note("cache_size_mib", "unused: MongoDB store"),
    };
    out += &match &config.templates {
        Templates::Configured(dir) => set("template_dir", opened(dir), from("template_dir")),
        Templates::Bundle(dir) => note(
            "template_dir",
            &format!("unset: the bundle's templates in {}", dir.display()),
        ),
        Templates::BuiltIn => note("template_dir", "unset: built-in templates"),
    };
    out += &set(
        "write_timeout_secs",
        config.write_timeout.as_secs().to_string(),
        from("write_timeout_secs"),
    );
    out += &set(
        "heartbeat_secs",
        config.heartbeat.as_secs().to_string(),
        from("heartbeat_secs"),
    );
    out += &set(
        "header_timeout_secs",
        settings.header_timeout_secs.to_string(),
        from("header_timeout_secs"),
    );
    out += &set(
        "max_connections",
        settings.max_connections.to_string(),
        from("max_connections"),
    );
    out += &set(
        "max_connections_per_client",
        settings.max_connections_per_client.to_string(),
        from("max_connections_per_client"),
    );
    out += &set(
        "secure_cookie",
        settings.secure_cookie.to_string(),
        from("secure_cookie"),
    );
    out += &set(
        "trust_proxy_headers",
        settings.trust_proxy_headers.to_string(),
        from("trust_proxy_headers"),
    );
    out += &match &settings.allowed_hosts {
        None if config.allowed_hosts.answers_any() => note(
            "allowed_hosts",
            "unset: any host, as address is not loopback",
        ),
        None => note(
            "allowed_hosts",
            "unset: localhost and IP addresses only, as address is loopback",
        ),
        Some(hosts) => set("allowed_hosts", format!("{hosts:?}"), from("allowed_hosts")),
    };
    out += ROCKET_HEADING;
    let rocket = &config.rocket;
    out += &set(
        "log_level",
        format!("\"{}\"", rocket.log_level),
        from("log_level"),
    );
    out += &match rocket.ident.as_str() {
        Some(ident) => set("ident", format!("{ident:?}"), from("ident")),
        None => set("ident", "false".into(), from("ident")),
    };
    let shutdown = &rocket.shutdown;
    out += &set(
        "shutdown.ctrlc",
        shutdown.ctrlc.to_string(),
        from("shutdown.ctrlc"),
    );
    // As they are written: lower case, without `SIG`.
    let mut signals: Vec<String> = shutdown
        .signals
        .iter()
        .map(|sig| sig.to_string().trim_start_matches("SIG").to_lowercase())
        .collect();
    signals.sort();
    out += &set(
        "shutdown.signals",
        format!("{signals:?}"),
        from("shutdown.signals"),
    );
    out += &set(
        "shutdown.grace",
        shutdown.grace.to_string(),
        from("shutdown.grace"),
    );
    out += &set(
        "shutdown.mercy",
        shutdown.mercy.to_string(),
        from("shutdown.mercy"),
    );
    out
}

/// The line of `simplechat config` after simplechat's keys, before the
/// Rocket settings the server uses ([`ROCKET_USED`]).
pub const ROCKET_HEADING: &str = "# Rocket's settings the server uses:\n";

/// `path` made absolute against the working directory, as the server
/// opens it (`.` components dropped, links and `..` kept:
/// [`std::path::absolute`]); as written when the working directory cannot
/// be read.
pub fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The store, for the startup line: where the messages are kept.
pub fn describe_store(store: &StoreConfig) -> String {
    match store {
        // Absolute: the directory to look in (or remove) whatever the
        // reader's working directory.
        StoreConfig::Embedded { data_dir, .. } => {
            format!("embedded at {}", absolute(data_dir).display())
        }
        StoreConfig::MongoDb { uri, database } => {
            let set = crate::mongo::uri::parse(uri)
                .ok()
                .and_then(|c| c.replica_set);
            let kind = match set {
                Some(name) => format!("MongoDB replica set {name}"),
                None => "MongoDB".to_owned(),
            };
            format!("{kind}, database {database} ({})", redact_uri(uri))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rocket_never_paints_colours_the_logger_would_escape() {
        let rocket_layers = Figment::from(rocket::Config::default()).merge(("cli_colors", true));
        let asked = layered(rocket_layers, Path::new("no-such-simplechat.toml"));
        let config = Config::from_figment(asked).unwrap();
        let (figment, _templates) = config.rocket_figment().unwrap();
        let rocket: rocket::Config = figment.extract().unwrap();
        assert!(!rocket.cli_colors);
    }

    #[test]
    fn the_built_in_templates_are_the_ones_the_app_renders() {
        let names: Vec<_> = BUILT_IN_TEMPLATES.iter().map(|(name, _)| *name).collect();
        assert_eq!(names, TEMPLATES);
    }

    /// A setting added to `Settings` must be listed (for `--help` and
    /// `SIMPLECHAT_<KEY>`) and printed by `config`, in one order.
    #[test]
    fn every_setting_is_a_key_and_config_prints_each_in_order() {
        let fields = match figment::value::Value::serialize(Settings::default()) {
            Ok(figment::value::Value::Dict(_, dict)) => dict.into_keys().collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        let mut keys: Vec<String> = KEYS.iter().map(|k| k.to_string()).collect();
        keys.sort();
        assert_eq!(fields, keys, "Settings and KEYS");

        let config = Config::from_figment(layered(
            Figment::from(rocket::Config::debug_default()),
            Path::new("/nonexistent/simplechat.toml"),
        ))
        .unwrap();
        let described = describe(&config);
        let (own, rocket) = described.split_once(ROCKET_HEADING).unwrap();
        let rocket: BTreeSet<&str> = rocket
            .lines()
            .filter_map(|l| l.split(['.', ' ']).next())
            .collect();
        assert_eq!(rocket, ROCKET_USED.iter().copied().collect());
        let printed: Vec<&str> = own
            .lines()
            .map(|l| l.trim_start_matches("# "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        assert_eq!(printed, KEYS);
    }

    /// Each of Rocket's keys is either simplechat's too, used, or said to
    /// have no effect: a key a newer Rocket adds fails here until sorted.
    #[test]
    fn every_rocket_key_is_used_or_said_to_have_no_effect() {
        let mut sorted: Vec<&str> = ["address", "port"]
            .into_iter()
            .chain(ROCKET_USED.iter().copied())
            .chain(ROCKET_UNUSED.iter().map(|(key, _)| *key))
            .collect();
        sorted.sort();
        let rocket: Vec<&str> = ROCKET_KEYS.iter().map(String::as_str).collect();
        assert_eq!(rocket, sorted);
    }

    #[test]
    fn a_mistyped_variable_is_named_with_the_setting_meant() {
        let warn = |name: &str| unknown_variable_warnings([name.to_owned()].into_iter());
        for (typo, meant) in [
            ("SIMPLECHAT_PROT", "SIMPLECHAT_PORT"),
            ("SIMPLECHAT_ADRESS", "SIMPLECHAT_ADDRESS"),
            ("SIMPLECHAT_MONGO_URI", "SIMPLECHAT_MONGODB_URI"),
            ("SIMPLECHAT_DATADIR", "SIMPLECHAT_DATA_DIR"),
            ("SIMPLECHAT_TEMPLATES_DIR", "SIMPLECHAT_TEMPLATE_DIR"),
            ("SIMPLECHAT_WRITE_TIMEOUT", "SIMPLECHAT_WRITE_TIMEOUT_SECS"),
            ("SIMPLECHAT_MAX_CONNECTION", "SIMPLECHAT_MAX_CONNECTIONS"),
            ("SIMPLECHAT_ALLOWED_HOST", "SIMPLECHAT_ALLOWED_HOSTS"),
            ("SIMPLECHAT_CONFG", "SIMPLECHAT_CONFIG"),
        ] {
            assert_eq!(
                warn(typo),
                [format!(
                    "{typo} is not a setting and is ignored; did you mean {meant}?"
                )]
            );
        }
        for (typo, meant) in [
            ("ROCKET_PROT", "ROCKET_PORT"),
            ("ROCKET_LOG_LEVLE", "ROCKET_LOG_LEVEL"),
            ("ROCKET_SHUTDWON", "ROCKET_SHUTDOWN"),
            ("ROCKET_DATADIR", "SIMPLECHAT_DATA_DIR"),
        ] {
            assert_eq!(
                warn(typo),
                [format!(
                    "{typo} is not a setting and is ignored; did you mean {meant}?"
                )]
            );
        }
        assert_eq!(
            warn("SIMPLECHAT_XYZZY"),
            ["SIMPLECHAT_XYZZY is not a setting and is ignored (see simplechat --help)"]
        );
        for quiet in [
            "SIMPLECHAT_PORT",
            "simplechat_port",
            "SIMPLECHAT_CONFIG",
            "SIMPLECHAT_TEST_MONGOD",
            "SIMPLECHAT_REQUIRE_TMPFS",
            "SIMPLECHAT_BENCH_SERVER",
            "SIMPLECHAT_CHROMEDRIVER",
            "ROCKET_PORT",
            "ROCKET_LOG_LEVEL",
            "ROCKET_PROFILE",
            "ROCKET_DATA_DIR",
            "ROCKET_KEEP_ALIVE",
            "ROCKET_TLS",
            "SIMPLECHATPORT",
        ] {
            assert_eq!(warn(quiet), Vec::<String>::new(), "{quiet}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn only_names_with_a_process_and_a_uuid_are_template_dirs() {
        let uuid = "0190f0c4-9b1e-7cc2-8a4f-4b5e3f6a7d21";
        let pid = |name: &str| template_dir_pid(name).map(|p| p.as_raw_nonzero().get());
        assert_eq!(pid(&format!("simplechat-templates-42-{uuid}")), Some(42));
        for other in [
            format!("simplechat-templates-{uuid}"),
            format!("simplechat-templates-0-{uuid}"),
            format!("simplechat-templates--42-{uuid}"),
            format!("simplechat-templates-+42-{uuid}"),
            format!("simplechat-templates-99999999999-{uuid}"),
            format!("simplechat-templates-42-{}", uuid.replace('-', "")),
            format!("simplechat-templates-42-{{{uuid}}}"),
            "simplechat-templates-42-".to_owned(),
            format!("other-42-{uuid}"),
        ] {
            assert_eq!(pid(&other), None, "{other}");
        }
    }

    #[test]
    fn database_comes_from_key_then_uri_path_then_default() {
        let mut s = Settings {
            mongodb_uri: Some("mongodb://h1:27017/messages?replicaSet=rs".into()),
            ..Settings::default()
        };
        let db = |s: &Settings| match store_config(s, &|k| k.to_owned()).unwrap() {
            StoreConfig::MongoDb { database, .. } => database,
            other => panic!("{other:?}"),
        };
        assert_eq!(db(&s), "messages");
        s.database = Some("chat".into());
        assert_eq!(db(&s), "chat");
        s.database = None;
        s.mongodb_uri = Some("mongodb://h1:27017".into());
        assert_eq!(db(&s), "simplechat");
    }

    #[test]
    fn bad_uri_is_one_clear_error_without_password() {
        for uri in [
            "mongodb://u:hunter2@h1:notaport/db",
            "mongodb://u:hunt/er2@h1/db",
            "mongodb://u:hunt?er2@h1/db",
        ] {
            let s = Settings {
                mongodb_uri: Some(uri.into()),
                ..Settings::default()
            };
            let err = store_config(&s, &|k| k.to_owned()).unwrap_err().0;
            assert!(err.starts_with("bad mongodb_uri"), "{err}");
            assert!(!err.contains("hunter2") && !err.contains("er2"), "{err}");
            assert!(!err.contains('\n'));
        }
    }
}
