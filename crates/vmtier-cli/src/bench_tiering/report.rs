//! The report of `vmtier bench tiering --report DIR`: a hand-drawn SVG of slowdown against DRAM
//! share per system (log scale, all-DRAM = 1x) and a self-contained `index.html` with the table,
//! the plot inline and the notes.

use std::fmt::Write;

/// One line of the plot.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// (DRAM fraction in 0..=1, slowdown vs all-DRAM); a non-finite slowdown (no result) breaks
    /// the line and is drawn as a cross at the top.
    pub points: Vec<(f64, f64)>,
}

/// Escapes text for HTML and SVG.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

const COLORS: [&str; 8] = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"];

const W: f64 = 760.0;
const H: f64 = 440.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 200.0;
const TOP: f64 = 44.0;
const BOTTOM: f64 = 56.0;

/// Ticks of a log axis over [lo, hi]: 1, 2 and 5 times powers of ten.
pub fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut t = Vec::new();
    let (k0, k1) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    for k in k0..=k1 {
        for m in [1.0, 2.0, 5.0] {
            let v = m * 10f64.powi(k);
            if v >= lo * (1.0 - 1e-9) && v <= hi * (1.0 + 1e-9) {
                t.push(v);
            }
        }
    }
    t
}

fn tick_label(v: f64) -> String {
    if v >= 1.0 { format!("{v:.0}x") } else { format!("{v}x") }
}

/// The y range: always shows 1x (all-DRAM) and every finite point, with some room.
pub fn y_range(series: &[Series]) -> (f64, f64) {
    let ys = series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).filter(|y| y.is_finite() && *y > 0.0);
    let (mut lo, mut hi) = (1.0f64, 2.0f64);
    for y in ys {
        lo = lo.min(y);
        hi = hi.max(y);
    }
    (lo / 1.25, hi * 1.25)
}

