//! An AWS Secrets Manager client for `GetSecretValue`, over the service's JSON 1.1 protocol:
//! `POST /` with `X-Amz-Target: secretsmanager.GetSecretValue`, signed with Signature
//! Version 4 (the signing is [`sign_v4`], checked against AWS's published example).
//!
//! Hand-written because the official SDK brings its own HTTP and runtime stack for one call;
//! HMAC and SHA-256 come from aws-lc-rs, already the workspace's crypto.

use std::time::Duration;

use aws_lc_rs::{digest, hmac};
use base64::Engine as _;
use liquid_kit::Secret;
use serde_json::Value;

use crate::config::AwsSection;
use crate::error::PoolError;

/// Credentials and scope of a SigV4 signature.
#[derive(Debug, Clone)]
pub struct SigningParams<'a> {
    /// Access key id.
    pub access_key_id: &'a str,
    /// Secret access key.
    pub secret_access_key: &'a Secret<String>,
    /// Region.
    pub region: &'a str,
    /// Service name (`secretsmanager`).
    pub service: &'a str,
    /// `YYYYMMDDTHHMMSSZ`.
    pub amz_date: &'a str,
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, data))
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
        .as_ref()
        .to_vec()
}

/// Computes the `Authorization` header of a request. `headers` are (lowercase name, value)
/// and must include `host` and `x-amz-date`; `query` is the canonical query string (sorted,
/// encoded) and `path` the canonical URI.
pub fn sign_v4(
    method: &str,
    path: &str,
    query: &str,
    headers: &[(&str, &str)],
    payload: &[u8],
    p: &SigningParams<'_>,
) -> String {
    let mut headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    headers.sort();
    let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed_headers = headers
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical_request = format!(
        "{method}\n{path}\n{query}\n{canonical_headers}\n{signed_headers}\n{}",
        sha256_hex(payload)
    );
    let date = p.amz_date.get(..8).unwrap_or_default();
    let scope = format!("{date}/{}/{}/aws4_request", p.region, p.service);
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{}\n{scope}\n{}",
        p.amz_date,
        sha256_hex(canonical_request.as_bytes())
    );
    let k_date = hmac_sha256(
        format!("AWS4{}", p.secret_access_key.expose()).as_bytes(),
        date.as_bytes(),
    );
    let k_region = hmac_sha256(&k_date, p.region.as_bytes());
    let k_service = hmac_sha256(&k_region, p.service.as_bytes());
    let k_signing = hmac_sha256(&k_service, b"aws4_request");
    let signature = hex::encode(hmac_sha256(&k_signing, string_to_sign.as_bytes()));
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
        p.access_key_id
    )
}

/// Reads secrets from AWS Secrets Manager.
pub struct AwsSecretsClient {
    http: reqwest::Client,
    endpoint: String,
    host: String,
    region: String,
    access_key_id: String,
    secret_access_key: Secret<String>,
    session_token: Secret<String>,
}

impl AwsSecretsClient {
    /// A client for `[secrets.aws]`.
    pub fn new(config: &AwsSection) -> Result<AwsSecretsClient, PoolError> {
        let endpoint = if config.endpoint.is_empty() {
            format!("https://secretsmanager.{}.amazonaws.com", config.region)
        } else {
            config.endpoint.trim_end_matches('/').to_owned()
        };
        let host = endpoint
            .split_once("://")
            .map(|(_, rest)| rest.split('/').next().unwrap_or_default().to_owned())
            .unwrap_or_default();
        if host.is_empty() {
            return Err(PoolError::invalid("secrets.aws.endpoint", "has no host"));
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| PoolError::invalid("secrets.aws.endpoint", e.to_string()))?;
        Ok(AwsSecretsClient {
            http,
            endpoint,
            host,
            region: config.region.clone(),
            access_key_id: config.access_key_id.clone(),
            secret_access_key: config.secret_access_key.clone(),
            session_token: config.session_token.clone(),
        })
    }

    /// The secret's string (or one key of it when it holds a JSON object).
    pub async fn get(&self, id: &str, key: Option<&str>) -> Result<Secret<String>, String> {
        let body = serde_json::to_vec(&serde_json::json!({ "SecretId": id }))
            .map_err(|e| e.to_string())?;
        let amz_date = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
        let target = "secretsmanager.GetSecretValue";
        let content_type = "application/x-amz-json-1.1";
        let mut headers = vec![
            ("content-type", content_type),
            ("host", self.host.as_str()),
            ("x-amz-date", amz_date.as_str()),
            ("x-amz-target", target),
        ];
        if !self.session_token.is_empty() {
            headers.push(("x-amz-security-token", self.session_token.expose()));
        }
        let authorization = sign_v4(
            "POST",
            "/",
            "",
            &headers,
            &body,
            &SigningParams {
                access_key_id: &self.access_key_id,
                secret_access_key: &self.secret_access_key,
                region: &self.region,
                service: "secretsmanager",
                amz_date: &amz_date,
            },
        );
        let mut req = self
            .http
            .post(format!("{}/", self.endpoint))
            .header("content-type", content_type)
            .header("x-amz-date", &amz_date)
            .header("x-amz-target", target)
            .header("authorization", authorization)
            .body(body);
        if !self.session_token.is_empty() {
            req = req.header("x-amz-security-token", self.session_token.expose());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| format!("aws secrets manager: {e}"))?;
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let kind = v
                .get("__type")
                .and_then(Value::as_str)
                .unwrap_or("error")
                .rsplit('#')
                .next()
                .unwrap_or("error")
                .to_owned();
            let message = v
                .get("message")
                .or_else(|| v.get("Message"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            return Err(format!(
                "aws secrets manager answered {status} {kind}: {message}"
            ));
        }
        let text = match (v.get("SecretString"), v.get("SecretBinary")) {
            (Some(Value::String(s)), _) => s.clone(),
            (_, Some(Value::String(b))) => {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .map_err(|_| "aws secret binary is not base64".to_owned())?;
                String::from_utf8(raw).map_err(|_| "aws secret binary is not utf-8".to_owned())?
            }
            _ => return Err("aws answered without SecretString or SecretBinary".into()),
        };
        match key {
            None => Ok(Secret::new(text)),
            Some(k) => {
                let obj: Value = serde_json::from_str(&text)
                    .map_err(|_| format!("aws secret {id} is not a JSON object; drop `#{k}`"))?;
                match obj.get(k) {
                    Some(Value::String(s)) => Ok(Secret::new(s.clone())),
                    Some(Value::Null) | None => Err(format!("aws secret {id} has no key `{k}`")),
                    Some(other) => Ok(Secret::new(other.to_string())),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS's published Signature Version 4 example (IAM ListUsers, 2015-08-30), from the
    /// "Create a signed AWS API request" guide.
    #[test]
    fn signature_matches_the_published_example() {
        let secret = Secret::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".to_owned());
        let auth = sign_v4(
            "GET",
            "/",
            "Action=ListUsers&Version=2010-05-08",
            &[
                (
                    "content-type",
                    "application/x-www-form-urlencoded; charset=utf-8",
                ),
                ("host", "iam.amazonaws.com"),
                ("x-amz-date", "20150830T123600Z"),
            ],
            b"",
            &SigningParams {
                access_key_id: "AKIDEXAMPLE",
                secret_access_key: &secret,
                region: "us-east-1",
                service: "iam",
                amz_date: "20150830T123600Z",
            },
        );
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, \
             Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
        );
    }
}
