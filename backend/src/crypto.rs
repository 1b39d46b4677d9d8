//! Encryption at rest for secret columns (client secrets, tokens, webhook secrets).
//!
//! XChaCha20-Poly1305: its 24-byte random nonces are safe to generate per value without a counter.
//! Stored layout: `version (1) ‖ key id (4) ‖ nonce (24) ‖ ciphertext+tag`. The key id lets a
//! rotation decrypt with a previous key and re-encrypt with the current one. The column name is
//! the associated data, so a ciphertext copied into another column fails to decrypt.

use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, Generate, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};

const FORMAT_VERSION: u8 = 1;
const KEY_ID_LEN: usize = 4;
const NONCE_LEN: usize = 24;
const HEADER_LEN: usize = 1 + KEY_ID_LEN + NONCE_LEN;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("value is not Telltale ciphertext (too short or unknown format)")]
    Malformed,
    #[error(
        "value was encrypted with a key that is not configured (key id {0}); set TELLTALE_SECRET_KEY_PREVIOUS"
    )]
    UnknownKey(String),
    #[error("decryption failed: wrong key or tampered value")]
    Integrity,
}

#[derive(Clone)]
struct KeyEntry {
    id: [u8; KEY_ID_LEN],
    cipher: XChaCha20Poly1305,
}

impl KeyEntry {
    fn new(key: &[u8; 32]) -> Self {
        let digest = Sha256::digest(key);
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        KeyEntry {
            id,
            cipher: XChaCha20Poly1305::new(&Key::from(*key)),
        }
    }
}

/// The current encryption key plus any previous ones still accepted for decryption.
#[derive(Clone)]
pub struct Crypto {
    current: KeyEntry,
    previous: Vec<KeyEntry>,
}

// Keys never reach a log line, even through a derived Debug.
impl std::fmt::Debug for Crypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Crypto")
            .field("current_key_id", &hex::encode(self.current.id))
            .field("previous_keys", &self.previous.len())
            .finish()
    }
}

/// Parses a key written as 64 hexadecimal characters (32 bytes).
pub fn parse_key(text: &str) -> Result<[u8; 32], String> {
    let bytes = hex::decode(text.trim()).map_err(|_| {
        "expected 64 hexadecimal characters (32 bytes); generate one with `telltale gen-key`".to_owned()
    })?;
    bytes.try_into().map_err(|_| {
        "expected 64 hexadecimal characters (32 bytes); generate one with `telltale gen-key`".to_owned()
    })
}

/// A fresh random key, hex-encoded.
pub fn generate_key_hex() -> String {
    hex::encode(Key::generate())
}

/// Where the key came from, so start-up can warn when it was generated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Config,
    ExistingFile(PathBuf),
    GeneratedFile(PathBuf),
}

impl Crypto {
    pub fn new(current: &[u8; 32], previous: &[[u8; 32]]) -> Crypto {
        Crypto {
            current: KeyEntry::new(current),
            previous: previous.iter().map(KeyEntry::new).collect(),
        }
    }

    /// Uses the configured key, or else the key file in the data directory, creating it
    /// (readable by the owner only) on first start.
    pub fn load_or_create(
        configured: Option<&[u8; 32]>,
        previous: &[[u8; 32]],
        data_dir: &Path,
    ) -> anyhow::Result<(Crypto, KeySource)> {
        if let Some(key) = configured {
            return Ok((Crypto::new(key, previous), KeySource::Config));
        }
        let path = data_dir.join("secret.key");
        if path.exists() {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| anyhow::anyhow!("cannot read key file {}: {e}", path.display()))?;
            let key = parse_key(&text)
                .map_err(|e| anyhow::anyhow!("key file {} is invalid: {e}", path.display()))?;
            return Ok((Crypto::new(&key, previous), KeySource::ExistingFile(path)));
        }
        std::fs::create_dir_all(data_dir)
            .map_err(|e| anyhow::anyhow!("cannot create data directory {}: {e}", data_dir.display()))?;
        let hex_key = generate_key_hex();
        write_private_file(&path, &hex_key)
            .map_err(|e| anyhow::anyhow!("cannot write key file {}: {e}", path.display()))?;
        let key = parse_key(&hex_key).map_err(anyhow::Error::msg)?;
        Ok((Crypto::new(&key, previous), KeySource::GeneratedFile(path)))
    }

    pub fn current_key_id(&self) -> String {
        hex::encode(self.current.id)
    }

    pub fn encrypt(&self, column: &str, plaintext: &[u8]) -> Vec<u8> {
        let nonce = XNonce::generate();
        let sealed = self
            .current
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: column.as_bytes(),
                },
            )
            // Encryption only fails for messages beyond ~256 GiB, far past any column value.
            .unwrap_or_default();
        let mut out = Vec::with_capacity(HEADER_LEN + sealed.len());
        out.push(FORMAT_VERSION);
        out.extend_from_slice(&self.current.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    pub fn decrypt(&self, column: &str, stored: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if stored.len() < HEADER_LEN || stored[0] != FORMAT_VERSION {
            return Err(CryptoError::Malformed);
        }
        let key_id = &stored[1..1 + KEY_ID_LEN];
        let entry = std::iter::once(&self.current)
            .chain(self.previous.iter())
            .find(|k| k.id == key_id)
            .ok_or_else(|| CryptoError::UnknownKey(hex::encode(key_id)))?;
        let nonce =
            XNonce::try_from(&stored[1 + KEY_ID_LEN..HEADER_LEN]).map_err(|_| CryptoError::Malformed)?;
        entry
            .cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: &stored[HEADER_LEN..],
                    aad: column.as_bytes(),
                },
            )
            .map_err(|_| CryptoError::Integrity)
    }

    pub fn encrypt_str(&self, column: &str, plaintext: &str) -> Vec<u8> {
        self.encrypt(column, plaintext.as_bytes())
    }

    pub fn decrypt_string(&self, column: &str, stored: &[u8]) -> Result<String, CryptoError> {
        let bytes = self.decrypt(column, stored)?;
        String::from_utf8(bytes).map_err(|_| CryptoError::Integrity)
    }

    /// True when the value was sealed with a key other than the current one (rotation pending).
    pub fn needs_reencryption(&self, stored: &[u8]) -> bool {
        stored.len() < HEADER_LEN || stored[1..1 + KEY_ID_LEN] != self.current.id
    }

    /// Re-seals a hex-encoded value (as kept inside `app_settings`) with the current key when
    /// an older one sealed it; whether it changed.
    pub fn reseal_hex(&self, column: &str, sealed: &mut String) -> Result<bool, CryptoError> {
        let bytes = hex::decode(sealed.as_str()).map_err(|_| CryptoError::Malformed)?;
        if !self.needs_reencryption(&bytes) {
            return Ok(false);
        }
        let plain = self.decrypt(column, &bytes)?;
        *sealed = hex::encode(self.encrypt(column, &plain));
        Ok(true)
    }

    /// `reseal_hex` over several values (the secrets inside one stored JSON setting); how many
    /// changed.
    pub fn reseal_all_hex<'a>(
        &self,
        column: &str,
        sealed: impl IntoIterator<Item = &'a mut String>,
    ) -> Result<usize, CryptoError> {
        let mut changed = 0;
        for value in sealed {
            changed += usize::from(self.reseal_hex(column, value)?);
        }
        Ok(changed)
    }
}

