//! Access control as far as simplechat meets it: users with SCRAM-SHA-256
//! secrets and built-in roles, the member key's `__system` user, what each
//! command needs, and the localhost exception.
//!
//! mongod's model, cut down (see FIDELITY.md, "Authentication"): a command
//! needs one action on one resource; a role grants actions on its database,
//! on every database, or on the cluster; a user holds roles. Without a key
//! (`ClusterOptions::key_file`) nothing is enforced, as in a mongod without
//! `security.keyFile`/`--auth`, but users can still be created and
//! authenticate.
//! (<https://www.mongodb.com/docs/manual/reference/built-in-roles/>)

pub(crate) mod scram;

use std::collections::BTreeMap;

use bson::{doc, spec::BinarySubtype, Binary, Bson, Document};

use scram::Secrets;

/// The database and name of the internal user members authenticate as with
/// the key file (mongod's `__system@local`).
pub(crate) const SYSTEM_DB: &str = "local";
pub(crate) const SYSTEM_USER: &str = "__system";

/// What a command may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Find,
    Insert,
    Update,
    ChangeStream,
    CreateCollection,
    CreateIndex,
    DropCollection,
    DropIndex,
    DropDatabase,
    ListCollections,
    ListIndexes,
    ReplSetGetStatus,
    ReplSetGetConfig,
    ReplSetConfigure,
    CreateUser,
    UpdateUser,
    ViewUser,
}

impl Action {
    fn is_read(self) -> bool {
        matches!(
            self,
            Action::Find | Action::ChangeStream | Action::ListCollections | Action::ListIndexes
        )
    }

    fn is_read_write(self) -> bool {
        self.is_read()
            || matches!(
                self,
                Action::Insert
                    | Action::Update
                    | Action::CreateCollection
                    | Action::CreateIndex
                    | Action::DropCollection
                    | Action::DropIndex
            )
    }

    fn is_user_admin(self) -> bool {
        matches!(
            self,
            Action::CreateUser | Action::UpdateUser | Action::ViewUser
        )
    }
}

/// What an action applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Resource {
    Db(String),
    /// Every database at once (a whole-cluster change stream).
    AnyDb,
    Cluster,
}

/// The built-in roles the simulator knows. Any other role name is refused
/// loudly rather than granting a guessed set of privileges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Builtin {
    Read,
    ReadWrite,
    DbAdmin,
    UserAdmin,
    ClusterMonitor,
    ClusterManager,
    ReadAnyDatabase,
    ReadWriteAnyDatabase,
    UserAdminAnyDatabase,
    Root,
}

const ROLES: &[(&str, Builtin)] = &[
    ("read", Builtin::Read),
    ("readWrite", Builtin::ReadWrite),
    ("dbAdmin", Builtin::DbAdmin),
    ("userAdmin", Builtin::UserAdmin),
    ("clusterMonitor", Builtin::ClusterMonitor),
    ("clusterManager", Builtin::ClusterManager),
    ("readAnyDatabase", Builtin::ReadAnyDatabase),
    ("readWriteAnyDatabase", Builtin::ReadWriteAnyDatabase),
    ("userAdminAnyDatabase", Builtin::UserAdminAnyDatabase),
    ("root", Builtin::Root),
];

impl Builtin {
    pub fn parse(name: &str) -> Option<Builtin> {
        ROLES.iter().find(|(n, _)| *n == name).map(|(_, r)| *r)
    }

    pub fn name(self) -> &'static str {
        ROLES
            .iter()
            .find(|(_, r)| *r == self)
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }

    /// Roles that exist only in `admin` (mongod: `RoleNotFound` elsewhere).
    pub fn admin_only(self) -> bool {
        !matches!(
            self,
            Builtin::Read | Builtin::ReadWrite | Builtin::DbAdmin | Builtin::UserAdmin
        )
    }
}

/// A role held by a user: a built-in role in a database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RoleRef {
    pub role: Builtin,
    pub db: String,
}

impl RoleRef {
    /// Whether this role grants `action` on `resource`.
    fn grants(&self, action: Action, resource: &Resource) -> bool {
        let own_db = matches!(resource, Resource::Db(d) if *d == self.db);
        let some_db = matches!(resource, Resource::Db(_) | Resource::AnyDb);
        match self.role {
            Builtin::Read => own_db && action.is_read(),
            Builtin::ReadWrite => own_db && action.is_read_write(),
            Builtin::DbAdmin => {
                own_db
                    && matches!(
                        action,
                        Action::DropDatabase
                            | Action::DropCollection
                            | Action::CreateCollection
                            | Action::CreateIndex
                            | Action::DropIndex
                            | Action::ListCollections
                            | Action::ListIndexes
                    )
            }
            Builtin::UserAdmin => own_db && action.is_user_admin(),
            Builtin::ClusterMonitor => {
                *resource == Resource::Cluster
                    && matches!(action, Action::ReplSetGetStatus | Action::ReplSetGetConfig)
            }
            Builtin::ClusterManager => {
                *resource == Resource::Cluster
                    && matches!(
                        action,
                        Action::ReplSetGetStatus
                            | Action::ReplSetGetConfig
                            | Action::ReplSetConfigure
                    )
            }
            Builtin::ReadAnyDatabase => some_db && action.is_read(),
            Builtin::ReadWriteAnyDatabase => some_db && action.is_read_write(),
            Builtin::UserAdminAnyDatabase => {
                matches!(resource, Resource::Db(_)) && action.is_user_admin()
            }
            Builtin::Root => true,
        }
    }

