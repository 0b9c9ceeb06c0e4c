//! How many client connections are spliced to the plugin at once.
//!
//! A spliced connection costs two threads, a connection to the plugin and four to six file
//! descriptors for as long as it is open, so their number is capped (`--max-connections`).
//! A connection routed to the plugin over the cap is refused before anything reaches the
//! plugin: it gets an HTTP/2 GOAWAY with last stream id 0 (no stream was processed, so the
//! client may send its calls again on another connection) and error REFUSED_STREAM, whose
//! debug data says why, and is closed. Connections the launcher serves itself (health
//! probes, metrics, request-by-request forwarding) cost no thread and are not counted, so
//! probes keep working at the cap.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::frames::{ERROR_REFUSED_STREAM, goaway};

/// How long a refused connection is read from (and what is read thrown away) after its
/// GOAWAY, before it is closed: closing a socket with unread bytes sends a reset, which
/// can destroy the GOAWAY before the client reads it.
const LINGER: Duration = Duration::from_secs(1);
/// At most this much is read from a refused connection while lingering.
const LINGER_BYTES: usize = 256 * 1024;

/// The cap on spliced connections; clones share it.
#[derive(Clone, Debug)]
pub struct ConnectionLimit {
    max: usize,
    places: Arc<Semaphore>,
}

/// A spliced connection's place under the cap, given back when dropped.
#[derive(Debug)]
pub struct Admitted {
    _place: OwnedSemaphorePermit,
}

impl ConnectionLimit {
    /// At most `max` spliced connections at once.
    pub fn new(max: usize) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            max,
            places: Arc::new(Semaphore::new(max)),
        }
    }

    /// The cap.
    pub fn max(&self) -> usize {
        self.max
    }

    /// A place for one more spliced connection, if there is one.
    pub fn admit(&self) -> Option<Admitted> {
        self.places
            .clone()
            .try_acquire_owned()
            .ok()
            .map(|place| Admitted { _place: place })
    }

    /// How many spliced connections are open.
    pub fn open(&self) -> usize {
        self.max - self.places.available_permits()
    }

    /// The gauges in the Prometheus text format.
    pub fn render_metrics(&self) -> String {
        format!(
            "# HELP hector_launcher_spliced_connections Client connections spliced to the plugin now.\n\
             # TYPE hector_launcher_spliced_connections gauge\n\
             hector_launcher_spliced_connections {}\n\
             # HELP hector_launcher_spliced_connections_max The most client connections spliced to the plugin at once (--max-connections).\n\
             # TYPE hector_launcher_spliced_connections_max gauge\n\
             hector_launcher_spliced_connections_max {}\n",
            self.open(),
            self.max
        )
    }
}

/// Refuses a connection over the cap: GOAWAY (last stream 0, REFUSED_STREAM, `reason`),
/// end of the write side (TLS close_notify first where it is TLS), then reads what the
/// client still sends for a moment so that the GOAWAY is not lost to a reset.
pub async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    reason: &str,
) -> std::io::Result<()> {
    stream
        .write_all(&goaway(0, ERROR_REFUSED_STREAM, reason.as_bytes()))
        .await?;
    stream.flush().await?;
    stream.shutdown().await?;
    let mut buf = [0u8; 16 * 1024];
    let mut read = 0;
    let _ = tokio::time::timeout(LINGER, async {
        while read < LINGER_BYTES {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n,
            }
        }
    })
    .await;
    Ok(())
}

/// The soft limit on open files the launcher was started with, once it raised its own.
static INHERITED_OPEN_FILES: OnceLock<libc::rlim_t> = OnceLock::new();

/// Raises the soft limit on open files to the hard one, as Go programs do at start: a
/// container's soft limit may be 1024, which a few hundred spliced connections reach, and
/// past which not even a health probe can be accepted. Returns the soft limit in force.
/// The plugin is started with the limit the launcher was given (see
/// [`restore_open_files_limit`]).
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let _ = INHERITED_OPEN_FILES.set(limit.rlim_cur);
        limit = raised;
    }
    Ok(limit.rlim_cur)
}

/// Puts back the soft limit on open files the launcher was started with, if it raised it:
/// for the plugin, between fork and exec (a program may rely on the usual limit, e.g. one
/// that uses select(2)). Async-signal-safe: one atomic read and one system call.
pub fn restore_open_files_limit() -> std::io::Result<()> {
    let Some(&soft) = INHERITED_OPEN_FILES.get() else {
        return Ok(());
    };
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: as in raise_open_files_limit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    limit.rlim_cur = soft.min(limit.rlim_max);
    // SAFETY: as in raise_open_files_limit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// File descriptors one spliced connection may hold: the client's socket and the plugin's,
/// each opened twice (one per thread) and once more to be closed when idle.
pub const FILES_PER_CONNECTION: u64 = 6;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_cap_and_again_after_one_leaves() {
        let limit = ConnectionLimit::new(2);
        let a = limit.admit().expect("first");
        let b = limit.clone().admit().expect("second, through a clone");
        assert!(limit.admit().is_none(), "third");
        assert_eq!(limit.open(), 2);
        assert!(
            limit
                .render_metrics()
                .contains("hector_launcher_spliced_connections 2\n")
        );
        assert!(
            limit
                .render_metrics()
                .contains("hector_launcher_spliced_connections_max 2\n")
        );
        drop(a);
        assert_eq!(limit.open(), 1);
        let _c = limit.admit().expect("a place again");
        assert!(limit.admit().is_none());
        drop(b);
        // A cap of 0 would refuse everything: never below 1.
        assert_eq!(ConnectionLimit::new(0).max(), 1);
    }

    #[tokio::test]
    async fn a_refused_connection_gets_the_goaway_then_the_end_of_the_stream() {
        let (mut server, mut client) = tokio::io::duplex(64 * 1024);
        // The client had sent a request the launcher never read.
        client.write_all(&[0u8; 100]).await.expect("write");
        let refusing = tokio::spawn(async move { refuse(&mut server, "full").await });
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, goaway(0, ERROR_REFUSED_STREAM, b"full"));
        drop(client);
        refusing.await.expect("task").expect("refused");
    }

    fn open_files() -> libc::rlimit {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct it is given.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        limit
    }

    /// In a child process of its own, since it changes a process-wide limit: the test runs
    /// again there, with a lowered soft limit, and that run checks.
    #[test]
    fn the_open_files_limit_is_raised_and_the_plugin_gets_the_inherited_one() {
        const CHILD: &str = "HECTOR_LAUNCHER_TEST_OPEN_FILES";
        if std::env::var_os(CHILD).is_some() {
            let before = open_files();
            let soft = raise_open_files_limit().expect("raise");
            let after = open_files();
            assert_eq!((soft, after.rlim_cur), (before.rlim_max, before.rlim_max));
            restore_open_files_limit().expect("restore");
            assert_eq!(open_files().rlim_cur, before.rlim_cur);
            return;
        }
        let hard = open_files().rlim_max;
        assert!(hard > 64, "hard limit {hard}");
        let exe = std::env::current_exe().expect("test binary");
        let mut command = std::process::Command::new(exe);
        command
            .args([
                "--exact",
                "limit::tests::the_open_files_limit_is_raised_and_the_plugin_gets_the_inherited_one",
                "--nocapture",
            ])
            .env(CHILD, "1");
        // SAFETY: only getrlimit(2) and setrlimit(2) run between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                let mut limit = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                limit.rlim_cur = limit.rlim_max.min(64);
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = command.output().expect("run the test in a child");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("1 passed"), "{text}");
    }
}
