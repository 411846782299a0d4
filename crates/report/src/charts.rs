//! SVG charts with plotters' SVG backend. Text is written as SVG `<text>`, laid out with
//! plotters' built-in estimate (no font files are read), so a chart is the same bytes on every
//! machine and the golden tests can hold them.

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::doc::Chart;
use crate::error::{ReportError, Result};

const SIZE: (u32, u32) = (820, 400);
/// Model A, model B (and more series in the same order).
const COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(230, 120, 20),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

fn color(i: usize) -> RGBColor {
    COLORS[i % COLORS.len()]
}

/// A value with an optional 95% interval.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bar {
    pub value: f64,
    pub interval: Option<(f64, f64)>,
}

fn err(name: &str) -> impl Fn(String) -> ReportError + '_ {
    move |msg| ReportError::Chart {
        name: name.into(),
        msg,
    }
}

fn finish(
    name: &str,
    title: &str,
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, Shift>) -> Result<(), String>,
) -> Result<Chart> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(name)(e.to_string()))?;
        draw(&root).map_err(err(name))?;
        root.present().map_err(|e| err(name)(e.to_string()))?;
    }
    Ok(Chart {
        file: name.into(),
        title: title.into(),
        svg,
    })
}

fn top(values: impl Iterator<Item = f64>) -> f64 {
    let m = values.filter(|v| v.is_finite()).fold(0.0f64, f64::max);
    if m > 0.0 { m * 1.15 } else { 1.0 }
}

/// Grouped bars with interval whiskers: one group per category, one bar per series.
pub fn grouped_bars(
    name: &str,
    title: &str,
    y_desc: &str,
    categories: &[String],
    series: &[(String, Vec<Option<Bar>>)],
) -> Result<Option<Chart>> {
    let any = series.iter().any(|(_, v)| v.iter().any(|b| b.is_some()));
    if categories.is_empty() || !any {
        return Ok(None);
    }
    let ymax = top(series.iter().flat_map(|(_, v)| {
        v.iter()
            .flatten()
            .map(|b| b.interval.map_or(b.value, |(_, h)| h.max(b.value)))
    }));
    let n = categories.len();
    let s = series.len().max(1);
    finish(name, title, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..ymax)
            .map_err(|e| e.to_string())?;
        let label = |x: &f64| {
            let r = x.round();
            if (x - r).abs() < 1e-9 && r >= 0.0 && (r as usize) < n {
                categories[r as usize].clone()
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 15))
            .disable_x_mesh()
            .x_labels(2 * n + 2)
            .x_label_formatter(&label)
            .y_desc(y_desc)
            .draw()
            .map_err(|e| e.to_string())?;
        let width = 0.8 / s as f64;
        for (j, (sname, bars)) in series.iter().enumerate() {
            let c = color(j);
            let x0 = |i: usize| i as f64 - 0.4 + j as f64 * width;
            chart
                .draw_series(bars.iter().enumerate().filter_map(|(i, b)| {
                    b.map(|b| {
                        Rectangle::new(
                            [
                                (x0(i) + 0.05 * width, 0.0),
                                (x0(i) + 0.95 * width, b.value.max(0.0)),
                            ],
                            c.filled(),
                        )
                    })
                }))
                .map_err(|e| e.to_string())?
                .label(sname.as_str())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
            chart
                .draw_series(bars.iter().enumerate().filter_map(|(i, b)| {
                    let (lo, hi) = b.as_ref()?.interval?;
                    let xm = x0(i) + 0.5 * width;
                    Some(PathElement::new(
                        vec![(xm, lo.max(0.0)), (xm, hi)],
                        BLACK.stroke_width(2),
                    ))
                }))
                .map_err(|e| e.to_string())?;
        }
        chart
            .configure_series_labels()
            .label_font(("sans-serif", 15))
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
        Ok(())
    })
    .map(Some)
}

/// A point of a line series, with an optional interval.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    pub x: f64,
    pub y: f64,
    pub interval: Option<(f64, f64)>,
}

/// Lines with markers and interval whiskers (context scaling, routing curves).
pub fn lines(
    name: &str,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[(String, Vec<Point>)],
) -> Result<Option<Chart>> {
    let pts: Vec<&Point> = series.iter().flat_map(|(_, v)| v.iter()).collect();
    if pts.is_empty() {
        return Ok(None);
    }
    let xmin = pts.iter().map(|p| p.x).fold(f64::INFINITY, f64::min);
    let xmax = pts.iter().map(|p| p.x).fold(f64::NEG_INFINITY, f64::max);
    let pad = if xmax > xmin {
        (xmax - xmin) * 0.05
    } else {
        1.0
    };
    let ymax = top(pts
        .iter()
        .map(|p| p.interval.map_or(p.y, |(_, h)| h.max(p.y))));
    finish(name, title, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d((xmin - pad)..(xmax + pad), 0f64..ymax)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 15))
            .x_desc(x_desc)
            .y_desc(y_desc)
            .draw()
            .map_err(|e| e.to_string())?;
        for (j, (sname, v)) in series.iter().enumerate() {
            let c = color(j);
            chart
                .draw_series(LineSeries::new(
                    v.iter().map(|p| (p.x, p.y)),
                    c.stroke_width(2),
                ))
                .map_err(|e| e.to_string())?
                .label(sname.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 14, y)], c.stroke_width(2))
                });
            chart
                .draw_series(v.iter().map(|p| Circle::new((p.x, p.y), 3, c.filled())))
                .map_err(|e| e.to_string())?;
            chart
                .draw_series(v.iter().filter_map(|p| {
                    let (lo, hi) = p.interval?;
                    Some(PathElement::new(
                        vec![(p.x, lo.max(0.0)), (p.x, hi)],
                        c.stroke_width(1),
                    ))
                }))
                .map_err(|e| e.to_string())?;
        }
        chart
            .configure_series_labels()
            .label_font(("sans-serif", 15))
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
        Ok(())
    })
    .map(Some)
}

