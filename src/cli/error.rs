//! How `hectorctl` fails: one exit status per kind of failure, told from an error's chain of
//! causes, and the error's text for a person — each cause once, gRPC and Kubernetes API errors
//! in words rather than as debug dumps.

use std::process::ExitCode;

use hector_plugin_client::ClientError;

/// The exit statuses of `hectorctl`. The numbers above 2 are those of BSD's `sysexits.h`, so
/// scripts can tell "try again later" (69) from "fix your access" (77) or "fix your
/// configuration" (78).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Done.
    Ok = 0,
    /// The command ran and the answer is no: a manifest is invalid, a call failed, the plugin
    /// is unhealthy or reported an error.
    Failed = 1,
    /// The command line is wrong: flags, arguments, a plugin name that is not published, a
    /// method the plugin's type does not have.
    Usage = 2,
    /// The plugin or the Kubernetes API cannot be reached or did not answer in time
    /// (`EX_UNAVAILABLE`).
    Unavailable = 69,
    /// The plugin or the Kubernetes API refused the caller (`EX_NOPERM`).
    Denied = 77,
    /// The kubeconfig, its context, the endpoints file or the token file cannot be used
    /// (`EX_CONFIG`).
    Config = 78,
}

impl Exit {
    /// The exit code.
    pub fn code(self) -> ExitCode {
        ExitCode::from(self as u8)
    }
}

/// What `hectorctl --help` says about exit statuses; the docs repeat it.
pub const EXIT_STATUS_HELP: &str = "\
Exit status:
  0   done (also when the reader of the output stops early, as `| head` does)
  1   the command ran and the answer is no: a manifest is invalid, a call failed,
      the plugin is unhealthy or reported an error
  2   usage: bad flags or arguments, a plugin name that is not published, a method
      the plugin's type does not have
  69  unavailable: the plugin or the Kubernetes API cannot be reached or did not
      answer in time
  77  permission denied: the plugin or the Kubernetes API refused the caller
  78  configuration: the kubeconfig, its context, the endpoints file or the token
      file cannot be used";

/// Failures `hectorctl` itself recognises, each with its exit status.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line asks for something that cannot be done.
    #[error("{0}")]
    Usage(String),
    /// Nothing answers at the target.
    #[error("cannot connect to {target}: {reason}")]
    Unreachable {
        /// The address, as given.
        target: String,
        /// Why, in a person's words ("connection refused").
        reason: String,
    },
    /// The target took the call but did not answer in time.
    #[error("no answer from {target} within {secs}s")]
    NoAnswer {
        /// The address or plugin name.
        target: String,
        /// The time waited.
        secs: u64,
    },
    /// The Kubernetes configuration cannot be used.
    #[error("{0}")]
    Config(String),
    /// The plugin answered, with an error of its own in the reply.
    #[error("plugin error: {0}")]
    Plugin(String),
}

impl CliError {
    /// A usage error.
    pub fn usage(message: impl Into<String>) -> Self {
        Self::Usage(message.into())
    }

    fn exit(&self) -> Exit {
        match self {
            Self::Usage(_) => Exit::Usage,
            Self::Unreachable { .. } | Self::NoAnswer { .. } => Exit::Unavailable,
            Self::Config(_) => Exit::Config,
            Self::Plugin(_) => Exit::Failed,
        }
    }
}

/// The exit status for `err`: that of the first cause in its chain whose kind is known, else
/// [`Exit::Failed`].
pub fn classify(err: &anyhow::Error) -> Exit {
    for cause in err.chain() {
        if let Some(exit) = classify_one(cause) {
            return exit;
        }
    }
    Exit::Failed
}

