//! TLS to PostgreSQL with rustls, following libpq's `sslmode` meanings:
//! `disable` never, `prefer` when the server offers it, `require` always (encrypted, server not
//! authenticated), `verify-ca` (certificate chains to a trusted root), `verify-full` (and names
//! the host). Roots come from `sslrootcert` when given, else from the system's store.
//!
//! Unlike libpq, the mode a connection string leaves unsaid depends on where the database is
//! ([`default_mode`]): `prefer` lets anyone on the network between strip TLS and read the data
//! and the password, so it stays the default only for hosts on this machine ([`Reach`]).

use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Once};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{Error, Result};

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it (libpq's default).
    Prefer,
    /// TLS or nothing; the server's certificate is not checked.
    Require,
    /// TLS with a certificate that chains to a trusted root.
    VerifyCa,
    /// As `VerifyCa`, and the certificate names the host connected to.
    VerifyFull,
}

impl TlsMode {
    /// Parses an `sslmode` value.
    pub fn parse(text: &str) -> Result<TlsMode> {
        Ok(match text {
            "disable" => TlsMode::Disable,
            "allow" | "prefer" => TlsMode::Prefer,
            "require" => TlsMode::Require,
            "verify-ca" => TlsMode::VerifyCa,
            "verify-full" => TlsMode::VerifyFull,
            other => {
                return Err(Error::Invalid(format!(
                    "sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"
                )));
            }
        })
    }

    /// The `sslmode` value for libpq tools (pg_dump).
    pub fn as_libpq(self) -> &'static str {
        match self {
            TlsMode::Disable => "disable",
            TlsMode::Prefer => "prefer",
            TlsMode::Require => "require",
            TlsMode::VerifyCa => "verify-ca",
            TlsMode::VerifyFull => "verify-full",
        }
    }
}

/// When a mode encrypts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsUse {
    /// Never: plain TCP.
    Never,
    /// When the server offers TLS; plain TCP when it does not (or when an attacker says so).
    IfOffered,
    /// Always: a server without TLS is refused.
    Always,
}

/// What a mode checks of the server's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerCheck {
    /// Nothing: whoever answers is believed to be the server.
    Nothing,
    /// The certificate chains to a trusted root, whatever host it names.
    Chain,
    /// The certificate chains to a trusted root and names the host connected to.
    ChainAndName,
}

impl TlsMode {
    /// When connections in this mode are encrypted.
    pub fn tls_use(self) -> TlsUse {
        match self {
            TlsMode::Disable => TlsUse::Never,
            TlsMode::Prefer => TlsUse::IfOffered,
            TlsMode::Require | TlsMode::VerifyCa | TlsMode::VerifyFull => TlsUse::Always,
        }
    }

    /// What connections in this mode check of the server.
    pub fn server_check(self) -> ServerCheck {
        match self {
            TlsMode::Disable | TlsMode::Prefer | TlsMode::Require => ServerCheck::Nothing,
            TlsMode::VerifyCa => ServerCheck::Chain,
            TlsMode::VerifyFull => ServerCheck::ChainAndName,
        }
    }
}

/// Whether a network attacker can be between crmvault and a database host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// On this machine: a Unix socket, `localhost`, an address in 127.0.0.0/8, `::1` (or
    /// `::ffff:127.x.y.z`). The traffic never leaves the kernel.
    Local,
    /// Anything else, including names that resolve to this machine (the answer can come from a
    /// DNS server an attacker controls), this machine's own non-loopback addresses, `0.0.0.0`,
    /// and hosts named in [`RemoteHosts`].
    Remote,
}

/// Hosts on this machine to treat as [`Reach::Remote`]: a loopback port that forwards to another
/// machine (a TCP proxy, a port forward), where what crmvault sends in plain text crosses a
/// network after all. Tests use it to act out a remote database on loopback.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteHosts(Vec<String>);

