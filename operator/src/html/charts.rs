//! The page's charts, drawn as SVG by plotters (no fonts needed: the browser draws the text).
//! `None`: nothing to draw; `Some(Err)`: the drawing failed, said in the page instead.

use std::collections::BTreeMap;

use plotters::prelude::*;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::crd::LeakReportStatus;
use crate::status::Role;

const MIB: f64 = (1u64 << 20) as f64;
/// Series colours, one per container (pod/container) in the samples.
const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(23, 190, 207),
    RGBColor(140, 86, 75),
    RGBColor(127, 127, 127),
];
const LIMIT: RGBColor = RGBColor(192, 57, 43);
const MARK: RGBColor = RGBColor(40, 44, 52);
const HEAP: RGBColor = RGBColor(118, 68, 138);

fn millis(t: &Time) -> i64 {
    t.0.as_millisecond()
}

/// Working set of each container against the limit, with snapshots A and B, OOM kills and the
/// predicted kill marked; x in seconds from the first sample, y in MiB.
pub(super) fn timeline(s: &LeakReportStatus) -> Option<Result<String, String>> {
    let samples = &s.memory.samples;
    let t0 = samples.iter().map(|m| millis(&m.time)).min()?;
    let x = |t: &Time| (millis(t) - t0) as f64 / 1000.0;
    let mut series: BTreeMap<(String, String), Vec<(f64, f64)>> = BTreeMap::new();
    // A JVM's heap in use, and its maximum (-Xmx), dashed: the ceiling it dies of first when
    // -Xmx is under the limit.
    let mut heap: Vec<(f64, f64)> = Vec::new();
    let mut heap_max: Option<f64> = None;
    for m in samples {
        series
            .entry((m.pod.clone(), m.container.clone()))
            .or_default()
            .push((x(&m.time), m.working_set.max(0) as f64 / MIB));
        if let Some(h) = m.java_heap {
            heap.push((x(&m.time), h.max(0) as f64 / MIB));
        }
        if let Some(h) = m.java_heap_max {
            heap_max = Some(h.max(0) as f64 / MIB);
        }
    }
    let last = samples
        .iter()
        .map(|m| x(&m.time))
        .fold(0.0, f64::max)
        .max(1.0);
    let marks: Vec<(&str, f64)> = [Role::A, Role::B]
        .into_iter()
        .filter_map(|r| Some((r.as_str(), x(&s.snapshot(r)?.time))))
        .filter(|(_, t)| *t >= 0.0)
        .collect();
    let kills: Vec<f64> = s
        .incidents
        .iter()
        .filter(|i| i.reason == "OOMKilled")
        .map(|i| x(&i.time))
        .filter(|t| *t >= 0.0 && *t <= last * 2.0)
        .collect();
    // The predicted kill is shown when it is near enough to mean something on this scale.
    let oom = s
        .memory
        .predicted_oom_time
        .as_ref()
        .map(x)
        .filter(|t| *t >= 0.0 && *t <= last * 1.5 + 60.0);
    let x_max = marks
        .iter()
        .map(|m| m.1)
        .chain(kills.iter().copied())
        .chain(oom)
        .fold(last, f64::max)
        * 1.02;
    let limit = s.memory.limit.map(|l| l.max(0) as f64 / MIB);
    let top = series
        .values()
        .flatten()
        .map(|p| p.1)
        .chain(heap.iter().map(|p| p.1))
        .chain(heap_max.filter(|m| limit.is_none_or(|l| *m <= l * 1.5)))
        .chain(limit)
        .fold(1.0, f64::max)
        * 1.12;
    let mut svg = String::new();
    let drawn = (|| -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::with_string(&mut svg, (980, 340)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..x_max, 0f64..top)?;
        chart
            .configure_mesh()
            .x_desc("seconds since the first sample")
            .y_desc("working set (MiB)")
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 13))
            .light_line_style(RGBColor(238, 240, 244))
            .draw()?;
        if let Some(l) = limit {
            chart.draw_series(LineSeries::new(
                [(0.0, l), (x_max, l)],
                LIMIT.stroke_width(2),
            ))?;
            chart.draw_series([Text::new(
                format!("limit {l:.0} MiB"),
                // Right, under the line: kills are crossed on it, A and B labelled above.
                (x_max * 0.87, l - top * 0.02),
                ("sans-serif", 13).into_font().color(&LIMIT),
            )])?;
        }
        for (i, points) in series.values().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            chart.draw_series(LineSeries::new(
                points.iter().copied(),
                colour.stroke_width(2),
            ))?;
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 2, colour.filled())))?;
        }
        if !heap.is_empty() {
            chart.draw_series(DashedLineSeries::new(
                heap.iter().copied(),
                5,
                3,
                HEAP.stroke_width(2),
            ))?;
        }
        if let Some(m) = heap_max.filter(|m| *m <= top) {
            chart.draw_series(DashedLineSeries::new(
                [(0.0, m), (x_max, m)],
                8,
                5,
                HEAP.stroke_width(1),
            ))?;
            chart.draw_series([Text::new(
                format!("Java heap max {m:.0} MiB"),
                (x_max * 0.02, m - top * 0.02),
                ("sans-serif", 13).into_font().color(&HEAP),
            )])?;
        }
        for (label, t) in &marks {
            chart.draw_series(LineSeries::new(
                [(*t, 0.0), (*t, top * 0.93)],
                MARK.stroke_width(1),
            ))?;
            chart.draw_series([Text::new(
                label.to_string(),
                (*t, top * 0.97),
                ("sans-serif", 15).into_font().color(&MARK),
            )])?;
        }
        let at = limit.unwrap_or(top / 1.12);
        for t in &kills {
            chart.draw_series([Cross::new((*t, at), 7, LIMIT.stroke_width(3))])?;
        }
        if let Some(t) = oom {
            chart.draw_series(DashedLineSeries::new(
                [(t, 0.0), (t, top * 0.93)],
                6,
                4,
                LIMIT.stroke_width(1),
            ))?;
            chart.draw_series([Text::new(
                "OOM".to_string(),
                (t, top * 0.97),
                ("sans-serif", 13).into_font().color(&LIMIT),
            )])?;
        }
        root.present()?;
        Ok(())
    })();
    Some(drawn.map(|()| svg).map_err(|e| e.to_string()))
}

