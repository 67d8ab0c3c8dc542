//! Opaque pagination cursors: the position of the last row of a page.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Keyset position of a row ordered by `(created_at DESC, id DESC)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeCursor {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

impl TimeCursor {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!(
            "{}|{}",
            self.created_at.timestamp_micros(),
            self.id
        ))
    }

    pub fn decode(s: &str) -> Option<Self> {
        let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(s).ok()?).ok()?;
        let (micros, id) = raw.split_once('|')?;
        Some(Self {
            created_at: DateTime::from_timestamp_micros(micros.parse().ok()?)?,
            id: id.parse().ok()?,
        })
    }
}

/// A wallet's ledger entry, by sequence number: where a page of transactions ended.
pub fn encode_seq(seq: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("seq|{seq}"))
}

pub fn decode_seq(s: &str) -> Option<i64> {
    let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(s).ok()?).ok()?;
    raw.strip_prefix("seq|")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let c = TimeCursor {
            created_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            id: Uuid::now_v7(),
        };
        assert_eq!(TimeCursor::decode(&c.encode()), Some(c));
        assert_eq!(decode_seq(&encode_seq(42)), Some(42));
        assert_eq!(TimeCursor::decode("not-a-cursor"), None);
        assert_eq!(decode_seq(&c.encode()), None);
    }
}
