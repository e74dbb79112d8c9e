//! The server side of SCRAM-SHA-256 (RFC 5802 with RFC 7677's hash), as
//! mongod runs it inside `saslStart`/`saslContinue`: the stored secrets of a
//! user, and one conversation from the client's first message to the
//! server's signature.
//!
//! Hand-written on top of the RustCrypto `sha2`, `hmac` and `pbkdf2` crates
//! because no maintained crate offers the server half of SCRAM; the unit
//! tests check it against RFC 7677's example exchange.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// The only mechanism the simulator speaks.
pub(crate) const MECHANISM: &str = "SCRAM-SHA-256";

/// mongod's default `scramSHA256IterationCount`
/// (<https://www.mongodb.com/docs/manual/reference/parameters/#mongodb-parameter-param.scramSHA256IterationCount>).
pub(crate) const ITERATIONS: u32 = 15_000;

/// What the server keeps of a password (RFC 5802 section 3): never the
/// password itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Secrets {
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

impl Secrets {
    /// Derives the secrets of `password`, which must already be SASLprep'd
    /// (RFC 7677 section 4 / mongod's `digestPassword: true` for
    /// SCRAM-SHA-256).
    pub fn derive(password: &str, salt: Vec<u8>, iterations: u32) -> Secrets {
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), &salt, iterations, &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        Secrets {
            stored_key: sha256(&client_key),
            server_key: hmac(&salted, b"Server Key"),
            salt,
            iterations,
        }
    }

    /// Fresh secrets for a password as a client typed it: SASLprep, then a
    /// random 28-byte salt (mongod's length for SCRAM-SHA-256) and
    /// [`ITERATIONS`]. `None` when SASLprep refuses the password.
    pub fn new(password: &str) -> Option<Secrets> {
        let prepared = stringprep::saslprep(password).ok()?;
        let salt: [u8; 28] = rand::random();
        Some(Secrets::derive(&prepared, salt.to_vec(), ITERATIONS))
    }
}

/// Why a conversation failed; mongod answers every one of these with
/// `AuthenticationFailed` (18) and keeps the detail for its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    Malformed,
    ChannelBinding,
    NonceMismatch,
    WrongProof,
}

/// The client-first message: `gs2-header client-first-message-bare`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClientFirst {
    /// `n,,` or `y,,` (no channel binding; an authzid is refused).
    pub gs2_header: String,
    pub bare: String,
    /// The user name with RFC 5802's `=2C`/`=3D` escapes undone.
    pub user: String,
    pub nonce: String,
}

/// Parses `n,,n=<user>,r=<nonce>`.
pub(crate) fn parse_client_first(message: &str) -> Result<ClientFirst, Refusal> {
    let mut parts = message.splitn(3, ',');
    let (Some(flag), Some(authzid), Some(bare)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(Refusal::Malformed);
    };
    if !matches!(flag, "n" | "y") {
        // `p=...`: channel binding, which mongod does not offer either.
        return Err(Refusal::ChannelBinding);
    }
    if !authzid.is_empty() {
        return Err(Refusal::Malformed);
    }
    let mut user = None;
    let mut nonce = None;
    for attr in bare.split(',') {
        if let Some(u) = attr.strip_prefix("n=") {
            user = Some(u.replace("=2C", ",").replace("=3D", "="));
        } else if let Some(r) = attr.strip_prefix("r=") {
            nonce = Some(r.to_owned());
        } else if attr.starts_with("m=") {
            // Mandatory extensions are not supported (RFC 5802 section 5.1).
            return Err(Refusal::Malformed);
        }
    }
    match (user, nonce) {
        (Some(user), Some(nonce)) if !user.is_empty() && !nonce.is_empty() => Ok(ClientFirst {
            gs2_header: format!("{flag},,"),
            bare: bare.to_owned(),
            user,
            nonce,
        }),
        _ => Err(Refusal::Malformed),
    }
}

/// One authentication exchange after the server's first message.
#[derive(Debug, Clone)]
pub(crate) struct Conversation {
    client_first: ClientFirst,
    server_first: String,
    /// Client nonce followed by the server's.
    nonce: String,
    secrets: Secrets,
}