    pub fn to_doc(&self) -> Document {
        doc! {"role": self.role.name(), "db": self.db.clone()}
    }
}

/// A user as `admin.system.users` holds it.
#[derive(Debug, Clone)]
pub(crate) struct User {
    pub user_id: [u8; 16],
    pub roles: Vec<RoleRef>,
    pub secrets: Secrets,
}

/// Who a connection authenticated as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Principal {
    /// `__system@local`, with the member key: every privilege.
    System,
    User {
        db: String,
        name: String,
    },
}

/// Every user of the cluster (replicated at once, like the log), and the
/// member key's secrets when access control is on.
#[derive(Default)]
pub(crate) struct Users {
    by_name: BTreeMap<(String, String), User>,
    /// `Some` when the cluster runs with a key file: access control on.
    pub system: Option<Secrets>,
}

impl Users {
    /// With `key` (a key file's contents), access control is on and
    /// `__system@local` authenticates with the key, whitespace removed as
    /// mongod reads key files.
    pub fn new(key: Option<&str>) -> Users {
        let system = key.map(|k| {
            let key: String = k.chars().filter(|c| !c.is_whitespace()).collect();
            let salt: [u8; 28] = rand::random();
            Secrets::derive(&key, salt.to_vec(), scram::ITERATIONS)
        });
        Users {
            by_name: BTreeMap::new(),
            system,
        }
    }

    pub fn enforced(&self) -> bool {
        self.system.is_some()
    }

    /// mongod's localhost exception holds while no user exists
    /// (<https://www.mongodb.com/docs/manual/core/localhost-exception/>).
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    pub fn get(&self, db: &str, name: &str) -> Option<&User> {
        self.by_name.get(&(db.to_owned(), name.to_owned()))
    }

    pub fn get_mut(&mut self, db: &str, name: &str) -> Option<&mut User> {
        self.by_name.get_mut(&(db.to_owned(), name.to_owned()))
    }

    pub fn insert(&mut self, db: &str, name: &str, user: User) {
        self.by_name.insert((db.to_owned(), name.to_owned()), user);
    }

    /// Users of `db`, by name.
    pub fn in_db<'a>(&'a self, db: &'a str) -> impl Iterator<Item = (&'a str, &'a User)> + 'a {
        self.by_name
            .iter()
            .filter(move |((d, _), _)| d == db)
            .map(|((_, n), u)| (n.as_str(), u))
    }

    /// The secrets to check a SCRAM conversation for `name` in `db` against.
    pub fn secrets(&self, db: &str, name: &str) -> Option<(Principal, Secrets)> {
        if db == SYSTEM_DB && name == SYSTEM_USER {
            return self.system.clone().map(|s| (Principal::System, s));
        }
        self.get(db, name).map(|u| {
            (
                Principal::User {
                    db: db.to_owned(),
                    name: name.to_owned(),
                },
                u.secrets.clone(),
            )
        })
    }

    /// Whether `who` may do `action` on `resource`.
    pub fn allows(&self, who: &Principal, action: Action, resource: &Resource) -> bool {
        match who {
            Principal::System => true,
            Principal::User { db, name } => self
                .get(db, name)
                .is_some_and(|u| u.roles.iter().any(|r| r.grants(action, resource))),
        }
    }

    /// `usersInfo`'s document for one user.
    pub fn info(db: &str, name: &str, user: &User) -> Document {
        doc! {
            "_id": format!("{db}.{name}"),
            "userId": Binary { subtype: BinarySubtype::Uuid, bytes: user.user_id.to_vec() },
            "user": name,
            "db": db,
            "roles": user.roles.iter().map(|r| Bson::Document(r.to_doc())).collect::<Vec<_>>(),
            "mechanisms": [scram::MECHANISM],
        }
    }
}

/// What a command needs before it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Need {
    /// Nothing: the handshake, `ping`, authentication itself.
    Nothing,
    /// Any authenticated user (the command checks the rest itself).
    Authenticated,
    /// This action on this resource.
    Privilege(Action, Resource),
}

impl Need {
    /// What the localhost exception lets an unauthenticated loopback
    /// connection do while no user exists: create the first user, initiate
    /// the set, and read its status (the docs' list, less the commands the
    /// simulator does not have).
    pub fn localhost_exception_covers(&self) -> bool {
        matches!(
            self,
            Need::Privilege(
                Action::CreateUser | Action::ReplSetConfigure | Action::ReplSetGetStatus,
                _
            )
        )
    }
}

