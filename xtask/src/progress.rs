//! Progress output for long steps: ninja's `[done/total]` count condensed to
//! one line every few seconds, with an estimate of the time left.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub fn format_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    if secs >= 3600 {
        format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60)
    } else if secs >= 60 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{:.1}s", duration.as_secs_f64())
    }
}

/// Outcome of a ninja run.
pub struct NinjaRun {
    /// Steps ninja ran in this invocation.
    pub steps_run: usize,
}

/// Parses a `[done/total]` status prefix.
fn parse_status(line: &str) -> Option<(usize, usize)> {
    let rest = line.strip_prefix('[')?;
    let (counts, _) = rest.split_once(']')?;
    let (done, total) = counts.split_once('/')?;
    Some((done.trim().parse().ok()?, total.trim().parse().ok()?))
}

/// Runs `command` (a ninja invocation), writes its whole output to `log`,
/// and prints a progress line at most every `interval`.
pub fn run_ninja(mut command: Command, log: &Path, interval: Duration) -> Result<NinjaRun> {
    let mut log_file =
        std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    command.env("NINJA_STATUS", "[%f/%t] ");
    command.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let started = Instant::now();
    let mut child = command
        .spawn()
        .context("cannot start ninja; is ninja-build installed?")?;
    let stdout = child.stdout.take().unwrap();
    let mut last_print = Instant::now();
    let mut steps = (0, 0);
    let mut failure_lines: Vec<String> = Vec::new();
    let mut in_failure = false;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        writeln!(log_file, "{line}")?;
        if let Some(status) = parse_status(&line) {
            steps = status;
            in_failure = false;
            if last_print.elapsed() >= interval {
                last_print = Instant::now();
                let (done, total) = status;
                let elapsed = started.elapsed();
                let eta = if done > 0 {
                    let per_step = elapsed.as_secs_f64() / done as f64;
                    format!(
                        ", about {} left",
                        format_duration(Duration::from_secs_f64(per_step * (total - done) as f64))
                    )
                } else {
                    String::new()
                };
                let step = line.split_once("] ").map(|(_, rest)| rest).unwrap_or("");
                let step: String = step.chars().take(70).collect();
                eprintln!(
                    "build-node: [{done}/{total}] {}{eta}: {step}",
                    format_duration(elapsed)
                );
            }
        } else if line.starts_with("FAILED:") || in_failure {
            in_failure = true;
            failure_lines.push(line);
        } else if line.starts_with("ninja: error") {
            failure_lines.push(line);
        }
    }
    let status = child.wait()?;
    if !status.success() {
        let first_lines: Vec<&String> = failure_lines.iter().take(60).collect();
        bail!(
            "ninja failed ({status}); the first lines of the failure:\n{}\nfull log: {}",
            first_lines
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n"),
            log.display()
        );
    }
    Ok(NinjaRun { steps_run: steps.0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_prefix_parses() {
        assert_eq!(parse_status("[12/1806] CXX obj/foo.o"), Some((12, 1806)));
        assert_eq!(parse_status("ninja: no work to do."), None);
        assert_eq!(parse_status("[x/2] nope"), None);
    }

    #[test]
    fn durations_format() {
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_duration(Duration::from_secs(125)), "2m05s");
        assert_eq!(format_duration(Duration::from_secs(3 * 3600 + 60)), "3h01m");
    }
}