/// Draws the plot.
pub fn slowdown_svg(title: &str, series: &[Series]) -> String {
    let (lo, hi) = y_range(series);
    let x = |f: f64| LEFT + f.clamp(0.0, 1.0) * (W - LEFT - RIGHT);
    let y = |v: f64| TOP + (hi.log10() - v.log10()) / (hi.log10() - lo.log10()) * (H - TOP - BOTTOM);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(s, r#"<text x="{}" y="24" font-size="15" text-anchor="middle">{}</text>"#, W / 2.0, escape(title));
    // Axes and grid.
    let (x0, x1, y0, y1) = (x(0.0), x(1.0), TOP, H - BOTTOM);
    for t in log_ticks(lo, hi) {
        let yy = y(t);
        let _ = writeln!(s, r##"<line x1="{x0:.1}" y1="{yy:.1}" x2="{x1:.1}" y2="{yy:.1}" stroke="#ddd"/>"##);
        let _ =
            writeln!(s, r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#, x0 - 6.0, yy + 4.0, tick_label(t));
    }
    for pct in [0, 25, 50, 75, 100] {
        let xx = x(f64::from(pct) / 100.0);
        let _ = writeln!(s, r##"<line x1="{xx:.1}" y1="{y0:.1}" x2="{xx:.1}" y2="{y1:.1}" stroke="#eee"/>"##);
        let _ = writeln!(s, r#"<text x="{xx:.1}" y="{:.1}" text-anchor="middle">{pct}%</text>"#, y1 + 18.0);
    }
    let _ = writeln!(
        s,
        r##"<rect x="{x0:.1}" y="{y0:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="#444"/>"##,
        x1 - x0,
        y1 - y0
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">DRAM, % of the footprint</text>"#,
        (x0 + x1) / 2.0,
        H - 14.0
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">slowdown vs all-DRAM (log)</text>"#,
        (y0 + y1) / 2.0
    );
    // The all-DRAM reference.
    let _ = writeln!(
        s,
        r##"<line x1="{x0:.1}" y1="{0:.1}" x2="{x1:.1}" y2="{0:.1}" stroke="#000" stroke-dasharray="5 4"/>"##,
        y(1.0)
    );
    // The series.
    for (i, ser) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut all: Vec<(f64, f64)> = ser.points.iter().copied().filter(|p| p.0.is_finite()).collect();
        all.sort_by(|a, b| a.0.total_cmp(&b.0));
        let ok = |v: f64| v.is_finite() && v > 0.0;
        // A missing result (OOM kill, …) breaks the line and is marked with a cross at the top.
        for seg in all.split(|p| !ok(p.1)).filter(|seg| seg.len() > 1) {
            let path: Vec<String> = seg.iter().map(|&(f, v)| format!("{:.1},{:.1}", x(f), y(v))).collect();
            let _ =
                writeln!(s, r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#, path.join(" "));
        }
        for &(f, v) in &all {
            if ok(v) {
                let _ = writeln!(
                    s,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{color}"><title>{}: {:.0}% DRAM, {v:.2}x</title></circle>"#,
                    x(f),
                    y(v),
                    escape(&ser.name),
                    f * 100.0
                );
            } else {
                let _ = writeln!(
                    s,
                    r#"<text x="{:.1}" y="{:.1}" fill="{color}" font-size="16" text-anchor="middle">×<title>{}: no result at {:.0}% DRAM</title></text>"#,
                    x(f),
                    TOP + 16.0,
                    escape(&ser.name),
                    f * 100.0
                );
            }
        }
        let ly = TOP + 10.0 + 20.0 * i as f64;
        let lx = W - RIGHT + 16.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="2"/><circle cx="{:.1}" cy="{ly:.1}" r="4" fill="{color}"/>"#,
            lx + 24.0,
            lx + 12.0
        );
        let _ = writeln!(s, r#"<text x="{:.1}" y="{:.1}">{}</text>"#, lx + 30.0, ly + 4.0, escape(&ser.name));
    }
    let ly = TOP + 10.0 + 20.0 * series.len() as f64;
    let lx = W - RIGHT + 16.0;
    let _ = writeln!(
        s,
        r##"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="#000" stroke-dasharray="5 4"/><text x="{:.1}" y="{:.1}">all-DRAM (1x)</text>"##,
        lx + 24.0,
        lx + 30.0,
        ly + 4.0
    );
    s.push_str("</svg>\n");
    s
}

/// The report page: title, intro lines, the table, the plot inline, notes.
pub fn html(
    title: &str,
    intro: &[String],
    headers: &[&str],
    rows: &[Vec<String>],
    svg: &str,
    notes: &[String],
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>\n\
         body {{ font-family: sans-serif; margin: 2em; max-width: 70em; }}\n\
         table {{ border-collapse: collapse; }}\n\
         th, td {{ border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }}\n\
         th:first-child, td:first-child {{ text-align: left; }}\n\
         th {{ background: #f4f4f4; }}\n</style>\n</head>\n<body>",
        escape(title)
    );
    let _ = writeln!(s, "<h1>{}</h1>", escape(title));
    for line in intro {
        let _ = writeln!(s, "<p>{}</p>", escape(line));
    }
    s.push_str("<table>\n<tr>");
    for h in headers {
        let _ = write!(s, "<th>{}</th>", escape(h));
    }
    s.push_str("</tr>\n");
    for r in rows {
        s.push_str("<tr>");
        for c in r {
            let _ = write!(s, "<td>{}</td>", escape(c));
        }
        s.push_str("</tr>\n");
    }
    s.push_str("</table>\n<figure>\n");
    s.push_str(svg);
    s.push_str("<figcaption>Slowdown of the access stage against all-DRAM (<a href=\"slowdown.svg\">slowdown.svg</a>; the data is in <a href=\"results.json\">results.json</a>).</figcaption>\n</figure>\n");
    if !notes.is_empty() {
        s.push_str("<h2>Notes</h2>\n<ul>\n");
        for n in notes {
            let _ = writeln!(s, "<li>{}</li>", escape(n));
        }
        s.push_str("</ul>\n");
    }
    s.push_str("</body>\n</html>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Series> {
        vec![
            Series { name: "kernel-swap".into(), points: vec![(0.5, 34.6), (0.25, 63.0), (0.75, f64::NAN)] },
            Series { name: "vmtier <hotset>".into(), points: vec![(0.25, 4.0), (0.5, 2.0), (0.75, 1.2)] },
        ]
    }

    #[test]
    fn ticks_cover_the_range() {
        assert_eq!(log_ticks(0.8, 60.0), vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0]);
        let (lo, hi) = y_range(&sample());
        assert!(lo < 1.0 && hi > 63.0, "{lo} {hi}");
        assert_eq!(y_range(&[]), (0.8, 2.5));
    }

    #[test]
    fn svg_draws_every_series_and_escapes() {
        let svg = slowdown_svg("zipf & co", &sample());
        assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("zipf &amp; co"));
        assert!(svg.contains("vmtier &lt;hotset&gt;"));
        assert!(!svg.contains("vmtier <hotset>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        // A gap in the middle splits the line in two.
        let gap = Series { name: "k".into(), points: vec![(0.25, 3.0), (0.5, f64::NAN), (0.75, 2.0), (1.0, 1.5)] };
        assert_eq!(slowdown_svg("t", &[gap]).matches("<polyline").count(), 1);
        // Two kernel points (the NaN is left out) and three vmtier points, plus legend markers.
        assert_eq!(svg.matches("<circle").count(), 2 + 3 + 2);
        assert!(svg.contains("kernel-swap: no result at 75% DRAM"));
        assert!(svg.contains("all-DRAM (1x)"));
        assert!(!svg.contains("NaN"));
    }

    #[test]
    fn html_has_the_table_the_plot_and_the_notes() {
        let svg = slowdown_svg("t", &sample());
        let rows = vec![vec!["kernel-swap".to_string(), "50%".into(), "1.0".into()]];
        let page =
            html("bench <tiering>", &["intro".into()], &["system", "DRAM", "x"], &rows, &svg, &["a note".into()]);
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.contains("<title>bench &lt;tiering&gt;</title>"));
        assert!(page.contains("<th>system</th><th>DRAM</th><th>x</th>"));
        assert!(page.contains("<td>kernel-swap</td><td>50%</td><td>1.0</td>"));
        assert!(page.contains(&svg));
        assert!(page.contains("<li>a note</li>"));
    }
}
