//! Secrets: password hashing (argon2id), random tokens and API keys, and their SHA-256 digests.
//!
//! Only digests are stored. Passwords are low-entropy, so they get argon2id (slow on purpose, run
//! off the async threads). Session tokens and API keys are 256 random bits, so a single SHA-256
//! is enough to make a stolen table useless and keeps per-request checks cheap.

use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use sha2::{Digest, Sha256};

use crate::error::AppError;

/// The public beginning of every API key, so leaked keys are recognisable by secret scanners.
pub const API_KEY_PREFIX: &str = "tm_";

fn argon2() -> Argon2<'static> {
    // OWASP's argon2id baseline: 19 MiB, 2 passes, 1 lane.
    let params = Params::new(19 * 1024, 2, 1, None).expect("valid argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the operating system's random source works");
    bytes
}

/// Lowercase hex. Every authenticated request hashes its key, so no `format!` per byte.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    out
}

/// SHA-256 of a high-entropy secret (session token, API key), as lowercase hex.
pub fn digest(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

/// A fresh session token: 256 random bits, hex.
pub fn new_session_token() -> String {
    hex(&random_bytes::<32>())
}

/// A fresh API key `tm_<64 hex>` and its displayable prefix `tm_<first 8 hex>`.
pub fn new_api_key() -> (String, String) {
    let key = format!("{API_KEY_PREFIX}{}", hex(&random_bytes::<32>()));
    let prefix = key[..API_KEY_PREFIX.len() + 8].to_owned();
    (key, prefix)
}

/// A generated password: 20 characters from an alphabet without look-alikes (~115 bits).
pub fn generate_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    random_bytes::<20>()
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

fn hash_blocking(password: &str) -> Result<String, AppError> {
    let salt = SaltString::encode_b64(&random_bytes::<16>()).map_err(|e| {
        tracing::error!(%e, "salt encoding failed");
        AppError::internal()
    })?;
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| {
            tracing::error!(%e, "password hashing failed");
            AppError::internal()
        })
}

fn verify_blocking(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|parsed| {
            argon2()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A hash to verify against when the account does not exist or has no password, so that a
/// wrong user id takes as long as a wrong password and does not reveal which ids exist.
fn decoy_hash() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| hash_blocking(&generate_password()).unwrap_or_default())
}

/// Hashes a password with argon2id, off the async threads.
pub async fn hash_password(password: String) -> Result<String, AppError> {
    tokio::task::spawn_blocking(move || hash_blocking(&password))
        .await
        .map_err(|_| AppError::internal())?
}

/// Checks a password against a stored hash (or against a decoy when there is none), off the
/// async threads. Takes the same time either way.
pub async fn verify_password(password: String, phc: Option<String>) -> bool {
    tokio::task::spawn_blocking(move || {
        let known = phc.is_some();
        let phc = phc.unwrap_or_else(|| decoy_hash().to_owned());
        verify_blocking(&password, &phc) && known
    })
    .await
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_do_not_contain_the_password() {
        let hash = hash_blocking("correct horse battery").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(!hash.contains("correct horse battery"));
        assert!(verify_blocking("correct horse battery", &hash));
        assert!(!verify_blocking("correct horse batterx", &hash));
        assert_ne!(
            hash,
            hash_blocking("correct horse battery").unwrap(),
            "salted"
        );
    }

    #[test]
    fn keys_and_tokens_are_fresh_and_digests_hide_them() {
        let (key, prefix) = new_api_key();
        assert!(key.starts_with(&prefix) && prefix.len() == 11 && key.len() == 67);
        assert_ne!(new_api_key().0, key);
        assert_ne!(new_session_token(), new_session_token());
        assert_eq!(digest(&key).len(), 64);
        assert!(!digest(&key).contains(&key[3..]));
        assert_eq!(generate_password().len(), 20);
    }

    #[test]
    fn digests_are_the_lowercase_hex_stored_before() {
        // FIPS 180-2's example: every stored key and session digest is in this form.
        assert_eq!(
            digest("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
    }
}