/// Empirical cumulative distributions (inter-token latency).
pub fn cdf(
    name: &str,
    title: &str,
    x_desc: &str,
    series: &[(String, Vec<f64>)],
) -> Result<Option<Chart>> {
    let lines_: Vec<(String, Vec<Point>)> = series
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(n, v)| {
            let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
            v.sort_by(f64::total_cmp);
            let len = v.len() as f64;
            (
                n.clone(),
                v.iter()
                    .enumerate()
                    .map(|(i, x)| Point {
                        x: *x,
                        y: (i + 1) as f64 / len,
                        interval: None,
                    })
                    .collect(),
            )
        })
        .collect();
    if lines_.is_empty() {
        return Ok(None);
    }
    let xmax = top(lines_.iter().flat_map(|(_, v)| v.iter().map(|p| p.x)));
    finish(name, title, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..xmax, 0f64..1.0)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 15))
            .x_desc(x_desc)
            .y_desc("fraction of tokens ≤ x")
            .draw()
            .map_err(|e| e.to_string())?;
        for (j, (sname, v)) in lines_.iter().enumerate() {
            let c = color(j);
            // A step function: each sample raises the curve at its value.
            let mut steps = Vec::with_capacity(v.len() * 2 + 1);
            let mut prev = 0.0;
            for p in v {
                steps.push((p.x, prev));
                steps.push((p.x, p.y));
                prev = p.y;
            }
            chart
                .draw_series(LineSeries::new(steps, c.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(sname.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 14, y)], c.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .label_font(("sans-serif", 15))
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
        Ok(())
    })
    .map(Some)
}

/// One model in the quality-against-speed plane, with both intervals.
#[derive(Clone, Debug, PartialEq)]
pub struct XY {
    pub label: String,
    pub x: f64,
    pub x_interval: Option<(f64, f64)>,
    pub y: f64,
    pub y_interval: Option<(f64, f64)>,
}

pub fn scatter(
    name: &str,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    pts: &[XY],
) -> Result<Option<Chart>> {
    let pts: Vec<&XY> = pts
        .iter()
        .filter(|p| p.x.is_finite() && p.y.is_finite())
        .collect();
    if pts.is_empty() {
        return Ok(None);
    }
    let xmax = top(pts
        .iter()
        .map(|p| p.x_interval.map_or(p.x, |(_, h)| h.max(p.x))));
    finish(name, title, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..xmax, 0f64..10.5)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 15))
            .x_desc(x_desc)
            .y_desc(y_desc)
            .draw()
            .map_err(|e| e.to_string())?;
        for (j, p) in pts.iter().enumerate() {
            let c = color(j);
            let mut whiskers = Vec::new();
            if let Some((lo, hi)) = p.x_interval {
                whiskers.push(PathElement::new(
                    vec![(lo.max(0.0), p.y), (hi, p.y)],
                    c.stroke_width(1),
                ));
            }
            if let Some((lo, hi)) = p.y_interval {
                whiskers.push(PathElement::new(
                    vec![(p.x, lo), (p.x, hi)],
                    c.stroke_width(1),
                ));
            }
            chart.draw_series(whiskers).map_err(|e| e.to_string())?;
            chart
                .draw_series(std::iter::once(Circle::new((p.x, p.y), 6, c.filled())))
                .map_err(|e| e.to_string())?
                .label(p.label.as_str())
                .legend(move |(x, y)| Circle::new((x + 6, y), 5, c.filled()));
        }
        chart
            .configure_series_labels()
            .label_font(("sans-serif", 15))
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
        Ok(())
    })
    .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_render_to_svg_with_labels() {
        let c = grouped_bars(
            "t",
            "tok/s",
            "tok/s",
            &["short".into(), "long".into()],
            &[
                (
                    "A".into(),
                    vec![
                        Some(Bar {
                            value: 10.0,
                            interval: Some((9.0, 11.0)),
                        }),
                        None,
                    ],
                ),
                (
                    "B".into(),
                    vec![
                        Some(Bar {
                            value: 5.0,
                            interval: None,
                        }),
                        Some(Bar {
                            value: 4.0,
                            interval: None,
                        }),
                    ],
                ),
            ],
        );
        let c = c.ok().flatten();
        let svg = c.map(|c| c.svg).unwrap_or_default();
        assert!(svg.starts_with("<svg") || svg.contains("<svg"), "{svg}");
        assert!(
            svg.contains("\nshort\n") && svg.contains("\nlong\n"),
            "{svg}"
        );
        assert!(svg.contains("<rect"));
    }

    #[test]
    fn empty_input_gives_no_chart() {
        assert!(matches!(grouped_bars("t", "t", "y", &[], &[]), Ok(None)));
        assert!(matches!(lines("t", "t", "x", "y", &[]), Ok(None)));
        assert!(matches!(
            cdf("t", "t", "x", &[("a".into(), vec![])]),
            Ok(None)
        ));
        assert!(matches!(scatter("t", "t", "x", "y", &[]), Ok(None)));
    }
}
