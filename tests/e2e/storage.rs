//! Storage conformance: what `crmvault::target::Target` promises, checked once and run against
//! every kind of target. `storage::local::*` runs each check on a local folder, `storage::s3::*`
//! on an S3 bucket (s3s-fs in this process, or the server `CRMVAULT_TEST_S3_ENDPOINT` names:
//! CI runs them again against moto_server). A new kind of target gets its own module of the
//! same checks, through `conformance!`.

use std::future::Future;
use std::ops::Range;

use bytes::Bytes;
use crmvault::error::Error;
use crmvault::target::{OpenMode, PutOutcome, Target};

use crate::common::s3::S3Server;

/// `length` bytes that differ from one position to the next (and from another `seed`).
fn content(length: usize, seed: u8) -> Bytes {
    (0..length).map(|i| u8::try_from((i * 7 + i / 4096 + usize::from(seed)) % 251).expect("below 251")).collect()
}

/// The bytes of `bytes` in `range`, as a range read should return them.
fn slice(bytes: &Bytes, range: &Range<u64>) -> Bytes {
    let (start, end) = (usize::try_from(range.start).unwrap(), usize::try_from(range.end).unwrap());
    bytes.slice(start..end)
}

/// A name as packs get: 64 hex digits (an object named by the hash of its content).
fn hash_name(folder: &str, digit: char) -> String {
    format!("{folder}/{}", String::from(digit).repeat(64))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a tokio runtime")
}

/// Runs `check` on a new, empty local folder.
fn on_local<Check, Checked>(check: Check)
where
    Check: FnOnce(Target, Kind) -> Checked,
    Checked: Future<Output = ()>,
{
    let folder = tempfile::tempdir().expect("temp dir");
    let location = folder.path().join("repo").to_str().expect("a UTF-8 temp path").to_string();
    let target = Target::open(&location, OpenMode::Create).expect("a local folder opens");
    runtime().block_on(check(target, Kind::Local));
}

/// Runs `check` on a new, empty prefix of a new bucket.
fn on_s3<Check, Checked>(check: Check)
where
    Check: FnOnce(Target, Kind) -> Checked,
    Checked: Future<Output = ()>,
{
    let server = S3Server::start();
    let location = format!("s3://{}/conformance", server.bucket);
    let target = Target::open_with(&location, OpenMode::Existing, &server.settings()).expect("the bucket opens");
    let kind = if server.in_process() { Kind::S3InProcess } else { Kind::S3External };
    runtime().block_on(check(target, kind));
}

/// Which kind of target a check runs on, for the one promise a server may not keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Local,
    /// s3s-fs: its conditional PUT checks, then writes (not exclusive under concurrency).
    S3InProcess,
    S3External,
}

/// Defines one `#[test]` per check for each kind of target.
macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        /// The checks on a local folder.
        mod local {
            $(#[test] fn $check() { super::on_local(super::$check); })*
        }
        /// The checks on an S3 bucket.
        mod s3 {
            $(#[test] fn $check() { super::on_s3(super::$check); })*
        }
    };
}

conformance!(
    a_new_object_reads_back_whole_with_its_size,
    put_new_never_replaces_an_existing_object,
    a_content_addressed_leftover_of_another_size_is_replaced,
    range_reads_return_exactly_the_bytes_asked_for,
    a_large_object_reads_back_whole_and_by_range_and_is_never_replaced,
    listing_is_sorted_and_stays_under_its_prefix,
    a_missing_object_is_a_missing_error_naming_it_and_the_target,
    delete_removes_an_object_and_a_missing_one_is_no_error,
    a_target_is_empty_until_its_first_object,
    concurrent_writers_of_one_name_have_exactly_one_winner,
    concurrent_takers_of_the_writer_lock_never_both_win,
);

async fn a_new_object_reads_back_whole_with_its_size(target: Target, _: Kind) {
    let bytes = content(1000, 1);
    assert_eq!(target.put_new("config", bytes.clone()).await.unwrap(), PutOutcome::Written);
    assert_eq!(target.get_at_most("config", u64::MAX).await.unwrap(), bytes);
    assert_eq!(target.size_of("config").await.unwrap(), Some(1000));
    assert_eq!(target.size_of("configs/absent").await.unwrap(), None);
    // An empty object is an object.
    assert_eq!(target.put_new("keys/empty", Bytes::new()).await.unwrap(), PutOutcome::Written);
    assert_eq!(target.get_at_most("keys/empty", u64::MAX).await.unwrap(), Bytes::new());
    assert_eq!(target.size_of("keys/empty").await.unwrap(), Some(0));
}

async fn put_new_never_replaces_an_existing_object(target: Target, _: Kind) {
    let first = content(500, 1);
    assert_eq!(target.put_new("snapshots/one", first.clone()).await.unwrap(), PutOutcome::Written);
    for other in [content(500, 2), content(499, 3), content(5000, 4), Bytes::new()] {
        assert_eq!(target.put_new("snapshots/one", other).await.unwrap(), PutOutcome::AlreadyThere);
        assert_eq!(target.get_at_most("snapshots/one", u64::MAX).await.unwrap(), first);
    }
    // An object named by its hash, written again with other bytes of the same size: left as is.
    let name = hash_name("data/aa", 'a');
    assert_eq!(target.put_new(&name, first.clone()).await.unwrap(), PutOutcome::Written);
    assert_eq!(target.put_new(&name, content(500, 5)).await.unwrap(), PutOutcome::AlreadyThere);
    assert_eq!(target.get_at_most(&name, u64::MAX).await.unwrap(), first);
}

