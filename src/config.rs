//! Every setting simplechat has, where it comes from, and its checks.
//!
//! Layers, later wins: built-in defaults, Rocket's own (`Rocket.toml`,
//! `ROCKET_*`), the TOML file (`SIMPLECHAT_CONFIG`, else `./simplechat.toml`),
//! the lab's `MONGO_URI`, then `SIMPLECHAT_<KEY>`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::{Figment, Profile};
use serde::{Deserialize, Serialize};

use crate::mongo::uri::redact as redact_uri;
use crate::text::one_line;

pub const KEYS: &[&str] = &[
    "address",
    "port",
    "mongodb_uri",
    "mongodb_uri_file",
    "database",
    "data_dir",
    "template_dir",
    "write_timeout_secs",
    "heartbeat_secs",
];

/// The page templates the app renders; all must be in `template_dir`.
pub const TEMPLATES: &[&str] = &["index.html.tera", "messages.html.tera"];

/// The settings as written by the user, before files are read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    pub address: IpAddr,
    pub port: u16,
    pub mongodb_uri: Option<String>,
    pub mongodb_uri_file: Option<PathBuf>,
    pub database: Option<String>,
    pub data_dir: PathBuf,
    pub template_dir: Option<PathBuf>,
    pub write_timeout_secs: u64,
    pub heartbeat_secs: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            address: IpAddr::from([127, 0, 0, 1]),
            // The lab's gunicorn listened on 8000.
            port: 8000,
            mongodb_uri: None,
            mongodb_uri_file: None,
            database: None,
            data_dir: PathBuf::from("./simplechat-data"),
            template_dir: None,
            write_timeout_secs: 30,
            heartbeat_secs: 15,
        }
    }
}

/// Which store the settings select.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    Embedded { data_dir: PathBuf },
    MongoDb { uri: String, database: String },
}

/// The effective configuration: settings checked and resolved.
#[derive(Debug, Clone)]
pub struct Config {
    pub address: IpAddr,
    pub port: u16,
    pub store: StoreConfig,
    pub template_dir: PathBuf,
    pub write_timeout: Duration,
    /// How often an idle event stream gets a heartbeat comment.
    pub heartbeat: Duration,
    /// The settings as the layers gave them, for `simplechat config`.
    pub settings: Settings,
    /// The layers, for Rocket's own settings and for `simplechat config`.
    pub figment: Figment,
}

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
pub fn layered(base: Figment, file: &Path) -> Figment {
    // Global profile: Rocket selects a debug/release profile, and values in
    // the global profile win over it, so these layers do what their order says.
    base.join(Serialized::defaults(Settings::default()))
        .merge(Toml::file(file).profile(Profile::Global))
        .merge(
            Env::raw()
                .only(&["MONGO_URI"])
                .map(|_| "mongodb_uri".into())
                .global(),
        )
        .merge(Env::prefixed("SIMPLECHAT_").only(KEYS).global())
}

impl Config {
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

    pub fn from_figment(figment: Figment) -> Result<Config, ConfigError> {
        let settings: Settings = figment
            .extract()
            .map_err(|e| ConfigError(format!("bad configuration: {}", one_line(&e.to_string()))))?;
        let store = store_config(&settings)?;
        let template_dir = resolve_template_dir(settings.template_dir.as_deref())?;
        if settings.write_timeout_secs == 0 {
            return Err(ConfigError("write_timeout_secs must be at least 1".into()));
        }
        if settings.heartbeat_secs == 0 {
            return Err(ConfigError("heartbeat_secs must be at least 1".into()));
        }
        // rocket_dyn_templates reads `template_dir` from Rocket's figment.
        let figment = figment
            .merge(Serialized::default("template_dir", &template_dir).profile(Profile::Global));
        Ok(Config {
            address: settings.address,
            port: settings.port,
            store,
            template_dir,
            write_timeout: Duration::from_secs(settings.write_timeout_secs),
            heartbeat: Duration::from_secs(settings.heartbeat_secs),
            settings,
            figment,
        })
    }
}

