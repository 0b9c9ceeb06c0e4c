//! `hector-plugin-remote install --into DIR`: for every published plugin, an executable
//! `NAME` (this program, finding its plugin by that name) and `NAME.plugin.yaml` next to it.
//! Hector reads that manifest before it starts any `path:` plugin and dispenses the plugin by
//! its type, and its discovery looks for the same pair, so `DIR/NAME` is what the published
//! `plugins.yaml` names and what discovery finds. What it wrote is listed in a marker file so
//! that a later run removes entries that are no longer published, and nothing else.
//! `--watch` runs again whenever the endpoints file changes (an agent Pod's sidecar).

use std::collections::{BTreeMap, BTreeSet};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use hector_plugin_sdk::endpoints::{EndpointsFile, PublishedPlugin};

use crate::cli::{InstallArgs, InstallBinaryArgs};
use crate::error::{InstallError, TargetError};
use crate::manifest;

/// The marker file listing the names this command installed in a directory.
pub const MARKER: &str = ".hector-plugin-remote";
/// The manifest file suffix Hector's discovery looks for.
const MANIFEST_SUFFIX: &str = ".plugin.yaml";

/// What to do in the directory.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Names to write, with their manifest text and plugin type.
    pub write: Vec<(String, String)>,
    /// Names written earlier and no longer published.
    pub remove: Vec<String>,
    /// Published names left alone, with the reason.
    pub skip: Vec<(String, String)>,
}

/// Whether `name` can be a file name in the directory (and is not one of ours).
fn usable_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Decides what to write and remove. `previous` is what the marker lists; `taken(name)` says
/// whether `NAME` or `NAME.plugin.yaml` already exists in the directory.
pub fn plan(
    published: &BTreeMap<String, PublishedPlugin>,
    previous: &BTreeSet<String>,
    taken: impl Fn(&str) -> bool,
) -> Plan {
    let mut out = Plan::default();
    for (name, plugin) in published {
        if !usable_name(name) {
            out.skip
                .push((name.clone(), "not usable as a file name".into()));
        } else if !previous.contains(name) && taken(name) {
            out.skip.push((
                name.clone(),
                "a file of that name exists and was not written by hector-plugin-remote".into(),
            ));
        } else {
            match manifest::render(name, plugin) {
                Ok(text) => out.write.push((name.clone(), text)),
                Err(reason) => out.skip.push((name.clone(), reason)),
            }
        }
    }
    // Everything written earlier and not written now goes: unpublished, or no longer usable.
    out.remove = previous
        .iter()
        .filter(|n| usable_name(n) && !out.write.iter().any(|(w, _)| w == *n))
        .cloned()
        .collect();
    out
}

/// What a run did.
#[derive(Debug, Default)]
pub struct Report {
    /// Names written.
    pub written: Vec<String>,
    /// Names already up to date.
    pub unchanged: Vec<String>,
    /// Names removed.
    pub removed: Vec<String>,
    /// Names left alone, with the reason.
    pub skipped: Vec<(String, String)>,
    /// Names that failed, with the error.
    pub failed: Vec<(String, String)>,
}

/// Runs `install` and returns the exit code: 0 done, 1 some entries failed, 2 nothing done.
/// With `--watch` it runs until SIGTERM or SIGINT and returns 0 then.
pub fn main(args: &InstallArgs) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("hector-plugin-remote install: cannot find this executable: {e}");
            return ExitCode::from(2);
        }
    };
    if args.watch {
        return watch_main(args, &exe);
    }
    match install(&args.into, &args.endpoints, &exe) {
        Ok(report) => {
            print_report(&args.into, &report);
            if report.failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("hector-plugin-remote install: {e}");
            ExitCode::from(2)
        }
    }
}

fn print_report(dir: &Path, report: &Report) {
    for name in &report.written {
        println!("installed {}", dir.join(name).display());
    }
    for name in &report.unchanged {
        println!("up to date {}", dir.join(name).display());
    }
    for name in &report.removed {
        println!("removed {}", dir.join(name).display());
    }
    for (name, reason) in &report.skipped {
        eprintln!("skipped {name}: {reason}");
    }
    for (name, error) in &report.failed {
        eprintln!("failed {name}: {error}");
    }
}

/// What one look at the endpoints file under `--watch` came to.
#[derive(Debug)]
pub enum Tick {
    /// Nothing new: the content was installed already, or the same failure was reported.
    Nothing,
    /// The content changed and this run brought the directory up to date (or tried to).
    Ran(Report),
    /// The file could not be used; the directory stays as it was.
    Failed(String),
}

/// The state of `install --watch` between looks at the endpoints file.
#[derive(Debug, Default)]
pub struct Watcher {
    /// The content last installed without failures.
    installed: Option<Vec<u8>>,
    /// What the last failure said, so a lasting failure is reported once.
    last_failure: Option<String>,
}

