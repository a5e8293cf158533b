//! The operations behind the CLI commands, one file each. They take every input as a
//! parameter and return a report; printing is the CLI's job.

pub mod copy;
pub mod init;
pub mod ls;
pub mod snapshots;
pub mod verify;
