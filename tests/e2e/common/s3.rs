//! An S3 server for the tests: s3s-fs in this process on a free loopback port, or, when
//! `CRMVAULT_TEST_S3_ENDPOINT` names one (CI starts moto_server), that external server.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

pub const ACCESS_KEY: &str = "AKIACRMVAULTTEST";
pub const SECRET_KEY: &str = "crmvault-test-secret";

static BUCKETS: AtomicUsize = AtomicUsize::new(0);

/// A running S3 server with one fresh bucket.
pub struct S3Server {
    pub endpoint: String,
    pub bucket: String,
    /// Where s3s-fs keeps the bucket's objects (in-process server only).
    pub root: Option<tempfile::TempDir>,
    addr: Option<SocketAddr>,
    runtime: Option<tokio::runtime::Runtime>,
    /// While set, the in-process server answers DeleteObject with 403 AccessDenied.
    deletes_refused: Arc<AtomicBool>,
}

/// Faults the in-process server injects: of every 100 requests (by a seeded draw), `errors`
/// get a 503 SlowDown, `drops` have their connection closed without an answer, `slow` are
/// answered after `delay`, and `lost` are done (an upload stored) but their connection closed
/// before the answer.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    pub errors: u32,
    pub drops: u32,
    pub slow: u32,
    pub lost: u32,
    pub delay: std::time::Duration,
}

/// What a faulty server did: requests seen and faults injected; and whether it injects them
/// now (it starts without, so that the repository can be set up first). `hidden`: keys (or
/// parts of keys) its object listings leave out while it still serves them by name, as a
/// storage that lies does.
#[derive(Debug, Default)]
pub struct FaultCount {
    pub requests: AtomicUsize,
    pub injected: AtomicUsize,
    pub enabled: AtomicBool,
    pub hidden: std::sync::Mutex<Vec<String>>,
}

/// A bucket name no other test of this process uses.
fn new_bucket() -> String {
    format!("crmvault-{}-{}", std::process::id(), BUCKETS.fetch_add(1, Ordering::SeqCst))
}

impl S3Server {
    /// Starts a server (or uses the external one) with a new bucket.
    pub fn start() -> S3Server {
        let bucket = new_bucket();
        if let Ok(endpoint) = std::env::var("CRMVAULT_TEST_S3_ENDPOINT") {
            create_bucket(&endpoint, &bucket);
            return S3Server {
                endpoint,
                bucket,
                root: None,
                addr: None,
                runtime: None,
                deletes_refused: Arc::default(),
            };
        }
        S3Server::serve_bucket(bucket, None)
    }

    /// A server in this process, with `bucket`, injecting `faults` if any.
    fn serve_bucket(bucket: String, faults: Option<(Faults, Arc<FaultCount>)>) -> S3Server {
        let root = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(root.path().join(&bucket)).expect("bucket dir");
        let deletes_refused = Arc::new(AtomicBool::new(false));
        let (runtime, addr) = serve_with(root.path(), "127.0.0.1:0".parse().unwrap(), &deletes_refused, faults);
        S3Server {
            endpoint: format!("http://{addr}"),
            bucket,
            root: Some(root),
            addr: Some(addr),
            runtime: Some(runtime),
            deletes_refused,
        }
    }

    /// Starts an in-process server that injects `faults`; None when the tests use an external
    /// server (faults are injected only in this process).
    pub fn start_faulty(faults: Faults, count: Arc<FaultCount>) -> Option<S3Server> {
        if std::env::var("CRMVAULT_TEST_S3_ENDPOINT").is_ok() {
            return None;
        }
        Some(S3Server::serve_bucket(new_bucket(), Some((faults, count))))
    }

    /// True when the server runs in this process (so it can be stopped and restarted).
    pub fn in_process(&self) -> bool {
        self.runtime.is_some() || self.root.is_some()
    }

