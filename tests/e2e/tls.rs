//! TLS to PostgreSQL: libpq's sslmode meanings, for crmvault's connections and pg_dump's.

use crate::common::*;

const SNAKEOIL: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";

/// The local server's TLS certificate (Debian's snakeoil, for `localhost`), if it serves TLS.
fn server_certificate() -> Option<&'static str> {
    let ssl = psql("postgres", "SHOW ssl");
    let file = psql("postgres", "SHOW ssl_cert_file");
    (ssl.trim() == "on" && file.trim() == SNAKEOIL && std::path::Path::new(SNAKEOIL).exists()).then_some(SNAKEOIL)
}

fn with(db: &TestDb, host: &str, options: &str) -> String {
    let url = db.url();
    let url = url.replace("127.0.0.1", host);
    format!("{url}?{options}")
}

#[test]
fn verify_full_checks_the_certificate_and_the_host_name() {
    let Some(certificate) = server_certificate() else {
        skip("the local PostgreSQL does not serve TLS with Debian's snakeoil certificate");
        return;
    };
    let Ready { source, work, repo, .. } = Scenario::new("tls").crm().init("repo");
    // The certificate names localhost: verify-full passes for localhost (crmvault and pg_dump)...
    let good = with(&source, "localhost", &format!("sslmode=verify-full&sslrootcert={certificate}"));
    work.run(&["backup", "--db", &good, "--repo", &repo]).ok();
    // ...and refuses 127.0.0.1, which it does not name.
    let wrong_name = with(&source, "127.0.0.1", &format!("sslmode=verify-full&sslrootcert={certificate}"));
    work.run(&["backup", "--db", &wrong_name, "--repo", &repo]).fails_with(1, "certificate not valid for name");
    // verify-ca trusts the chain without the name; require encrypts without checking.
    let chain_only = with(&source, "127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={certificate}"));
    work.run(&["backup", "--db", &chain_only, "--repo", &repo]).ok();
    work.run(&["backup", "--db", &with(&source, "127.0.0.1", "sslmode=require"), "--repo", &repo]).ok();
    // A root that did not sign the server's certificate is refused.
    let stranger = work.path("other-ca.pem");
    std::fs::write(&stranger, include_str!("../fixtures/unrelated-ca.pem")).unwrap();
    let wrong_root = with(&source, "localhost", &format!("sslmode=verify-full&sslrootcert={}", stranger.display()));
    work.run(&["backup", "--db", &wrong_root, "--repo", &repo]).fails_with(1, "invalid peer certificate");
    work.run(&["backup", "--db", &with(&source, "127.0.0.1", "sslmode=sometimes"), "--repo", &repo])
        .fails_with(1, "sslmode=sometimes is not one of");

    let restored = TestDb::create("tls_restored");
    let target = with(&restored, "localhost", &format!("sslmode=verify-full&sslrootcert={certificate}"));
    work.run(&["restore", "--repo", &repo, "--identity", &work.admin_key(), "--db", &target]).ok();
    assert_same_database(&source, &restored);
}

/// A PostgreSQL server without TLS: a proxy on 127.0.0.2 that answers every request for TLS
/// (or GSSAPI encryption) with "no" and passes everything else to the test server. Returns
/// its port; it serves until the test process ends.
fn plaintext_only_server() -> u16 {
    use std::io::{Read, Write};
    const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    const GSSENC_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30];
    let upstream = server_url().rsplit('@').next().unwrap().trim_end_matches('/').to_string();
    let listener = std::net::TcpListener::bind("127.0.0.2:0").expect("127.0.0.2 is loopback on Linux");
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { continue };
            let upstream = upstream.clone();
            std::thread::spawn(move || {
                let mut first = [0u8; 8];
                loop {
                    if client.read_exact(&mut first).is_err() {
                        return;
                    }
                    if first != SSL_REQUEST && first != GSSENC_REQUEST {
                        break;
                    }
                    if client.write_all(b"N").is_err() {
                        return;
                    }
                }
                let Ok(mut server) = std::net::TcpStream::connect(&upstream) else { return };
                if server.write_all(&first).is_err() {
                    return;
                }
                let (mut client_reader, mut server_writer) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let forward = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut client_reader, &mut server_writer);
                    let _ = server_writer.shutdown(std::net::Shutdown::Write);
                });
                let _ = std::io::copy(&mut server, &mut client);
                let _ = client.shutdown(std::net::Shutdown::Write);
                let _ = forward.join();
            });
        }
    });
    port
}

