//! TLS to PostgreSQL: libpq's sslmode meanings, for crmvault's connections and pg_dump's.

mod common;

use common::*;

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
        eprintln!("skipped: the local PostgreSQL does not serve TLS with Debian's snakeoil certificate");
        return;
    };
    let source = TestDb::create("tls");
    source.load_file(&fixture("examples/crm.sql"));
    let work = Workspace::new();
    let repo = work.init_repo("repo");
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
    std::fs::write(&stranger, include_str!("fixtures/unrelated-ca.pem")).unwrap();
    let wrong_root = with(&source, "localhost", &format!("sslmode=verify-full&sslrootcert={}", stranger.display()));
    work.run(&["backup", "--db", &wrong_root, "--repo", &repo]).fails_with(1, "invalid peer certificate");
    work.run(&["backup", "--db", &with(&source, "127.0.0.1", "sslmode=sometimes"), "--repo", &repo])
        .fails_with(1, "sslmode=sometimes is not one of");

    let restored = TestDb::create("tls_restored");
    let target = with(&restored, "localhost", &format!("sslmode=verify-full&sslrootcert={certificate}"));
    work.run(&["restore", "--repo", &repo, "--identity", &work.admin_key(), "--db", &target]).ok();
    assert_same_database(&source, &restored);
}