    /// The repository URL for `prefix` in this bucket.
    pub fn repo(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}?endpoint={}&retries=2&retry_timeout=5", self.bucket, self.endpoint)
    }

    /// Stops serving: connections drop, new ones are refused.
    pub fn stop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }

    /// Serves again on the same port and files.
    pub fn restart(&mut self) {
        let root = self.root.as_ref().expect("in-process server").path().to_path_buf();
        let (runtime, _) = serve(&root, self.addr.expect("in-process server"), &self.deletes_refused);
        self.runtime = Some(runtime);
    }

    /// Makes the in-process server refuse (or allow again) every DeleteObject with 403
    /// AccessDenied, as a bucket policy without `s3:DeleteObject` does; false on an external
    /// server, which cannot be told to.
    pub fn refuse_deletes(&self, refuse: bool) -> bool {
        self.deletes_refused.store(refuse, Ordering::SeqCst);
        self.in_process()
    }

    /// The folder holding the bucket's objects (in-process server only).
    pub fn bucket_dir(&self) -> Option<PathBuf> {
        self.root.as_ref().map(|r| r.path().join(&self.bucket))
    }

    /// How the library reaches this server (what the CLI builds from `env()` and the URL).
    pub fn settings(&self) -> crmvault::target::S3Settings {
        crmvault::target::S3Settings {
            endpoint: Some(self.endpoint.clone()),
            access_key_id: Some(ACCESS_KEY.to_string()),
            secret_access_key: Some(SECRET_KEY.to_string().into()),
            max_retries: 2,
            retry_timeout: std::time::Duration::from_secs(5),
            ..crmvault::target::S3Settings::default()
        }
    }

    /// Runs crmvault in `work` with this server's credentials.
    pub fn run(&self, work: &super::Workspace, args: &[&str]) -> super::Run {
        let mut command = work.command();
        command.args(args).envs(self.env());
        super::Run::from(&command.output().expect("crmvault runs"))
    }

    /// Environment for the crmvault process.
    #[allow(clippy::unused_self, reason = "reads as server.env() at the call sites")]
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
        ]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the in-process server allows: everything signed, and deletes unless refused.
struct DeletePolicy(Arc<AtomicBool>);

#[async_trait::async_trait]
impl s3s::access::S3Access for DeletePolicy {
    async fn delete_object(&self, _request: &mut s3s::S3Request<s3s::dto::DeleteObjectInput>) -> s3s::S3Result<()> {
        if self.0.load(Ordering::SeqCst) {
            return Err(s3s::s3_error!(AccessDenied, "this key may not delete objects"));
        }
        Ok(())
    }
}

fn serve(root: &Path, addr: SocketAddr, deletes_refused: &Arc<AtomicBool>) -> (tokio::runtime::Runtime, SocketAddr) {
    serve_with(root, addr, deletes_refused, None)
}

/// s3s's service behind one that injects faults.
#[derive(Clone)]
struct Faulty {
    inner: s3s::service::S3Service,
    faults: Faults,
    count: Arc<FaultCount>,
}

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for Faulty {
    type Response = s3s::HttpResponse;
    type Error = s3s::HttpError;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, request: http::Request<hyper::body::Incoming>) -> Self::Future {
        use rand::Rng;
        let number = self.count.requests.fetch_add(1, Ordering::SeqCst);
        let draw =
            if self.count.enabled.load(Ordering::SeqCst) { rand::thread_rng().gen_range(0..100u32) } else { 100 };
        let Faults { errors, drops, slow, lost, delay } = self.faults;
        let (inner, count) = (self.inner.clone(), self.count.clone());
        let listing = request.uri().query().is_some_and(|query| query.contains("list-type=2"));
        Box::pin(async move {
            let _ = number;
            if draw < errors {
                count.injected.fetch_add(1, Ordering::SeqCst);
                let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code>\
                            <Message>injected</Message></Error>";
                let response = http::Response::builder()
                    .status(503)
                    .header("content-type", "application/xml")
                    .body(s3s::Body::from(body.to_string()))
                    .expect("a response");
                return Ok(response);
            }
            if draw < errors + drops {
                count.injected.fetch_add(1, Ordering::SeqCst);
                // An error from the service: hyper closes the connection without an answer.
                return Err(s3s::HttpError::new(Box::new(std::io::Error::other("injected connection drop"))));
            }
            if draw < errors + drops + slow {
                count.injected.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
            }
            let answer = hyper::service::Service::call(&inner, request).await;
            let drawn_lost = (errors + drops + slow..errors + drops + slow + lost).contains(&draw);
            if drawn_lost && answer.as_ref().is_ok_and(|a| a.status().is_success()) {
                count.injected.fetch_add(1, Ordering::SeqCst);
                return Err(s3s::HttpError::new(Box::new(std::io::Error::other("injected lost answer"))));
            }
            let hidden = count.hidden.lock().unwrap().clone();
            match answer {
                Ok(mut answer) if listing && !hidden.is_empty() => {
                    let xml = answer.body_mut().store_all_limited(64 << 20).await.map_err(s3s::HttpError::new)?;
                    let xml = without_keys(&String::from_utf8_lossy(&xml), &hidden);
                    answer.headers_mut().remove(http::header::CONTENT_LENGTH);
                    *answer.body_mut() = s3s::Body::from(xml);
                    Ok(answer)
                }
                answer => answer,
            }
        })
    }
}

