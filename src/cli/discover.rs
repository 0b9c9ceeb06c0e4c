//! `hectorctl discover`.

use std::path::PathBuf;

use serde::Serialize;

use super::cluster::ClusterArgs;
use super::error::Exit;
use super::manifest::{ReportOut, RunArgs, print_report, resources};
use super::output::{self, Format};
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

/// What `discover` found, as documents carry it.
#[derive(Serialize)]
struct FoundOut {
    /// Each manifest with its report.
    manifests: Vec<ReportOut>,
    /// Paths passed over, with why.
    skipped: Vec<SkippedOut>,
}

#[derive(Serialize)]
struct SkippedOut {
    path: String,
    reason: String,
}

/// Runs `hectorctl discover`.
pub fn run(args: DiscoverArgs, cluster: &ClusterArgs, format: Format) -> anyhow::Result<Exit> {
    cluster.refuse_all_but_namespace("discover")?;
    let found = discover::discover(&args.paths, args.recursive);
    let listing = !args.emit && format == Format::Text;
    if format == Format::Text {
        for (path, reason) in &found.skipped {
            output::note(format_args!("skipped {}: {reason}", path.display()));
        }
    }
    let mut invalid = 0;
    let mut items = Vec::new();
    let mut reports = Vec::new();
    let mut out = output::stdout();
    if listing {
        writeln!(
            out,
            "{:<40} {:<24} {:<10} {:<20} STATUS",
            "FILE", "NAME", "VERSION", "TYPE"
        )?;
    }
    for path in &found.manifests {
        let report = manifest::load(path);
        let bad = print_report(&report, format);
        match (&report.manifest, bad) {
            (Some(m), false) => {
                if args.emit {
                    let image = args.image_template.as_ref().map(|t| {
                        t.replace("{name}", &m.resource_name())
                            .replace("{version}", &m.version.to_string())
                    });
                    let options = args.run.options(image, None, cluster.namespace.clone());
                    items.push(args.run.apply(convert::to_resource(m, &options)));
                } else if listing {
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
                if listing {
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
        reports.push(ReportOut::from(&report));
    }
    if args.emit {
        out.write_str(&resources(format, &items, true)?)?;
    } else if listing {
        output::note(format_args!(
            "{} manifest(s) found, {invalid} invalid",
            found.manifests.len()
        ));
    } else {
        let doc = FoundOut {
            manifests: reports,
            skipped: found
                .skipped
                .iter()
                .map(|(path, reason)| SkippedOut {
                    path: path.display().to_string(),
                    reason: reason.to_string(),
                })
                .collect(),
        };
        out.write_str(&output::document(format, &doc, false)?)?;
    }
    Ok(if invalid > 0 { Exit::Failed } else { Exit::Ok })
}
