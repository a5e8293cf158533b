//! Repository locations as users write them: a folder, `file:///path` or
//! `s3://bucket/prefix?options`, and how to show one without what may be a credential.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::error::{Error, Result};

/// A repository location as the user wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A local folder.
    Local(PathBuf),
    /// `s3://bucket/prefix?option=value…`
    S3 {
        /// Bucket name.
        bucket: String,
        /// Key prefix inside the bucket (may be empty).
        prefix: String,
        /// Options given in the URL's query.
        options: BTreeMap<String, String>,
    },
}

impl Location {
    /// Parses a plain path, a `file:///` URL or an `s3://bucket/prefix` URL. An S3 URL that
    /// holds credentials (`s3://KEY:SECRET@bucket`, `?secret_access_key=…`, anything that looks
    /// like a key, secret, token or signature) is refused, and no error here repeats them.
    pub fn parse(text: &str) -> Result<Location> {
        if text.is_empty() {
            return Err(Error::BadLocation("the repository location is empty".into()));
        }
        if text.starts_with("file://") {
            let shown = displayable(text);
            let url = url::Url::parse(text)
                .map_err(|e| Error::BadLocation(format!("{shown:?} is not a valid file URL: {e}")))?;
            let path = url.to_file_path().map_err(|()| {
                Error::BadLocation(format!("{shown:?} is not a local file URL (expected file:///absolute/path)"))
            })?;
            return Ok(Location::Local(path));
        }
        if text.starts_with("s3://") {
            return Location::parse_s3(text);
        }
        if let Some((scheme, _)) = text.split_once("://") {
            return Err(Error::BadLocation(format!(
                "{:?}: unsupported scheme {scheme}:// (use a folder, file:///path or s3://bucket/prefix)",
                displayable(text)
            )));
        }
        Ok(Location::Local(PathBuf::from(text)))
    }

    fn parse_s3(text: &str) -> Result<Location> {
        // A space is where a place puts the endpoint ([`place`]): `s3://b/crm http://e` typed as
        // a location would open one storage and name another.
        if text.contains(char::is_whitespace) {
            return Err(Error::BadLocation(format!(
                "{:?} holds a space; write one in a prefix as %20",
                displayable(text)
            )));
        }
        let url = url::Url::parse(text)
            .map_err(|e| Error::BadLocation(format!("{:?} is not a valid S3 URL: {e}", displayable(text))))?;
        let bucket = url
            .host_str()
            .filter(|b| !b.is_empty())
            .ok_or_else(|| {
                Error::BadLocation(format!("{:?} names no bucket (expected s3://bucket/prefix)", displayable(text)))
            })?
            .to_string();
        let prefix = url.path().trim_matches('/').to_string();
        let options: BTreeMap<String, String> =
            url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
        let mut found = Vec::new();
        if !url.username().is_empty() || url.password().is_some() {
            found.push("a user name or password before the bucket".to_string());
        }
        found.extend(options.iter().filter(|(key, value)| holds_credential(key, value)).map(|(key, _)| key.clone()));
        if !found.is_empty() {
            let name = if prefix.is_empty() { format!("s3://{bucket}") } else { format!("s3://{bucket}/{prefix}") };
            return Err(Error::BadLocation(format!(
                "refusing the repository location {name} because it holds credentials ({}), and locations \
                 are shown in logs and messages; give them in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \
                 (AWS_SESSION_TOKEN) or in the [repository.\"{name}\"] section of the config file \
                 ($CRMVAULT_CONFIG_DIR/crmvault.toml, mode 0600; or secret_access_key_file)",
                found.join(", ")
            )));
        }
        Ok(Location::S3 { bucket, prefix, options })
    }
}

/// Whether two locations name the same place ([`place`]).
pub fn same_place(a: &str, b: &str) -> bool {
    place(a) == place(b)
}

