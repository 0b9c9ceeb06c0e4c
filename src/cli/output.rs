//! Writing what `hectorctl` prints: data on stdout without panicking when its reader has gone
//! (`hectorctl … | head`), lines that never run into each other, and error chains without
//! repeats.

use std::fmt;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};

/// Set while the last text written to stdout did not end its line.
static MID_LINE: AtomicBool = AtomicBool::new(false);

/// The reader of stdout closed it (EPIPE), as `| head` does once it has enough. Not a
/// failure: `hectorctl` stops writing and exits quietly with status 0.
#[derive(Debug, thiserror::Error)]
#[error("stdout was closed by its reader")]
pub struct StdoutClosed;

/// Standard output for data. `write!`/`writeln!` on it return an error rather than panic
/// like `print!` does: [`StdoutClosed`] when the reader has gone.
pub struct Out(io::Stdout);

/// Standard output for data; see [`Out`].
pub fn stdout() -> Out {
    Out(io::stdout())
}

impl Out {
    /// What `write!` and `writeln!` call: writes through the locked stdout and flushes, so a
    /// closed pipe shows up here rather than at exit.
    pub fn write_fmt(&mut self, args: fmt::Arguments<'_>) -> anyhow::Result<()> {
        match args.as_str() {
            Some(s) => self.write_str(s),
            None => self.write_str(&args.to_string()),
        }
    }

    /// Writes `text` as it is.
    pub fn write_str(&mut self, text: &str) -> anyhow::Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        let mut lock = self.0.lock();
        lock.write_all(text.as_bytes())
            .and_then(|()| lock.flush())
            .map_err(write_error)?;
        MID_LINE.store(!text.ends_with('\n'), Ordering::Relaxed);
        Ok(())
    }

    /// Ends the line if the last text written did not, so that what follows — on stdout, or
    /// on stderr, which a terminal shows in the same place — starts a line of its own.
    pub fn end_line(&mut self) -> anyhow::Result<()> {
        if MID_LINE.load(Ordering::Relaxed) {
            self.write_str("\n")
        } else {
            Ok(())
        }
    }
}

fn write_error(e: io::Error) -> anyhow::Error {
    if e.kind() == io::ErrorKind::BrokenPipe {
        StdoutClosed.into()
    } else {
        anyhow::Error::new(e).context("cannot write to stdout")
    }
}

/// Whether `err` is stdout having been closed by its reader.
pub fn is_stdout_closed(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.is::<StdoutClosed>())
}

/// Prints a line on stderr, after ending a line left open on stdout. Never panics: a closed
/// stderr loses the message.
pub fn note(message: impl fmt::Display) {
    // stdout may be gone too; this message matters more.
    let _ = stdout().end_line();
    let _ = writeln!(io::stderr().lock(), "{message}");
}

/// The messages of an error and its causes, outermost first, joined with `: `, each once: a
/// cause whose text its parent already ends with (or repeats) is left out.
pub fn chain_text<'a>(
    chain: impl IntoIterator<Item = &'a (dyn std::error::Error + 'static)>,
) -> String {
    let mut text = String::new();
    let mut last = String::new();
    for e in chain {
        let message = e.to_string();
        let repeated = message.is_empty()
            || message == last
            || last.ends_with(&format!(": {message}"))
            || last.ends_with(&format!(" ({message})"));
        if !repeated {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&message);
        }
        last = message;
    }
    text
}

/// [`chain_text`] of an `anyhow` error.
pub fn error_text(err: &anyhow::Error) -> String {
    chain_text(err.chain())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{text}")]
    struct E {
        text: &'static str,
        #[source]
        source: Option<Box<E>>,
    }

    fn chain(texts: &[&'static str]) -> E {
        let mut e: Option<Box<E>> = None;
        for text in texts.iter().rev() {
            e = Some(Box::new(E { text, source: e }));
        }
        *e.expect("one text")
    }

    #[test]
    fn a_chain_names_each_cause_once() {
        let e = chain(&[
            "transport error",
            "tcp connect error",
            "tcp connect error",
            "Connection refused (os error 111)",
        ]);
        assert_eq!(
            chain_text(std::iter::successors(
                Some(&e as &(dyn std::error::Error + 'static)),
                |c| c.source()
            )),
            "transport error: tcp connect error: Connection refused (os error 111)"
        );
        let e = anyhow::Error::new(chain(&[
            "endpoints file is not valid: missing field `x`",
            "missing field `x`",
        ]))
        .context("/tmp/e.json");
        assert_eq!(
            error_text(&e),
            "/tmp/e.json: endpoints file is not valid: missing field `x`"
        );
        let e = anyhow::Error::new(chain(&["a", "b"])).context("c");
        assert_eq!(error_text(&e), "c: a: b");
    }

    #[test]
    fn a_closed_stdout_is_told_apart() {
        assert!(is_stdout_closed(&write_error(
            io::ErrorKind::BrokenPipe.into()
        )));
        assert!(is_stdout_closed(
            &anyhow::Error::from(StdoutClosed).context("listing")
        ));
        assert!(!is_stdout_closed(&write_error(
            io::ErrorKind::PermissionDenied.into()
        )));
    }
}
