//! An S3 server for benchmarks: s3s-fs (the tests' in-process server) serving a folder, each
//! bucket a subfolder, answering every request after a fixed delay, as a bucket a network
//! away does (loopback answers in microseconds; a regional bucket's first byte takes 10-30 ms).
//! Measures what the number of requests a command makes costs, which a local folder hides.
//!
//! ```sh
//! mkdir -p /tmp/s3/bench && cp -a repo /tmp/s3/bench/repo
//! cargo run --release --example s3_server -- /tmp/s3 127.0.0.1:9000 20 &   # 20 ms a request
//! AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchbench AWS_REGION=us-east-1 \
//!     crmvault restore --repo 's3://bench/repo?endpoint=http://127.0.0.1:9000' …
//! ```
//!
//! Credentials: `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` if set, else bench/benchbench.
//! `S3_SERVER_LOG=1` says each request (milliseconds since the start, method, path, range) on
//! stderr.

use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [root, addr, delay_ms] = args.as_slice() else {
        eprintln!("usage: s3_server ROOT ADDR DELAY_MS");
        std::process::exit(2);
    };
    let delay = Duration::from_millis(delay_ms.parse().unwrap_or_else(|_| {
        eprintln!("s3_server: DELAY_MS must be a whole number of milliseconds, not {delay_ms:?}");
        std::process::exit(2)
    }));
    let key = std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_else(|_| "bench".into());
    let secret = std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|_| "benchbench".into());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr.as_str()).await.unwrap_or_else(|error| {
            eprintln!("s3_server: cannot listen on {addr}: {error}");
            std::process::exit(1)
        });
        let fs = s3s_fs::FileSystem::new(root).unwrap_or_else(|error| {
            eprintln!("s3_server: cannot serve {root}: {error:?}");
            std::process::exit(1)
        });
        let mut builder = s3s::service::S3ServiceBuilder::new(fs);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(key.as_str(), secret.as_str()));
        let log = std::env::var_os("S3_SERVER_LOG").is_some();
        let service = Delayed { inner: builder.build(), delay, log, started: std::time::Instant::now() };
        eprintln!("s3_server: serving {root} at http://{addr}, {} ms a request", delay.as_millis());
        let http = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                // Out of file descriptors, say: wait instead of spinning.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            // Else a response written in parts waits for the client's delayed ACK (40 ms).
            let _ = socket.set_nodelay(true);
            let connection = http.serve_connection(hyper_util::rt::TokioIo::new(socket), service.clone()).into_owned();
            tokio::spawn(async move {
                let _ = connection.await;
            });
        }
    });
}

/// s3s's service, answering after `delay`.
#[derive(Clone)]
struct Delayed {
    inner: s3s::service::S3Service,
    delay: Duration,
    /// Each request said on stderr (`S3_SERVER_LOG=1`).
    log: bool,
    /// When the server started: each request said is stamped with the milliseconds since.
    started: std::time::Instant,
}

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for Delayed {
    type Response = s3s::HttpResponse;
    type Error = s3s::HttpError;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, request: http::Request<hyper::body::Incoming>) -> Self::Future {
        let (inner, delay) = (self.inner.clone(), self.delay);
        if self.log {
            let range = request.headers().get("range").and_then(|r| r.to_str().ok()).unwrap_or("");
            let at = self.started.elapsed().as_millis();
            eprintln!("{at} {} {} {range}", request.method(), request.uri().path());
        }
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            hyper::service::Service::call(&inner, request).await
        })
    }
}
