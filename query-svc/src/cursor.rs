//! Opaque pagination cursors: the keyset position plus a digest of the filters, signed with
//! HMAC-SHA256. A cursor that was altered, or is used with other filters, is a 400.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};

use common::ApiError;

#[derive(Clone)]
pub struct CursorKey(Vec<u8>);

impl CursorKey {
    pub fn new(secret: &[u8]) -> Self {
        Self(Sha256::digest(secret).to_vec())
    }

    fn mac(&self, body: &[u8]) -> Vec<u8> {
        let mut m = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        m.update(body);
        m.finalize().into_bytes()[..16].to_vec()
    }

    pub fn encode<T: Serialize>(&self, position: &T, scope: &str) -> String {
        let body = serde_json::to_vec(&(position, digest(scope))).expect("a cursor serializes");
        let mut bytes = self.mac(&body);
        bytes.extend_from_slice(&body);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Decodes a cursor made by `encode` with the same `scope` (the filters of the request).
    pub fn decode<T: DeserializeOwned>(&self, cursor: &str, scope: &str) -> Result<T, ApiError> {
        let bad = |m: &str| ApiError::validation("cursor", m.to_string());
        let bytes = URL_SAFE_NO_PAD
            .decode(cursor)
            .map_err(|_| bad("not a cursor this service issued"))?;
        if bytes.len() < 16 {
            return Err(bad("not a cursor this service issued"));
        }
        let (tag, body) = bytes.split_at(16);
        if !constant_time_eq(tag, &self.mac(body)) {
            return Err(bad("not a cursor this service issued"));
        }
        let (position, d): (T, String) =
            serde_json::from_slice(body).map_err(|_| bad("not a cursor this service issued"))?;
        if d != digest(scope) {
            return Err(bad("the cursor belongs to a request with other filters"));
        }
        Ok(position)
    }
}

fn digest(scope: &str) -> String {
    hex::encode(&Sha256::digest(scope.as_bytes())[..8])
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_only_with_its_key_and_filters() {
        let k = CursorKey::new(b"secret");
        let c = k.encode(&(42u64, "x".to_string()), "status=pending");
        assert_eq!(
            k.decode::<(u64, String)>(&c, "status=pending").unwrap(),
            (42, "x".into())
        );
        assert!(k.decode::<(u64, String)>(&c, "status=leased").is_err());
        assert!(CursorKey::new(b"other")
            .decode::<(u64, String)>(&c, "status=pending")
            .is_err());
        let mut tampered = c.clone().into_bytes();
        let last = tampered.len() - 2;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        assert!(k
            .decode::<(u64, String)>(std::str::from_utf8(&tampered).unwrap(), "status=pending")
            .is_err());
        assert!(k.decode::<(u64, String)>("!!", "status=pending").is_err());
    }
}
