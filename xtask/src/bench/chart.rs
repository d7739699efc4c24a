//! A hand-written SVG chart: grouped bars of MB/s and CPU s/GB per variant
//! for W1 and W2, medians with min-max whiskers.

use std::fmt::Write as _;

use super::report::{format_figure, Results, Row, Spread};
use super::{Variant, Workload};

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 420.0;
const PANEL_TOP: f64 = 50.0;
const PANEL_HEIGHT: f64 = 260.0;
const PANEL_LEFT: [f64; 2] = [70.0, 550.0];
const PANEL_WIDTH: f64 = 360.0;
const TICKS: usize = 5;

fn color(variant: Variant) -> &'static str {
    match variant {
        Variant::Splice => "#d62728",
        Variant::Pipe => "#1f77b4",
        Variant::Pipeline => "#6baed6",
        Variant::Data => "#9ecae1",
        Variant::Socat => "#2ca02c",
        Variant::C => "#7f7f7f",
    }
}

/// Escapes text for an SVG text node.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
}

/// Returns a round step for about `TICKS` ticks up to `max`.
fn tick_step(max: f64) -> f64 {
    let raw = max / TICKS as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|factor| factor * magnitude)
        .find(|step| *step >= raw)
        .unwrap_or(10.0 * magnitude);
    if step > 0.0 {
        step
    } else {
        1.0
    }
}

/// One group of bars: a workload and cipher.
struct Group<'a> {
    label: String,
    rows: Vec<&'a Row>,
}

/// Draws one panel of bars, each with its min-max whisker.
fn panel(
    svg: &mut String,
    left: f64,
    title: &str,
    groups: &[Group],
    figure: impl Fn(&Row) -> Option<Spread>,
) {
    let max = groups
        .iter()
        .flat_map(|group| group.rows.iter())
        .filter_map(|row| figure(row))
        .map(|spread| spread.max)
        .fold(0.0, f64::max);
    let step = tick_step(if max > 0.0 { max } else { 1.0 });
    let top_value = (max / step).ceil().max(1.0) * step;
    let y_of = |value: f64| PANEL_TOP + PANEL_HEIGHT * (1.0 - value / top_value);

    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" font-size="15" text-anchor="middle">{}</text>"#,
        left + PANEL_WIDTH / 2.0,
        PANEL_TOP - 20.0,
        escape(title)
    );
    let mut tick = 0.0;
    while tick <= top_value + step / 2.0 {
        let y = y_of(tick);
        let _ = writeln!(
            svg,
            r##"<line x1="{left:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/>"##,
            left + PANEL_WIDTH
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"#,
            left - 6.0,
            y + 4.0,
            format_figure(tick)
        );
        tick += step;
    }

    let group_width = PANEL_WIDTH / groups.len().max(1) as f64;
    for (index, group) in groups.iter().enumerate() {
        let group_left = left + group_width * index as f64;
        let bar_width = group_width * 0.8 / group.rows.len().max(1) as f64;
        for (slot, row) in group.rows.iter().enumerate() {
            let Some(spread) = figure(row) else { continue };
            let x = group_left + group_width * 0.1 + bar_width * slot as f64;
            let y = y_of(spread.median);
            let _ = writeln!(
                svg,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}: {}</title></rect>"#,
                bar_width * 0.9,
                PANEL_TOP + PANEL_HEIGHT - y,
                color(row.variant),
                escape(row.variant.label()),
                format_figure(spread.median)
            );
            let middle = x + bar_width * 0.45;
            let _ = writeln!(
                svg,
                r##"<line x1="{middle:.1}" y1="{:.1}" x2="{middle:.1}" y2="{:.1}" stroke="#000"/>"##,
                y_of(spread.min),
                y_of(spread.max)
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">{}</text>"#,
            group_left + group_width / 2.0,
            PANEL_TOP + PANEL_HEIGHT + 18.0,
            escape(&group.label)
        );
    }
    let _ = writeln!(
        svg,
        r##"<line x1="{left:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#000"/>"##,
        PANEL_TOP + PANEL_HEIGHT,
        left + PANEL_WIDTH,
        PANEL_TOP + PANEL_HEIGHT
    );
}

/// Returns the chart of the W1 and W2 rows of `results`.
pub fn svg(results: &Results) -> String {
    let mut groups: Vec<Group> = Vec::new();
    for row in &results.rows {
        if !matches!(row.workload, Workload::W1 | Workload::W2) {
            continue;
        }
        let label = format!(
            "{:?} {}",
            row.workload,
            match row.cipher {
                super::Cipher::Aes128Gcm => "AES-128-GCM",
                super::Cipher::Chacha20Poly1305 => "ChaCha20",
            }
        );
        match groups.last_mut() {
            Some(group) if group.label == label => group.rows.push(row),
            _ => groups.push(Group {
                label,
                rows: vec![row],
            }),
        }
    }

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );
    panel(
        &mut svg,
        PANEL_LEFT[0],
        "Throughput, MB/s (higher is better)",
        &groups,
        |row| row.throughput,
    );
    panel(
        &mut svg,
        PANEL_LEFT[1],
        "Forwarder CPU, s/GB (lower is better)",
        &groups,
        |row| row.cpu_per_unit,
    );

    let legend_top = PANEL_TOP + PANEL_HEIGHT + 45.0;
    for (index, variant) in Variant::ALL.into_iter().enumerate() {
        let x = 70.0 + 150.0 * (index % 6) as f64;
        let _ = writeln!(
            svg,
            r#"<rect x="{x:.1}" y="{legend_top:.1}" width="12" height="12" fill="{}"/>"#,
            color(variant)
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="11">{}</text>"#,
            x + 16.0,
            legend_top + 10.0,
            escape(variant.label())
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="70" y="{:.1}" font-size="11">Medians of {} runs; whiskers span min-max. {}</text>"#,
        legend_top + 40.0,
        results.settings.runs,
        escape(&results.machine.command)
    );
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_steps_are_round() {
        assert_eq!(tick_step(1000.0), 200.0);
        assert_eq!(tick_step(3.0), 1.0);
        assert_eq!(tick_step(0.9), 0.2);
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            escape("'data'/<drain> & co"),
            "&apos;data&apos;/&lt;drain&gt; &amp; co"
        );
    }
}