/// The types that gained the most bytes, as horizontal bars (at most 12).
pub(super) fn types(s: &LeakReportStatus) -> Option<Result<String, String>> {
    let mut grown: Vec<(&str, f64)> = s
        .types
        .iter()
        .map(|t| {
            (
                t.name.as_str(),
                (t.bytes_after - t.bytes_before) as f64 / MIB,
            )
        })
        .filter(|(_, g)| *g > 0.0)
        .collect();
    if grown.is_empty() {
        return None;
    }
    grown.sort_by(|a, b| b.1.total_cmp(&a.1));
    grown.truncate(12);
    let n = grown.len();
    let max = grown[0].1.max(1e-6);
    let mut svg = String::new();
    let drawn = (|| -> Result<(), Box<dyn std::error::Error>> {
        let height = 40 + 26 * n as u32;
        let root = SVGBackend::with_string(&mut svg, (980, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(8)
            // Room to the right of the longest bar for its label.
            .build_cartesian_2d(0f64..max * 1.9, 0f64..n as f64)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .disable_y_axis()
            .x_desc("MiB gained")
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 13))
            .light_line_style(RGBColor(238, 240, 244))
            .draw()?;
        for (i, (name, g)) in grown.iter().enumerate() {
            let y = (n - 1 - i) as f64;
            chart.draw_series([Rectangle::new(
                [(0.0, y + 0.18), (*g, y + 0.82)],
                COLOURS[0].filled(),
            )])?;
            let label: String = name.chars().take(60).collect();
            chart.draw_series([Text::new(
                format!("{label}  +{g:.1} MiB"),
                (*g + max * 0.01, y + 0.68),
                ("sans-serif", 13).into_font().color(&MARK),
            )])?;
        }
        root.present()?;
        Ok(())
    })();
    Some(drawn.map(|()| svg).map_err(|e| e.to_string()))
}