/// The place a location names, whatever options it carries (`retries`, timeouts) or how a
/// folder is spelled (`/srv/crm/`, `file:///srv/crm`, `crm` from `/srv`): the absolute folder,
/// or the bucket, prefix and endpoint. Text that does not parse is its own place, and so is a
/// place: pins and missed records keep places, and compare them with locations.
pub fn place(text: &str) -> String {
    // `s3://bucket/prefix http://endpoint`, as written below: a URL does not hold a space.
    if let Some((head, endpoint)) = text.rsplit_once(' ')
        && head.starts_with("s3://")
        && !head.contains(['?', ' '])
        && (endpoint.starts_with("http://") || endpoint.starts_with("https://"))
    {
        return place(&format!("{head}?endpoint={endpoint}"));
    }
    match Location::parse(text) {
        Ok(Location::Local(path)) => {
            let path = std::path::absolute(&path).unwrap_or(path);
            let text = path.to_string_lossy();
            if text.len() > 1 { text.trim_end_matches('/').to_string() } else { text.into_owned() }
        }
        Ok(Location::S3 { bucket, prefix, options }) => {
            let endpoint = options.get("endpoint").map(|e| e.trim_end_matches('/')).unwrap_or_default();
            format!("s3://{bucket}/{prefix} {endpoint}").trim_end().to_string()
        }
        Err(_) => text.to_string(),
    }
}

/// Words that make a URL option look like a credential.
const CREDENTIAL_WORDS: [&str; 8] = ["key", "secret", "token", "password", "passwd", "credential", "signature", "auth"];

/// Whether a URL option carries a credential: its name looks like one (`access_key_id`,
/// `secret_access_key`, `session_token`, `X-Amz-Signature`, `sig`…), or its value is a URL with a
/// user or password (an `endpoint=https://key:secret@host`).
fn holds_credential(key: &str, value: &str) -> bool {
    let key = key.to_ascii_lowercase();
    CREDENTIAL_WORDS.iter().any(|word| key.contains(word))
        || key == "sig"
        || url::Url::parse(value).is_ok_and(|url| !url.username().is_empty() || url.password().is_some())
}

