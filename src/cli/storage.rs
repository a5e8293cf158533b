//! Resolving where a repository is and how to reach it: URL options, then the config file's
//! section for that repository, then the `AWS_*` environment (or, without `AWS_ACCESS_KEY_ID`,
//! the systemd credentials `s3-access-key-id` and `s3-secret-access-key`), in that order of
//! precedence.
//!
//! ```toml
//! # crmvault.toml, or the old $CRMVAULT_CONFIG_DIR/config.toml (0600 when it holds a secret)
//! [repository."s3://offsite-bucket/crm"]
//! endpoint = "https://s3.eu-central-003.backblazeb2.com"
//! region = "eu-central-003"
//! access_key_id = "…"
//! secret_access_key_file = "/run/credentials/crmvault-backup.service/s3-secret"
//! ```
//!
//! Reading the files is cli/profile.rs's job; this module takes their sections.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use crmvault::repo_set::RepoSet;
use crmvault::target::{Location, OpenMode, S3Settings, Target};

use super::secrets::credential;

/// One `[repository."…"]` section.
#[derive(Debug, Default, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RepositorySection {
    #[serde(skip_serializing_if = "Option::is_none")]
    endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    region: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    access_key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) secret_access_key: Option<String>,
    /// A file holding the secret access key (not readable by others), e.g. a systemd credential.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) secret_access_key_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) session_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    allow_http: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    virtual_hosted_style: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retries: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_timeout_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    instance_credentials: Option<bool>,
}

impl RepositorySection {
    /// The section with its secrets replaced by `***`, for `config show`.
    pub fn masked(&self) -> RepositorySection {
        let hide = |secret: &Option<String>| secret.as_ref().map(|_| crmvault::postgres::conninfo::HIDDEN.to_string());
        RepositorySection {
            secret_access_key: hide(&self.secret_access_key),
            session_token: hide(&self.session_token),
            ..self.clone()
        }
    }
}

/// The `[repository."…"]` sections of the config files, by location; or why they could not be
/// read (said when a repository is opened, so that commands that open none still run).
pub type Sections = std::result::Result<BTreeMap<String, RepositorySection>, String>;

/// Opens targets with settings from the environment and the config file.
pub struct Storage {
    sections: Sections,
    allow_http: bool,
}

impl Storage {
    /// Storage with these config file sections.
    pub fn new(sections: Sections, allow_http: bool) -> Storage {
        Storage { sections, allow_http }
    }

    /// Opens one target.
    pub fn open(&self, location: &str, mode: OpenMode) -> crmvault::Result<Target> {
        let sections = self.sections.as_ref().map_err(|error| crmvault::Error::Invalid(error.clone()))?;
        let settings = match Location::parse(location)? {
            Location::Local(_) => S3Settings::default(),
            Location::S3 { bucket, prefix, options } => self
                .s3_settings(sections, location, &bucket, &prefix, &options)
                .map_err(|error| crmvault::Error::Invalid(format!("{error:#}")))?,
        };
        Target::open_with(location, mode, &settings)
    }

    /// Opens the targets `init` makes a repository on, creating missing folders, once every one
    /// that exists already was looked at and found empty: a refused init leaves no folder.
    pub async fn open_new(&self, locations: &[String]) -> crmvault::Result<Vec<Target>> {
        for location in locations {
            match self.open(location, OpenMode::Existing) {
                Ok(target) => crmvault::repo::ensure_empty(&target).await?,
                // Not there yet (or not a folder: creating it says so).
                Err(crmvault::Error::NotARepository { .. }) => {}
                Err(error) => return Err(error),
            }
        }
        locations.iter().map(|location| self.open(location, OpenMode::Create)).collect()
    }

    /// Opens the repositories at `locations`: all of them, or (`available`) those that can be
    /// opened, leaving the others out ([`RepoSet::open_available`]).
    pub async fn open_set(&self, locations: &[String], available: bool) -> crmvault::Result<RepoSet> {
        let open = |location: &str| self.open(location, OpenMode::Existing);
        let config_dir = super::config_dir().ok();
        let pins = crmvault::trust::Pins(config_dir.as_deref());
        if available {
            RepoSet::open_available(locations, open, &pins).await
        } else {
            RepoSet::open_all(locations, open, &pins).await
        }
    }

    /// Every location's repository as its storage presents it, whatever this machine pinned
    /// there (`fingerprint`: what to compare with the admins' records).
    pub async fn open_set_as_stored(&self, locations: &[String]) -> crmvault::Result<RepoSet> {
        let open = |location: &str| self.open(location, OpenMode::Existing);
        RepoSet::open_all(locations, open, &|_: &str| None).await
    }

    fn s3_settings(
        &self,
        sections: &BTreeMap<String, RepositorySection>,
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
        if let Some(section) = sections.get(&name).or_else(|| sections.get(location)) {
            if section.endpoint.is_some() {
                settings.endpoint.clone_from(&section.endpoint);
            }
            if section.region.is_some() {
                settings.region.clone_from(&section.region);
            }
            if section.access_key_id.is_some() {
                settings.access_key_id.clone_from(&section.access_key_id);
                settings.secret_access_key = match &section.secret_access_key_file {
                    Some(path) => Some(super::secrets::read_secret_file(path)?.into()),
                    None => section.secret_access_key.clone().map(Into::into),
                };
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
