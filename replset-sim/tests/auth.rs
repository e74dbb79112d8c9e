//! Access control with a member key, as the official driver (and, where it
//! is installed, pymongo) meets it: SCRAM-SHA-256 handshakes, the localhost
//! exception, least-privilege roles, `Unauthorized` (13) and
//! `AuthenticationFailed` (18).

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use mongodb::bson::{doc, spec::BinarySubtype, Binary, Document};
use mongodb::error::{Error, ErrorKind};
use mongodb::Client;
use replset_sim::{Cluster, ClusterOptions};
use sha2::{Digest, Sha256};

const KEY: &str = "c2ltdWxhdGVk\nbWVtYmVyIGtleQ==\n";
const PASSWORD: &str = "p@ss:w/rd%20é";

fn keyed() -> ClusterOptions {
    ClusterOptions {
        key_file: Some(KEY.to_owned()),
        election_delay: Duration::from_millis(100),
        ..Default::default()
    }
}

/// The code of a server error, wherever the driver put it: a command error,
/// or the cause under an authentication error.
fn code(err: &Error) -> i32 {
    let mut current = Some(err);
    while let Some(e) = current {
        if let ErrorKind::Command(c) = &*e.kind {
            return c.code;
        }
        current = std::error::Error::source(e).and_then(|s| {
            s.downcast_ref::<Box<Error>>()
                .map(|b| &**b)
                .or_else(|| s.downcast_ref::<Error>())
        });
    }
    panic!("no server error code in {err:?}")
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn uri_as(cluster: &Cluster, user: &str, password: &str, source: &str) -> String {
    let hosts = cluster.hosts().join(",");
    format!(
        "mongodb://{}:{}@{hosts}/chat?replicaSet=rs&authSource={source}&serverSelectionTimeoutMS=3000",
        encode(user),
        encode(password)
    )
}

async fn client(uri: &str) -> Client {
    Client::with_uri_str(uri).await.unwrap()
}

/// An unauthenticated direct connection to member 0 (loopback).
async fn anonymous(cluster: &Cluster) -> Client {
    client(&format!(
        "{}&serverSelectionTimeoutMS=3000",
        cluster.direct_uri(0)
    ))
    .await
}

async fn create_app_user(admin: &mongodb::Database) -> Result<Document, Error> {
    admin
        .run_command(doc! {
            "createUser": "app",
            "pwd": PASSWORD,
            "roles": [{"role": "readWrite", "db": "chat"}, {"role": "clusterMonitor", "db": "admin"}],
            "mechanisms": ["SCRAM-SHA-256"],
        })
        .await
}

#[tokio::test]
async fn the_localhost_exception_creates_the_first_user_and_then_closes() {
    let cluster = Cluster::start(keyed()).await.unwrap();
    let anon = anonymous(&cluster).await;
    let admin = anon.database("admin");

    // The handshake and ping need nothing; data needs a user.
    admin.run_command(doc! {"ping": 1}).await.unwrap();
    let err = anon
        .database("chat")
        .collection::<Document>("messages")
        .find_one(doc! {})
        .await
        .unwrap_err();
    assert_eq!(code(&err), 13);
    assert!(err.to_string().contains("requires authentication"), "{err}");
    // replSetGetStatus is among the exception's privileges, the config is not.
    admin
        .run_command(doc! {"replSetGetStatus": 1})
        .await
        .unwrap();
    let err = admin
        .run_command(doc! {"replSetGetConfig": 1})
        .await
        .unwrap_err();
    assert_eq!(code(&err), 13);

    create_app_user(&admin).await.unwrap();

    // One user exists: the exception is over.
    let err = admin
        .run_command(doc! {"createUser": "second", "pwd": "x", "roles": []})
        .await
        .unwrap_err();
    assert_eq!(code(&err), 13);
    let err = admin
        .run_command(doc! {"replSetGetStatus": 1})
        .await
        .unwrap_err();
    assert_eq!(code(&err), 13);
}

#[tokio::test]
async fn the_driver_authenticates_and_works_within_its_roles() {
    let cluster = Cluster::start(keyed()).await.unwrap();
    create_app_user(&anonymous(&cluster).await.database("admin"))
        .await
        .unwrap();

    let app = client(&uri_as(&cluster, "app", PASSWORD, "admin")).await;
    let coll = app.database("chat").collection::<Document>("messages");
    coll.insert_one(doc! {"_id": "m1", "text": "hi"})
        .await
        .unwrap();
    let found = coll.find_one(doc! {"_id": "m1"}).await.unwrap().unwrap();
    assert_eq!(found.get_str("text"), Ok("hi"));
    coll.update_one(doc! {"_id": "m1"}, doc! {"$set": {"n": 1}})
        .await
        .unwrap();
    let status = app
        .database("admin")
        .run_command(doc! {"replSetGetStatus": 1})
        .await
        .unwrap();
    assert_eq!(status.get_str("set"), Ok("rs"));

    // Least privilege: no other database, no dropping the chat database,
    // no user management.
    let err = app
        .database("other")
        .collection::<Document>("x")
        .insert_one(doc! {"a": 1})
        .await
        .unwrap_err();
    assert_eq!(code(&err), 13);
    assert!(err.to_string().contains("not authorized on other"), "{err}");
    let err = app.database("chat").drop().await.unwrap_err();
    assert_eq!(code(&err), 13);
    let err = app
        .database("admin")
        .run_command(doc! {"createUser": "x", "pwd": "x", "roles": []})
        .await
        .unwrap_err();
    assert_eq!(code(&err), 13);

    // A user may read its own entry, not others'.
    let info = app
        .database("admin")
        .run_command(doc! {"usersInfo": "app"})
        .await
        .unwrap();
    let users = info.get_array("users").unwrap();
    let me = users[0].as_document().unwrap();
    assert_eq!(me.get_str("_id"), Ok("admin.app"));
    assert_eq!(
        me.get_array("roles").unwrap().len(),
        2,
        "roles as created: {me}"
    );
    assert_eq!(
        me.get_array("mechanisms").unwrap()[0].as_str(),
        Some("SCRAM-SHA-256")
    );
    let err = app
        .database("admin")
        .run_command(doc! {"usersInfo": 1})
        .await
        .unwrap_err();
    assert_eq!(code(&err), 13);
}

#[tokio::test]
async fn a_wrong_password_or_unknown_user_is_authentication_failed() {
    let cluster = Cluster::start(keyed()).await.unwrap();
    create_app_user(&anonymous(&cluster).await.database("admin"))
        .await
        .unwrap();
    for (user, password) in [("app", "not the password"), ("nobody", PASSWORD)] {
        let c = client(&uri_as(&cluster, user, password, "admin")).await;
        let err = c
            .database("chat")
            .collection::<Document>("messages")
            .find_one(doc! {})
            .await
            .unwrap_err();
        assert!(
            matches!(*err.kind, ErrorKind::Authentication { .. }),
            "{user}: {err:?}"
        );
        assert_eq!(code(&err), 18, "{user}");
        assert!(!err.to_string().contains(password), "{err}");
    }
}

#[tokio::test]
async fn update_user_changes_the_password_and_the_key_authenticates_system() {
    let cluster = Cluster::start(keyed()).await.unwrap();
    create_app_user(&anonymous(&cluster).await.database("admin"))
        .await
        .unwrap();
    // The member key's internal user (whitespace in the key file ignored).
    let key: String = KEY.split_whitespace().collect();
    let system = client(&format!(
        "{}&authMechanism=SCRAM-SHA-256",
        uri_as(&cluster, "__system", &key, "local")
    ))
    .await;
    let admin = system.database("admin");
    admin
        .run_command(doc! {"updateUser": "app", "pwd": "new password"})
        .await
        .unwrap();
    let err = admin
        .run_command(doc! {"updateUser": "ghost", "pwd": "x"})
        .await
        .unwrap_err();
    assert_eq!(code(&err), 11);
    let err = admin
        .run_command(doc! {"createUser": "app", "pwd": "x", "roles": []})
        .await
        .unwrap_err();
    assert_eq!(code(&err), 51003);
    let err = admin
        .run_command(doc! {"createUser": "x", "pwd": "x", "roles": [{"role": "clusterMonitor", "db": "chat"}]})
        .await
        .unwrap_err();
    assert_eq!(code(&err), 31, "clusterMonitor exists only in admin");

    let old = client(&uri_as(&cluster, "app", PASSWORD, "admin")).await;
    let err = old
        .database("admin")
        .run_command(doc! {"replSetGetStatus": 1})
        .await
        .unwrap_err();
    assert_eq!(code(&err), 18);
    let new = client(&uri_as(&cluster, "app", "new password", "admin")).await;
    new.database("admin")
        .run_command(doc! {"replSetGetStatus": 1})
        .await
        .unwrap();
}

#[tokio::test]
async fn a_remote_client_gets_no_localhost_exception_and_no_key_means_no_checks() {
    let cluster = Cluster::start(ClusterOptions {
        remote_clients: true,
        ..keyed()
    })
    .await
    .unwrap();
    let err = create_app_user(&anonymous(&cluster).await.database("admin"))
        .await
        .unwrap_err();
    assert_eq!(code(&err), 13);

    let open = Cluster::start(Default::default()).await.unwrap();
    let anon = anonymous(&open).await;
    create_app_user(&anon.database("admin")).await.unwrap();
    anon.database("chat")
        .collection::<Document>("m")
        .insert_one(doc! {"a": 1})
        .await
        .unwrap();
}

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = <HmacSha256 as KeyInit>::new_from_slice(key).unwrap();
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

fn bin(bytes: &[u8]) -> Binary {
    Binary {
        subtype: BinarySubtype::Generic,
        bytes: bytes.to_vec(),
    }
}

/// What a client computes for one SCRAM-SHA-256 exchange (RFC 5802).
struct ClientSide {
    client_key: Vec<u8>,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

impl ClientSide {
    fn new(password: &str, salt: &[u8], iterations: u32) -> ClientSide {
        let prepared = stringprep::saslprep(password).unwrap();
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(prepared.as_bytes(), salt, iterations, &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        ClientSide {
            stored_key: Sha256::digest(&client_key).to_vec(),
            server_key: hmac(&salted, b"Server Key"),
            client_key,
        }
    }

    fn proof(&self, auth_message: &str) -> String {
        let signature = hmac(&self.stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = self
            .client_key
            .iter()
            .zip(&signature)
            .map(|(a, b)| a ^ b)
            .collect();
        B64.encode(proof)
    }

    fn server_final(&self, auth_message: &str) -> String {
        format!(
            "v={}",
            B64.encode(hmac(&self.server_key, auth_message.as_bytes()))
        )
    }
}

/// `saslStart` for user `app`: the conversation id and the server-first
/// message split into (message, nonce, salt, iterations).
async fn sasl_start(admin: &mongodb::Database, bare: &str) -> (i32, String, String, Vec<u8>, u32) {
    let start = admin
        .run_command(doc! {
            "saslStart": 1,
            "mechanism": "SCRAM-SHA-256",
            "payload": bin(format!("n,,{bare}").as_bytes()),
        })
        .await
        .unwrap();
    assert_eq!(start.get_bool("done"), Ok(false));
    let id = start.get_i32("conversationId").unwrap();
    let server_first =
        String::from_utf8(start.get_binary_generic("payload").unwrap().clone()).unwrap();
    let mut fields = server_first.split(',');
    let mut next = |key: &str| {
        fields
            .next()
            .and_then(|f| f.strip_prefix(key))
            .unwrap()
            .to_owned()
    };
    let nonce = next("r=");
    let salt = B64.decode(next("s=")).unwrap();
    let iterations = next("i=").parse().unwrap();
    (id, server_first, nonce, salt, iterations)
}

/// The explicit `saslStart`/`saslContinue` path (the driver folds the first
/// step into `hello`), without `skipEmptyExchange`, so the empty last step
/// is exercised too; the client side is written from RFC 5802 here.
#[tokio::test]
async fn sasl_commands_without_skip_empty_exchange() {
    let cluster = Cluster::start(keyed()).await.unwrap();
    create_app_user(&anonymous(&cluster).await.database("admin"))
        .await
        .unwrap();
    // saslStart and saslContinue must share a connection.
    let one = client(&format!(
        "{}&serverSelectionTimeoutMS=3000&maxPoolSize=1",
        cluster.direct_uri(0)
    ))
    .await;
    let admin = one.database("admin");
    let bare = "n=app,r=clientnonce123";

    let (id, server_first, nonce, salt, iterations) = sasl_start(&admin, bare).await;
    assert!(nonce.starts_with("clientnonce123"), "{nonce}");
    assert_eq!(iterations, 15_000, "mongod's default");
    let client_side = ClientSide::new(PASSWORD, &salt, iterations);
    let without_proof = format!("c=biws,r={nonce}");
    let wrong = format!("{without_proof},p={}", B64.encode([0u8; 32]));
    let refused = admin
        .run_command(
            doc! {"saslContinue": 1, "conversationId": id, "payload": bin(wrong.as_bytes())},
        )
        .await
        .unwrap_err();
    assert_eq!(code(&refused), 18);
    let _ = server_first;

    // The refusal ended that conversation; a new one with the right proof.
    let (id, server_first, nonce, _, _) = sasl_start(&admin, bare).await;
    let without_proof = format!("c=biws,r={nonce}");
    let auth_message = format!("{bare},{server_first},{without_proof}");
    let final_message = format!("{without_proof},p={}", client_side.proof(&auth_message));
    let step = admin
        .run_command(doc! {"saslContinue": 1, "conversationId": id, "payload": bin(final_message.as_bytes())})
        .await
        .unwrap();
    assert_eq!(step.get_bool("done"), Ok(false), "the empty step is owed");
    assert_eq!(
        step.get_binary_generic("payload").unwrap(),
        client_side.server_final(&auth_message).as_bytes()
    );
    // Not authenticated until the last step.
    let err = one
        .database("chat")
        .collection::<Document>("messages")
        .insert_one(doc! {"too": "early"})
        .await
        .unwrap_err();
    assert_eq!(code(&err), 13);
    let err = admin
        .run_command(doc! {"saslContinue": 1, "conversationId": id + 1, "payload": bin(b"")})
        .await
        .unwrap_err();
    assert_eq!(code(&err), 17, "another conversation id");
    let (id, server_first, nonce, _, _) = sasl_start(&admin, bare).await;
    let without_proof = format!("c=biws,r={nonce}");
    let auth_message = format!("{bare},{server_first},{without_proof}");
    let final_message = format!("{without_proof},p={}", client_side.proof(&auth_message));
    admin
        .run_command(doc! {"saslContinue": 1, "conversationId": id, "payload": bin(final_message.as_bytes())})
        .await
        .unwrap();
    let last = admin
        .run_command(doc! {"saslContinue": 1, "conversationId": id, "payload": bin(b"")})
        .await
        .unwrap();
    assert_eq!(last.get_bool("done"), Ok(true));
    // Authenticated as app now: its roles apply on this connection.
    one.database("chat")
        .collection::<Document>("messages")
        .insert_one(doc! {"by": "manual scram"})
        .await
        .unwrap();
}

/// An independent client: pymongo's own SCRAM-SHA-256 against the simulator.
#[test]
fn pymongo_authenticates_too() {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import pymongo"])
        .output();
    if !matches!(&probe, Ok(o) if o.status.success()) {
        eprintln!(
            "SKIPPED: pymongo_authenticates_too because python3 with pymongo is not installed"
        );
        return;
    }
    let cluster = Cluster::start_blocking(keyed()).unwrap();
    let admin_uri = format!("{}&serverSelectionTimeoutMS=3000", cluster.direct_uri(0));
    let script = r#"
import sys, pymongo
from urllib.parse import quote_plus
hosts, admin_uri, password = sys.argv[1], sys.argv[2], sys.argv[3]
anon = pymongo.MongoClient(admin_uri)
anon.admin.command("createUser", "app", pwd=password,
    roles=[{"role": "readWrite", "db": "chat"}], mechanisms=["SCRAM-SHA-256"])
uri = f"mongodb://app:{quote_plus(password)}@{hosts}/?replicaSet=rs&authSource=admin&serverSelectionTimeoutMS=3000"
c = pymongo.MongoClient(uri)
c.chat.messages.insert_one({"_id": "py", "text": "from pymongo"})
assert c.chat.messages.find_one({"_id": "py"})["text"] == "from pymongo"
bad = pymongo.MongoClient(uri.replace(quote_plus(password), "wrong"))
try:
    bad.chat.messages.find_one({})
    sys.exit("a wrong password was accepted")
except pymongo.errors.OperationFailure as e:
    assert e.code == 18, e.details
print("ok")
"#;
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            script,
            &cluster.hosts().join(","),
            &admin_uri,
            PASSWORD,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