impl RemoteHosts {
    /// Reads a comma-separated list of host names, IP addresses and Unix socket directories,
    /// as they are written in connection strings; blanks around entries are ignored.
    pub fn from_list(list: &str) -> RemoteHosts {
        RemoteHosts(list.split(',').map(str::trim).filter(|entry| !entry.is_empty()).map(String::from).collect())
    }

    /// Whether `host` is listed: addresses compare as addresses (`::1` is `0:0:0:0:0:0:0:1`),
    /// names without regard to case.
    pub fn contains(&self, host: &str) -> bool {
        self.0.iter().any(|entry| match (parse_ip(entry), parse_ip(host)) {
            (Some(listed), Some(address)) => listed == address,
            _ => entry.eq_ignore_ascii_case(host),
        })
    }
}

/// An IP address, with or without the brackets URLs put around IPv6.
fn parse_ip(text: &str) -> Option<IpAddr> {
    text.strip_prefix('[').and_then(|t| t.strip_suffix(']')).unwrap_or(text).parse().ok()
}

/// Whether an address is this machine's loopback.
fn is_loopback(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

/// Where a TCP host is: `name` is a host name or an IP address as written in a connection
/// string. No name is looked up, so the answer never depends on DNS.
pub fn tcp_reach(name: &str, remote_hosts: &RemoteHosts) -> Reach {
    if remote_hosts.contains(name) {
        return Reach::Remote;
    }
    let local = if let Some(address) = parse_ip(name) {
        is_loopback(address)
    } else {
        name.strip_suffix('.').unwrap_or(name).eq_ignore_ascii_case("localhost")
    };
    if local { Reach::Local } else { Reach::Remote }
}

/// Where a Unix socket directory is: here, unless listed in `remote_hosts` (a socket an SSH
/// forward or proxy serves).
pub fn socket_reach(directory: &Path, remote_hosts: &RemoteHosts) -> Reach {
    match directory.to_str() {
        Some(text) if remote_hosts.contains(text) => Reach::Remote,
        _ => Reach::Local,
    }
}

/// The mode for a connection string that names none: `prefer` (libpq's default) where the
/// traffic stays on this machine, `require` wherever an attacker on the network could strip TLS.
pub fn default_mode(reach: Reach) -> TlsMode {
    match reach {
        Reach::Local => TlsMode::Prefer,
        Reach::Remote => TlsMode::Require,
    }
}

/// Says once per process that a remote server's certificate is not checked.
fn warn_unverified(server: &str) {
    static WARNED: Once = Once::new();
    WARNED.call_once(|| {
        tracing::warn!(
            "the connection to database host {server} is encrypted, but nothing checks that the server is \
             who it claims to be: an attacker on the network could pose as it and read everything; use \
             sslmode=verify-full&sslrootcert=ca.pem (the CA that signed the server's certificate)"
        );
    });
}

/// The rustls connector for a mode (not used for `Disable`). `reach` is the farthest of the
/// hosts: for a remote one, an unchecked certificate is warned about (once per process).
pub fn connector(mode: TlsMode, root_cert: Option<&Path>, reach: Reach) -> Result<MakeRustlsConnect> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(format!("TLS setup: {e}")))?;
    let check = mode.server_check();
    let config = if check == ServerCheck::Nothing {
        let verifier = EncryptOnly { provider, reach };
        builder.dangerous().with_custom_certificate_verifier(Arc::new(verifier)).with_no_client_auth()
    } else {
        let roots = Arc::new(root_store(root_cert)?);
        let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|e| Error::Tls(format!("TLS setup: {e}")))?;
        if check == ServerCheck::ChainAndName {
            builder.with_webpki_verifier(webpki).with_no_client_auth()
        } else {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(ChainOnly(webpki))).with_no_client_auth()
        }
    };
    Ok(MakeRustlsConnect::new(config))
}

