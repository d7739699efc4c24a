//! Statistics over the samples and the three outputs: raw results as JSON,
//! a Markdown page with medians, min-max and ratios, and an SVG chart.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use super::{Cipher, Env, Sample, Settings, Startup, Variant, Workload};

/// Machine and software that produced the results.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cpus: usize,
    pub kernel: String,
    pub node: String,
    pub socat: String,
    pub system_openssl: String,
    pub date: String,
    /// The command line that produced the results.
    pub command: String,
}

impl Machine {
    pub fn describe(env: &Env) -> Result<Machine> {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name"))
            .and_then(|rest| rest.split_once(':'))
            .map(|(_, model)| model.trim().to_string())
            .unwrap_or_else(|| "unknown".to_string());
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string();
        let node = command_output(
            &env.node,
            &[
                "-p",
                "`${process.version}, OpenSSL ${process.versions.openssl}`",
            ],
        )?;
        let socat = command_output(Path::new("socat"), &["-V"])?
            .lines()
            .find(|line| line.starts_with("socat version"))
            .unwrap_or("socat, version unknown")
            .to_string();
        let system_openssl = command_output(Path::new("openssl"), &["version"])?;
        let date = command_output(Path::new("date"), &["-u", "+%Y-%m-%d %H:%M UTC"])?;
        let args: Vec<String> = std::env::args().skip(1).collect();
        Ok(Machine {
            cpu_model,
            cpus,
            kernel,
            node,
            socat,
            system_openssl,
            date,
            command: format!("cargo xtask {}", args.join(" ")),
        })
    }
}

fn command_output(program: &Path, args: &[&str]) -> Result<String> {
    let output = std::process::Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {}", program.display()))?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// Median and range of one figure over the runs.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Option<Spread> {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let middle = sorted.len() / 2;
        let median = if sorted.len() % 2 == 1 {
            sorted[middle]
        } else {
            (sorted[middle - 1] + sorted[middle]) / 2.0
        };
        Some(Spread {
            median,
            min: sorted[0],
            max: sorted[sorted.len() - 1],
        })
    }
}

/// Median of the start-up CPU seconds of a variant for a workload.
fn startup_seconds(startup: &Startup, sample: &Sample) -> f64 {
    let Some(workload) = sample.workload else {
        return 0.0;
    };
    let Some(shape) = workload.startup_shape() else {
        return 0.0;
    };
    startup
        .get(&(sample.variant, shape, sample.cipher))
        .and_then(|values| Spread::of(values))
        .map_or(0.0, |spread| spread.median)
}

/// Throughput of a sample: MB/s (10^6 bytes) for W1 and W2, packets per
/// second (both directions) for W3 and W4.
fn throughput(sample: &Sample) -> Option<f64> {
    let workload = sample.workload?;
    if workload == Workload::W5 || sample.seconds <= 0.0 {
        return None;
    }
    let rate = sample.amount as f64 / sample.seconds;
    Some(if workload.moves_packets() {
        rate
    } else {
        rate / 1e6
    })
}

/// Returns the lowest of the variants' median throughputs in `workload`.
pub fn slowest_median_throughput(samples: &[Sample], workload: Workload) -> Option<f64> {
    Variant::ALL
        .into_iter()
        .filter_map(|variant| {
            let values: Vec<f64> = samples
                .iter()
                .filter(|s| s.workload == Some(workload) && s.variant == variant)
                .filter_map(throughput)
                .collect();
            Spread::of(&values).map(|spread| spread.median)
        })
        .min_by(f64::total_cmp)
}

/// Forwarder CPU time minus its start-up cost, per unit moved: seconds per
/// GB (10^9 bytes) for W1 and W2, microseconds per packet for W3 and W4.
fn cpu_per_unit(sample: &Sample, startup: &Startup) -> Option<f64> {
    let workload = sample.workload?;
    if workload == Workload::W5 || sample.amount == 0 {
        return None;
    }
    let net = sample.cpu_seconds() - startup_seconds(startup, sample);
    Some(if workload.moves_packets() {
        net / sample.amount as f64 * 1e6
    } else {
        net / (sample.amount as f64 / 1e9)
    })
}

