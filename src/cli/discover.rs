//! `hectorctl discover`.

use std::path::PathBuf;
use std::process::ExitCode;

use super::manifest::{RunArgs, print_report};
use super::output;
use crate::{convert, discover, manifest};

/// Arguments of `hectorctl discover`.
#[derive(clap::Args)]
pub struct DiscoverArgs {
    /// Folders (or manifest files) to scan; `~` is expanded.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Also scan subfolders (Hector's scan_subdirectories).
    #[arg(long, short = 'r')]
    pub recursive: bool,
    /// Print HectorPlugin resources instead of a list; needs --image-template.
    #[arg(long, requires = "image_template")]
    pub emit: bool,
    /// Image of each plugin, with {name} and {version} filled in,
    /// e.g. registry.example/hector/{name}:{version}.
    #[arg(long)]
    pub image_template: Option<String>,
    #[command(flatten)]
    pub run: RunArgs,
}

/// Runs `hectorctl discover`.
pub fn run(args: DiscoverArgs) -> anyhow::Result<ExitCode> {
    let found = discover::discover(&args.paths, args.recursive);
    for (path, reason) in &found.skipped {
        output::note(format_args!("skipped {}: {reason}", path.display()));
    }
    let mut invalid = 0;
    let mut docs = Vec::new();
    let mut out = output::stdout();
    if !args.emit {
        writeln!(
            out,
            "{:<40} {:<24} {:<10} {:<20} STATUS",
            "FILE", "NAME", "VERSION", "TYPE"
        )?;
    }
    for path in &found.manifests {
        let report = manifest::load(path);
        let bad = print_report(&report);
        match (&report.manifest, bad) {
            (Some(m), false) => {
                if args.emit {
                    let image = args.image_template.as_ref().map(|t| {
                        t.replace("{name}", &m.resource_name())
                            .replace("{version}", &m.version.to_string())
                    });
                    let r = convert::to_resource(m, &args.run.options(image, None));
                    docs.push(serde_norway::to_string(&r)?);
                } else {
                    writeln!(
                        out,
                        "{:<40} {:<24} {:<10} {:<20} ok",
                        path.display(),
                        m.name,
                        m.version,
                        m.plugin_type
                    )?;
                }
            }
            _ => {
                invalid += 1;
                if !args.emit {
                    writeln!(
                        out,
                        "{:<40} {:<24} {:<10} {:<20} invalid",
                        path.display(),
                        "-",
                        "-",
                        "-"
                    )?;
                }
            }
        }
    }
    if args.emit {
        out.write_str(&docs.join("---\n"))?;
    } else {
        output::note(format_args!(
            "{} manifest(s) found, {invalid} invalid",
            found.manifests.len()
        ));
    }
    Ok(if invalid > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
