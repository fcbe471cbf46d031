//! The `name` service's JSON answer, the one contract between the two services: `name` writes
//! it, `hello` reads and checks it before relaying any of it.

use serde::{Deserialize, Serialize};

/// Longest first name accepted from an answer, in characters.
pub const MAX_NAME_CHARS: usize = 64;

/// Longest instance name accepted from an answer, in characters.
pub const MAX_INSTANCE_CHARS: usize = 128;

/// `GET /` of `name` with `Accept: application/json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameAnswer {
    /// The chosen first name.
    pub name: String,
    /// The instance that chose it.
    pub instance: String,
}

impl NameAnswer {
    /// Decodes an answer and checks its fields: each non-empty, within its length, and free of
    /// control characters, so that nothing a broken or hostile instance sends is relayed as
    /// it came.
    pub fn decode(body: &[u8]) -> Result<Self, String> {
        let answer: Self = serde_json::from_slice(body).map_err(|err| err.to_string())?;
        check("name", &answer.name, MAX_NAME_CHARS)?;
        check("instance", &answer.instance, MAX_INSTANCE_CHARS)?;
        Ok(answer)
    }
}

fn check(field: &str, value: &str, max_chars: usize) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{field} is empty"));
    }
    if value.chars().count() > max_chars {
        return Err(format!("{field} is longer than {max_chars} characters"));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{field} has control characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_good_answer_decodes() {
        let answer = NameAnswer::decode(br#"{"name":"Zo\u00eb","instance":"3f2a9c1e@eu-west-1b"}"#);
        assert_eq!(answer.unwrap().name, "Zoë");
    }

    #[test]
    fn oversized_empty_or_control_fields_are_refused() {
        let long = format!(r#"{{"name":"{}","instance":"n1"}}"#, "a".repeat(65));
        for body in [
            long.as_str(),
            r#"{"name":"","instance":"n1"}"#,
            r#"{"name":"Ann\u001b[2J","instance":"n1"}"#,
            r#"{"name":"Ann"}"#,
            "not json",
        ] {
            assert!(NameAnswer::decode(body.as_bytes()).is_err(), "{body}");
        }
    }
}
