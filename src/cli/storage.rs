//! Resolving where a repository is and how to reach it: URL options, then the config file's
//! section for that repository, then the `AWS_*` environment (or, without `AWS_ACCESS_KEY_ID`,
//! the systemd credentials `s3-access-key-id` and `s3-secret-access-key`), in that order of
//! precedence.
//!
//! ```toml
//! # $CRMVAULT_CONFIG_DIR/config.toml (must be 0600 when it holds a secret)
//! [repository."s3://offsite-bucket/crm"]
//! endpoint = "https://s3.eu-central-003.backblazeb2.com"
//! region = "eu-central-003"
//! access_key_id = "…"
//! secret_access_key = "…"
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use crmvault::repo_set::RepoSet;
use crmvault::target::{Location, OpenMode, S3Settings, Target};

use super::connection::credential;

/// One `[repository."…"]` section.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RepositorySection {
    endpoint: Option<String>,
    region: Option<String>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    session_token: Option<String>,
    allow_http: Option<bool>,
    virtual_hosted_style: Option<bool>,
    retries: Option<usize>,
    retry_timeout_seconds: Option<u64>,
    instance_credentials: Option<bool>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    repository: BTreeMap<String, RepositorySection>,
}

/// Opens targets with settings from the environment and the config file.
pub struct Storage {
    file: ConfigFile,
    allow_http: bool,
}

impl Storage {
    /// Reads `config.toml` in the config dir, if there is one.
    pub fn load(config_dir: &Path, allow_http: bool) -> Result<Storage> {
        let path = config_dir.join("config.toml");
        let file = match std::fs::read_to_string(&path) {
            Ok(text) => {
                let file: ConfigFile = toml::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
                let has_secret =
                    file.repository.values().any(|s| s.secret_access_key.is_some() || s.session_token.is_some());
                let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path)?.permissions());
                if has_secret && mode & 0o077 != 0 {
                    bail!("{} holds secrets but others can read it; run chmod 600 {}", path.display(), path.display());
                }
                file
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => ConfigFile::default(),
            Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
        };
        Ok(Storage { file, allow_http })
    }

    /// Opens one target.
    pub fn open(&self, location: &str, mode: OpenMode) -> crmvault::Result<Target> {
        let settings = match Location::parse(location)? {
            Location::Local(_) => S3Settings::default(),
            Location::S3 { bucket, prefix, options } => self
                .s3_settings(location, &bucket, &prefix, &options)
                .map_err(|error| crmvault::Error::Invalid(format!("{error:#}")))?,
        };
        Target::open_with(location, mode, &settings)
    }

    /// Opens the repositories at `locations`: all of them, or (`available`) those that can be
    /// opened, leaving the others out ([`RepoSet::open_available`]).
    pub async fn open_set(&self, locations: &[String], available: bool) -> crmvault::Result<RepoSet> {
        let open = |location: &str| self.open(location, OpenMode::Existing);
        if available {
            RepoSet::open_available(locations, open).await
        } else {
            RepoSet::open_all(locations, open).await
        }
    }

    fn s3_settings(
        &self,
        location: &str,
        bucket: &str,
        prefix: &str,
        options: &BTreeMap<String, String>,
    ) -> Result<S3Settings> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        // The key pair from the environment, else from systemd credentials (never mixed).
        let (access_key_id, secret_access_key) = match env("AWS_ACCESS_KEY_ID") {
            Some(id) => (Some(id), env("AWS_SECRET_ACCESS_KEY")),
            None => (credential("s3-access-key-id")?, credential("s3-secret-access-key")?),
        };
        let mut settings = S3Settings {
            endpoint: env("AWS_ENDPOINT_URL").or_else(|| env("AWS_ENDPOINT")),
            region: env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION")),
            access_key_id,
            secret_access_key: secret_access_key.map(Into::into),
            session_token: env("AWS_SESSION_TOKEN").map(Into::into),
            allow_http: self.allow_http,
            ..S3Settings::default()
        };
        let name = if prefix.is_empty() { format!("s3://{bucket}") } else { format!("s3://{bucket}/{prefix}") };
        if let Some(section) = self.file.repository.get(&name).or_else(|| self.file.repository.get(location)) {
            if section.endpoint.is_some() {
                settings.endpoint.clone_from(&section.endpoint);
            }
            if section.region.is_some() {
                settings.region.clone_from(&section.region);
            }
            if section.access_key_id.is_some() {
                settings.access_key_id.clone_from(&section.access_key_id);
                settings.secret_access_key = section.secret_access_key.clone().map(Into::into);
                settings.session_token = section.session_token.clone().map(Into::into);
            }
            settings.allow_http |= section.allow_http.unwrap_or(false);
            settings.virtual_hosted_style = section.virtual_hosted_style.unwrap_or(false);
            settings.max_retries = section.retries.unwrap_or(settings.max_retries);
            settings.retry_timeout = section.retry_timeout_seconds.map_or(settings.retry_timeout, Duration::from_secs);
            settings.instance_credentials = section.instance_credentials.unwrap_or(false);
        }
        for (key, value) in options {
            match key.as_str() {
                "endpoint" => settings.endpoint = Some(value.clone()),
                "region" => settings.region = Some(value.clone()),
                "virtual_hosted_style" => settings.virtual_hosted_style = value == "true",
                "retries" => settings.max_retries = value.parse().context("retries= takes a number")?,
                "retry_timeout" => {
                    settings.retry_timeout =
                        Duration::from_secs(value.parse().context("retry_timeout= takes seconds")?);
                }
                other => bail!(
                    "{location}: unknown option {other:?} (known: endpoint, region, virtual_hosted_style, retries, retry_timeout)"
                ),
            }
        }
        Ok(settings)
    }
}