fn root_store(root_cert: Option<&Path>) -> Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    match root_cert {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| Error::Tls(format!("sslrootcert {}: {e}", path.display())))?;
            for cert in certs {
                let cert = cert.map_err(|e| Error::Tls(format!("sslrootcert {}: {e}", path.display())))?;
                store.add(cert).map_err(|e| Error::Tls(format!("sslrootcert {}: {e}", path.display())))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = store.add(cert);
            }
        }
    }
    if store.is_empty() {
        return Err(Error::Tls("no trusted root certificate for sslmode=verify-*; give sslrootcert=FILE".into()));
    }
    Ok(store)
}

/// `prefer` and `require`: the connection is encrypted, the server is not authenticated
/// (libpq does the same). Handshake signatures are still checked.
#[derive(Debug)]
struct EncryptOnly {
    provider: Arc<CryptoProvider>,
    reach: Reach,
}

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        // Called only when the server did answer with TLS: `prefer` that stayed plain says nothing.
        if self.reach == Reach::Remote {
            warn_unverified(&server_name.to_str());
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            signature,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            signature,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must be trusted; the name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, signature)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, signature)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_localhost_are_local_and_nothing_else_is() {
        let none = RemoteHosts::default();
        for host in
            ["localhost", "LOCALHOST", "localhost.", "127.0.0.1", "127.0.0.2", "127.255.255.254", "::1", "[::1]"]
        {
            assert_eq!(tcp_reach(host, &none), Reach::Local, "{host}");
        }
        assert_eq!(tcp_reach("::ffff:127.0.0.1", &none), Reach::Local);
        for host in [
            "db.example.com",
            "10.0.0.5",
            "192.168.1.2",
            "0.0.0.0",
            "::",
            "fe80::1",
            "::ffff:10.0.0.1",
            "128.0.0.1",
            "localhost.example.com",
            "my.localhost",
            "127.0.0.1.example.com",
            "",
        ] {
            assert_eq!(tcp_reach(host, &none), Reach::Remote, "{host}");
        }
        assert_eq!(socket_reach(Path::new("/var/run/postgresql"), &none), Reach::Local);
    }

    #[test]
    fn listed_hosts_are_remote_even_on_loopback() {
        let listed = RemoteHosts::from_list(" 127.0.0.2 , LocalHost,0:0:0:0:0:0:0:1,,/tmp/forwarded");
        assert_eq!(tcp_reach("127.0.0.2", &listed), Reach::Remote);
        assert_eq!(tcp_reach("127.0.0.1", &listed), Reach::Local);
        assert_eq!(tcp_reach("localhost", &listed), Reach::Remote);
        assert_eq!(tcp_reach("[::1]", &listed), Reach::Remote);
        assert_eq!(socket_reach(Path::new("/tmp/forwarded"), &listed), Reach::Remote);
        assert_eq!(socket_reach(Path::new("/var/run/postgresql"), &listed), Reach::Local);
        assert_eq!(RemoteHosts::from_list(" , "), RemoteHosts::default());
    }

    #[test]
    fn the_default_is_prefer_only_on_this_machine() {
        assert_eq!(default_mode(Reach::Local), TlsMode::Prefer);
        assert_eq!(default_mode(Reach::Remote), TlsMode::Require);
    }

    #[test]
    fn what_each_mode_accepts() {
        // (mode, plain TCP accepted, a certificate nobody vouches for accepted, a trusted
        // certificate for another name accepted)
        let table = [
            ("disable", true, false, false),
            ("allow", true, true, true),
            ("prefer", true, true, true),
            ("require", false, true, true),
            ("verify-ca", false, false, true),
            ("verify-full", false, false, false),
        ];
        for (text, plain, untrusted, other_name) in table {
            let mode = TlsMode::parse(text).unwrap();
            let encrypts = mode.tls_use() != TlsUse::Never;
            assert_eq!(mode.tls_use() != TlsUse::Always, plain, "{text}: plain TCP");
            assert_eq!(encrypts && mode.server_check() == ServerCheck::Nothing, untrusted, "{text}: untrusted");
            assert_eq!(
                encrypts && mode.server_check() != ServerCheck::ChainAndName,
                other_name,
                "{text}: another name"
            );
        }
        assert!(TlsMode::parse("sometimes").is_err());
    }
}
