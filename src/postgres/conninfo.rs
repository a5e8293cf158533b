//! Reading connection strings the way libpq does, for two jobs tokio-postgres cannot do for us:
//! showing a string with its secrets hidden, and taking out the TLS options tokio-postgres does
//! not know (`sslmode=verify-*`, `sslrootcert`).
//!
//! Two syntaxes: `postgres://` (or `postgresql://`) URLs, and libpq's keyword/value strings
//! (`host=db port = 5432 password='my s3cret'`: spaces around `=`, values in single quotes with
//! `\'` and `\\` escapes). A string that cannot be read is shown only up to where reading
//! stopped: whatever follows may be a password typed in a way we did not understand.

use std::fmt;
use std::ops::Range;

/// Keywords whose values are never shown, compared without regard to case.
const SECRET_KEYWORDS: [&str; 2] = ["password", "sslpassword"];

/// What a hidden value is shown as.
pub const HIDDEN: &str = "***";

/// libpq's keywords whose values are shown (PostgreSQL 17's list, but the secrets). Any other
/// keyword's value is hidden too: an unknown keyword is as often a password's misspelling
/// (`pasword=…`, `passwd=…`) as anything, and the error it causes quotes the whole string.
const SHOWN_KEYWORDS: [&str; 42] = [
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "passfile",
    "channel_binding",
    "connect_timeout",
    "client_encoding",
    "options",
    "application_name",
    "fallback_application_name",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "replication",
    "gssencmode",
    "sslmode",
    "sslnegotiation",
    "requiressl",
    "sslcompression",
    "sslcert",
    "sslkey",
    "sslcertmode",
    "sslrootcert",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "requirepeer",
    "require_auth",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "krbsrvname",
    "gsslib",
    "gssdelegation",
    "service",
    "target_session_attrs",
    "load_balance_hosts",
    "min_protocol_version",
    "max_protocol_version",
];

/// Whether a keyword's value is hidden when the string is shown: a secret's, or one libpq does
/// not know.
fn is_secret(keyword: &str) -> bool {
    SECRET_KEYWORDS.iter().any(|secret| keyword.eq_ignore_ascii_case(secret)) || !SHOWN_KEYWORDS.contains(&keyword)
}

/// Why a connection string could not be read. Says where, never what: the text may hold a
/// password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyntaxError {
    /// A keyword is not followed by `=`.
    MissingEquals {
        /// Byte offset of the keyword.
        at: usize,
    },
    /// A `=` has no keyword before it.
    MissingKeyword {
        /// Byte offset of the `=`.
        at: usize,
    },
    /// The text ends after `keyword =`.
    MissingValue {
        /// Byte offset of the keyword.
        at: usize,
    },
    /// A quoted value has no closing quote.
    UnterminatedQuote {
        /// Byte offset of the opening quote.
        at: usize,
    },
    /// A URL that is not `scheme://[user[:password]@]host[:port][,…][/dbname][?key=value&…]`
    /// with a single `@` (the one after the password) and every `key` followed by `=`.
    MalformedUrl,
    /// A `%` not followed by two hex digits, or an escape that is not UTF-8.
    BadPercentEncoding,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyntaxError::MissingEquals { at } => write!(f, "the keyword at byte {at} is not followed by `=`"),
            SyntaxError::MissingKeyword { at } => write!(f, "the `=` at byte {at} has no keyword before it"),
            SyntaxError::MissingValue { at } => write!(f, "the keyword at byte {at} has no value"),
            SyntaxError::UnterminatedQuote { at } => write!(f, "the quote at byte {at} is never closed"),
            SyntaxError::MalformedUrl => f.write_str(
                "not a URL of the form postgres://user:password@host:port/dbname?key=value \
                 (write @ as %40 except after the password, and / in a password as %2F)",
            ),
            SyntaxError::BadPercentEncoding => f.write_str("a %-escape is not two hex digits of UTF-8"),
        }
    }
}

impl std::error::Error for SyntaxError {}

/// `postgres://` or `postgresql://` when `text` is a URL rather than a keyword/value string
/// (libpq's test).
fn url_prefix(text: &str) -> Option<&'static str> {
    ["postgres://", "postgresql://"].into_iter().find(|prefix| text.starts_with(prefix))
}

