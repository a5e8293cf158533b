//! Reaching an S3-compatible bucket: settings, checksums on every upload, retries.

use std::sync::Arc;
use std::time::Duration;

use age::secrecy::{ExposeSecret, SecretString};
use object_store::aws::{AmazonS3Builder, Checksum, S3ConditionalPut, S3CopyIfNotExists};
use object_store::prefix::PrefixStore;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};

use super::{Target, displayable};
use crate::error::{Error, Result};

/// How to reach an S3-compatible service. The CLI fills it from URL options, the config file
/// and the `AWS_*` environment; the library never reads the environment itself.
#[derive(Clone)]
pub struct S3Settings {
    /// Endpoint URL for non-AWS services (MinIO, Ceph, Garage, R2, B2, Wasabi…).
    pub endpoint: Option<String>,
    /// Region (default `us-east-1`).
    pub region: Option<String>,
    /// Access key id.
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<SecretString>,
    /// Session token (temporary credentials).
    pub session_token: Option<SecretString>,
    /// Allow `http://` to a non-loopback endpoint.
    pub allow_http: bool,
    /// Use `bucket.host` addressing instead of `host/bucket`.
    pub virtual_hosted_style: bool,
    /// Retries of a failed request.
    pub max_retries: usize,
    /// Give up retrying a request after this long.
    pub retry_timeout: Duration,
    /// Without keys, ask the cloud's instance or container metadata service for credentials.
    /// Off unless asked for: it sends requests to a link-local address.
    pub instance_credentials: bool,
}

impl Default for S3Settings {
    fn default() -> Self {
        S3Settings {
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            allow_http: false,
            virtual_hosted_style: false,
            max_retries: 10,
            retry_timeout: Duration::from_secs(180),
            instance_credentials: false,
        }
    }
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key.as_ref().map(|_| "***"))
            .field("allow_http", &self.allow_http)
            .finish_non_exhaustive()
    }
}

/// Announces the SHA-256 checksums object_store sends, which buckets with S3 Object Lock
/// require on every upload (a retention period cannot be set on an unchecked body).
fn checksum_headers() -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    headers.insert("x-amz-sdk-checksum-algorithm", http::HeaderValue::from_static("SHA256"));
    headers
}

/// Whether a URL's host is this machine (plain HTTP is fine there).
fn is_loopback(endpoint: &url::Url) -> bool {
    match endpoint.host() {
        Some(url::Host::Domain(name)) => name == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

impl Target {
    /// Opens a bucket (under `prefix`) with `settings`.
    pub(super) fn open_s3(location: &str, bucket: &str, prefix: &str, settings: &S3Settings) -> Result<Target> {
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(settings.region.clone().unwrap_or_else(|| "us-east-1".into()))
            .with_virtual_hosted_style_request(settings.virtual_hosted_style)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            // The server checks every upload against its SHA-256: a body cut short is refused.
            .with_checksum_algorithm(Checksum::SHA256)
            .with_copy_if_not_exists(S3CopyIfNotExists::Multipart)
            // Deletes one object a request (`DELETE /key`), not in batches (`POST /?delete`):
            // a refused delete is then the request's 403, which object_store reports as
            // `PermissionDenied` (`target::is_refusal`), where a batch answers 200 with an
            // AccessDenied per key that it reports as a generic error. Every S3-compatible
            // service has the single delete; some lack the batch.
            .with_disable_bulk_delete(true)
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(200),
                    max_backoff: Duration::from_secs(20),
                    base: 2.0,
                },
                max_retries: settings.max_retries,
                retry_timeout: settings.retry_timeout,
            })
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(10))
                    .with_timeout(Duration::from_secs(300))
                    .with_default_headers(checksum_headers()),
            );
        if let Some(endpoint) = &settings.endpoint {
            let url = url::Url::parse(endpoint).map_err(|e| {
                Error::BadLocation(format!("S3 endpoint {:?} for {location} is not a URL: {e}", displayable(endpoint)))
            })?;
            if !url.username().is_empty() || url.password().is_some() {
                return Err(Error::BadLocation(format!(
                    "refusing the S3 endpoint {} for {location} because it holds a user or password; give \
                     credentials in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or the config file",
                    displayable(endpoint)
                )));
            }
            let plain = url.scheme() == "http";
            if plain && !settings.allow_http && !is_loopback(&url) {
                return Err(Error::BadLocation(format!(
                    "refusing plain HTTP to {endpoint} for {location}: credentials and backups would cross the network \
                     unencrypted; use https://, or pass --allow-http if this network is trusted"
                )));
            }
            builder = builder.with_endpoint(endpoint.trim_end_matches('/')).with_allow_http(plain);
        }
        match (&settings.access_key_id, &settings.secret_access_key) {
            (Some(key), Some(_)) => builder = builder.with_access_key_id(key),
            (Some(_), None) | (None, Some(_)) => {
                return Err(Error::BadLocation(format!(
                    "{location}: give both an access key id and a secret access key (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
                )));
            }
            (None, None) if settings.instance_credentials => {}
            (None, None) => {
                return Err(Error::BadLocation(format!(
                    "{location}: no S3 credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a [repository] \
                     section in the config file (instance_credentials = true to use the cloud's metadata service)"
                )));
            }
        }
        if let Some(secret) = &settings.secret_access_key {
            builder = builder.with_secret_access_key(secret.expose_secret());
        }
        if let Some(token) = &settings.session_token {
            builder = builder.with_token(token.expose_secret());
        }
        let store = builder.build().map_err(|e| Error::BadLocation(format!("{location}: {e}")))?;
        let store: Arc<dyn ObjectStore> =
            if prefix.is_empty() { Arc::new(store) } else { Arc::new(PrefixStore::new(store, prefix)) };
        Ok(Target { store, location: location.to_string(), local: None, create_retries: settings.max_retries })
    }
}