fn classify_one(e: &(dyn std::error::Error + 'static)) -> Option<Exit> {
    if let Some(e) = e.downcast_ref::<CliError>() {
        return Some(e.exit());
    }
    if let Some(s) = e.downcast_ref::<tonic::Status>() {
        return Some(status_exit(s.code()));
    }
    if let Some(e) = e.downcast_ref::<ClientError>() {
        return match e {
            // Its cause, a Kubernetes API error, tells which.
            ClientError::Watch { .. } => None,
            ClientError::NotPublished { .. }
            | ClientError::TypeMismatch { .. }
            | ClientError::Address(_) => Some(Exit::Usage),
            ClientError::ReadFile { .. } | ClientError::Parse { .. } | ClientError::Token(_) => {
                Some(Exit::Config)
            }
            ClientError::WatchTimeout { .. }
            | ClientError::NotPublishedInTime { .. }
            | ClientError::Unresolvable { .. } => Some(Exit::Unavailable),
            _ => Some(Exit::Failed),
        };
    }
    if let Some(e) = e.downcast_ref::<kube::Error>() {
        return Some(match e {
            kube::Error::Api(s) => api_exit(s.code),
            kube::Error::InferConfig(_) | kube::Error::InferKubeconfig(_) => Exit::Config,
            kube::Error::Auth(_) => Exit::Denied,
            kube::Error::HyperError(_) | kube::Error::Service(_) => Exit::Unavailable,
            _ => Exit::Failed,
        });
    }
    if let Some(kube::runtime::watcher::Error::WatchError(s)) =
        e.downcast_ref::<kube::runtime::watcher::Error>()
    {
        return Some(api_exit(s.code));
    }
    if e.is::<kube::config::KubeconfigError>() || e.is::<kube::config::InferConfigError>() {
        return Some(Exit::Config);
    }
    if e.is::<tokio::time::error::Elapsed>() {
        return Some(Exit::Unavailable);
    }
    if let Some(io) = e.downcast_ref::<std::io::Error>()
        && io.kind() == std::io::ErrorKind::PermissionDenied
    {
        return Some(Exit::Denied);
    }
    None
}

/// The exit status of a call that ended with gRPC status `code`.
pub fn status_exit(code: tonic::Code) -> Exit {
    match code {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => Exit::Unavailable,
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => Exit::Denied,
        _ => Exit::Failed,
    }
}

fn api_exit(http_code: u16) -> Exit {
    match http_code {
        401 | 403 => Exit::Denied,
        _ => Exit::Failed,
    }
}

/// The messages of an error and its causes, outermost first, joined with `: `, each once (see
/// [`join_once`]). A gRPC status, a Kubernetes API error and an I/O error are told in words and
/// end the chain: what lies below them is already in their words.
pub fn error_text(err: &anyhow::Error) -> String {
    chain_text(err.chain())
}

/// [`error_text`] of any chain of causes.
pub fn chain_text<'a>(
    chain: impl IntoIterator<Item = &'a (dyn std::error::Error + 'static)>,
) -> String {
    let mut messages = Vec::new();
    for e in chain {
        if let Some(s) = e.downcast_ref::<tonic::Status>() {
            messages.push(status_text(s));
            break;
        }
        if let Some(k) = e.downcast_ref::<kube::Error>() {
            messages.push(kube_text(k));
            break;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(words) = io_words(io)
        {
            messages.push(words);
            break;
        }
        messages.push(own_text(e));
    }
    join_once(messages)
}

/// An error's message without its cause's, which many error types append (`…: {source}`);
/// the cause is told next, in its own words.
fn own_text(e: &(dyn std::error::Error + 'static)) -> String {
    let message = e.to_string();
    let Some(source) = e.source() else {
        return message;
    };
    let source = source.to_string();
    for suffix in [format!(": {source}"), format!(" ({source})")] {
        if let Some(own) = message.strip_suffix(&suffix)
            && !own.is_empty()
        {
            return own.to_string();
        }
    }
    message
}

/// Joins messages with `: `, leaving out one that its predecessor already ends with or
/// repeats, as error types that print their cause do.
pub fn join_once(messages: impl IntoIterator<Item = String>) -> String {
    let mut text = String::new();
    let mut last = String::new();
    for message in messages {
        let repeated = message.is_empty()
            || message == last
            || last.ends_with(&format!(": {message}"))
            || last.ends_with(&format!(" ({message})"))
            || text.ends_with(&format!(": {message}"));
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

/// A gRPC status in words: its message, and the code in gRPC's own spelling
/// (`UNAVAILABLE`), which is what a plugin's logs and docs use.
pub fn status_text(s: &tonic::Status) -> String {
    let code = code_name(s.code());
    if s.message().is_empty() {
        format!("the call ended with {code} ({})", s.code().description())
    } else {
        format!("{} ({code})", s.message())
    }
}

/// gRPC's name of a status code.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

fn kube_text(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if s.message.is_empty() => {
            format!("the Kubernetes API answered HTTP {} {}", s.code, s.reason)
        }
        kube::Error::Api(s) => format!("{} (HTTP {})", s.message, s.code),
        kube::Error::HyperError(_) | kube::Error::Service(_) => {
            let reason = std::error::Error::source(e)
                .map(reason_text)
                .unwrap_or_else(|| e.to_string());
            format!("cannot reach the Kubernetes API: {reason}")
        }
        other => chain_text_plain(other),
    }
}

fn chain_text_plain(e: &(dyn std::error::Error + 'static)) -> String {
    join_once(std::iter::successors(Some(e), |c| c.source()).map(ToString::to_string))
}

/// Why a connection failed, in a person's words where the operating system's reason is known
/// ("connection refused"), else the causes' messages, each once.
pub fn reason_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(words) = c.downcast_ref::<std::io::Error>().and_then(io_words) {
            return words;
        }
        cause = c.source();
    }
    chain_text_plain(e)
}

/// The words people use for the I/O errors a connection or a file meets, without the OS
/// error number; `None` for others.
fn io_words(e: &std::io::Error) -> Option<String> {
    use std::io::ErrorKind::*;
    Some(
        match e.kind() {
            ConnectionRefused => "connection refused",
            ConnectionReset => "connection reset",
            TimedOut => "timed out",
            HostUnreachable => "host unreachable",
            NetworkUnreachable => "network unreachable",
            NotFound => "no such file or directory",
            PermissionDenied => "permission denied",
            _ => return None,
        }
        .to_string(),
    )
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

    fn chain(texts: &[&'static str]) -> Option<Box<E>> {
        let mut e: Option<Box<E>> = None;
        for text in texts.iter().rev() {
            e = Some(Box::new(E { text, source: e }));
        }
        e
    }

    #[test]
    fn a_chain_names_each_cause_once() -> Result<(), &'static str> {
        let e = chain(&[
            "transport error",
            "tcp connect error",
            "tcp connect error",
            "Connection refused (os error 111)",
        ])
        .ok_or("chain")?;
        assert_eq!(
            chain_text(std::iter::successors(
                Some(&*e as &(dyn std::error::Error + 'static)),
                |c| c.source()
            )),
            "transport error: tcp connect error: Connection refused (os error 111)"
        );
        let e = anyhow::Error::new(
            *chain(&[
                "endpoints file is not valid: missing field `x`",
                "missing field `x`",
            ])
            .ok_or("chain")?,
        )
        .context("/tmp/e.json");
        assert_eq!(
            error_text(&e),
            "/tmp/e.json: endpoints file is not valid: missing field `x`"
        );
        let e = anyhow::Error::new(*chain(&["a", "b"]).ok_or("chain")?).context("c");
        assert_eq!(error_text(&e), "c: a: b");
        Ok(())
    }

    #[test]
    fn grpc_statuses_read_as_words_and_exit_by_their_kind() {
        let refused = anyhow::Error::new(tonic::Status::unavailable(
            "cannot reach remote plugin echo: 127.0.0.1:9: connection refused",
        ));
        assert_eq!(
            error_text(&refused),
            "cannot reach remote plugin echo: 127.0.0.1:9: connection refused (UNAVAILABLE)"
        );
        assert_eq!(classify(&refused), Exit::Unavailable);
        let denied = anyhow::Error::new(tonic::Status::permission_denied("no"))
            .context("`generate` at 10.0.0.1:50051");
        assert_eq!(
            error_text(&denied),
            "`generate` at 10.0.0.1:50051: no (PERMISSION_DENIED)"
        );
        assert_eq!(classify(&denied), Exit::Denied);
        let unauthenticated = anyhow::Error::new(tonic::Status::unauthenticated(""));
        assert_eq!(classify(&unauthenticated), Exit::Denied);
        assert!(error_text(&unauthenticated).contains("UNAUTHENTICATED"));
        let failed = anyhow::Error::new(tonic::Status::invalid_argument("empty text"));
        assert_eq!(classify(&failed), Exit::Failed);
    }

    #[test]
    fn each_kind_of_failure_has_its_exit_status() {
        let cases = [
            (
                CliError::usage("give --address or --plugin"),
                Exit::Usage,
                2,
            ),
            (
                CliError::Unreachable {
                    target: "127.0.0.1:9".into(),
                    reason: "connection refused".into(),
                },
                Exit::Unavailable,
                69,
            ),
            (
                CliError::NoAnswer {
                    target: "x".into(),
                    secs: 1,
                },
                Exit::Unavailable,
                69,
            ),
            (CliError::Config("no context".into()), Exit::Config, 78),
            (CliError::Plugin("boom".into()), Exit::Failed, 1),
        ];
        for (e, exit, code) in cases {
            let e = anyhow::Error::new(e).context("outer");
            assert_eq!(classify(&e), exit, "{e:#}");
            assert_eq!(exit as u8, code);
        }
        let not_published = anyhow::Error::new(ClientError::NotPublished {
            name: "nope".into(),
            place: "configmap agents/hector-plugins".into(),
            known: vec!["echo".into()],
        });
        assert_eq!(classify(&not_published), Exit::Usage);
        let forbidden = anyhow::Error::new(kube::Error::Api(Box::new(kube::core::Status {
            code: 403,
            message: "configmaps \"hector-plugins\" is forbidden".into(),
            reason: "Forbidden".into(),
            ..Default::default()
        })));
        assert_eq!(classify(&forbidden), Exit::Denied);
        assert_eq!(
            error_text(&forbidden),
            "configmaps \"hector-plugins\" is forbidden (HTTP 403)"
        );
        let io = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::PermissionDenied))
            .context("cannot read /x");
        assert_eq!(classify(&io), Exit::Denied);
        assert_eq!(error_text(&io), "cannot read /x: permission denied");
        assert_eq!(classify(&anyhow::anyhow!("something else")), Exit::Failed);
    }
}