/// Any text (an error message, a usage error quoting an argument) with what looks like a
/// password hidden: the password of every `scheme://user:password@host` in it, and the value of
/// every `keyword=value` whose keyword speaks of one (`password`, `passwd`, `pwd`, `secret`,
/// misspelt ones too). For text that is not only a connection string, where [`redact`] cannot
/// tell what is what: a URL with a space before it, another scheme's URL, a usage error. And
/// every age identity (`AGE-SECRET-KEY-1…`, given where a recipient was asked for, say).
pub fn scrub(text: &str) -> String {
    let text = hide_age_identities(text);
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while !rest.is_empty() {
        // The next place to look at: a URL's authority, or a `=`.
        let url = rest.find("://").map(|at| at + 3);
        let equals = rest.find('=');
        match (url, equals) {
            (Some(at), equals) if equals.is_none_or(|equals| at <= equals) => {
                out.push_str(&rest[..at]);
                rest = &rest[at..];
                let end = rest.find(|c: char| c.is_whitespace() || "/?#'\"`".contains(c)).unwrap_or(rest.len());
                let authority = &rest[..end];
                match (authority.rfind('@'), authority.find(':')) {
                    (Some(at_sign), Some(colon)) if colon < at_sign => {
                        out.push_str(&authority[..=colon]);
                        out.push_str(HIDDEN);
                        out.push_str(&authority[at_sign..]);
                    }
                    _ => out.push_str(authority),
                }
                rest = &rest[end..];
            }
            (_, Some(at)) => {
                let keyword_start = rest[..at]
                    .trim_end()
                    .rfind(|c: char| !(c.is_alphanumeric() || c == '_' || c == '%'))
                    .map_or(0, |i| i + rest[i..].chars().next().map_or(1, char::len_utf8));
                let keyword = rest[keyword_start..at].trim().to_lowercase();
                out.push_str(&rest[..=at]);
                rest = &rest[at + 1..];
                if ["pas", "pwd", "pw", "secret"].iter().any(|word| keyword.contains(word)) {
                    let value = rest.len() - rest.trim_start().len();
                    out.push_str(&rest[..value]);
                    rest = &rest[value..];
                    let end = match rest.chars().next() {
                        Some(quote @ ('\'' | '"')) => {
                            // To the closing quote not escaped by a backslash (or the end).
                            let mut escaped = false;
                            rest.char_indices()
                                .skip(1)
                                .find(|&(_, c)| {
                                    let closes = c == quote && !escaped;
                                    escaped = c == '\\' && !escaped;
                                    closes
                                })
                                .map_or(rest.len(), |(i, _)| i + 1)
                        }
                        _ => rest.find(|c: char| c.is_whitespace() || "&'\"`,;)".contains(c)).unwrap_or(rest.len()),
                    };
                    if end > 0 {
                        out.push_str(HIDDEN);
                    }
                    rest = &rest[end..];
                }
            }
            _ => {
                out.push_str(rest);
                rest = "";
            }
        }
    }
    out
}

