//! Authentication: `saslStart` and `saslContinue` with SCRAM-SHA-256, and
//! the two handshake fields that go with them in `hello`:
//! `saslSupportedMechs` and `speculativeAuthenticate`.
//!
//! Every failure the client could learn from (unknown user, wrong proof,
//! bad message) is mongod's single `AuthenticationFailed` (18),
//! "Authentication failed." (<https://www.mongodb.com/docs/manual/reference/error-codes/>).

use bson::{doc, spec::BinarySubtype, Binary, Bson, Document};

use super::args::get_int;
use super::{CmdResult, Ctx};
use crate::auth::scram::{self, Conversation};
use crate::auth::Pending;
use crate::error::CmdError;

/// mongod always numbers the one conversation of a connection 1.
const CONVERSATION_ID: i32 = 1;

fn auth_failed() -> CmdError {
    CmdError::new(18, "AuthenticationFailed", "Authentication failed.")
}

fn binary(bytes: Vec<u8>) -> Binary {
    Binary {
        subtype: BinarySubtype::Generic,
        bytes,
    }
}

/// The `payload` field: BinData, or a string as some shells send it.
fn payload(body: &Document) -> Result<Vec<u8>, CmdError> {
    match body.get("payload") {
        Some(Bson::Binary(b)) => Ok(b.bytes.clone()),
        Some(Bson::String(s)) => Ok(s.as_bytes().to_vec()),
        _ => Err(CmdError::bad_value("Missing required field payload")),
    }
}

fn skip_empty_exchange(body: &Document) -> bool {
    body.get_document("options")
        .ok()
        .and_then(|o| o.get_bool("skipEmptyExchange").ok())
        .unwrap_or(false)
}

/// `saslStart` on `db` (the user's database).
pub(super) fn sasl_start(ctx: &Ctx<'_>, db: &str, body: &Document) -> CmdResult {
    let mechanism = body
        .get_str("mechanism")
        .map_err(|_| CmdError::bad_value("Missing required field mechanism"))?;
    let mut reply = start(
        ctx,
        db,
        mechanism,
        &payload(body)?,
        skip_empty_exchange(body),
    )?;
    reply.insert("ok", 1.0);
    Ok(reply)
}

/// Runs the first step for `mechanism`; remembers the conversation on the
/// connection. The reply is mongod's: `conversationId`, `done`, `payload`.
fn start(
    ctx: &Ctx<'_>,
    db: &str,
    mechanism: &str,
    payload: &[u8],
    skip_empty_exchange: bool,
) -> Result<Document, CmdError> {
    if !matches!(mechanism, scram::MECHANISM | "SCRAM-SHA-1") {
        return Err(CmdError::new(
            334,
            "MechanismUnavailable",
            format!(
                "Received authentication for mechanism {mechanism} which is unknown or not enabled"
            ),
        ));
    }
    let message = std::str::from_utf8(payload).map_err(|_| auth_failed())?;
    let first = scram::parse_client_first(message).map_err(|_| auth_failed())?;
    let found = ctx.shared.lock().users.secrets(db, &first.user);
    let Some((who, secrets)) = found else {
        return Err(auth_failed());
    };
    if mechanism != scram::MECHANISM {
        // Users here only ever have SCRAM-SHA-256 credentials.
        return Err(CmdError::new(
            334,
            "MechanismUnavailable",
            "Unable to use SCRAM-SHA-1 based authentication for user without any SCRAM-SHA-1 credentials registered",
        ));
    }
    let conversation = Conversation::start(first, secrets, &Conversation::random_nonce());
    let server_first = conversation.server_first().as_bytes().to_vec();
    ctx.session().conversation = Some(Pending {
        id: CONVERSATION_ID,
        who,
        conversation,
        signed: false,
        skip_empty_exchange,
    });
    Ok(doc! {
        "conversationId": CONVERSATION_ID,
        "done": false,
        "payload": binary(server_first),
    })
}

/// `saslContinue`: checks the client's proof and answers the server's
/// signature; the connection is authenticated when `done` is true (at once
/// with `skipEmptyExchange`, else after the client's empty last step).
pub(super) fn sasl_continue(ctx: &Ctx<'_>, body: &Document) -> CmdResult {
    let id = get_int(body, "conversationId")?;
    let payload = payload(body)?;
    let mut session = ctx.session();
    let Some(pending) = session.conversation.take() else {
        return Err(CmdError::new(17, "ProtocolError", "No SASL session state found").into());
    };
    if id != Some(i64::from(pending.id)) {
        return Err(CmdError::new(
            17,
            "ProtocolError",
            format!(
                "Requested conversation id {} does not match the current conversation id {}",
                id.unwrap_or(-1),
                pending.id
            ),
        )
        .into());
    }
    if pending.signed {
        if !payload.is_empty() {
            return Err(auth_failed().into());
        }
        session.principal = Some(pending.who);
        return Ok(doc! {
            "conversationId": pending.id,
            "done": true,
            "payload": binary(Vec::new()),
            "ok": 1.0,
        });
    }
    let message = std::str::from_utf8(&payload).map_err(|_| auth_failed())?;
    let server_final = pending
        .conversation
        .finish(message)
        .map_err(|_| auth_failed())?;
    let done = pending.skip_empty_exchange;
    let id = pending.id;
    if done {
        session.principal = Some(pending.who);
    } else {
        session.conversation = Some(Pending {
            signed: true,
            ..pending
        });
    }
    Ok(doc! {
        "conversationId": id,
        "done": done,
        "payload": binary(server_final.into_bytes()),
        "ok": 1.0,
    })
}

/// Adds the authentication fields to a `hello` reply: the mechanisms of the
/// user named by `saslSupportedMechs` (`"<db>.<user>"`, omitted for an
/// unknown user, as mongod does), and the answer to a
/// `speculativeAuthenticate` first step (omitted when that step fails: the
/// client then authenticates the ordinary way and gets the real error).
pub(super) fn hello_fields(ctx: &Ctx<'_>, body: &Document, reply: &mut Document) {
    if let Ok(name) = body.get_str("saslSupportedMechs") {
        if let Some((db, user)) = name.split_once('.') {
            if ctx.shared.lock().users.secrets(db, user).is_some() {
                reply.insert("saslSupportedMechs", vec![scram::MECHANISM]);
            }
        }
    }
    let Ok(spec) = body.get_document("speculativeAuthenticate") else {
        return;
    };
    let (Ok(mechanism), Ok(db), Ok(bytes)) =
        (spec.get_str("mechanism"), spec.get_str("db"), payload(spec))
    else {
        return;
    };
    if let Ok(answer) = start(ctx, db, mechanism, &bytes, skip_empty_exchange(spec)) {
        reply.insert("speculativeAuthenticate", answer);
    }
}
