//! User management as `replset init` and an operator use it: `createUser`,
//! `updateUser` (password and roles) and `usersInfo`. Users are
//! cluster-wide and replicated at once, like the log; writes need the
//! primary, as mongod's writes to `admin.system.users` do.
//! (<https://www.mongodb.com/docs/manual/reference/command/createUser/>)

use bson::{doc, Bson, Document};

use super::args::refuse_options;
use super::{CmdResult, Ctx, Fail};
use crate::auth::scram::{self, Secrets};
use crate::auth::{Action, Builtin, Principal, Resource, RoleRef, User, Users};
use crate::error::CmdError;
use crate::state::{Role, State};

/// Options mongod has that nothing here sends.
const UNSUPPORTED: &[&str] = &["customData", "authenticationRestrictions"];

fn user_name(body: &Document, cmd: &str) -> Result<String, CmdError> {
    match body.get(cmd) {
        Some(Bson::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err(CmdError::bad_value(format!(
            "{cmd} must be a non-empty user name"
        ))),
    }
}

/// `roles: ["name" | {role, db}, ...]`; a bare name is a role of `db`.
fn parse_roles(value: &Bson, db: &str) -> Result<Vec<RoleRef>, CmdError> {
    let Bson::Array(items) = value else {
        return Err(CmdError::bad_value("\"roles\" must be an array"));
    };
    let mut roles = Vec::new();
    for item in items {
        let (name, role_db) = match item {
            Bson::String(name) => (name.as_str(), db),
            Bson::Document(d) => match (d.get_str("role"), d.get_str("db")) {
                (Ok(r), Ok(d)) => (r, d),
                _ => {
                    return Err(CmdError::bad_value(
                        "a role must be a name or {role: <name>, db: <database>}",
                    ))
                }
            },
            _ => return Err(CmdError::bad_value("a role must be a string or a document")),
        };
        let not_found = || {
            CmdError::new(
                31,
                "RoleNotFound",
                format!("Could not find role: {name}@{role_db}"),
            )
        };
        let role = Builtin::parse(name).ok_or_else(|| {
            if name.starts_with(char::is_alphabetic) {
                // A role mongod may well have: refuse loudly instead of
                // granting a guessed set of privileges.
                CmdError::bad_value(format!(
                    "role {name}@{role_db} is not supported by the simulator"
                ))
            } else {
                not_found()
            }
        })?;
        if role.admin_only() && role_db != "admin" {
            return Err(not_found());
        }
        let role = RoleRef {
            role,
            db: role_db.to_owned(),
        };
        if !roles.contains(&role) {
            roles.push(role);
        }
    }
    Ok(roles)
}

/// `mechanisms` may only name SCRAM-SHA-256; `digestPassword: false` is
/// refused for it, as by mongod.
fn check_mechanisms(body: &Document) -> Result<(), CmdError> {
    if let Some(m) = body.get("mechanisms") {
        let Bson::Array(items) = m else {
            return Err(CmdError::bad_value("mechanisms must be an array"));
        };
        if items.is_empty() {
            return Err(CmdError::bad_value("mechanisms field must not be empty"));
        }
        for item in items {
            if item.as_str() != Some(scram::MECHANISM) {
                return Err(CmdError::bad_value(format!(
                    "mechanism {item} is not supported by the simulator (SCRAM-SHA-256 only)"
                )));
            }
        }
    }
    if body.get_bool("digestPassword") == Ok(false) {
        return Err(CmdError::bad_value(
            "Use of SCRAM-SHA-256 requires undigested passwords",
        ));
    }
    Ok(())
}

fn secrets(body: &Document) -> Result<Option<Secrets>, CmdError> {
    match body.get("pwd") {
        None => Ok(None),
        Some(Bson::String(p)) if !p.is_empty() => Secrets::new(p)
            .map(Some)
            .ok_or_else(|| CmdError::bad_value("Error preparing password: SASLprep failed")),
        Some(_) => Err(CmdError::bad_value("\"pwd\" must be a non-empty string")),
    }
}

fn require_primary(st: &State, member: usize) -> Result<(), CmdError> {
    if st.role(member) == Role::Primary {
        Ok(())
    } else {
        Err(CmdError::not_writable_primary(false))
    }
}

/// `createUser` in `db`: `Location51003` if the user exists, `RoleNotFound`
/// (31) for an unknown role, `NotWritablePrimary` off the primary.
pub(super) fn create_user(ctx: &Ctx<'_>, db: &str, body: &Document) -> CmdResult {
    refuse_options(body, "createUser", UNSUPPORTED)?;
    let name = user_name(body, "createUser")?;
    check_mechanisms(body)?;
    let roles = match body.get("roles") {
        Some(r) => parse_roles(r, db)?,
        None => {
            return Err(
                CmdError::bad_value("\"createUser\" command requires a \"roles\" array").into(),
            )
        }
    };
    let secrets = secrets(body)?
        .ok_or_else(|| CmdError::bad_value("Must provide a 'pwd' field for all user documents"))?;
    let mut st = ctx.shared.lock();
    require_primary(&st, ctx.member)?;
    if st.users.get(db, &name).is_some() {
        return Err(CmdError::new(
            51003,
            "Location51003",
            format!("User \"{name}@{db}\" already exists"),
        )
        .into());
    }
    st.users.insert(
        db,
        &name,
        User {
            user_id: rand::random(),
            roles,
            secrets,
        },
    );
    Ok(doc! {"ok": 1.0})
}

/// `updateUser` in `db`: a new password and/or new roles (replacing the
/// old ones). `UserNotFound` (11) for an unknown user.
pub(super) fn update_user(ctx: &Ctx<'_>, db: &str, body: &Document) -> CmdResult {
    refuse_options(body, "updateUser", UNSUPPORTED)?;
    let name = user_name(body, "updateUser")?;
    check_mechanisms(body)?;
    let roles = body.get("roles").map(|r| parse_roles(r, db)).transpose()?;
    let secrets = secrets(body)?;
    if roles.is_none() && secrets.is_none() && !body.contains_key("mechanisms") {
        return Err(
            CmdError::bad_value("Must specify at least one field to update in updateUser").into(),
        );
    }
    let mut st = ctx.shared.lock();
    require_primary(&st, ctx.member)?;
    let Some(user) = st.users.get_mut(db, &name) else {
        return Err(CmdError::new(
            11,
            "UserNotFound",
            format!("Could not find user \"{name}\" for db \"{db}\""),
        )
        .into());
    };
    if let Some(roles) = roles {
        user.roles = roles;
    }
    if let Some(secrets) = secrets {
        user.secrets = secrets;
    }
    Ok(doc! {"ok": 1.0})
}

/// Which users `usersInfo` asks for: `(db, Some(name))` or every user of
/// `db` (`usersInfo: 1`).
fn targets(value: &Bson, db: &str) -> Result<Vec<(String, Option<String>)>, CmdError> {
    let one = |v: &Bson| -> Result<(String, Option<String>), CmdError> {
        match v {
            Bson::String(name) => Ok((db.to_owned(), Some(name.clone()))),
            Bson::Document(d) => match (d.get_str("user"), d.get_str("db")) {
                (Ok(u), Ok(d)) => Ok((d.to_owned(), Some(u.to_owned()))),
                _ => Err(CmdError::bad_value(
                    "User name must be a string or {user: <name>, db: <database>}",
                )),
            },
            _ => Err(CmdError::bad_value("usersInfo argument has the wrong type")),
        }
    };
    match value {
        Bson::Int32(1) | Bson::Int64(1) => Ok(vec![(db.to_owned(), None)]),
        Bson::Double(d) if *d == 1.0 => Ok(vec![(db.to_owned(), None)]),
        Bson::Array(items) => items.iter().map(one).collect(),
        other => Ok(vec![one(other)?]),
    }
}

/// `usersInfo`: `{users: [{_id, userId, user, db, roles, mechanisms}]}`.
/// A user may always see itself; others need `viewUser` on their database.
pub(super) fn users_info(
    ctx: &Ctx<'_>,
    db: &str,
    body: &Document,
    who: Option<Principal>,
) -> CmdResult {
    refuse_options(
        body,
        "usersInfo",
        &[
            "showCredentials",
            "showPrivileges",
            "showAuthenticationRestrictions",
            "showCustomData",
            "filter",
        ],
    )?;
    let wanted = targets(body.get("usersInfo").unwrap_or(&Bson::Null), db)?;
    let st = ctx.shared.lock();
    let may_view = |target_db: &str, name: Option<&str>| -> bool {
        if !st.users.enforced() {
            return true;
        }
        match &who {
            None => false,
            Some(
                p @ Principal::User {
                    db: own_db,
                    name: own,
                },
            ) => {
                (name == Some(own.as_str()) && own_db == target_db)
                    || st
                        .users
                        .allows(p, Action::ViewUser, &Resource::Db(target_db.to_owned()))
            }
            Some(p) => st
                .users
                .allows(p, Action::ViewUser, &Resource::Db(target_db.to_owned())),
        }
    };
    let mut users = Vec::new();
    for (target_db, name) in &wanted {
        if !may_view(target_db, name.as_deref()) {
            return Err(Fail::Cmd(CmdError::new(
                13,
                "Unauthorized",
                format!("not authorized on {db} to execute command {{ usersInfo: ... }}"),
            )));
        }
        match name {
            Some(n) => {
                if let Some(u) = st.users.get(target_db, n) {
                    users.push(Bson::Document(Users::info(target_db, n, u)));
                }
            }
            None => users.extend(
                st.users
                    .in_db(target_db)
                    .map(|(n, u)| Bson::Document(Users::info(target_db, n, u))),
            ),
        }
    }
    Ok(doc! {"users": users, "ok": 1.0})
}