impl Watcher {
    /// Reads the endpoints file and installs when its content differs from what was last
    /// installed without failures (so a failed entry is tried again at the next look).
    pub fn tick(&mut self, dir: &Path, endpoints: &Path, exe: &Path) -> Tick {
        let bytes = match std::fs::read(endpoints) {
            Ok(b) => b,
            Err(source) => {
                return self.failure(
                    TargetError::ReadEndpoints {
                        path: endpoints.to_path_buf(),
                        source,
                    }
                    .to_string(),
                );
            }
        };
        if self.installed.as_deref() == Some(bytes.as_slice()) {
            return Tick::Nothing;
        }
        let Ok(text) = std::str::from_utf8(&bytes) else {
            return self.failure(format!("{}: not UTF-8 text", endpoints.display()));
        };
        match install_text(dir, endpoints, text, exe) {
            Ok(report) if report.failed.is_empty() => {
                self.installed = Some(bytes);
                self.last_failure = None;
                Tick::Ran(report)
            }
            Ok(report) => {
                // Tried again at every look; shown again only when the failures change.
                let failures = format!("{:?}", report.failed);
                if self.last_failure.as_deref() == Some(failures.as_str()) {
                    return Tick::Nothing;
                }
                self.last_failure = Some(failures);
                Tick::Ran(report)
            }
            Err(e) => self.failure(e.to_string()),
        }
    }

    fn failure(&mut self, message: String) -> Tick {
        if self.last_failure.as_deref() == Some(message.as_str()) {
            return Tick::Nothing;
        }
        self.last_failure = Some(message.clone());
        Tick::Failed(message)
    }
}

/// Runs `install --watch`: 0 on SIGTERM or SIGINT, 2 when it cannot start.
fn watch_main(args: &InstallArgs, exe: &Path) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hector-plugin-remote install: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(watch(args, exe))
}