#[cfg(unix)]
fn write_private_file(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())
}

#[cfg(not(unix))]
fn write_private_file(path: &Path, contents: &str) -> std::io::Result<()> {
    std::fs::write(path, contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: [u8; 32] = [7u8; 32];
    const KEY_B: [u8; 32] = [9u8; 32];

    #[test]
    fn round_trip_hides_the_plaintext() {
        let crypto = Crypto::new(&KEY_A, &[]);
        let sealed = crypto.encrypt_str("connections.access_token", "tok-SECRET-123");
        assert!(!sealed.windows(6).any(|w| w == b"SECRET"));
        assert_eq!(
            crypto
                .decrypt_string("connections.access_token", &sealed)
                .unwrap(),
            "tok-SECRET-123"
        );
    }

    #[test]
    fn same_plaintext_encrypts_differently_each_time() {
        let crypto = Crypto::new(&KEY_A, &[]);
        assert_ne!(crypto.encrypt_str("c", "x"), crypto.encrypt_str("c", "x"));
    }

    #[test]
    fn ciphertext_moved_to_another_column_is_refused() {
        let crypto = Crypto::new(&KEY_A, &[]);
        let sealed = crypto.encrypt_str("connections.access_token", "t");
        assert_eq!(
            crypto.decrypt("connections.refresh_token", &sealed),
            Err(CryptoError::Integrity)
        );
    }

    #[test]
    fn tampering_is_detected() {
        let crypto = Crypto::new(&KEY_A, &[]);
        let mut sealed = crypto.encrypt_str("c", "value");
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert_eq!(crypto.decrypt("c", &sealed), Err(CryptoError::Integrity));
        assert_eq!(crypto.decrypt("c", b"short"), Err(CryptoError::Malformed));
    }

    #[test]
    fn rotation_reads_old_values_with_previous_key() {
        let old = Crypto::new(&KEY_A, &[]);
        let sealed = old.encrypt_str("c", "value");
        let without_previous = Crypto::new(&KEY_B, &[]);
        assert!(matches!(
            without_previous.decrypt("c", &sealed),
            Err(CryptoError::UnknownKey(_))
        ));
        let rotated = Crypto::new(&KEY_B, &[KEY_A]);
        assert!(rotated.needs_reencryption(&sealed));
        assert_eq!(rotated.decrypt_string("c", &sealed).unwrap(), "value");
        assert!(!rotated.needs_reencryption(&rotated.encrypt_str("c", "value")));
    }

    #[test]
    fn key_file_is_created_once_and_reused() {
        let dir = std::env::temp_dir().join(format!("telltale-key-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (first, source) = Crypto::load_or_create(None, &[], &dir).unwrap();
        assert!(matches!(source, KeySource::GeneratedFile(_)));
        let (second, source) = Crypto::load_or_create(None, &[], &dir).unwrap();
        assert!(matches!(source, KeySource::ExistingFile(_)));
        assert_eq!(first.current_key_id(), second.current_key_id());
        let sealed = first.encrypt_str("c", "v");
        assert_eq!(second.decrypt_string("c", &sealed).unwrap(), "v");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn parse_key_names_the_expected_format() {
        assert!(parse_key("abc").unwrap_err().contains("64 hexadecimal"));
        assert_eq!(parse_key(&"11".repeat(32)).unwrap(), [0x11u8; 32]);
    }
}