/// What the command `name` on `db` needs (`body` for the aggregate kind).
pub(crate) fn need(name: &str, db: &str, body: &Document) -> Need {
    let on_db = |a| Need::Privilege(a, Resource::Db(db.to_owned()));
    let cluster = |a| Need::Privilege(a, Resource::Cluster);
    match name {
        "hello" | "isMaster" | "ismaster" | "ping" | "saslStart" | "saslContinue"
        | "endSessions" => Need::Nothing,
        "getMore" | "killCursors" | "usersInfo" => Need::Authenticated,
        "insert" => on_db(Action::Insert),
        "update" => on_db(Action::Update),
        "find" | "count" => on_db(Action::Find),
        "aggregate" => match change_stream_scope(body) {
            Some(true) => Need::Privilege(Action::ChangeStream, Resource::AnyDb),
            Some(false) => on_db(Action::ChangeStream),
            None => on_db(Action::Find),
        },
        "createIndexes" => on_db(Action::CreateIndex),
        "listIndexes" => on_db(Action::ListIndexes),
        "dropIndexes" => on_db(Action::DropIndex),
        "create" => on_db(Action::CreateCollection),
        "listCollections" => on_db(Action::ListCollections),
        "drop" => on_db(Action::DropCollection),
        "dropDatabase" => on_db(Action::DropDatabase),
        "replSetGetStatus" => cluster(Action::ReplSetGetStatus),
        "replSetGetConfig" => cluster(Action::ReplSetGetConfig),
        "replSetInitiate" => cluster(Action::ReplSetConfigure),
        "createUser" => on_db(Action::CreateUser),
        "updateUser" => on_db(Action::UpdateUser),
        // Unknown commands get CommandNotFound from the dispatcher, before
        // any authorization, as in mongod.
        _ => Need::Nothing,
    }
}

/// `Some(whole_cluster)` when the pipeline opens a change stream.
fn change_stream_scope(body: &Document) -> Option<bool> {
    let first = body.get_array("pipeline").ok()?.first()?.as_document()?;
    let cs = first.get_document("$changeStream").ok()?;
    Some(cs.get_bool("allChangesForCluster").unwrap_or(false))
}

/// A connection's authentication: who it is, and a SCRAM exchange under way.
#[derive(Default)]
pub(crate) struct Session {
    pub principal: Option<Principal>,
    pub conversation: Option<Pending>,
}

/// A SCRAM exchange between `saslStart` and its last `saslContinue`.
pub(crate) struct Pending {
    pub id: i32,
    pub who: Principal,
    pub conversation: scram::Conversation,
    /// The server's signature is sent; only the client's empty last step
    /// is owed (without `skipEmptyExchange`).
    pub signed: bool,
    pub skip_empty_exchange: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(r: Builtin, db: &str) -> RoleRef {
        RoleRef {
            role: r,
            db: db.into(),
        }
    }

    #[test]
    fn the_app_roles_grant_what_the_app_does_and_nothing_else() {
        let chat = Resource::Db("chat".into());
        let rw = role(Builtin::ReadWrite, "chat");
        for a in [
            Action::Insert,
            Action::Update,
            Action::Find,
            Action::ChangeStream,
            Action::CreateIndex,
            Action::DropIndex,
        ] {
            assert!(rw.grants(a, &chat), "{a:?}");
        }
        assert!(!rw.grants(Action::Insert, &Resource::Db("other".into())));
        assert!(!rw.grants(Action::DropDatabase, &chat));
        assert!(!rw.grants(Action::ChangeStream, &Resource::AnyDb));
        assert!(!rw.grants(Action::CreateUser, &chat));
        let mon = role(Builtin::ClusterMonitor, "admin");
        assert!(mon.grants(Action::ReplSetGetStatus, &Resource::Cluster));
        assert!(mon.grants(Action::ReplSetGetConfig, &Resource::Cluster));
        assert!(!mon.grants(Action::ReplSetConfigure, &Resource::Cluster));
        assert!(!mon.grants(Action::Find, &chat));
    }

    #[test]
    fn commands_need_what_mongod_checks() {
        let b = doc! {};
        assert_eq!(need("hello", "admin", &b), Need::Nothing);
        assert_eq!(
            need("insert", "chat", &b),
            Need::Privilege(Action::Insert, Resource::Db("chat".into()))
        );
        let cs = doc! {"pipeline": [{"$changeStream": {"allChangesForCluster": true}}]};
        assert_eq!(
            need("aggregate", "admin", &cs),
            Need::Privilege(Action::ChangeStream, Resource::AnyDb)
        );
        assert!(need("replSetInitiate", "admin", &b).localhost_exception_covers());
        assert!(!need("replSetGetConfig", "admin", &b).localhost_exception_covers());
        assert!(!need("insert", "chat", &b).localhost_exception_covers());
    }
}
