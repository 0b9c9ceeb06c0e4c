//! The caller's identity towards plugins: a Kubernetes projected ServiceAccount token (audience
//! [`TOKEN_AUDIENCE`]) read from a file and sent as `authorization: Bearer <token>`.
//!
//! Which file: the one named explicitly (the `token_file` config key, or a builder option),
//! else the one `HECTOR_PLUGIN_TOKEN_FILE` names, else [`DEFAULT_TOKEN_PATH`]. A file that was
//! named must exist; the default one may be absent, and then no token is sent, so a setup
//! without the projected volume keeps working against plugins that do not ask for one.
//!
//! Kubelet rotates the token by writing a new directory and swapping a symbolic link, so the
//! file is read again by path, at most once per [`RECHECK`]; until a read succeeds the last
//! token is kept. The token never appears in logs, errors or `Debug` output.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::HeaderValue;

/// Where the projected token is mounted when nothing else is said.
pub const DEFAULT_TOKEN_PATH: &str = "/var/run/secrets/hector.dev/token";
/// The environment variable naming the token file.
pub const TOKEN_FILE_ENV: &str = "HECTOR_PLUGIN_TOKEN_FILE";
/// The config key naming the token file (`hector-plugin-remote`'s `Initialize` config).
pub const TOKEN_FILE_KEY: &str = "token_file";
/// The audience plugins accept tokens for.
pub const TOKEN_AUDIENCE: &str = "hector.dev/plugins";
/// How long a read token is used before the file is read again.
pub const RECHECK: Duration = Duration::from_secs(1);
/// The request header carrying the token.
pub const AUTHORIZATION: &str = "authorization";

/// Who chose the token file, for messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Named by the program's configuration (`token_file`, a builder option).
    Explicit,
    /// Named by [`TOKEN_FILE_ENV`].
    Env,
    /// The default path, [`DEFAULT_TOKEN_PATH`].
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Explicit => f.write_str(TOKEN_FILE_KEY),
            Origin::Env => f.write_str(TOKEN_FILE_ENV),
            Origin::Default => f.write_str("the default path"),
        }
    }
}

/// Why a token file cannot be used. Never carries the file's content.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file cannot be read (missing, not permitted, …).
    #[error("token file {} (from {origin}) cannot be read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Who named it.
        origin: Origin,
        /// Why.
        source: std::io::Error,
    },
    /// The file holds nothing but white space.
    #[error("token file {} (from {origin}) is empty", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
        /// Who named it.
        origin: Origin,
    },
    /// The file holds something that cannot be a header value.
    #[error(
        "token file {} (from {origin}) does not hold a token: expected one line of printable text",
        path.display()
    )]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Who named it.
        origin: Origin,
    },
}

/// The `authorization` header value for the calls of a program: from a token file, or none.
/// Cheap to clone; clones share the file's last reading.
#[derive(Clone, Default)]
pub struct TokenSource {
    file: Option<Arc<TokenFile>>,
}

struct TokenFile {
    path: PathBuf,
    origin: Origin,
    state: Mutex<State>,
}

struct State {
    header: HeaderValue,
    read_at: Instant,
    /// The last failure to read again, so that one is logged once, not every second.
    problem: Option<String>,
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            None => f.write_str("TokenSource(none)"),
            Some(file) => f
                .debug_struct("TokenSource")
                .field("path", &file.path)
                .field("origin", &file.origin)
                .finish_non_exhaustive(),
        }
    }
}

impl TokenSource {
    /// No token: calls carry no `authorization` header.
    pub fn none() -> Self {
        Self::default()
    }

    /// The token file `explicit` names, else the one [`TOKEN_FILE_ENV`] names, else
    /// [`DEFAULT_TOKEN_PATH`] when it exists; an empty name counts as none.
    pub fn resolve(explicit: Option<&Path>) -> Result<Self, TokenError> {
        Self::resolve_from(
            explicit,
            std::env::var_os(TOKEN_FILE_ENV),
            Path::new(DEFAULT_TOKEN_PATH),
        )
    }