/// A location as it may be shown in a message: without anything before an `@` (a user and
/// password) and with the values of options that look like credentials replaced by `***`. For
/// text that may not parse: it errs toward hiding too much.
pub fn displayable(text: &str) -> String {
    let Some((scheme, rest)) = text.split_once("://") else {
        return text.to_string();
    };
    // The last `@` anywhere: a password may hold `/` or `?` when nobody percent-encoded it.
    let rest = rest.rsplit_once('@').map_or(rest, |(_, after)| after);
    let Some((before_query, query)) = rest.split_once('?') else {
        return format!("{scheme}://{rest}");
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) if !holds_credential(key, value) => pair.to_string(),
            Some((key, _)) => format!("{key}=***"),
            None => "***".to_string(),
        })
        .collect();
    format!("{scheme}://{before_query}?{}", pairs.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::{OpenMode, S3Settings, Target};

    /// The parse error of `text`, which must not contain `secret`.
    fn refusal(text: &str, secret: &str) -> String {
        let error = Location::parse(text).expect_err(text).to_string();
        assert!(!error.contains(secret), "{text} → {error}");
        assert!(!error.contains('\n'), "{text} → {error}");
        error
    }

    #[test]
    fn s3_urls_with_credentials_are_refused_without_repeating_them() {
        for (text, secret) in [
            ("s3://AKIAEXAMPLE:wJalrXUtnFEMI@bucket/x", "wJalrXUtnFEMI"),
            ("s3://AKIAEXAMPLE@bucket/x", "AKIAEXAMPLE"),
            ("s3://bucket/x?secret_access_key=wJalrXUtnFEMI&access_key_id=AKIAEXAMPLE", "wJalrXUtnFEMI"),
            ("s3://bucket/x?secret_access_key=wJalrXUtnFEMI&access_key_id=AKIAEXAMPLE", "AKIAEXAMPLE"),
            ("s3://bucket/x?session_token=FwoGZXIvYXdzE", "FwoGZXIvYXdzE"),
            ("s3://bucket/x?AWS_SESSION_TOKEN=FwoGZXIvYXdzE", "FwoGZXIvYXdzE"),
            ("s3://bucket/x?X-Amz-Credential=AKIAEXAMPLE%2F20250101", "AKIAEXAMPLE"),
            ("s3://bucket/x?X-Amz-Signature=0f1e2d3c4b5a", "0f1e2d3c4b5a"),
            ("s3://bucket/x?password=hunter22", "hunter22"),
            ("s3://bucket/x?sig=0f1e2d3c4b5a", "0f1e2d3c4b5a"),
            ("s3://bucket/x?endpoint=https://AKIAEXAMPLE:wJalrXUtnFEMI@minio:9000", "wJalrXUtnFEMI"),
        ] {
            let error = refusal(text, secret);
            assert!(error.starts_with("refusing the repository location s3://bucket/x because it holds credentials ("));
            assert!(error.contains("AWS_SECRET_ACCESS_KEY") && error.contains("[repository.\"s3://bucket/x\"]"));
        }
    }

    #[test]
    fn unparseable_locations_are_shown_without_what_may_be_credentials() {
        // A `/` or `?` in an unencoded password breaks the URL; the message still hides it.
        refusal("s3://AKIAEXAMPLE:wJalr/XUtnFEMI@bucket/x", "wJalr");
        refusal("s3://AKIAEXAMPLE:wJalr?XUtnFEMI@bucket/x", "XUtnFEMI");
        refusal("s3://AKIAEXAMPLE:wJalr XUtnFEMI@/x", "XUtnFEMI");
        refusal("ftp://AKIAEXAMPLE:wJalrXUtnFEMI@host/x", "wJalrXUtnFEMI");
        refusal("file://AKIAEXAMPLE:wJalrXUtnFEMI@host/x", "wJalrXUtnFEMI");
        assert_eq!(displayable("s3://k:s@bucket/x?region=eu&secret=s"), "s3://bucket/x?region=eu&secret=***");
        assert_eq!(displayable("/srv/backups"), "/srv/backups");
    }

    #[test]
    fn s3_urls_without_credentials_keep_their_options() {
        let Location::S3 { bucket, prefix, options } =
            Location::parse("s3://bucket/crm/x?endpoint=http://127.0.0.1:9000&region=eu-1").unwrap()
        else {
            panic!("not S3");
        };
        assert_eq!((bucket.as_str(), prefix.as_str()), ("bucket", "crm/x"));
        assert_eq!(options.get("endpoint").map(String::as_str), Some("http://127.0.0.1:9000"));
        assert_eq!(options.get("region").map(String::as_str), Some("eu-1"));
    }

    #[test]
    fn an_endpoint_with_a_password_is_refused_without_repeating_it() {
        let settings = S3Settings {
            endpoint: Some("https://AKIAEXAMPLE:wJalrXUtnFEMI@minio:9000".into()),
            access_key_id: Some("AKIAEXAMPLE".into()),
            secret_access_key: Some("wJalrXUtnFEMI".to_string().into()),
            ..S3Settings::default()
        };
        let error = Target::open_with("s3://bucket/x", OpenMode::Existing, &settings).expect_err("refused").to_string();
        assert!(error.starts_with("refusing the S3 endpoint https://minio:9000 for s3://bucket/x"), "{error}");
        assert!(!error.contains("wJalrXUtnFEMI") && !error.contains("AKIAEXAMPLE"), "{error}");
    }

    #[test]
    fn the_same_place_is_told_apart_from_another_whatever_its_options() {
        assert!(same_place("/srv/crm/", "file:///srv/crm"));
        assert!(same_place(
            "s3://b/crm?endpoint=http://127.0.0.1:9000&retries=10",
            "s3://b/crm/?retries=2&endpoint=http://127.0.0.1:9000/"
        ));
        assert!(!same_place("s3://b/crm?endpoint=http://127.0.0.1:9000", "s3://b/crm?endpoint=http://127.0.0.1:9001"));
        assert!(!same_place("s3://b/crm", "s3://b/crm2"));
        assert!(!same_place("/srv/crm", "/srv/crm2"));
        // A relative folder is where it is from here.
        let here = std::env::current_dir().unwrap();
        assert_eq!(place("crm/"), here.join("crm").to_string_lossy());
        assert_eq!(place("s3://b/crm?retries=2"), "s3://b/crm");
    }

    #[test]
    fn a_place_is_its_own_place() {
        // Pins key what backups missed by place and look it up with the location given.
        for location in [
            "s3://b/crm?endpoint=http://127.0.0.1:9000&retries=10",
            "s3://b/crm/nightly?endpoint=https://minio.example:9000/",
            "s3://b/crm",
            "s3://b",
            "/srv/crm/",
        ] {
            let kept = place(location);
            assert_eq!(place(&kept), kept, "{location}");
            assert!(same_place(&kept, location), "{location}");
        }
        assert_eq!(place("s3://b/crm?endpoint=http://127.0.0.1:9000"), "s3://b/crm http://127.0.0.1:9000");
        assert!(!same_place("s3://b/crm http://127.0.0.1:9000", "s3://b/crm?endpoint=http://127.0.0.1:9001"));
        // Typed as a location, a place is refused: it would open another storage than it names.
        assert!(Location::parse("s3://b/crm http://127.0.0.1:9000").is_err());
    }
}
