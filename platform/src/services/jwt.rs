//! HS256 JSON Web Tokens: issued by auth, verified by the gateway on every call.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::domain::UserId;
use crate::proto::common::Role;

/// What a token says about its bearer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: u64,
    /// `Role` as its protobuf number.
    pub role: i32,
    /// Expiry, seconds since the Unix epoch.
    pub exp: i64,
}

impl Claims {
    pub fn user(&self) -> UserId {
        UserId(self.sub)
    }
    pub fn role(&self) -> Role {
        Role::try_from(self.role).unwrap_or(Role::Unspecified)
    }
}

/// The longest token accepted. Ours are about 150 bytes; a longer one is
/// refused before it is decoded, looked up or remembered.
pub const TOKEN_BYTES_MAX: usize = 4096;

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("token longer than {TOKEN_BYTES_MAX} bytes")]
    TooLong,
    #[error("malformed token")]
    Malformed,
    #[error("bad token signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
}

const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

fn mac(secret: &str) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length")
}

/// Signs `claims` with `secret`.
pub fn issue(secret: &str, claims: &Claims) -> String {
    let header = URL_SAFE_NO_PAD.encode(HEADER);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialize"));
    let signing_input = format!("{header}.{payload}");
    let mut m = mac(secret);
    m.update(signing_input.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(m.finalize().into_bytes());
    format!("{signing_input}.{sig}")
}

/// Checks the signature (in constant time) and the expiry against `now_s`.
pub fn verify(secret: &str, token: &str, now_s: i64) -> Result<Claims, JwtError> {
    if token.len() > TOKEN_BYTES_MAX {
        return Err(JwtError::TooLong);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(sig), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let header_json = URL_SAFE_NO_PAD.decode(header).map_err(|_| JwtError::Malformed)?;
    if header_json != HEADER.as_bytes() {
        return Err(JwtError::Malformed);
    }
    let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|_| JwtError::Malformed)?;
    let mut m = mac(secret);
    m.update(header.as_bytes());
    m.update(b".");
    m.update(payload.as_bytes());
    m.verify_slice(&sig).map_err(|_| JwtError::BadSignature)?;
    let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| JwtError::Malformed)?;
    let claims: Claims = serde_json::from_slice(&payload).map_err(|_| JwtError::Malformed)?;
    if claims.exp <= now_s {
        return Err(JwtError::Expired);
    }
    Ok(claims)
}

/// Verifies tokens under one secret, remembering the ones whose signature
/// checked out: a token is immutable, so its signature need be checked only
/// once, while its expiry is checked on every use. The gateway verifies a token
/// on every call, and the HMAC dominated its cost.
pub struct Verifier {
    secret: String,
    /// Verified tokens and their claims; emptied when full (a re-check is cheap
    /// compared with the calls it saved).
    verified: std::sync::Mutex<std::collections::BTreeMap<String, Claims>>,
}

/// How many verified tokens a [`Verifier`] remembers.
const VERIFIED_MAX: usize = 4096;

impl Verifier {
    pub fn new(secret: &str) -> Verifier {
        Verifier { secret: secret.to_string(), verified: Default::default() }
    }

    /// As [`verify`], for the verifier's secret.
    pub fn verify(&self, token: &str, now_s: i64) -> Result<Claims, JwtError> {
        if token.len() > TOKEN_BYTES_MAX {
            return Err(JwtError::TooLong);
        }
        let known = self.verified.lock().expect("verified lock").get(token).cloned();
        let claims = match known {
            Some(claims) => claims,
            None => {
                let claims = verify(&self.secret, token, now_s)?;
                let mut verified = self.verified.lock().expect("verified lock");
                if verified.len() >= VERIFIED_MAX {
                    verified.clear();
                }
                verified.insert(token.to_string(), claims.clone());
                claims
            }
        };
        if claims.exp <= now_s {
            return Err(JwtError::Expired);
        }
        Ok(claims)
    }

    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.verified.lock().expect("verified lock").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims { sub: 7, role: Role::Trader as i32, exp: 1_000 }
    }

    #[test]
    fn round_trip() {
        let token = issue("k", &claims());
        assert_eq!(verify("k", &token, 999), Ok(claims()));
    }

    #[test]
    fn refuses_forged_expired_and_malformed() {
        let token = issue("k", &claims());
        assert_eq!(verify("other", &token, 999), Err(JwtError::BadSignature));
        assert_eq!(verify("k", &token, 1_000), Err(JwtError::Expired));
        assert_eq!(verify("k", "abc", 0), Err(JwtError::Malformed));
        let huge = format!("{token}{}", "A".repeat(TOKEN_BYTES_MAX));
        assert_eq!(verify("k", &huge, 999), Err(JwtError::TooLong));
        assert_eq!(Verifier::new("k").verify(&huge, 999), Err(JwtError::TooLong));
        // A payload swapped for another user's, keeping the old signature.
        let forged_payload = URL_SAFE_NO_PAD.encode(r#"{"sub":1,"role":3,"exp":99999}"#);
        let mut parts: Vec<&str> = token.split('.').collect();
        parts[1] = &forged_payload;
        assert_eq!(verify("k", &parts.join("."), 999), Err(JwtError::BadSignature));
    }

    #[test]
    fn the_verifier_remembers_signatures_but_not_expiry() {
        let v = Verifier::new("k");
        let token = issue("k", &claims());
        assert_eq!(v.verify(&token, 998), Ok(claims()));
        assert_eq!(v.remembered(), 1);
        assert_eq!(v.verify(&token, 999), Ok(claims()));
        assert_eq!(v.verify(&token, 1_000), Err(JwtError::Expired));
        // Refused tokens are not remembered, and stay refused.
        let forged = issue("other", &claims());
        assert_eq!(v.verify(&forged, 999), Err(JwtError::BadSignature));
        assert_eq!(v.verify(&forged, 999), Err(JwtError::BadSignature));
        assert_eq!(v.remembered(), 1);
    }

    #[test]
    fn the_verifier_stays_bounded() {
        let v = Verifier::new("k");
        for sub in 0..(VERIFIED_MAX as u64 + 10) {
            let token = issue("k", &Claims { sub, ..claims() });
            assert_eq!(v.verify(&token, 0).map(|c| c.sub), Ok(sub));
            assert!(v.remembered() <= VERIFIED_MAX);
        }
    }
}