    /// [`Self::resolve`] with the environment's value and the default path given.
    pub fn resolve_from(
        explicit: Option<&Path>,
        env: Option<OsString>,
        default: &Path,
    ) -> Result<Self, TokenError> {
        if let Some(path) = explicit.filter(|p| !p.as_os_str().is_empty()) {
            return Self::open(path, Origin::Explicit);
        }
        if let Some(path) = env.filter(|p| !p.is_empty()) {
            return Self::open(Path::new(&path), Origin::Env);
        }
        match std::fs::metadata(default) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::none()),
            _ => Self::open(default, Origin::Default),
        }
    }

    /// The token in the file at `path`, which must exist and hold one.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, TokenError> {
        Self::open(path.as_ref(), Origin::Explicit)
    }

    fn open(path: &Path, origin: Origin) -> Result<Self, TokenError> {
        let header = read(path, origin)?;
        Ok(Self {
            file: Some(Arc::new(TokenFile {
                path: path.to_path_buf(),
                origin,
                state: Mutex::new(State {
                    header,
                    read_at: Instant::now(),
                    problem: None,
                }),
            })),
        })
    }

    /// The token file, when there is one.
    pub fn path(&self) -> Option<&Path> {
        self.file.as_ref().map(|f| f.path.as_path())
    }

    /// Whether calls carry a token.
    pub fn is_some(&self) -> bool {
        self.file.is_some()
    }

    /// `Bearer <token>` (marked sensitive, so HTTP/2 never indexes it), read again from the
    /// file when the last reading is older than [`RECHECK`].
    pub fn header(&self) -> Option<HeaderValue> {
        let file = self.file.as_ref()?;
        let mut state = file.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.read_at.elapsed() >= RECHECK {
            // A read of a small file on the kubelet's tmpfs, once a second: cheaper than any
            // watch, and a symbolic link swap is followed without special handling.
            state.read_at = Instant::now();
            match read(&file.path, file.origin) {
                Ok(header) => {
                    if header != state.header {
                        tracing::debug!(path = %file.path.display(), "token file changed; using the new token");
                        state.header = header;
                    }
                    state.problem = None;
                }
                Err(e) => {
                    let now = e.to_string();
                    if state.problem.as_deref() != Some(now.as_str()) {
                        tracing::warn!(problem = %now, "token file; keeping the last token");
                        state.problem = Some(now);
                    }
                }
            }
        }
        Some(state.header.clone())
    }
}

impl TokenSource {
    /// [`Self::header`] as tonic metadata, for requests built by hand.
    pub fn metadata(&self) -> Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> {
        // The token was checked to be printable ASCII, so the conversion cannot fail.
        let mut value: tonic::metadata::MetadataValue<_> =
            self.header()?.to_str().ok()?.parse().ok()?;
        value.set_sensitive(true);
        Some(value)
    }
}

/// Reads the file into a sensitive `Bearer` header value.
fn read(path: &Path, origin: Origin) -> Result<HeaderValue, TokenError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
        path: path.to_path_buf(),
        origin,
        source,
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(TokenError::Empty {
            path: path.to_path_buf(),
            origin,
        });
    }
    let invalid = || TokenError::Invalid {
        path: path.to_path_buf(),
        origin,
    };
    if token.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err(invalid());
    }
    let mut header = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| invalid())?;
    header.set_sensitive(true);
    Ok(header)
}

/// Adds the token to every call of a tonic client
/// (`XClient::with_interceptor(channel, token_source)`).
impl tonic::service::Interceptor for TokenSource {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = self.metadata() {
            request.metadata_mut().insert(AUTHORIZATION, value);
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "eyJhbGciOiJSUzI1NiJ9.c2VjcmV0LXBheWxvYWQ.c2lnbmF0dXJl";

    fn header_text(s: &TokenSource) -> Option<String> {
        s.header().and_then(|h| h.to_str().ok().map(str::to_string))
    }

    #[test]
    fn an_absent_default_file_means_no_token() -> Result<(), TokenError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let s = TokenSource::resolve_from(None, None, &dir.path().join("token"))?;
        assert!(!s.is_some());
        assert_eq!(s.header(), None);
        assert_eq!(format!("{s:?}"), "TokenSource(none)");
        Ok(())
    }

    #[test]
    fn a_named_file_must_exist_and_the_error_says_who_named_it() {
        let missing = Path::new("/nonexistent/hector/token");
        let err = TokenSource::resolve_from(Some(missing), None, Path::new("/nonexistent/d"))
            .expect_err("named and missing");
        let text = err.to_string();
        assert!(
            text.contains("/nonexistent/hector/token") && text.contains(TOKEN_FILE_KEY),
            "{text}"
        );
        let err = TokenSource::resolve_from(None, Some(missing.into()), Path::new("/x"))
            .expect_err("named by the environment and missing");
        assert!(err.to_string().contains(TOKEN_FILE_ENV), "{err}");
    }