/// `text` with the key of every age identity in it (`AGE-SECRET-KEY-1…`, any case) hidden.
fn hide_age_identities(text: &str) -> String {
    const PREFIX: &str = "age-secret-key-";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.to_ascii_lowercase().find(PREFIX) {
        let key = at + PREFIX.len();
        out.push_str(&rest[..key]);
        rest = &rest[key..];
        let end = rest.find(|c: char| !c.is_ascii_alphanumeric()).unwrap_or(rest.len());
        if end > 0 {
            out.push_str(HIDDEN);
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// A connection string with every password (the URL's, `password`, `sslpassword`) replaced by
/// `***`. What cannot be read is left out and said so.
pub fn redact(text: &str) -> String {
    scrub(&redact_string(text))
}

/// [`redact`], before what looks like a password elsewhere in what it shows is hidden too (a
/// keyword it took for one, in a string libpq reads otherwise).
fn redact_string(text: &str) -> String {
    if let Some(prefix) = url_prefix(text) {
        return match UrlParts::split(text, prefix) {
            Ok(url) => url.redacted(),
            // The parse error says why; the message it ends up in says it once.
            Err(_) => format!("{prefix}(malformed URL, not shown)"),
        };
    }
    let (parameters, error) = keyword_values(text);
    let mut shown: Vec<String> = parameters
        .iter()
        .map(|parameter| {
            if is_secret(parameter.keyword) {
                format!("{}={HIDDEN}", parameter.keyword)
            } else {
                text[parameter.span.clone()].to_string()
            }
        })
        .collect();
    if let Some(error) = error {
        shown.push(format!("(rest not shown: {error})"));
    }
    shown.join(" ")
}

/// The TLS options of a connection string, and the string without them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    /// The connection string without `sslmode` and `sslrootcert`, for tokio-postgres.
    pub rest: String,
    /// `sslmode`, as written.
    pub sslmode: Option<String>,
    /// `sslrootcert`, as written.
    pub sslrootcert: Option<String>,
}

/// Takes `sslmode` and `sslrootcert` out of a connection string: tokio-postgres knows neither
/// `verify-ca`/`verify-full` nor `sslrootcert`.
pub fn take_tls_options(text: &str) -> Result<TlsOptions, SyntaxError> {
    let mut options = TlsOptions { rest: String::new(), sslmode: None, sslrootcert: None };
    if let Some(prefix) = url_prefix(text) {
        let url = UrlParts::split(text, prefix)?;
        let mut kept = Vec::new();
        for pair in &url.query {
            match percent_decode(pair.key)?.as_str() {
                "sslmode" => options.sslmode = Some(percent_decode(pair.value)?),
                "sslrootcert" => options.sslrootcert = Some(percent_decode(pair.value)?),
                _ => kept.push(pair.raw),
            }
        }
        options.rest = url.before_query();
        if !kept.is_empty() {
            options.rest.push('?');
            options.rest.push_str(&kept.join("&"));
        }
        return Ok(options);
    }
    let (parameters, error) = keyword_values(text);
    if let Some(error) = error {
        return Err(error);
    }
    let mut kept = Vec::new();
    for parameter in parameters {
        match parameter.keyword {
            "sslmode" => options.sslmode = Some(parameter.value),
            "sslrootcert" => options.sslrootcert = Some(parameter.value),
            _ => kept.push(&text[parameter.span]),
        }
    }
    options.rest = kept.join(" ");
    Ok(options)
}

/// One `keyword = value` of a keyword/value string.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Parameter<'a> {
    keyword: &'a str,
    /// The value with quotes and escapes removed.
    value: String,
    /// From the keyword's first byte to the value's last.
    span: Range<usize>,
}

/// Reads a keyword/value string as libpq (and tokio-postgres) do: the parameters up to the
/// first error, and that error.
fn keyword_values(text: &str) -> (Vec<Parameter<'_>>, Option<SyntaxError>) {
    let mut reader = Reader { text, position: 0 };
    let mut parameters = Vec::new();
    loop {
        match reader.parameter() {
            Ok(Some(parameter)) => parameters.push(parameter),
            Ok(None) => return (parameters, None),
            Err(error) => return (parameters, Some(error)),
        }
    }
}

struct Reader<'a> {
    text: &'a str,
    position: usize,
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<char> {
        self.text[self.position..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.position += c.len_utf8();
        Some(c)
    }

    fn skip_whitespace(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.bump();
        }
    }

    fn parameter(&mut self) -> Result<Option<Parameter<'a>>, SyntaxError> {
        self.skip_whitespace();
        let start = self.position;
        while self.peek().is_some_and(|c| !c.is_whitespace() && c != '=') {
            self.bump();
        }
        let keyword = &self.text[start..self.position];
        if keyword.is_empty() {
            // tokio-postgres silently stops at a `=` without a keyword; what follows could be
            // anything, so it is an error here.
            return match self.peek() {
                None => Ok(None),
                Some(_) => Err(SyntaxError::MissingKeyword { at: start }),
            };
        }
        self.skip_whitespace();
        if self.bump() != Some('=') {
            return Err(SyntaxError::MissingEquals { at: start });
        }
        self.skip_whitespace();
        let value = match self.peek() {
            None => return Err(SyntaxError::MissingValue { at: start }),
            Some('\'') => self.quoted_value()?,
            Some(_) => self.plain_value(),
        };
        Ok(Some(Parameter { keyword, value, span: start..self.position }))
    }

    /// Up to the next whitespace; a backslash takes the next character as it is.
    fn plain_value(&mut self) -> String {
        let mut value = String::new();
        while let Some(c) = self.peek() {
            if c.is_whitespace() {
                break;
            }
            self.bump();
            if c == '\\' {
                value.extend(self.bump());
            } else {
                value.push(c);
            }
        }
        value
    }

    /// From `'` to the next `'` not escaped by a backslash.
    fn quoted_value(&mut self) -> Result<String, SyntaxError> {
        let at = self.position;
        self.bump();
        let mut value = String::new();
        loop {
            match self.bump() {
                None => return Err(SyntaxError::UnterminatedQuote { at }),
                Some('\'') => return Ok(value),
                Some('\\') => match self.bump() {
                    Some(c) => value.push(c),
                    None => return Err(SyntaxError::UnterminatedQuote { at }),
                },
                Some(c) => value.push(c),
            }
        }
    }
}