pub fn throughput_unit(workload: Workload) -> &'static str {
    if workload.moves_packets() {
        "packets/s"
    } else {
        "MB/s"
    }
}

pub fn cpu_unit(workload: Workload) -> &'static str {
    if workload.moves_packets() {
        "CPU µs/packet"
    } else {
        "CPU s/GB"
    }
}

/// Formats one line of progress output for a finished sample.
pub fn describe_sample(sample: &Sample, startup: &Startup) -> String {
    let Some(workload) = sample.workload else {
        return format!("{} start-up", sample.variant.label());
    };
    let mut text = sample.variant.label().to_string();
    if let Some(rate) = throughput(sample) {
        let _ = write!(text, ", {rate:.0} {}", throughput_unit(workload));
    }
    if let Some(cpu) = cpu_per_unit(sample, startup) {
        let _ = write!(text, ", {cpu:.2} {}", cpu_unit(workload));
    }
    if let Some(elu) = sample.elu {
        let _ = write!(text, ", ELU {elu:.2}");
    }
    if let Some(growth) = sample.rss_growth_kib {
        let _ = write!(text, ", RSS growth {:.1} MiB", growth as f64 / 1024.0);
    }
    if let Some(blocked) = sample.peer_blocked {
        let _ = write!(
            text,
            ", peer {} after {:.1} MiB",
            if blocked { "blocked" } else { "NOT blocked" },
            sample.peer_accepted.unwrap_or(0) as f64 / 1048576.0
        );
    }
    let _ = write!(
        text,
        ", peak RSS {:.1} MiB",
        sample.max_rss_kib as f64 / 1024.0
    );
    text
}

/// Per-run ratios of one variant to a reference variant: the run's figure
/// divided by the same run's figure of the reference.
#[derive(Debug, Clone, Serialize)]
pub struct Ratios {
    pub against: Variant,
    pub throughput: Option<Spread>,
    pub cpu: Option<Spread>,
}

/// The summary of one variant in one workload and cipher.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub workload: Workload,
    pub cipher: Cipher,
    pub variant: Variant,
    pub runs: usize,
    pub throughput: Option<Spread>,
    pub cpu_per_unit: Option<Spread>,
    pub elu: Option<Spread>,
    pub peak_rss_mib: Option<Spread>,
    pub rss_growth_mib: Option<Spread>,
    pub peer_accepted_mib: Option<Spread>,
    /// Runs in which the peer was blocked, for W5.
    pub peer_blocked_runs: Option<usize>,
    pub vs_best_js: Option<Ratios>,
    pub vs_socat: Option<Ratios>,
}

/// A workload where spliceTo did worse than the best JavaScript pump.
#[derive(Debug, Clone, Serialize)]
pub struct Loss {
    pub workload: Workload,
    pub cipher: Cipher,
    pub best_js: Variant,
    /// The figures on which spliceTo lost, with both medians.
    pub figures: Vec<String>,
}

/// `perf stat` counts of one extra run, for a workload in `losses`.
#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    pub workload: Workload,
    pub cipher: Cipher,
    pub variant: Variant,
    pub amount: u64,
    pub counts: BTreeMap<String, f64>,
}

impl Profile {
    /// Parses `perf stat -x ,` output, whose lines start with value, unit
    /// and event name. The unit, if any, goes into the name.
    pub fn parse(
        workload: Workload,
        cipher: Cipher,
        variant: Variant,
        amount: u64,
        text: &str,
    ) -> Profile {
        let mut counts = BTreeMap::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split(',').collect();
            if fields.len() < 3 {
                continue;
            }
            let Ok(value) = fields[0].parse::<f64>() else {
                continue;
            };
            let name = if fields[1].is_empty() {
                fields[2].to_string()
            } else {
                format!("{} ({})", fields[2], fields[1])
            };
            counts.insert(name, value);
        }
        Profile {
            workload,
            cipher,
            variant,
            amount,
            counts,
        }
    }
}

