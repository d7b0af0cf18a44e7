//! A small blocking client of the admin API for the CLI verbs. Every failure becomes one line
//! that says what happened and, for 504, that the outcome is unknown.

use super::AdminArgs;
use anyhow::{Result, anyhow, bail};
use serde_json::Value;
use std::time::Duration;

/// How long one CLI request may take before it is reported as failed or unknown.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response body the CLI reads.
const RESPONSE_BYTES_MAX: u64 = 16 * 1024 * 1024;

#[derive(Debug)]
pub struct AdminClient {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

/// A response as the CLI needs it.
struct Answer {
    status: u16,
    body: Vec<u8>,
}

impl AdminClient {
    pub fn new(args: &AdminArgs) -> AdminClient {
        let base = if args.admin.starts_with("http://") {
            args.admin.trim_end_matches('/').to_string()
        } else {
            format!("http://{}", args.admin.trim_end_matches('/'))
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(REQUEST_TIMEOUT))
            .build()
            .into();
        AdminClient {
            base,
            token: args.token.clone(),
            agent,
        }
    }

    pub fn get_json(&self, path: &str) -> Result<Value> {
        let answer = self.send("GET", path, Vec::new())?;
        expect_success(&answer)?;
        parse_json(&answer)
    }

    pub fn post_json(&self, path: &str, body: &Value) -> Result<Value> {
        let answer = self.send("POST", path, body.to_string().into_bytes())?;
        expect_success(&answer)?;
        parse_json(&answer)
    }

    pub fn put_value(&self, key: &str, value: &[u8]) -> Result<Value> {
        let answer = self.send("PUT", &kv_path(key), value.to_vec())?;
        expect_success(&answer)?;
        parse_json(&answer)
    }

    pub fn get_value(&self, key: &str, stale: bool) -> Result<Option<Vec<u8>>> {
        let query = if stale { "?consistency=stale" } else { "" };
        let answer = self.send("GET", &format!("{}{query}", kv_path(key)), Vec::new())?;
        if answer.status == 404 {
            return Ok(None);
        }
        expect_success(&answer)?;
        Ok(Some(answer.body))
    }

    pub fn delete_value(&self, key: &str) -> Result<()> {
        let answer = self.send("DELETE", &kv_path(key), Vec::new())?;
        expect_success(&answer)
    }

    fn send(&self, method: &str, path: &str, body: Vec<u8>) -> Result<Answer> {
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request.body(body)?;
        let mut response = self.agent.run(request).map_err(|error| match error {
            ureq::Error::Timeout(_) => anyhow!(
                "{method} {path}: no answer from {} within {REQUEST_TIMEOUT:?}; the outcome \
                 is unknown",
                self.base
            ),
            other => anyhow!("{method} {path}: cannot reach {}: {other}", self.base),
        })?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(RESPONSE_BYTES_MAX)
            .read_to_vec()?;
        Ok(Answer { status, body })
    }
}

/// Percent-encodes a key into one path segment.
fn kv_path(key: &str) -> String {
    let mut path = String::from("/v1/kv/");
    for byte in key.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            path.push(byte as char);
        } else {
            path.push_str(&format!("%{byte:02X}"));
        }
    }
    path
}

fn expect_success(answer: &Answer) -> Result<()> {
    if (200..300).contains(&answer.status) {
        return Ok(());
    }
    let (code, message) = serde_json::from_slice::<Value>(&answer.body)
        .ok()
        .and_then(|json| {
            let error = json.get("error")?;
            Some((
                error.get("code")?.as_str()?.to_string(),
                error.get("message")?.as_str()?.to_string(),
            ))
        })
        .unwrap_or_else(|| {
            (
                "error".to_string(),
                String::from_utf8_lossy(&answer.body).into_owned(),
            )
        });
    match answer.status {
        504 => bail!(
            "{} {code}: {message} (the write may or may not have applied)",
            answer.status
        ),
        503 => bail!(
            "{} {code}: {message} (nothing was applied; retry later)",
            answer.status
        ),
        status => bail!("{status} {code}: {message}"),
    }
}

fn parse_json(answer: &Answer) -> Result<Value> {
    serde_json::from_slice(&answer.body)
        .map_err(|error| anyhow!("the node answered with invalid JSON: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_encoded_into_one_segment() {
        assert_eq!(kv_path("plain-key_1.x~"), "/v1/kv/plain-key_1.x~");
        assert_eq!(kv_path("a/b c?d"), "/v1/kv/a%2Fb%20c%3Fd");
        assert_eq!(kv_path("é"), "/v1/kv/%C3%A9");
    }

    #[test]
    fn error_bodies_become_one_line() {
        let answer = |status, body: &str| Answer {
            status,
            body: body.as_bytes().to_vec(),
        };
        let unknown = r#"{"error":{"code":"outcome_unknown","message":"timed out"}}"#;
        let text = expect_success(&answer(504, unknown))
            .unwrap_err()
            .to_string();
        assert_eq!(
            text,
            "504 outcome_unknown: timed out (the write may or may not have applied)"
        );
        let text = expect_success(&answer(502, "bad gateway"))
            .unwrap_err()
            .to_string();
        assert_eq!(text, "502 error: bad gateway");
        assert!(expect_success(&answer(200, "")).is_ok());
    }
}