fn store_config(s: &Settings) -> Result<StoreConfig, ConfigError> {
    let uri = match (&s.mongodb_uri, &s.mongodb_uri_file) {
        (Some(_), Some(_)) => {
            return Err(ConfigError(
                "set only one of mongodb_uri (or MONGO_URI) and mongodb_uri_file".into(),
            ))
        }
        (Some(uri), None) => Some(uri.trim().to_owned()),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| {
                    ConfigError(format!(
                        "cannot read mongodb_uri_file {}: {e}",
                        path.display()
                    ))
                })?
                .trim()
                .to_owned(),
        ),
        (None, None) => None,
    };
    let Some(uri) = uri.filter(|u| !u.is_empty()) else {
        return Ok(StoreConfig::Embedded {
            data_dir: s.data_dir.clone(),
        });
    };
    let parsed = crate::mongo::uri::parse(&uri)
        .map_err(|why| ConfigError(format!("bad mongodb_uri {}: {why}", redact_uri(&uri))))?;
    let database = s
        .database
        .clone()
        .or(parsed.default_database.clone())
        .unwrap_or_else(|| "simplechat".to_owned());
    Ok(StoreConfig::MongoDb { uri, database })
}

/// The bundle installs templates at `<prefix>/share/simplechat/templates`
/// beside `<prefix>/bin/simplechat`; a build from source uses the checkout's.
fn resolve_template_dir(configured: Option<&Path>) -> Result<PathBuf, ConfigError> {
    let dir = match configured {
        Some(dir) => dir.to_path_buf(),
        None => default_template_dir(),
    };
    for template in TEMPLATES {
        if !dir.join(template).is_file() {
            return Err(ConfigError(format!(
                "template directory {} has no {template} (set template_dir)",
                dir.display()
            )));
        }
    }
    Ok(dir)
}

fn default_template_dir() -> PathBuf {
    let bundled = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.canonicalize().ok())
        .and_then(|exe| Some(exe.parent()?.parent()?.join("share/simplechat/templates")));
    match bundled {
        Some(dir) if dir.is_dir() => dir,
        _ => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/templates")),
    }
}

/// `simplechat config`: each key, its effective value and where it came from.
pub fn describe(config: &Config) -> String {
    let mut out = String::new();
    let settings = &config.settings;
    let value = |key: &str| -> String {
        match key {
            "address" => format!("\"{}\"", config.address),
            "port" => config.port.to_string(),
            "mongodb_uri" => match &config.store {
                StoreConfig::MongoDb { uri, .. } => format!("\"{}\"", redact_uri(uri)),
                StoreConfig::Embedded { .. } => "# unset: embedded store".into(),
            },
            "mongodb_uri_file" => match &settings.mongodb_uri_file {
                Some(p) => format!("\"{}\"", p.display()),
                None => "# unset".into(),
            },
            "database" => match &config.store {
                StoreConfig::MongoDb { database, .. } => format!("\"{database}\""),
                StoreConfig::Embedded { .. } => "# unused: embedded store".into(),
            },
            "data_dir" => format!("\"{}\"", settings.data_dir.display()),
            "template_dir" => format!("\"{}\"", config.template_dir.display()),
            "write_timeout_secs" => config.write_timeout.as_secs().to_string(),
            "heartbeat_secs" => config.heartbeat.as_secs().to_string(),
            _ => String::new(),
        }
    };
    for key in KEYS {
        let source = config
            .figment
            .find_metadata(key)
            .map(|m| match &m.source {
                Some(src) => format!("{} {src}", m.name),
                None if m.name.contains("environment") => match m.name.split('`').nth(1) {
                    Some(prefix) => format!("{prefix}{}", key.to_uppercase()),
                    None => "MONGO_URI".to_string(),
                },
                // Rocket's and simplechat's built-in values.
                None => "default".to_string(),
            })
            .unwrap_or_else(|| "default".into());
        let v = value(key);
        if v.starts_with('#') {
            out.push_str(&format!("# {key} {}\n", v.trim_start_matches("# ")));
        } else {
            out.push_str(&format!("{key} = {v}  # from {source}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_comes_from_key_then_uri_path_then_default() {
        let mut s = Settings {
            mongodb_uri: Some("mongodb://h1:27017/messages?replicaSet=rs".into()),
            ..Settings::default()
        };
        let db = |s: &Settings| match store_config(s).unwrap() {
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
            let err = store_config(&s).unwrap_err().0;
            assert!(err.starts_with("bad mongodb_uri"), "{err}");
            assert!(!err.contains("hunter2") && !err.contains("er2"), "{err}");
            assert!(!err.contains('\n'));
        }
    }
}
