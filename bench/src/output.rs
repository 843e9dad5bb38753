//! The report files a run may write besides `--json`: `--html` and `--hgrm`, and the
//! progress switch (`--quiet`).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;
use switchyard_bench::{hgrm, html, RampReport, Report};

#[derive(Args)]
pub struct OutputArgs {
    /// Write an HTML report here: one self-contained file with plots (latency CDF,
    /// throughput, loss and latency over time; a ramp's capacity curve).
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Write the measured window's latency distribution here in HdrHistogram's .hgrm text
    /// format (ms); a ramp writes one per step, FILE with `.stepN` before the extension.
    #[arg(long, value_name = "FILE")]
    pub hgrm: Option<PathBuf>,
    /// No progress line on stderr while the run goes.
    #[arg(long)]
    pub quiet: bool,
}

/// The command line, for the report, with the value of `--token` left out.
pub fn command_line() -> String {
    let mut out = Vec::new();
    let mut hide_next = false;
    for a in std::env::args() {
        if hide_next {
            out.push("***".to_owned());
            hide_next = false;
        } else if a == "--token" {
            out.push(a);
            hide_next = true;
        } else if a.starts_with("--token=") {
            out.push("--token=***".to_owned());
        } else {
            out.push(a);
        }
    }
    out.join(" ")
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// `file.hgrm` → `file.step3.hgrm` (no extension: `file.step3`).
pub fn step_path(path: &Path, step: usize) -> PathBuf {
    let stem = path
        .file_stem()
        .map_or_else(Default::default, |s| s.to_os_string());
    let mut name = stem;
    name.push(format!(".step{step}"));
    if let Some(ext) = path.extension() {
        name.push(".");
        name.push(ext);
    }
    path.with_file_name(name)
}

impl OutputArgs {
    pub fn run(&self, r: &Report) -> anyhow::Result<()> {
        if let (Some(path), Some(h)) = (&self.hgrm, &r.latency_histogram) {
            write(path, &hgrm::percentile_distribution(h))?;
        }
        if let Some(path) = &self.html {
            write(path, &html::run_report(r, &command_line()))?;
        }
        Ok(())
    }

    pub fn ramp(&self, r: &RampReport) -> anyhow::Result<()> {
        if let Some(path) = &self.hgrm {
            for (i, st) in r.steps.iter().enumerate() {
                if let Some(h) = &st.report.latency_histogram {
                    write(&step_path(path, i + 1), &hgrm::percentile_distribution(h))?;
                }
            }
        }
        if let Some(path) = &self.html {
            write(path, &html::ramp_report(r, &command_line()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_files_keep_the_extension() {
        assert_eq!(
            step_path(Path::new("out/lat.hgrm"), 3),
            PathBuf::from("out/lat.step3.hgrm")
        );
        assert_eq!(step_path(Path::new("lat"), 1), PathBuf::from("lat.step1"));
    }
}
