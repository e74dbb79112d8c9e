//! `replset init --create-user`: the app's database user, created once and
//! kept converged with the password file, whoever runs it and however often.
//!
//! 1. The app's own credentials are tried first: when they authenticate and
//!    the user holds exactly the roles asked for, nothing changes (a rerun
//!    or a reboot needs no privilege).
//! 2. Otherwise `createUser` over init's own connection to the first member:
//!    on a fresh set with access control, MongoDB's localhost exception lets
//!    that loopback connection create the first user
//!    (<https://www.mongodb.com/docs/manual/core/localhost-exception/>).
//! 3. When the exception is over (a user exists) and the password file
//!    changed, the members' key file authenticates as `__system@local`,
//!    which may `updateUser`.
//!
//! A user that exists with other roles is never changed: that is a decision
//! for a person, and the error says so.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use mongodb::bson::{doc, Bson, Document};
use mongodb::error::Error;
use mongodb::options::{AuthMechanism, ClientOptions, Credential, ServerAddress};
use tokio::time::Instant;

use crate::mongo::errors::codes::UNAUTHORIZED;
use crate::mongo::errors::{command_code, Signals};
use crate::mongo::{connect, reason, Connection, Purpose};
use crate::retry::{poll_until, Check, PollError};

/// `Location51003`: `createUser` for a user that exists.
const USER_EXISTS: i32 = 51003;
/// `NotWritablePrimary`: user writes need the primary.
const NOT_WRITABLE_PRIMARY: i32 = 10107;

/// The user `replset init` keeps: name, database, password, roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRequest {
    /// The user's name (`--create-user`).
    pub name: String,
    /// The database the user is defined in (its `authSource`), `admin`.
    pub db: String,
    /// The file holding its password (`--password-file`).
    pub password_file: PathBuf,
    /// `ROLE@DB` each (`--role`), e.g. `readWrite@simplechat`.
    pub roles: Vec<String>,
    /// The members' key file (`--key-file`), to change a password once the
    /// localhost exception is over.
    pub key_file: Option<PathBuf>,
}

/// A role as MongoDB names it: `{role, db}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Role {
    role: String,
    db: String,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.role, self.db)
    }
}

fn parse_roles(roles: &[String], user_db: &str) -> Result<BTreeSet<Role>, String> {
    if roles.is_empty() {
        return Err("--create-user needs at least one --role ROLE@DB".into());
    }
    roles
        .iter()
        .map(|r| {
            let (role, db) = r.split_once('@').unwrap_or((r, user_db));
            if role.is_empty() || db.is_empty() || db.contains(['/', ' ', '.', '@']) {
                return Err(format!("--role {r:?} must be ROLE@DATABASE"));
            }
            Ok(Role {
                role: role.to_owned(),
                db: db.to_owned(),
            })
        })
        .collect()
}