/// One `key=value` of a URL's query, still percent-encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct QueryPair<'a> {
    key: &'a str,
    value: &'a str,
    raw: &'a str,
}

/// A URL cut where libpq cuts it, refused when libpq and tokio-postgres could disagree about
/// where the password ends.
#[derive(Debug)]
struct UrlParts<'a> {
    prefix: &'a str,
    /// `user` or `user:password`, without the `@`.
    credentials: Option<&'a str>,
    /// `host:port,…` and `/dbname`.
    location: &'a str,
    query: Vec<QueryPair<'a>>,
}

impl<'a> UrlParts<'a> {
    fn split(text: &'a str, prefix: &'a str) -> Result<UrlParts<'a>, SyntaxError> {
        let body = &text[prefix.len()..];
        // libpq reads credentials up to an `@` that comes before any `/`; tokio-postgres up to
        // the first `@` anywhere. With no other `@` in the URL they agree, and the password
        // (which may hold `?`) is exactly what precedes that `@`.
        let (credentials, rest) = match body.find(['@', '/']) {
            Some(at) if body.as_bytes()[at] == b'@' => (Some(&body[..at]), &body[at + 1..]),
            _ => (None, body),
        };
        if rest.contains('@') {
            return Err(SyntaxError::MalformedUrl);
        }
        let (location, query) = match rest.split_once('?') {
            Some((location, query)) => (location, Some(query)),
            None => (rest, None),
        };
        let query = match query {
            None => Vec::new(),
            Some(query) => query
                .split('&')
                .filter(|raw| !raw.is_empty())
                .map(|raw| {
                    raw.split_once('=')
                        .map(|(key, value)| QueryPair { key, value, raw })
                        .ok_or(SyntaxError::MalformedUrl)
                })
                .collect::<Result<_, _>>()?,
        };
        Ok(UrlParts { prefix, credentials, location, query })
    }

    /// The URL without its query.
    fn before_query(&self) -> String {
        match self.credentials {
            Some(credentials) => format!("{}{credentials}@{}", self.prefix, self.location),
            None => format!("{}{}", self.prefix, self.location),
        }
    }

    fn redacted(&self) -> String {
        let mut shown = self.prefix.to_string();
        if let Some(credentials) = self.credentials {
            let user = credentials.split_once(':').map_or(credentials, |(user, _)| user);
            shown.push_str(user);
            if user.len() < credentials.len() {
                shown.push(':');
                shown.push_str(HIDDEN);
            }
            shown.push('@');
        }
        shown.push_str(self.location);
        let pairs: Vec<String> = self
            .query
            .iter()
            .map(|pair| {
                // An undecodable key is shown hidden: it might spell `password`.
                let secret = percent_decode(pair.key).map_or(true, |key| is_secret(&key));
                if secret { format!("{}={HIDDEN}", pair.key) } else { pair.raw.to_string() }
            })
            .collect();
        if !pairs.is_empty() {
            shown.push('?');
            shown.push_str(&pairs.join("&"));
        }
        shown
    }
}

