//! `hector-plugin-launcher`: hosts a Hector plugin inside a Pod exactly as Hector's loader did
//! (go-plugin handshake, or a network-native plugin on a loopback port), initializes it with
//! configuration read from mounted files, and serves it on the Pod's port with standard
//! `grpc.health.v1`, forwarding every other call to the plugin.

mod access;
mod args;
mod backend;
mod child;
mod config_dir;
mod drain;
mod frames;
mod goplugin;
mod guard;
mod handshake;
mod hpack;
mod idle;
mod issuer;
mod jwt;
mod keepalive;
mod limit;
mod listener;
mod plugin;
mod policy;
mod proxy;
mod reload;
mod run;
mod sniff;
mod tls;

use clap::Parser;

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    // `install DIR` is how an init container copies this static binary into a shared volume.
    if argv.get(1).map(String::as_str) == Some("install") {
        std::process::exit(match install(argv.get(2)) {
            Ok(path) => {
                println!("installed {path}");
                0
            }
            Err(e) => {
                eprintln!("hector-plugin-launcher install: {e}");
                2
            }
        });
    }
    let args = args::Args::parse();
    args.init_logging();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hector-plugin-launcher: cannot start runtime: {e}");
            std::process::exit(70);
        }
    };
    let code = runtime.block_on(run::run(args));
    // Relay tasks may still hold the child's pipes; do not wait for them.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    std::process::exit(code);
}

/// Copies this executable to `DIR/hector-plugin-launcher`, executable by everyone.
fn install(dir: Option<&String>) -> std::io::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let dir =
        dir.ok_or_else(|| std::io::Error::other("usage: hector-plugin-launcher install DIR"))?;
    let target = std::path::Path::new(dir).join("hector-plugin-launcher");
    std::fs::create_dir_all(dir)?;
    std::fs::copy(std::env::current_exe()?, &target)?;
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))?;
    Ok(target.display().to_string())
}