fn list(roles: &BTreeSet<Role>) -> String {
    roles
        .iter()
        .map(Role::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn roles_bson(roles: &BTreeSet<Role>) -> Vec<Bson> {
    roles
        .iter()
        .map(|r| Bson::Document(doc! { "role": &r.role, "db": &r.db }))
        .collect()
}

/// Everything read from files before any connection is made, so that a
/// missing file fails at once.
pub struct Prepared {
    request: UserRequest,
    roles: BTreeSet<Role>,
    password: String,
    /// The key, whitespace removed as mongod reads key files.
    key: Option<String>,
}

/// The members' key as mongod reads a key file: its characters without
/// white space (<https://www.mongodb.com/docs/manual/core/security-internal-authentication/#keyfiles>).
/// Errors: an unreadable or empty file, in one line.
pub fn read_key_file(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the key file {}: {e}", path.display()))?;
    let key: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    if key.is_empty() {
        return Err(format!("the key file {} is empty", path.display()));
    }
    Ok(key)
}

/// Checks the request and reads its files. Errors are one line and never
/// quote a file's content.
pub fn prepare(request: &UserRequest) -> Result<Prepared, String> {
    crate::mongo::uri::check_user_name(&request.name)
        .map_err(|why| format!("--create-user: {why}; nothing changed"))?;
    if request.name.is_empty() || request.name.contains(char::is_control) {
        return Err("--create-user needs a user name".into());
    }
    let roles = parse_roles(&request.roles, &request.db)?;
    let password = crate::mongo::uri::read_password_file(&request.password_file)?;
    let key = request.key_file.as_deref().map(read_key_file).transpose()?;
    Ok(Prepared {
        request: request.clone(),
        roles,
        password,
        key,
    })
}

/// A client for the whole set authenticated as `user@source`.
fn client_as(
    base: &ClientOptions,
    set: &str,
    hosts: &[String],
    user: &str,
    source: &str,
    password: &str,
) -> Result<Connection, String> {
    let mut o = base.clone();
    o.hosts = hosts
        .iter()
        .map(|h| ServerAddress::parse(h).map_err(|e| format!("member {h}: {e}")))
        .collect::<Result<_, _>>()?;
    o.repl_set_name = Some(set.to_owned());
    o.direct_connection = None;
    o.credential = Some(
        Credential::builder()
            .username(user.to_owned())
            .password(password.to_owned())
            .source(source.to_owned())
            .mechanism(AuthMechanism::ScramSha256)
            .build(),
    );
    let login = crate::mongo::Login {
        secret: Some(password.to_owned()),
        user_database: None,
    };
    connect(o, login, Purpose::Store)
}

async fn close(conn: Connection) {
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        conn.client.shutdown().immediate(true),
    )
    .await;
}

/// What `usersInfo` says of the user: `None` when it does not exist.
async fn roles_of(conn: &Connection, p: &Prepared) -> Result<Option<BTreeSet<Role>>, Error> {
    let reply = conn
        .client
        .database(&p.request.db)
        .run_command(doc! { "usersInfo": { "user": &p.request.name, "db": &p.request.db } })
        .await?;
    Ok(parse_users_info(&reply))
}

fn parse_users_info(reply: &Document) -> Option<BTreeSet<Role>> {
    let user = reply.get_array("users").ok()?.first()?.as_document()?;
    Some(
        user.get_array("roles")
            .map(|roles| {
                roles
                    .iter()
                    .filter_map(Bson::as_document)
                    .filter_map(|r| {
                        Some(Role {
                            role: r.get_str("role").ok()?.to_owned(),
                            db: r.get_str("db").ok()?.to_owned(),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default(),
    )
}

fn other_roles(p: &Prepared, have: &BTreeSet<Role>) -> String {
    format!(
        "user {}@{} exists with roles {}, not {} as asked; nothing was changed. Change its roles \
         yourself (updateUser) or ask for the roles it has",
        p.request.name,
        p.request.db,
        if have.is_empty() {
            "(none)".to_owned()
        } else {
            list(have)
        },
        list(&p.roles)
    )
}

fn wrong_password(p: &Prepared) -> String {
    format!(
        "the password in {} does not authenticate user {}@{} (authentication failed), and this \
         run may not set it: the localhost exception is over (a user exists). Pass --key-file \
         with the members' key file to set the password, or fix the password file",
        p.request.password_file.display(),
        p.request.name,
        p.request.db
    )
}

/// What one attempt found.
enum Outcome {
    Done(String),
    /// The user's own credentials were refused.
    Refused,
}

/// Step 1: the app's own credentials.
async fn as_the_user(p: &Prepared, conn: &Connection) -> Check<Outcome> {
    match roles_of(conn, p).await {
        Ok(Some(have)) if have == p.roles => Check::Done(Outcome::Done(format!(
            "user {}@{} exists with roles {}; nothing changed",
            p.request.name,
            p.request.db,
            list(&have)
        ))),
        Ok(Some(have)) => Check::Failed(other_roles(p, &have)),
        Ok(None) => Check::Failed(format!(
            "user {}@{} authenticated but usersInfo does not list it",
            p.request.name, p.request.db
        )),
        Err(e) if Signals::of(&e).authentication => Check::Done(Outcome::Refused),
        Err(e) => Check::NotYet(reason(&e, conn.secret.as_deref())),
    }
}

/// Steps 2 and 3 on a connection that may manage users (or, under the
/// localhost exception, create the first one): create the user, or, if it
/// exists with the roles asked for, set its password. `Done(None)`: this
/// connection may not (Unauthorized), or, with `defer_off_primary`, it
/// reaches a member that is not primary (the key file's connection to the
/// whole set then does it).
async fn converge(
    p: &Prepared,
    conn: &Connection,
    how: &str,
    defer_off_primary: bool,
) -> Check<Option<String>> {
    let db = conn.client.database(&p.request.db);
    let who = format!("{}@{}", p.request.name, p.request.db);
    let created = db
        .run_command(doc! {
            "createUser": &p.request.name,
            "pwd": &p.password,
            "roles": roles_bson(&p.roles),
            "mechanisms": ["SCRAM-SHA-256"],
        })
        .await;
    let scrubbed = |e: &Error| reason(e, Some(&p.password));
    match created {
        Ok(_) => {
            return Check::Done(Some(format!(
                "created user {who} with roles {} ({how})",
                list(&p.roles)
            )))
        }
        Err(e) if command_code(&e) == Some(UNAUTHORIZED) => return Check::Done(None),
        Err(e) if command_code(&e) == Some(USER_EXISTS) => {}
        Err(e) if command_code(&e) == Some(NOT_WRITABLE_PRIMARY) && defer_off_primary => {
            return Check::Done(None)
        }
        Err(e) if command_code(&e) == Some(NOT_WRITABLE_PRIMARY) => {
            return Check::NotYet(format!(
                "creating the user needs the primary: {}",
                scrubbed(&e)
            ))
        }
        Err(e) if Signals::of(&e).authentication => {
            return Check::Failed(format!(
                "the key file does not authenticate __system@local (is it the members' key \
                 file?): {}",
                scrubbed(&e)
            ))
        }
        Err(e) => return Check::NotYet(scrubbed(&e)),
    }
    // The user exists and this connection may manage users.
    let have = match roles_of(conn, p).await {
        Ok(Some(have)) => have,
        Ok(None) => return Check::NotYet(format!("user {who} exists but is not listed yet")),
        Err(e) if command_code(&e) == Some(UNAUTHORIZED) => return Check::Done(None),
        Err(e) => return Check::NotYet(scrubbed(&e)),
    };
    if have != p.roles {
        return Check::Failed(other_roles(p, &have));
    }
    match db
        .run_command(doc! { "updateUser": &p.request.name, "pwd": &p.password })
        .await
    {
        Ok(_) => Check::Done(Some(format!(
            "set the password of user {who} from {} ({how})",
            p.request.password_file.display()
        ))),
        Err(e) if command_code(&e) == Some(UNAUTHORIZED) => Check::Done(None),
        Err(e) => Check::NotYet(scrubbed(&e)),
    }
}

fn timed_out(what: &'static str, wait: Duration) -> impl Fn(PollError) -> String {
    move |e| match e {
        PollError::Failed(why) => why,
        PollError::TimedOut(last) => format!(
            "{what} did not succeed within {} s: {}",
            wait.as_secs(),
            last.as_deref().unwrap_or("no answer")
        ),
    }
}

/// Makes the user exist with the password file's password and the roles
/// asked for. `first` is init's own (unauthenticated, or `--uri`)
/// connection to the first member, which has a primary by now. Returns a
/// one-line summary; errors are one line and never quote the password.
pub async fn ensure(
    p: &Prepared,
    base: &ClientOptions,
    set: &str,
    hosts: &[String],
    first: &Connection,
    wait: Duration,
    poll: Duration,
) -> Result<String, String> {
    let user = &p.request;
    let own = client_as(base, set, hosts, &user.name, &user.db, &p.password)?;
    let deadline = Instant::now() + wait;
    let checked = poll_until(deadline, poll, || as_the_user(p, &own)).await;
    close(own).await;
    match checked.map_err(timed_out("checking the user", wait))? {
        Outcome::Done(summary) => return Ok(summary),
        Outcome::Refused => {}
    }
    let deadline = Instant::now() + wait;
    let local = poll_until(deadline, poll, || {
        converge(p, first, "through init's own connection", p.key.is_some())
    })
    .await
    .map_err(timed_out("creating the user", wait))?;
    if let Some(summary) = local {
        return Ok(summary);
    }
    // Without the localhost exception (a user exists) or off the primary:
    // the members' key file.
    let Some(key) = &p.key else {
        return Err(wrong_password(p));
    };
    let system = client_as(base, set, hosts, "__system", "local", key)?;
    let deadline = Instant::now() + wait;
    let result = poll_until(deadline, poll, || {
        converge(p, &system, "authenticated with the key file", false)
    })
    .await;
    close(system).await;
    match result.map_err(timed_out("setting the password", wait))? {
        Some(summary) => Ok(summary),
        None => Err(
            "__system@local may not manage users here; is access control set up as expected?"
                .to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_role_at_database() {
        let roles = parse_roles(
            &["readWrite@simplechat".into(), "clusterMonitor".into()],
            "admin",
        )
        .unwrap();
        assert_eq!(list(&roles), "clusterMonitor@admin, readWrite@simplechat");
        assert!(parse_roles(&[], "admin").is_err());
        assert!(parse_roles(&["@x".into()], "admin").is_err());
        assert!(parse_roles(&["r@a.b".into()], "admin").is_err());
    }

    #[test]
    fn users_info_replies_are_read() {
        let reply = doc! { "users": [{ "_id": "admin.app", "user": "app", "db": "admin",
        "roles": [{ "role": "readWrite", "db": "chat" }] }], "ok": 1 };
        let roles = parse_users_info(&reply).unwrap();
        assert_eq!(list(&roles), "readWrite@chat");
        assert_eq!(parse_users_info(&doc! { "users": [], "ok": 1 }), None);
    }

    #[test]
    fn missing_files_fail_before_connecting_without_content() {
        let dir = tempfile::tempdir().unwrap();
        let mut request = UserRequest {
            name: "app".into(),
            db: "admin".into(),
            password_file: dir.path().join("missing"),
            roles: vec!["readWrite@chat".into()],
            key_file: None,
        };
        let err = prepare(&request).err().unwrap();
        assert!(err.starts_with("cannot read the password file"), "{err}");
        std::fs::write(dir.path().join("pw"), "hunter22\n").unwrap();
        request.password_file = dir.path().join("pw");
        request.key_file = Some(dir.path().join("nokey"));
        let err = prepare(&request).err().unwrap();
        assert!(err.starts_with("cannot read the key file"), "{err}");
        std::fs::write(dir.path().join("key"), "abc def\nghi\n").unwrap();
        request.key_file = Some(dir.path().join("key"));
        let p = prepare(&request).unwrap();
        assert_eq!(p.password, "hunter22");
        assert_eq!(p.key.as_deref(), Some("abcdefghi"));
    }
}