/// Everything a run produced, as written to benchmarks.json.
#[derive(Debug, Serialize)]
pub struct Results {
    pub machine: Machine,
    pub settings: Settings,
    pub placement: String,
    /// Start-up CPU seconds of each variant, per transfer shape and cipher.
    pub startup: Vec<StartupEntry>,
    pub samples: Vec<Sample>,
    pub rows: Vec<Row>,
    pub losses: Vec<Loss>,
    pub profiles: Vec<Profile>,
}

#[derive(Debug, Serialize)]
pub struct StartupEntry {
    pub variant: Variant,
    pub shape: super::Shape,
    pub cipher: Cipher,
    pub cpu_seconds: Vec<f64>,
}

impl Results {
    pub fn new(
        machine: Machine,
        settings: &Settings,
        startup: Startup,
        samples: Vec<Sample>,
    ) -> Results {
        let mut rows = Vec::new();
        let mut losses = Vec::new();
        for &(workload, cipher) in &settings.configs {
            let config_samples: Vec<&Sample> = samples
                .iter()
                .filter(|s| s.workload == Some(workload) && s.cipher == cipher)
                .collect();
            let (config_rows, loss) = summarize(workload, cipher, &config_samples, &startup);
            rows.extend(config_rows);
            losses.extend(loss);
        }
        let placement = format!(
            "the TLS peer, the forwarder and the xtask's threads that feed or drain fd 3 \
             all run on CPU {} (taskset -c {} for processes, sched_setaffinity for threads); \
             the xtask's other threads, which only wait for the children and read their \
             output, are not pinned",
            settings.cpu, settings.cpu
        );
        let startup = startup
            .into_iter()
            .map(|((variant, shape, cipher), cpu_seconds)| StartupEntry {
                variant,
                shape,
                cipher,
                cpu_seconds,
            })
            .collect();
        Results {
            machine,
            settings: settings.clone(),
            placement,
            startup,
            samples,
            rows,
            losses,
            profiles: Vec::new(),
        }
    }

    pub fn losses(&self) -> &[Loss] {
        &self.losses
    }
}

/// Figure by which variants are ranked in a workload: higher throughput
/// for W1 to W3, lower CPU per packet for W4, lower RSS growth for W5.
fn ranking_figure(workload: Workload, sample: &Sample, startup: &Startup) -> Option<f64> {
    match workload {
        Workload::W1 | Workload::W2 | Workload::W3 | Workload::W3Tun => throughput(sample),
        Workload::W4 => cpu_per_unit(sample, startup).map(|cpu| -cpu),
        Workload::W5 => sample.rss_growth_kib.map(|kib| -(kib as f64)),
    }
}

/// Ratios of `variant` to `reference`, pairing samples of the same run.
fn ratios(samples: &[&Sample], variant: Variant, reference: Variant, startup: &Startup) -> Ratios {
    let mut throughput_ratios = Vec::new();
    let mut cpu_ratios = Vec::new();
    for sample in samples.iter().filter(|s| s.variant == variant) {
        let Some(other) = samples
            .iter()
            .find(|s| s.variant == reference && s.run == sample.run)
        else {
            continue;
        };
        if let (Some(a), Some(b)) = (throughput(sample), throughput(other)) {
            throughput_ratios.push(a / b);
        }
        if let (Some(a), Some(b)) = (cpu_per_unit(sample, startup), cpu_per_unit(other, startup)) {
            if b > 0.0 {
                cpu_ratios.push(a / b);
            }
        }
    }
    Ratios {
        against: reference,
        throughput: Spread::of(&throughput_ratios),
        cpu: Spread::of(&cpu_ratios),
    }
}