impl Conversation {
    /// Answers `client_first` for a user with `secrets`, adding
    /// `server_nonce` (printable, no commas) to the client's nonce.
    pub fn start(client_first: ClientFirst, secrets: Secrets, server_nonce: &str) -> Self {
        let nonce = format!("{}{server_nonce}", client_first.nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&secrets.salt),
            secrets.iterations
        );
        Conversation {
            client_first,
            server_first,
            nonce,
            secrets,
        }
    }

    /// A random server nonce: 24 bytes, base64.
    pub fn random_nonce() -> String {
        let bytes: [u8; 24] = rand::random();
        B64.encode(bytes)
    }

    /// The server-first message.
    pub fn server_first(&self) -> &str {
        &self.server_first
    }

    /// Checks the client-final message (`c=...,r=...,p=...`) and returns
    /// the server-final message (`v=<ServerSignature>`).
    pub fn finish(&self, client_final: &str) -> Result<String, Refusal> {
        let (without_proof, proof) = client_final.rsplit_once(",p=").ok_or(Refusal::Malformed)?;
        let proof = B64.decode(proof).map_err(|_| Refusal::Malformed)?;
        let mut binding = None;
        let mut nonce = None;
        for attr in without_proof.split(',') {
            if let Some(c) = attr.strip_prefix("c=") {
                binding = Some(c);
            } else if let Some(r) = attr.strip_prefix("r=") {
                nonce = Some(r);
            }
        }
        if binding != Some(B64.encode(&self.client_first.gs2_header).as_str()) {
            return Err(Refusal::ChannelBinding);
        }
        if nonce != Some(self.nonce.as_str()) {
            return Err(Refusal::NonceMismatch);
        }
        let auth_message = format!(
            "{},{},{without_proof}",
            self.client_first.bare, self.server_first
        );
        let client_signature = hmac(&self.secrets.stored_key, auth_message.as_bytes());
        if proof.len() != client_signature.len() {
            return Err(Refusal::WrongProof);
        }
        let client_key: Vec<u8> = proof
            .iter()
            .zip(client_signature)
            .map(|(p, s)| p ^ s)
            .collect();
        if sha256(&client_key) != self.secrets.stored_key {
            return Err(Refusal::WrongProof);
        }
        let server_signature = hmac(&self.secrets.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677 section 3: user "user", password "pencil".
    const CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn rfc_conversation() -> Conversation {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let secrets = Secrets::derive("pencil", salt, 4096);
        Conversation::start(
            parse_client_first(CLIENT_FIRST).unwrap(),
            secrets,
            SERVER_NONCE,
        )
    }

    #[test]
    fn rfc_7677_example_exchange() {
        let conv = rfc_conversation();
        assert_eq!(conv.server_first(), SERVER_FIRST);
        assert_eq!(conv.finish(CLIENT_FINAL).unwrap(), SERVER_FINAL);
    }

    #[test]
    fn a_wrong_proof_or_nonce_is_refused() {
        let conv = rfc_conversation();
        let wrong_proof = CLIENT_FINAL.replace("p=dHzb", "p=dHzc");
        assert_eq!(conv.finish(&wrong_proof), Err(Refusal::WrongProof));
        let wrong_nonce = CLIENT_FINAL.replace("k0,p=", "k1,p=");
        assert_eq!(conv.finish(&wrong_nonce), Err(Refusal::NonceMismatch));
        let other_password = Secrets::derive(
            "pencil2",
            B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap(),
            4096,
        );
        let conv = Conversation::start(
            parse_client_first(CLIENT_FIRST).unwrap(),
            other_password,
            SERVER_NONCE,
        );
        assert_eq!(conv.finish(CLIENT_FINAL), Err(Refusal::WrongProof));
    }

    #[test]
    fn client_first_parsing() {
        let cf = parse_client_first("n,,n=a=2Cb=3Dc,r=xyz").unwrap();
        assert_eq!(cf.user, "a,b=c");
        assert_eq!(cf.bare, "n=a=2Cb=3Dc,r=xyz");
        assert_eq!(
            parse_client_first("p=tls-unique,,n=u,r=x"),
            Err(Refusal::ChannelBinding)
        );
        assert_eq!(
            parse_client_first("n,a=admin,n=u,r=x"),
            Err(Refusal::Malformed)
        );
        assert_eq!(parse_client_first("n,,n=u"), Err(Refusal::Malformed));
    }

    #[test]
    fn new_secrets_are_salted_and_prepared() {
        let a = Secrets::new("I\u{00AD}X").unwrap();
        // SASLprep maps the soft hyphen to nothing (RFC 4013's example).
        assert_eq!(a, Secrets::derive("IX", a.salt.clone(), ITERATIONS));
        let b = Secrets::new("IX").unwrap();
        assert_ne!(a.salt, b.salt);
        assert!(Secrets::new("a\u{0007}b").is_none(), "control characters");
    }
}
