//! `hectorctl completion SHELL`: a shell completion script, generated from the command line's
//! own definition so it never falls behind.

/// Arguments of `hectorctl completion`.
#[derive(clap::Args)]
pub struct CompletionArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// The completion script of `command` for `shell`, completing the binary `name`.
pub fn script(shell: clap_complete::Shell, command: &mut clap::Command, name: &str) -> String {
    let mut script = Vec::new();
    clap_complete::generate(shell, command, name, &mut script);
    String::from_utf8_lossy(&script).into_owned()
}