async fn a_content_addressed_leftover_of_another_size_is_replaced(target: Target, _: Kind) {
    // What an interrupted upload leaves on a server without atomic writes: the start of the
    // object under its final name. Only an object named by its hash can be told to be one.
    let (name, whole) = (hash_name("data/bb", 'b'), content(3000, 1));
    assert_eq!(target.put_new(&name, whole.slice(..1000)).await.unwrap(), PutOutcome::Written);
    assert_eq!(target.put_new(&name, whole.clone()).await.unwrap(), PutOutcome::Written);
    assert_eq!(target.get_at_most(&name, u64::MAX).await.unwrap(), whole);
    assert_eq!(target.put_new(&name, whole.clone()).await.unwrap(), PutOutcome::AlreadyThere);
}

async fn range_reads_return_exactly_the_bytes_asked_for(target: Target, _: Kind) {
    let bytes = content(10_000, 1);
    target.put_new("index/ranged", bytes.clone()).await.unwrap();
    for range in [0..1, 0..10_000, 6..12, 4095..4097, 9_997..10_000] {
        assert_eq!(target.get_range("index/ranged", range.clone()).await.unwrap(), slice(&bytes, &range), "{range:?}");
    }
    // A range that starts past the end is an error, not a short or empty read.
    let past = target.get_range("index/ranged", 10_001..10_010).await;
    assert!(past.is_err(), "a range past the end read {past:?}");
}

async fn a_large_object_reads_back_whole_and_by_range_and_is_never_replaced(target: Target, _: Kind) {
    // 9 MiB: past the size a local folder writes with O_DIRECT (1 MiB) and the size S3 gets in
    // 5 MiB parts (8 MiB); one range read spans the first part's end.
    let bytes = content(9 << 20, 1);
    let name = hash_name("data/cc", 'c');
    assert_eq!(target.put_new(&name, bytes.clone()).await.unwrap(), PutOutcome::Written);
    assert_eq!(target.size_of(&name).await.unwrap(), Some(9 << 20));
    assert!(target.get_at_most(&name, u64::MAX).await.unwrap() == bytes, "the large object reads back changed");
    let across = (5 << 20) - 100..(5 << 20) + 100;
    assert_eq!(target.get_range(&name, across.clone()).await.unwrap(), slice(&bytes, &across));
    assert_eq!(target.put_new(&name, bytes.clone()).await.unwrap(), PutOutcome::AlreadyThere);
    // A large object under a name that is not a hash is never replaced, whatever its size.
    assert_eq!(target.put_new("snapshots/large", bytes.clone()).await.unwrap(), PutOutcome::Written);
    let other = content((9 << 20) + 1, 2);
    assert_eq!(target.put_new("snapshots/large", other).await.unwrap(), PutOutcome::AlreadyThere);
    assert!(target.get_at_most("snapshots/large", u64::MAX).await.unwrap() == bytes, "a large object was replaced");
}

async fn listing_is_sorted_and_stays_under_its_prefix(target: Target, _: Kind) {
    for (key, length) in [("snapshots/b", 2), ("snapshots/a", 1), ("snapshots2/x", 3), ("data/ab/cd", 4), ("config", 5)]
    {
        target.put_new(key, content(length, 1)).await.unwrap();
    }
    let listed = |pairs: &[(&str, u64)]| pairs.iter().map(|(k, n)| ((*k).to_string(), *n)).collect::<Vec<_>>();
    // A prefix is a folder: `snapshots` does not take in `snapshots2/x`.
    assert_eq!(target.list("snapshots").await.unwrap(), listed(&[("snapshots/a", 1), ("snapshots/b", 2)]));
    assert_eq!(target.list("data").await.unwrap(), listed(&[("data/ab/cd", 4)]));
    assert_eq!(target.list("nothing/here").await.unwrap(), listed(&[]));
    assert_eq!(
        target.list("").await.unwrap(),
        listed(&[("config", 5), ("data/ab/cd", 4), ("snapshots/a", 1), ("snapshots/b", 2), ("snapshots2/x", 3)])
    );
}

async fn a_missing_object_is_a_missing_error_naming_it_and_the_target(target: Target, _: Kind) {
    target.put_new("snapshots/present", content(10, 1)).await.unwrap();
    let expected = format!("snapshots/absent is missing from {}", target.location());
    for error in [
        target.get_at_most("snapshots/absent", u64::MAX).await.unwrap_err(),
        target.get_range("snapshots/absent", 0..4).await.unwrap_err(),
    ] {
        assert!(
            matches!(&error, Error::Missing { object, location }
                if object == "snapshots/absent" && location == target.location()),
            "{error:?}"
        );
        assert_eq!(error.to_string(), expected);
    }
}