async fn watch(args: &InstallArgs, exe: &Path) -> ExitCode {
    use tokio::signal::unix::{SignalKind, signal};
    // As a container's first process, a signal without a handler would be ignored.
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("hector-plugin-remote install: cannot handle signals: {e}");
            return ExitCode::from(2);
        }
    };
    println!(
        "watching {} every {:?}, installing into {}",
        args.endpoints.display(),
        args.interval,
        args.into.display()
    );
    let mut watcher = Watcher::default();
    loop {
        match watcher.tick(&args.into, &args.endpoints, exe) {
            Tick::Nothing => {}
            Tick::Ran(report) => print_report(&args.into, &report),
            Tick::Failed(message) => {
                eprintln!(
                    "hector-plugin-remote install: {message} (the directory is left as it is)"
                );
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(args.interval) => {}
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    println!("stopped watching {}", args.endpoints.display());
    ExitCode::SUCCESS
}

/// The executable's name in the directory `install-binary` copies it into.
pub const BINARY_NAME: &str = "hector-plugin-remote";

/// Runs `install-binary`: 0 copied, 2 failed.
pub fn binary_main(args: &InstallBinaryArgs) -> ExitCode {
    let result = std::env::current_exe()
        .map_err(|source| InstallError::Io {
            action: "cannot find this executable",
            path: PathBuf::from("/proc/self/exe"),
            source,
        })
        .and_then(|exe| install_binary(&exe, &args.dir));
    match result {
        Ok(path) => {
            println!("installed {}", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hector-plugin-remote install-binary: {e}");
            ExitCode::from(2)
        }
    }
}

/// Puts `exe` at `dir/hector-plugin-remote` (creating `dir`), by rename so an agent that
/// already runs a copy is not disturbed.
pub fn install_binary(exe: &Path, dir: &Path) -> Result<PathBuf, InstallError> {
    std::fs::create_dir_all(dir).map_err(io("cannot create", dir))?;
    let target = dir.join(BINARY_NAME);
    install_executable(exe, &target)?;
    Ok(target)
}

/// Brings `dir` up to date with the plugins published in `endpoints`, installing `exe`.
pub fn install(dir: &Path, endpoints: &Path, exe: &Path) -> Result<Report, InstallError> {
    let text = std::fs::read_to_string(endpoints).map_err(|source| TargetError::ReadEndpoints {
        path: endpoints.to_path_buf(),
        source,
    })?;
    install_text(dir, endpoints, &text, exe)
}

/// [`install`] from the endpoints file's `text` (read from `endpoints`).
fn install_text(
    dir: &Path,
    endpoints: &Path,
    text: &str,
    exe: &Path,
) -> Result<Report, InstallError> {
    let file = EndpointsFile::parse(text).map_err(|source| TargetError::ParseEndpoints {
        path: endpoints.to_path_buf(),
        source,
    })?;
    std::fs::create_dir_all(dir).map_err(|source| InstallError::Io {
        action: "cannot create",
        path: dir.to_path_buf(),
        source,
    })?;
    let previous = read_marker(dir)?;
    let plan = plan(&file.plugins, &previous, |name| {
        dir.join(name).symlink_metadata().is_ok()
            || dir
                .join(format!("{name}{MANIFEST_SUFFIX}"))
                .symlink_metadata()
                .is_ok()
    });

    let mut report = Report {
        skipped: plan.skip,
        ..Report::default()
    };
    let mut ours = BTreeSet::new();
    for (name, text) in &plan.write {
        // Listed before writing, so a half-written entry is still cleaned up later.
        ours.insert(name.clone());
        match write_entry(dir, name, text, exe) {
            Ok(true) => report.written.push(name.clone()),
            Ok(false) => report.unchanged.push(name.clone()),
            Err(e) => report.failed.push((name.clone(), e.to_string())),
        }
    }
    for name in &plan.remove {
        match remove_entry(dir, name) {
            Ok(()) => report.removed.push(name.clone()),
            Err(e) => {
                ours.insert(name.clone());
                report.failed.push((name.clone(), e.to_string()));
            }
        }
    }
    write_marker(dir, &ours)?;
    Ok(report)
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> InstallError {
    let path = path.to_path_buf();
    move |source| InstallError::Io {
        action,
        path,
        source,
    }
}

fn read_marker(dir: &Path) -> Result<BTreeSet<String>, InstallError> {
    let path = dir.join(MARKER);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(BTreeSet::new()),
        Err(e) => Err(io("cannot read", &path)(e)),
    }
}

fn write_marker(dir: &Path, names: &BTreeSet<String>) -> Result<(), InstallError> {
    let mut text = String::from(
        "# Plugins installed here by `hector-plugin-remote install`; it removes them when they\n\
         # are no longer published. Files not listed here are never touched.\n",
    );
    for name in names {
        text.push_str(name);
        text.push('\n');
    }
    write_atomically(&dir.join(MARKER), text.as_bytes()).map(|_| ())
}

/// A temporary path next to `path`, hidden from discovery (it starts with a dot).
fn temporary(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes by rename, so Hector never reads half a file. Returns whether anything changed.
fn write_atomically(path: &Path, content: &[u8]) -> Result<bool, InstallError> {
    if std::fs::read(path).is_ok_and(|old| old == content) {
        return Ok(false);
    }
    let tmp = temporary(path);
    std::fs::write(&tmp, content).map_err(io("cannot write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io("cannot replace", path)(e)
    })?;
    Ok(true)
}

/// Writes `NAME` and `NAME.plugin.yaml`; returns whether either changed.
fn write_entry(dir: &Path, name: &str, manifest: &str, exe: &Path) -> Result<bool, InstallError> {
    let executable = install_executable(exe, &dir.join(name))?;
    let manifest = write_atomically(
        &dir.join(format!("{name}{MANIFEST_SUFFIX}")),
        manifest.as_bytes(),
    )?;
    Ok(executable || manifest)
}

/// Puts this executable at `target`: a hard link when possible (no copy), else a copy; by
/// rename in both cases, because a running executable cannot be written over. Returns
/// whether it changed anything (a link to `exe` already there is left alone).
fn install_executable(exe: &Path, target: &Path) -> Result<bool, InstallError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let source = std::fs::metadata(exe).map_err(io("cannot read", exe))?;
    if let Ok(existing) = std::fs::symlink_metadata(target)
        && existing.file_type().is_file()
        && existing.dev() == source.dev()
        && existing.ino() == source.ino()
    {
        return Ok(false);
    }
    let tmp = temporary(target);
    let _ = std::fs::remove_file(&tmp);
    if std::fs::hard_link(exe, &tmp).is_err() {
        std::fs::copy(exe, &tmp).map_err(io("cannot copy this executable to", &tmp))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
            .map_err(io("cannot make executable", &tmp))?;
    }
    std::fs::rename(&tmp, target).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io("cannot replace", target)(e)
    })?;
    Ok(true)
}

fn remove_entry(dir: &Path, name: &str) -> Result<(), InstallError> {
    for path in [dir.join(name), dir.join(format!("{name}{MANIFEST_SUFFIX}"))] {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io("cannot remove", &path)(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(kind: &str) -> PublishedPlugin {
        PublishedPlugin {
            plugin_type: kind.into(),
            version: "1.0.0".into(),
            address: "x:1".into(),
            endpoints: vec!["10.0.0.1:1".into()],
            ..Default::default()
        }
    }

    #[test]
    fn plans_writes_removals_and_leaves_foreign_files_alone() {
        let mut published = BTreeMap::new();
        published.insert("echo".to_string(), plugin("llm_provider"));
        published.insert("mine".to_string(), plugin("llm_provider"));
        published.insert("../evil".to_string(), plugin("llm_provider"));
        published.insert("odd".to_string(), plugin("llm"));
        let previous: BTreeSet<String> = ["echo", "gone", "odd"].map(String::from).into();
        let p = plan(&published, &previous, |n| n == "mine" || n == "echo");
        assert_eq!(
            p.write.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["echo"],
            "ours is rewritten even though it exists"
        );
        assert_eq!(
            p.remove,
            ["gone", "odd"],
            "unpublished or no longer installable"
        );
        let skipped: Vec<&str> = p.skip.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(skipped, ["../evil", "mine", "odd"]);
    }

    #[test]
    fn install_binary_copies_an_executable_into_a_new_directory() {
        use std::os::unix::fs::PermissionsExt;
        let work = tempfile::tempdir().expect("temp dir");
        let exe = work.path().join("source");
        std::fs::write(&exe, b"#!binary").expect("write");
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let dir = work.path().join("shared/bin");
        let target = install_binary(&exe, &dir).expect("installed");
        assert_eq!(target, dir.join(BINARY_NAME));
        assert_eq!(std::fs::read(&target).expect("read"), b"#!binary");
        let mode = std::fs::metadata(&target)
            .expect("meta")
            .permissions()
            .mode();
        assert!(mode & 0o111 != 0, "executable: {mode:o}");
        // Again: replaced in place, no leftovers.
        install_binary(&exe, &dir).expect("again");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .expect("list")
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        let err = install_binary(&exe, &target.join("below-a-file")).expect_err("not a dir");
        assert!(err.to_string().contains("below-a-file"), "{err}");
    }

    fn endpoints(plugins: &[(&str, &str)]) -> String {
        EndpointsFile {
            schema_version: hector_plugin_sdk::endpoints::SCHEMA_VERSION,
            namespace: "agents".into(),
            plugins: plugins
                .iter()
                .map(|(n, t)| (n.to_string(), plugin(t)))
                .collect(),
        }
        .render()
    }

    #[test]
    fn watching_installs_each_new_content_once_and_reports_a_lasting_failure_once() {
        let work = tempfile::tempdir().expect("temp dir");
        let exe = work.path().join("exe");
        std::fs::write(&exe, b"#!binary").expect("write");
        let dir = work.path().join("plugins");
        let file = work.path().join("endpoints.json");
        let mut w = Watcher::default();

        // Not there yet (the ConfigMap does not exist): said once, then quiet.
        let Tick::Failed(message) = w.tick(&dir, &file, &exe) else {
            panic!("missing file");
        };
        assert!(message.contains("endpoints.json"), "{message}");
        assert!(matches!(w.tick(&dir, &file, &exe), Tick::Nothing));

        std::fs::write(&file, endpoints(&[("echo", "llm_provider")])).expect("write");
        let Tick::Ran(report) = w.tick(&dir, &file, &exe) else {
            panic!("installs");
        };
        assert_eq!(report.written, ["echo"]);
        assert!(dir.join("echo.plugin.yaml").is_file());
        assert!(
            matches!(w.tick(&dir, &file, &exe), Tick::Nothing),
            "same content"
        );

        // A plugin published later gets its copy; the first is left as it is.
        std::fs::write(
            &file,
            endpoints(&[("echo", "llm_provider"), ("vectors", "database_provider")]),
        )
        .expect("write");
        let Tick::Ran(report) = w.tick(&dir, &file, &exe) else {
            panic!("installs the new one");
        };
        assert_eq!(report.written, ["vectors"]);
        assert_eq!(report.unchanged, ["echo"]);
        let manifest = std::fs::read_to_string(dir.join("vectors.plugin.yaml")).expect("read");
        assert!(manifest.contains("type: database_provider"), "{manifest}");

        // Unpublished: removed. Unparsable: the directory stays as it is.
        std::fs::write(&file, endpoints(&[("vectors", "database_provider")])).expect("write");
        let Tick::Ran(report) = w.tick(&dir, &file, &exe) else {
            panic!("removes");
        };
        assert_eq!(report.removed, ["echo"]);
        std::fs::write(&file, "{not json").expect("write");
        assert!(matches!(w.tick(&dir, &file, &exe), Tick::Failed(_)));
        assert!(matches!(w.tick(&dir, &file, &exe), Tick::Nothing));
        assert!(dir.join("vectors").is_file());
    }

    #[test]
    fn names_must_be_plain_file_names() {
        for ok in ["echo", "echo-llm", "a.b_c"] {
            assert!(usable_name(ok), "{ok}");
        }
        for bad in ["", ".hidden", MARKER, "a/b", "..", "a b"] {
            assert!(!usable_name(bad), "{bad}");
        }
    }
}
