//! Ctrl-C and SIGTERM while a restore has made something it can undo. The command line stops a
//! command by dropping it (locks are released as it goes), which is right for most commands
//! but left a restore's work behind: a `--create` database loaded under its temporary name, the
//! tables a `--parallel` restore had committed. While such work is under way it is held
//! [`Undoable`]; a signal then [`request`]s the stop, the load ends with
//! [`Error::Interrupted`] where it is [`or_interrupted`], and the restore's own failure path
//! undoes what it made, as for any other error.

use std::future::Future;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::Notify;

use crate::error::{Error, Result};

static REQUESTED: AtomicBool = AtomicBool::new(false);
static UNDOABLE: AtomicUsize = AtomicUsize::new(0);
static WAKE: LazyLock<Notify> = LazyLock::new(Notify::new);

/// Held while work that a failure undoes is under way (and while it is undone).
pub struct Undoable(());

impl Undoable {
    /// Marks work the holder undoes on failure as under way, until dropped.
    pub fn begin() -> Undoable {
        UNDOABLE.fetch_add(1, Ordering::SeqCst);
        Undoable(())
    }
}

impl Drop for Undoable {
    fn drop(&mut self) {
        UNDOABLE.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Whether some work is [`Undoable`] now: a signal should let it undo itself.
pub fn undoing() -> bool {
    UNDOABLE.load(Ordering::SeqCst) > 0
}

/// Asks the work under way to stop ([`or_interrupted`] ends with [`Error::Interrupted`]).
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
    WAKE.notify_waiters();
}

/// `work`, or [`Error::Interrupted`] as soon as a stop is [`request`]ed (at once when it was
/// before): `work` is dropped, and the caller's failure path runs.
pub async fn or_interrupted<T>(work: impl Future<Output = Result<T>>) -> Result<T> {
    // On the heap: the loads it wraps are large, and the restore's future holds this one.
    let work = Box::pin(work);
    tokio::select! {
        biased;
        () = requested() => Err(Error::Interrupted),
        outcome = work => outcome,
    }
}

async fn requested() {
    loop {
        // Registered before the flag is read, so a request in between still wakes it.
        let woken = WAKE.notified();
        if REQUESTED.load(Ordering::SeqCst) {
            return;
        }
        woken.await;
    }
}