/// A ListObjectsV2 answer without the objects whose key contains one of `hidden`.
fn without_keys(xml: &str, hidden: &[String]) -> String {
    let (open, close) = ("<Contents>", "</Contents>");
    let mut kept = String::with_capacity(xml.len());
    let mut rest = xml;
    while let Some(start) = rest.find(open) {
        let end = rest[start..].find(close).map_or(rest.len(), |end| start + end + close.len());
        let object = &rest[start..end];
        kept.push_str(&rest[..start]);
        if !hidden.iter().any(|key| object.contains(key.as_str())) {
            kept.push_str(object);
        }
        rest = &rest[end..];
    }
    kept.push_str(rest);
    kept
}

fn serve_with(
    root: &Path,
    addr: SocketAddr,
    deletes_refused: &Arc<AtomicBool>,
    faults: Option<(Faults, Arc<FaultCount>)>,
) -> (tokio::runtime::Runtime, SocketAddr) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let listener = runtime.block_on(async {
        let mut attempts = 0;
        loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(listener) => break listener,
                Err(e) if attempts < 50 => {
                    attempts += 1;
                    let _ = e;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot bind {addr}: {e}"),
            }
        }
    });
    let local = listener.local_addr().unwrap();
    let fs = s3s_fs::FileSystem::new(root).expect("s3s-fs root");
    let mut builder = s3s::service::S3ServiceBuilder::new(fs);
    builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
    builder.set_access(DeletePolicy(Arc::clone(deletes_refused)));
    let service = builder.build();
    runtime.spawn(async move {
        let http = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
        loop {
            let Ok((socket, _)) = listener.accept().await else { continue };
            let io = hyper_util::rt::TokioIo::new(socket);
            match &faults {
                None => {
                    let connection = http.serve_connection(io, service.clone()).into_owned();
                    tokio::spawn(async move {
                        let _ = connection.await;
                    });
                }
                Some((faults, count)) => {
                    let faulty = Faulty { inner: service.clone(), faults: *faults, count: count.clone() };
                    let connection = http.serve_connection(io, faulty).into_owned();
                    tokio::spawn(async move {
                        let _ = connection.await;
                    });
                }
            }
        }
    });
    (runtime, local)
}

impl S3Server {
    /// On an external server: a new bucket with versioning and S3 Object Lock, every object
    /// kept for a day in compliance mode. Returns its repository URL for `prefix`.
    pub fn locked_bucket_repo(&self, prefix: &str) -> Option<String> {
        if self.in_process() {
            return None; // s3s-fs has no object lock
        }
        let bucket = format!("{}-locked", self.bucket);
        let path = format!("/{bucket}");
        let created = unsigned_request(&self.endpoint, "PUT", &path, "x-amz-bucket-object-lock-enabled: true\r\n", "");
        assert!(created.starts_with("HTTP/1.1 200"), "creating {bucket}: {created}");
        let rule = "<ObjectLockConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
                    <ObjectLockEnabled>Enabled</ObjectLockEnabled><Rule><DefaultRetention><Mode>COMPLIANCE</Mode>\
                    <Days>1</Days></DefaultRetention></Rule></ObjectLockConfiguration>";
        let locked = unsigned_request(&self.endpoint, "PUT", &format!("/{bucket}?object-lock"), "", rule);
        assert!(locked.starts_with("HTTP/1.1 200"), "locking {bucket}: {locked}");
        Some(format!("s3://{bucket}/{prefix}?endpoint={}&retries=2&retry_timeout=5", self.endpoint))
    }

    /// Tries to delete the current version of `key` in repository `repo` (external server only);
    /// returns the HTTP status line.
    pub fn delete_version(&self, repo: &str, key: &str) -> String {
        let path = repo.trim_start_matches("s3://").split('?').next().unwrap().to_string();
        let (bucket, prefix) = path.split_once('/').unwrap();
        let listing =
            unsigned_request(&self.endpoint, "GET", &format!("/{bucket}?versions&prefix={prefix}/{key}"), "", "");
        let version = listing
            .split("<VersionId>")
            .nth(1)
            .and_then(|rest| rest.split("</VersionId>").next())
            .unwrap_or_else(|| panic!("no version of {key}: {listing}"));
        let response = unsigned_request(
            &self.endpoint,
            "DELETE",
            &format!("/{bucket}/{prefix}/{key}?versionId={version}"),
            "",
            "",
        );
        response.lines().next().unwrap_or_default().to_string()
    }
}

/// Creates a bucket on an external server with an unsigned PUT (moto accepts it).
fn create_bucket(endpoint: &str, bucket: &str) {
    let response = unsigned_request(endpoint, "PUT", &format!("/{bucket}"), "", "");
    assert!(response.starts_with("HTTP/1.1 200"), "creating bucket {bucket}: {response}");
}

fn unsigned_request(endpoint: &str, method: &str, path: &str, headers: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let address = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = std::net::TcpStream::connect(address).expect("the external S3 server answers");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}
