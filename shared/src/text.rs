//! Free text that arrives from outside the process (a broker message, a gateway's answer).
//!
//! JSON happily carries U+0000 and other control characters that PostgreSQL's `text`
//! refuses, and a retry cannot fix such a value; so text is checked where it is decoded,
//! and a message that fails the check is poison, not a batch to retry forever.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why a piece of text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("`{field}` must be {min} to {max} characters, got {got}")]
    Length {
        field: &'static str,
        min: usize,
        max: usize,
        got: usize,
    },
    #[error("`{field}` must not contain control characters (found U+{code:04X})")]
    Control { field: &'static str, code: u32 },
}

/// Checks that `s` has `min..=max` characters and no control character (NUL included).
pub fn check(field: &'static str, s: &str, min: usize, max: usize) -> Result<(), TextError> {
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return Err(TextError::Control {
            field,
            code: u32::from(c),
        });
    }
    let got = s.chars().count();
    if got < min || got > max {
        return Err(TextError::Length {
            field,
            min,
            max,
            got,
        });
    }
    Ok(())
}

/// The gateway's id for a charge: 1 to 255 printable characters. Anything else cannot be
/// stored, so it is refused when a gateway answer or a result message is decoded.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct GatewayReference(String);

impl GatewayReference {
    pub const MAX_CHARS: usize = 255;

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for GatewayReference {
    type Error = TextError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        check("gateway_reference", &s, 1, Self::MAX_CHARS)?;
        Ok(Self(s))
    }
}

impl TryFrom<&str> for GatewayReference {
    type Error = TextError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::try_from(s.to_owned())
    }
}

impl From<GatewayReference> for String {
    fn from(r: GatewayReference) -> Self {
        r.0
    }
}

impl fmt::Display for GatewayReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_and_lengths_are_refused() {
        assert!(check("f", "shop_1", 1, 64).is_ok());
        assert!(check("f", "café ☕", 1, 64).is_ok());
        assert_eq!(
            check("f", "a\u{0}b", 1, 64),
            Err(TextError::Control {
                field: "f",
                code: 0
            })
        );
        assert!(matches!(
            check("f", "a\nb", 1, 64),
            Err(TextError::Control { code: 10, .. })
        ));
        assert!(matches!(
            check("f", "", 1, 64),
            Err(TextError::Length { got: 0, .. })
        ));
        assert!(check("f", &"é".repeat(64), 1, 64).is_ok());
        assert!(check("f", &"é".repeat(65), 1, 64).is_err());
    }

    #[test]
    fn a_gateway_reference_with_nul_does_not_decode() {
        let ok: GatewayReference = serde_json::from_str(r#""ch_1""#).unwrap();
        assert_eq!(ok.as_str(), "ch_1");
        assert!(serde_json::from_str::<GatewayReference>(r#""ch\u0000x""#).is_err());
        assert!(serde_json::from_str::<GatewayReference>(r#""""#).is_err());
        let long = format!("\"{}\"", "x".repeat(256));
        assert!(serde_json::from_str::<GatewayReference>(&long).is_err());
    }
}