    #[test]
    fn precedence_is_explicit_then_environment_then_default() {
        let dir = tempfile::tempdir().expect("temp dir");
        let write = |name: &str, token: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, format!("{token}\n")).expect("write");
            p
        };
        let explicit = write("explicit", "a");
        let env = write("env", "b");
        let default = write("default", "c");
        let pick = |e: Option<&Path>, v: Option<&Path>| {
            let s =
                TokenSource::resolve_from(e, v.map(OsString::from), &default).expect("resolves");
            header_text(&s)
        };
        assert_eq!(
            pick(Some(&explicit), Some(&env)).as_deref(),
            Some("Bearer a")
        );
        assert_eq!(pick(None, Some(&env)).as_deref(), Some("Bearer b"));
        assert_eq!(pick(None, None).as_deref(), Some("Bearer c"));
        assert_eq!(
            pick(Some(Path::new("")), Some(Path::new(""))).as_deref(),
            Some("Bearer c"),
            "empty names count as unset"
        );
    }

    #[test]
    fn bad_content_is_refused_without_showing_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("token");
        std::fs::write(&path, " \n").expect("write");
        let err = TokenSource::from_file(&path).expect_err("empty");
        assert!(matches!(err, TokenError::Empty { .. }), "{err}");
        std::fs::write(&path, format!("{SECRET}\nsecond {SECRET}")).expect("write");
        let err = TokenSource::from_file(&path).expect_err("two lines");
        assert!(matches!(err, TokenError::Invalid { .. }), "{err}");
        assert!(!err.to_string().contains(SECRET), "{err}");
    }

    #[test]
    fn debug_and_the_header_value_never_show_the_token() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("token");
        std::fs::write(&path, format!("  {SECRET}\n")).expect("write");
        let s = TokenSource::from_file(&path).expect("reads");
        assert_eq!(header_text(&s), Some(format!("Bearer {SECRET}")), "trimmed");
        let debug = format!("{s:?}");
        assert!(
            !debug.contains(SECRET) && debug.contains("token"),
            "{debug}"
        );
        let header = s.header().expect("a token");
        assert!(header.is_sensitive());
        assert!(!format!("{header:?}").contains(SECRET));
    }

    #[test]
    fn the_interceptor_adds_the_header_and_none_adds_nothing() {
        use tonic::service::Interceptor;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("token");
        std::fs::write(&path, SECRET).expect("write");
        let mut s = TokenSource::from_file(&path).expect("reads");
        let r = s.call(tonic::Request::new(())).expect("passes");
        assert_eq!(
            r.metadata()
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
            Some(format!("Bearer {SECRET}").as_str())
        );
        let r = TokenSource::none()
            .call(tonic::Request::new(()))
            .expect("passes");
        assert!(r.metadata().get(AUTHORIZATION).is_none());
    }

    #[cfg(unix)]
    #[test]
    fn a_kubelet_style_rotation_is_seen_after_the_recheck_interval() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().expect("temp dir");
        // Kubelet's layout: token -> ..data/token, ..data -> ..<timestamp>.
        let first = dir.path().join("..2026_01_01_00_00_00.1");
        std::fs::create_dir(&first).expect("dir");
        std::fs::write(first.join("token"), "first-token").expect("write");
        symlink(first.file_name().expect("name"), dir.path().join("..data")).expect("link");
        symlink("..data/token", dir.path().join("token")).expect("link");
        let s = TokenSource::from_file(dir.path().join("token")).expect("reads");
        assert_eq!(header_text(&s).as_deref(), Some("Bearer first-token"));

        let second = dir.path().join("..2026_01_01_00_50_00.2");
        std::fs::create_dir(&second).expect("dir");
        std::fs::write(second.join("token"), "second-token").expect("write");
        let tmp = dir.path().join("..data_tmp");
        symlink(second.file_name().expect("name"), &tmp).expect("link");
        std::fs::rename(&tmp, dir.path().join("..data")).expect("atomic swap");
        std::fs::remove_dir_all(&first).expect("old data removed");
        assert_eq!(
            header_text(&s).as_deref(),
            Some("Bearer first-token"),
            "read again only after the interval"
        );
        std::thread::sleep(RECHECK + Duration::from_millis(50));
        assert_eq!(header_text(&s).as_deref(), Some("Bearer second-token"));

        // A failed read keeps the last token.
        std::fs::remove_dir_all(&second).expect("removed");
        std::thread::sleep(RECHECK + Duration::from_millis(50));
        assert_eq!(header_text(&s).as_deref(), Some("Bearer second-token"));
    }
}