async fn delete_removes_an_object_and_a_missing_one_is_no_error(target: Target, _: Kind) {
    let bytes = content(100, 1);
    target.put_new("locks/one", bytes.clone()).await.unwrap();
    target.put_new("locks/two", bytes.clone()).await.unwrap();
    target.delete("locks/one").await.unwrap();
    assert_eq!(target.size_of("locks/one").await.unwrap(), None);
    assert!(matches!(target.get_at_most("locks/one", u64::MAX).await, Err(Error::Missing { .. })));
    assert_eq!(target.list("locks").await.unwrap(), vec![("locks/two".to_string(), 100)]);
    target.delete("locks/one").await.unwrap();
    target.delete("never/was").await.unwrap();
    // The name is free again.
    assert_eq!(target.put_new("locks/one", content(7, 2)).await.unwrap(), PutOutcome::Written);
    assert_eq!(target.get_at_most("locks/one", u64::MAX).await.unwrap(), content(7, 2));
}

async fn a_target_is_empty_until_its_first_object(target: Target, _: Kind) {
    assert!(target.is_empty().await.unwrap());
    assert_eq!(target.list("").await.unwrap(), vec![]);
    target.put_new("data/ab/cd", content(10, 1)).await.unwrap();
    assert!(!target.is_empty().await.unwrap());
}

async fn concurrent_writers_of_one_name_have_exactly_one_winner(target: Target, kind: Kind) {
    if kind == Kind::S3InProcess {
        // s3s-fs checks, then writes: several writers can all win (the external run, moto, and
        // the local folder check this). A skip that is expected here, so not `skip()`.
        eprintln!("skipped: s3s-fs's conditional PUT is not exclusive (CI runs this against moto)");
        return;
    }
    // Small objects and large ones (a local folder writes those another way).
    for (name, length) in [("locks/small", 1000), ("locks/large", 2 << 20)] {
        let writers: Vec<_> = (0..8u8)
            .map(|seed| {
                let target = target.clone();
                tokio::spawn(async move {
                    let bytes = content(length, seed);
                    (target.put_new(name, bytes.clone()).await.unwrap(), bytes)
                })
            })
            .collect();
        let mut winners = Vec::new();
        for writer in writers {
            let (outcome, bytes) = writer.await.expect("a writer task does not panic");
            if outcome == PutOutcome::Written {
                winners.push(bytes);
            }
        }
        assert_eq!(winners.len(), 1, "{name}: {} writers were told they wrote it", winners.len());
        assert!(
            target.get_at_most(name, u64::MAX).await.unwrap() == winners[0],
            "{name} does not hold the winner's bytes"
        );
    }
}

fn lock_options(pid: u32) -> crmvault::lock::LockOptions {
    crmvault::lock::LockOptions {
        holder: crmvault::lock::Holder { hostname: "conformance".into(), pid, command: "backup".into() },
        lease: crmvault::lock::DEFAULT_LEASE,
        wait: std::time::Duration::ZERO,
        readers: std::sync::Arc::new(Vec::new()),
        now: chrono::Utc::now,
        process_running: |_| true,
    }
}

/// How many of 8 concurrent takers of `locks/writer` were told they hold it (the winner
/// releases it again).
async fn takers_that_won(target: &Target, round: u32) -> usize {
    use crmvault::lock::{LockMode, acquire};
    let takers: Vec<_> = (0..8)
        .map(|taker| {
            let target = target.clone();
            tokio::spawn(async move { acquire(&target, &[], LockMode::Append, &lock_options(round * 8 + taker)).await })
        })
        .collect();
    let mut winners = Vec::new();
    for taker in takers {
        match taker.await.expect("a taker does not panic") {
            Ok(lock) => winners.push(lock),
            Err(Error::Locked { .. }) => {}
            Err(error) => panic!("round {round}: {error}"),
        }
    }
    let count = winners.len();
    for lock in winners {
        lock.release().await.unwrap();
    }
    count
}

async fn concurrent_takers_of_the_writer_lock_never_both_win(target: Target, kind: Kind) {
    if kind == Kind::S3InProcess {
        eprintln!("skipped: s3s-fs's conditional PUT is not exclusive (CI runs this against moto)");
        return;
    }
    for round in 0..30 {
        assert_eq!(takers_that_won(&target, round).await, 1, "round {round}");
    }
    // A stale lock taken over by several at once: S3's conditional replace (If-Match) lets one
    // win. A local folder has no conditional replace; its narrow window (docs/ARCHITECTURE.md,
    // *Locks*) is not asserted here.
    if kind == Kind::Local {
        return;
    }
    let stale = r#"{"format":"crmvault-lock-1","id":"00","mode":"append","since":"2020-01-01T00:00:00Z","refreshed":"2020-01-01T00:00:00Z","lease_seconds":600}"#;
    for round in 0..10 {
        target.delete(crmvault::lock::WRITER_KEY).await.unwrap();
        target.put_new(crmvault::lock::WRITER_KEY, Bytes::from_static(stale.as_bytes())).await.unwrap();
        assert_eq!(takers_that_won(&target, 100 + round).await, 1, "takeover round {round}");
    }
}