/// Builds the rows of one workload and cipher, and the loss of spliceTo
/// against the best JavaScript pump if there is one.
fn summarize(
    workload: Workload,
    cipher: Cipher,
    samples: &[&Sample],
    startup: &Startup,
) -> (Vec<Row>, Option<Loss>) {
    let of_variant = |variant: Variant| -> Vec<&Sample> {
        samples
            .iter()
            .copied()
            .filter(|s| s.variant == variant)
            .collect()
    };
    let median_rank = |variant: Variant| -> Option<f64> {
        let values: Vec<f64> = of_variant(variant)
            .iter()
            .filter_map(|s| ranking_figure(workload, s, startup))
            .collect();
        Spread::of(&values).map(|spread| spread.median)
    };
    let best_js = Variant::ALL
        .into_iter()
        .filter(|variant| variant.is_js())
        .filter_map(|variant| Some((variant, median_rank(variant)?)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(variant, _)| variant);

    let mut rows = Vec::new();
    for variant in Variant::ALL {
        let own = of_variant(variant);
        if own.is_empty() {
            continue;
        }
        let collect = |figure: &dyn Fn(&Sample) -> Option<f64>| -> Option<Spread> {
            let values: Vec<f64> = own.iter().filter_map(|s| figure(s)).collect();
            Spread::of(&values)
        };
        let comparable = workload != Workload::W5;
        let vs_best_js = best_js
            .filter(|best| comparable && *best != variant)
            .map(|best| ratios(samples, variant, best, startup));
        let has_socat = !of_variant(Variant::Socat).is_empty();
        let vs_socat = (comparable && has_socat && variant != Variant::Socat)
            .then(|| ratios(samples, variant, Variant::Socat, startup));
        rows.push(Row {
            workload,
            cipher,
            variant,
            runs: own.len(),
            throughput: collect(&throughput),
            cpu_per_unit: collect(&|s| cpu_per_unit(s, startup)),
            elu: collect(&|s| s.elu),
            peak_rss_mib: collect(&|s| Some(s.max_rss_kib as f64 / 1024.0)),
            rss_growth_mib: collect(&|s| s.rss_growth_kib.map(|kib| kib as f64 / 1024.0)),
            peer_accepted_mib: collect(&|s| s.peer_accepted.map(|b| b as f64 / 1048576.0)),
            peer_blocked_runs: (workload == Workload::W5)
                .then(|| own.iter().filter(|s| s.peer_blocked == Some(true)).count()),
            vs_best_js,
            vs_socat,
        });
    }
    let loss = best_js.and_then(|best| find_loss(workload, cipher, &rows, best));
    (rows, loss)
}

/// Compares the medians of spliceTo and `best_js` on every figure the
/// workload reports.
fn find_loss(workload: Workload, cipher: Cipher, rows: &[Row], best_js: Variant) -> Option<Loss> {
    let splice = rows.iter().find(|row| row.variant == Variant::Splice)?;
    let best = rows.iter().find(|row| row.variant == best_js)?;
    let mut figures = Vec::new();
    let mut compare =
        |name: &str, ours: Option<Spread>, theirs: Option<Spread>, higher_wins: bool| {
            if let (Some(ours), Some(theirs)) = (ours, theirs) {
                let lost = if higher_wins {
                    ours.median < theirs.median
                } else {
                    ours.median > theirs.median
                };
                if lost {
                    figures.push(format!(
                        "{name}: spliceTo {} against {} {}",
                        format_figure(ours.median),
                        best_js.label(),
                        format_figure(theirs.median)
                    ));
                }
            }
        };
    match workload {
        Workload::W1 | Workload::W2 | Workload::W3 | Workload::W3Tun => {
            compare(
                throughput_unit(workload),
                splice.throughput,
                best.throughput,
                true,
            );
            compare(
                cpu_unit(workload),
                splice.cpu_per_unit,
                best.cpu_per_unit,
                false,
            );
        }
        Workload::W4 => {
            compare(
                cpu_unit(workload),
                splice.cpu_per_unit,
                best.cpu_per_unit,
                false,
            );
            compare("event-loop utilization", splice.elu, best.elu, false);
        }
        Workload::W5 => {
            compare(
                "RSS growth MiB",
                splice.rss_growth_mib,
                best.rss_growth_mib,
                false,
            );
            if splice.peer_blocked_runs != Some(splice.runs) {
                figures.push(format!(
                    "the peer was blocked in only {} of {} runs",
                    splice.peer_blocked_runs.unwrap_or(0),
                    splice.runs
                ));
            }
        }
    }
    if figures.is_empty() {
        return None;
    }
    Some(Loss {
        workload,
        cipher,
        best_js,
        figures,
    })
}

/// Formats a figure with three significant digits, or as an integer from
/// 100 up.
pub fn format_figure(value: f64) -> String {
    if value == 0.0 || !value.is_finite() {
        return format!("{value}");
    }
    if value.abs() >= 99.95 {
        return format!("{value:.0}");
    }
    // Round first, so that 0.9996 prints as 1.00 and not as 1.000.
    let exponent = value.abs().log10().floor() as i32;
    let scale = 10f64.powi(exponent - 2);
    let rounded = (value / scale).round() * scale;
    let exponent = rounded.abs().log10().floor() as i32;
    let decimals = (2 - exponent).max(0) as usize;
    format!("{rounded:.decimals$}")
}

pub fn format_spread(spread: Option<Spread>) -> String {
    match spread {
        Some(s) if s.min == s.max => format_figure(s.median),
        Some(s) => format!(
            "{} ({}–{})",
            format_figure(s.median),
            format_figure(s.min),
            format_figure(s.max)
        ),
        None => "–".to_string(),
    }
}

/// Formats the medians of every row, as printed at the end of a run.
pub fn summary_text(results: &Results) -> String {
    let mut text = String::new();
    let mut current = None;
    for row in &results.rows {
        if current != Some((row.workload, row.cipher)) {
            current = Some((row.workload, row.cipher));
            let _ = writeln!(text, "{} ({})", row.workload.title(), row.cipher.suite());
        }
        let _ = write!(text, "  {:<28}", row.variant.label());
        if let Some(spread) = row.throughput {
            let _ = write!(
                text,
                " {:>9} {}",
                format_figure(spread.median),
                throughput_unit(row.workload)
            );
        }
        if let Some(spread) = row.cpu_per_unit {
            let _ = write!(
                text,
                "  {:>7} {}",
                format_figure(spread.median),
                cpu_unit(row.workload)
            );
        }
        if let Some(spread) = row.elu {
            let _ = write!(text, "  ELU {}", format_figure(spread.median));
        }
        if let Some(spread) = row.rss_growth_mib {
            let _ = write!(text, "  RSS growth {} MiB", format_figure(spread.median));
        }
        if let Some(blocked) = row.peer_blocked_runs {
            let _ = write!(text, "  peer blocked in {blocked}/{} runs", row.runs);
        }
        if let Some(spread) = row.peak_rss_mib {
            let _ = write!(text, "  peak RSS {} MiB", format_figure(spread.median));
        }
        text.push('\n');
    }
    for loss in &results.losses {
        let _ = writeln!(
            text,
            "spliceTo does not beat {} in {} ({}): {}",
            loss.best_js.label(),
            loss.workload.title(),
            loss.cipher.suite(),
            loss.figures.join("; ")
        );
    }
    text
}

/// Writes benchmarks.json, benchmarks.md and benchmarks.svg into `dir`.
pub fn write_all(results: &Results, dir: &Path) -> Result<()> {
    let json = serde_json::to_string_pretty(results)?;
    write_file(&dir.join("benchmarks.json"), &json)?;
    write_file(&dir.join("benchmarks.md"), &super::markdown::page(results))?;
    write_file(&dir.join("benchmarks.svg"), &super::chart::svg(results))?;
    Ok(())
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(variant: Variant, run: usize, seconds: f64, cpu: f64) -> Sample {
        Sample {
            workload: Some(Workload::W1),
            shape: None,
            variant,
            cipher: Cipher::Aes128Gcm,
            run,
            amount: 1_000_000_000,
            seconds,
            user_seconds: cpu,
            system_seconds: 0.0,
            max_rss_kib: 50_000,
            elu: None,
            rss_growth_kib: None,
            peer_accepted: None,
            peer_blocked: None,
        }
    }

    #[test]
    fn spread_of_odd_and_even_counts() {
        let odd = Spread::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((odd.median, odd.min, odd.max), (2.0, 1.0, 3.0));
        let even = Spread::of(&[4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!(even.median, 2.5);
        assert!(Spread::of(&[]).is_none());
        assert!(Spread::of(&[f64::NAN]).is_none());
    }

    #[test]
    fn cpu_per_unit_subtracts_startup() {
        let mut startup = Startup::new();
        startup.insert(
            (
                Variant::Pipe,
                super::super::Shape::StreamIn,
                Cipher::Aes128Gcm,
            ),
            vec![0.1, 0.2, 0.3],
        );
        let cpu = cpu_per_unit(&sample(Variant::Pipe, 0, 1.0, 1.2), &startup).unwrap();
        assert!((cpu - 1.0).abs() < 1e-9, "{cpu}");
    }

    #[test]
    fn ratios_pair_runs() {
        let samples = [
            sample(Variant::Splice, 0, 1.0, 1.0),
            sample(Variant::Splice, 1, 2.0, 1.0),
            sample(Variant::Pipe, 0, 2.0, 2.0),
            sample(Variant::Pipe, 1, 2.0, 4.0),
        ];
        let refs: Vec<&Sample> = samples.iter().collect();
        let ratios = ratios(&refs, Variant::Splice, Variant::Pipe, &Startup::new());
        let throughput = ratios.throughput.unwrap();
        assert_eq!((throughput.min, throughput.max), (1.0, 2.0));
        let cpu = ratios.cpu.unwrap();
        assert_eq!((cpu.min, cpu.max), (0.25, 0.5));
    }

    #[test]
    fn slower_splice_is_a_loss() {
        let samples = [
            sample(Variant::Splice, 0, 2.0, 1.0),
            sample(Variant::Pipe, 0, 1.0, 2.0),
            sample(Variant::Data, 0, 1.5, 2.0),
        ];
        let refs: Vec<&Sample> = samples.iter().collect();
        let (rows, loss) = summarize(Workload::W1, Cipher::Aes128Gcm, &refs, &Startup::new());
        assert_eq!(rows.len(), 3);
        let loss = loss.expect("spliceTo moved half as many MB/s as pipe()");
        assert_eq!(loss.best_js, Variant::Pipe);
        assert_eq!(loss.figures.len(), 1);
        assert!(loss.figures[0].starts_with("MB/s"), "{:?}", loss.figures);
    }

    #[test]
    fn figures_keep_three_digits() {
        assert_eq!(format_figure(0.9996), "1.00");
        assert_eq!(format_figure(0.0123), "0.0123");
        assert_eq!(format_figure(3.14159), "3.14");
        assert_eq!(format_figure(93312.4), "93312");
        assert_eq!(format_figure(0.0), "0");
    }

    #[test]
    fn perf_csv_parses() {
        let text = "# started on Thu\n\n123.5,msec,task-clock,123500,100.00,,\n\
                    42,,context-switches,123500,100.00,,\n\
                    <not supported>,,cycles,0,100.00,,\n";
        let profile = Profile::parse(Workload::W1, Cipher::Aes128Gcm, Variant::Splice, 1, text);
        assert_eq!(profile.counts.get("task-clock (msec)"), Some(&123.5));
        assert_eq!(profile.counts.get("context-switches"), Some(&42.0));
        assert!(!profile.counts.contains_key("cycles"));
    }
}
