//! Writing what `hectorctl` prints: data on stdout without panicking when its reader has gone
//! (`hectorctl … | head`), lines that never run into each other, and documents in the format
//! asked for.

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

/// What a command prints on stdout: text for people, or a document for programs.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// For people: tables, answers as text (`table` is another name for it).
    #[default]
    #[value(alias = "table")]
    Text,
    /// JSON: one document; one line per answer for calls (JSON Lines).
    Json,
    /// YAML: one document; one document per answer for calls.
    Yaml,
}

/// A document in `format` (JSON or YAML), ending its line: JSON pretty-printed, or on one
/// line with `one_line` (each answer of a call a line of its own, JSON Lines).
pub fn document<T: serde::Serialize + ?Sized>(
    format: Format,
    value: &T,
    one_line: bool,
) -> anyhow::Result<String> {
    Ok(match format {
        Format::Json if one_line => serde_json::to_string(value)? + "\n",
        Format::Json => serde_json::to_string_pretty(value)? + "\n",
        // Every answer of a call starts a YAML document of its own, so answers stream.
        Format::Yaml if one_line => format!("---\n{}", serde_norway::to_string(value)?),
        Format::Yaml | Format::Text => serde_norway::to_string(value)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