/// Decodes `%XX` escapes (a `+` stays a `+`, as in libpq).
fn percent_decode(text: &str) -> Result<String, SyntaxError> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex = bytes.get(index + 1..index + 3).ok_or(SyntaxError::BadPercentEncoding)?;
            let hex = std::str::from_utf8(hex).map_err(|_| SyntaxError::BadPercentEncoding)?;
            decoded.push(u8::from_str_radix(hex, 16).map_err(|_| SyntaxError::BadPercentEncoding)?);
            index += 3;
        } else {
            decoded.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(decoded).map_err(|_| SyntaxError::BadPercentEncoding)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every way libpq accepts a password in a keyword/value string.
    const SECRET_FORMS: [(&str, &str); 9] = [
        ("host=db password=s3cr3t user=x", "s3cr3t"),
        ("host=db password = s3cr3t user=x", "s3cr3t"),
        ("host=db password =s3cr3t user=x", "s3cr3t"),
        ("host=db\tpassword=\ts3cr3t\nuser=x", "s3cr3t"),
        ("host=db password='my s3cr3t' user=x", "my s3cr3t"),
        ("host=db password = 'my s3cr3t' user=x", "my s3cr3t"),
        ("host=db password='a\\'b s3cr3t' user=x", "a'b s3cr3t"),
        ("host=db password=s3\\ cr3t user=x", "s3 cr3t"),
        ("host=db sslpassword='k3y phr4se' user=x", "k3y phr4se"),
    ];

    #[test]
    fn every_form_of_a_keyword_value_password_is_hidden_and_the_rest_kept() {
        for (text, secret) in SECRET_FORMS {
            let shown = redact(text);
            for word in secret.split([' ', '\'']).filter(|w| w.len() > 1) {
                assert!(!shown.contains(word), "{text:?} shows {word:?}: {shown}");
            }
            assert!(shown.starts_with("host=db ") && shown.ends_with(" user=x"), "{text:?} → {shown}");
            assert!(shown.contains("password=***"), "{text:?} → {shown}");
        }
    }

    #[test]
    fn keyword_values_read_as_libpq_reads_them() {
        let (parameters, error) = keyword_values("host = db password='a\\'b c' port=5432 x=\\\\y");
        assert_eq!(error, None);
        let read: Vec<(&str, &str)> = parameters.iter().map(|p| (p.keyword, p.value.as_str())).collect();
        assert_eq!(read, [("host", "db"), ("password", "a'b c"), ("port", "5432"), ("x", "\\y")]);
        // A closing quote ends the value even with no space after it.
        let (parameters, error) = keyword_values("password='x'host=db");
        assert_eq!(error, None);
        assert_eq!(parameters[1].keyword, "host");
    }

    #[test]
    fn an_unreadable_keyword_value_string_is_shown_only_up_to_the_error() {
        assert_eq!(
            redact("host=db password='s3cr3t"),
            "host=db (rest not shown: the quote at byte 17 is never closed)"
        );
        assert_eq!(redact("host=db s3cr3t"), "host=db (rest not shown: the keyword at byte 8 is not followed by `=`)");
        assert_eq!(redact("host=db =s3cr3t"), "host=db (rest not shown: the `=` at byte 8 has no keyword before it)");
        assert_eq!(redact("host=db password="), "host=db (rest not shown: the keyword at byte 8 has no value)");
        assert_eq!(redact("host=db password=a\\"), "host=db password=***");
    }

    #[test]
    fn the_value_of_a_keyword_libpq_does_not_know_is_hidden_a_misspelt_password_most_of_all() {
        assert_eq!(redact("host=db pasword=s3cr3t user=x"), "host=db pasword=*** user=x");
        assert_eq!(redact("host=db Host=s3cr3t passwd='my s3cr3t'"), "host=db Host=*** passwd=***");
        assert_eq!(
            redact("postgres://db/crm?passwd=s3cr3t&sslmode=require&application_name=nightly"),
            "postgres://db/crm?passwd=***&sslmode=require&application_name=nightly"
        );
        assert_eq!(
            redact("host=db port=5432 dbname=crm sslmode=verify-full connect_timeout=10"),
            "host=db port=5432 dbname=crm sslmode=verify-full connect_timeout=10"
        );
    }

    #[test]
    fn scrub_hides_passwords_in_any_text() {
        let cases = [
            (
                " postgres://app:S3cr3tPw@127.0.0.1:1/crm?sslmode=disable",
                " postgres://app:***@127.0.0.1:1/crm?sslmode=disable",
            ),
            ("postgresql+asyncpg://app:S3cr3tPw@db/crm?x=1", "postgresql+asyncpg://app:***@db/crm?x=1"),
            (
                "unknown option `Postgres://app:S3cr3tPw@db/crm?sslmode`",
                "unknown option `Postgres://app:***@db/crm?sslmode`",
            ),
            ("unexpected argument 'password=S3cr3tPw' found", "unexpected argument 'password=***' found"),
            ("host=db PassWord = 'S3c r3t\\'Pw' user=x", "host=db PassWord = *** user=x"),
            ("dbname='postgres://u:S3cr3tPw@h/d' sslmode=require", "dbname='postgres://u:***@h/d' sslmode=require"),
            ("pasword=S3cr3tPw&sslmode=require", "pasword=***&sslmode=require"),
            ("a=b c=d https://host/path?q=1 user@host:22", "a=b c=d https://host/path?q=1 user@host:22"),
            (
                "\"# public key: age1x\\nAGE-SECRET-KEY-1S3CR3TPWQ\" is not an age X25519 recipient",
                "\"# public key: age1x\\nAGE-SECRET-KEY-***\" is not an age X25519 recipient",
            ),
            ("age-secret-key-1s3cr3tpwq", "age-secret-key-***"),
        ];
        for (text, shown) in cases {
            assert_eq!(scrub(text), shown, "{text}");
            assert!(!redact(text).contains("S3c"), "{text} → {}", redact(text));
        }
    }

    #[test]
    fn url_passwords_are_hidden_wherever_they_are() {
        assert_eq!(redact("postgres://backup:s3cret@db:5432/crm"), "postgres://backup:***@db:5432/crm");
        assert_eq!(redact("postgresql://backup:s3%40cret@db/crm"), "postgresql://backup:***@db/crm");
        assert_eq!(
            redact("postgres://db/crm?password=s3cret&sslmode=require"),
            "postgres://db/crm?password=***&sslmode=require"
        );
        assert_eq!(redact("postgres://db/crm?pass%77ord=s3cret"), "postgres://db/crm?pass%77ord=***");
        assert_eq!(redact("postgres://db/crm?SSLPASSWORD=s3cret"), "postgres://db/crm?SSLPASSWORD=***");
        assert_eq!(redact("postgres://u:p@h1:5432,[::1]:5433/crm"), "postgres://u:***@h1:5432,[::1]:5433/crm");
        assert_eq!(redact("postgres://u:12?x=34@db/crm"), "postgres://u:***@db/crm");
        assert_eq!(redact("postgres://db/crm?user=a%40b"), "postgres://db/crm?user=a%40b");
    }

    #[test]
    fn a_url_whose_password_needed_percent_encoding_is_not_shown() {
        for text in [
            "postgres://u:p@ss3cret@db/crm",
            "postgres://u:pa/ss3cret@db/crm",
            "postgres://u:pa/ss3cret?x=1@db/crm",
            "postgres://db/crm?user=a:ss3cret@b",
            "postgres://db/crm?ss3cret",
        ] {
            let shown = redact(text);
            assert!(!shown.contains("ss3cret"), "{text} → {shown}");
            assert_eq!(shown, "postgres://(malformed URL, not shown)");
        }
    }

    #[test]
    fn tls_options_come_out_of_both_syntaxes() {
        let taken =
            take_tls_options("host=db sslmode = 'verify-full' sslrootcert='/etc/my ca.pem' password='a b'").unwrap();
        assert_eq!(taken.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(taken.sslrootcert.as_deref(), Some("/etc/my ca.pem"));
        assert_eq!(taken.rest, "host=db password='a b'");

        let taken = take_tls_options(
            "postgres://u:p@h1,h2:5433/crm?sslmode=require&options=-c%20x%3D1+2&sslrootcert=%2Fca.pem",
        )
        .unwrap();
        assert_eq!(taken.sslmode.as_deref(), Some("require"));
        assert_eq!(taken.sslrootcert.as_deref(), Some("/ca.pem"));
        assert_eq!(taken.rest, "postgres://u:p@h1,h2:5433/crm?options=-c%20x%3D1+2");
        assert_eq!(take_tls_options("postgres://db/crm?sslmode=disable").unwrap().rest, "postgres://db/crm");
        assert_eq!(take_tls_options("host=db password='x"), Err(SyntaxError::UnterminatedQuote { at: 17 }));
    }
}