/// Runs crmvault with `hosts` counted as remote (CRMVAULT_DB_REMOTE_HOSTS).
fn run_as_remote(work: &Workspace, hosts: &str, args: &[&str]) -> Run {
    Run::from(&work.command().env("CRMVAULT_DB_REMOTE_HOSTS", hosts).args(args).output().expect("crmvault runs"))
}

#[test]
fn a_remote_server_without_tls_is_refused_by_default_and_reached_when_sslmode_says_so() {
    let port = plaintext_only_server();
    let Ready { source, work, repo, .. } = Scenario::new("tls_plain").crm().init("repo");
    let url = format!("postgres://postgres@127.0.0.2:{port}/{}", source.name);
    let keyword_value = format!("host = 127.0.0.2 port={port} user=postgres dbname='{}'", source.name);

    let refusal = "the server does not offer TLS, and sslmode=require (crmvault's default for a database host \
                   that is not on this machine) refuses to send the password and data unencrypted; turn on ssl \
                   in the server, or add sslmode=disable";
    for db in [&url, &keyword_value] {
        let run = run_as_remote(&work, "127.0.0.2", &["backup", "--db", db, "--repo", &repo]).fails_with(1, refusal);
        assert_eq!(run.stderr.lines().count(), 1, "one line: {}", run.stderr);
    }
    let run =
        run_as_remote(&work, "127.0.0.2", &["backup", "--db", &format!("{url}?sslmode=verify-full"), "--repo", &repo])
            .fails_with(1, "the server does not offer TLS, and sslmode=verify-full refuses");
    assert_eq!(run.stderr.lines().count(), 1, "one line: {}", run.stderr);
    // PGSSLMODE is a default too, and says where it came from.
    let run = Run::from(
        &work
            .command()
            .env("PGSSLMODE", "require")
            .args(["backup", "--db", &url, "--repo", &repo])
            .output()
            .expect("crmvault runs"),
    );
    run.fails_with(1, "sslmode=require (from PGSSLMODE) refuses");

    // An explicit sslmode is honoured, for crmvault's connections and pg_dump's.
    for mode in ["disable", "prefer", "allow"] {
        run_as_remote(&work, "127.0.0.2", &["backup", "--db", &format!("{url}?sslmode={mode}"), "--repo", &repo]).ok();
    }
    run_as_remote(
        &work,
        "127.0.0.2",
        &["backup", "--db", &format!("{keyword_value} sslmode=disable"), "--repo", &repo],
    )
    .ok();
    // Unlisted, 127.0.0.2 is loopback: libpq's `prefer` still applies.
    work.run(&["backup", "--db", &url, "--repo", &repo]).ok();
    let listing = work.run(&["snapshots", "--json", "--repo", &repo]).ok().json();
    assert_eq!(listing["snapshots"].as_array().unwrap().len(), 5, "refused runs wrote nothing: {listing}");

    let restored = TestDb::create("tls_plain_restored");
    work.run(&["restore", "--repo", &repo, "--identity", &work.admin_key(), "--db", &restored.url()]).ok();
    assert_same_database(&source, &restored);
}

#[test]
fn an_unchecked_certificate_is_warned_about_once_and_only_for_a_remote_host() {
    let Some(certificate) = server_certificate() else {
        skip("the local PostgreSQL does not serve TLS with Debian's snakeoil certificate");
        return;
    };
    let Ready { source, work, repo, .. } = Scenario::new("tls_warn").crm().init("repo");
    let warning = "is encrypted, but nothing checks that the server is who it claims to be";
    let recommendation = "use sslmode=verify-full&sslrootcert=ca.pem";

    // Remote by default: `require`, several connections (--jobs, pg_dump), one warning.
    let run =
        run_as_remote(&work, "127.0.0.1", &["backup", "--jobs", "3", "--db", &source.url(), "--repo", &repo]).ok();
    assert_eq!(run.stderr.matches(warning).count(), 1, "{}", run.stderr);
    assert!(run.stderr.contains(recommendation), "{}", run.stderr);
    // The same server on loopback: `prefer`, TLS, no warning.
    let run = work.run(&["backup", "--db", &source.url(), "--repo", &repo]).ok();
    assert!(!run.stderr.contains(warning), "{}", run.stderr);
    // A checked certificate: no warning.
    let checked = with(&source, "localhost", &format!("sslmode=verify-full&sslrootcert={certificate}"));
    let run = run_as_remote(&work, "localhost", &["backup", "--db", &checked, "--repo", &repo]).ok();
    assert!(!run.stderr.contains(warning), "{}", run.stderr);
}
