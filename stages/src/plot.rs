//! Line charts of experiment results as PNG: one line per method, the mean over seeds at
//! each x (for example training-set size) with mean +- sd error bars, like Figure 3 of the
//! ICN paper.
//!
//! Text is drawn with DejaVu Sans compiled into the binary (`stages/assets`), so a chart
//! looks the same on every machine and needs no system font. As with [`crate::grid`], the
//! PNG bytes are a pure function of the inputs.
//!
//! Only the engine's sweep report draws charts; it stays here beside [`crate::grid`] so
//! that the rasterizer, the PNG encoder and the embedded font are the library's
//! dependencies and the engine passes numbers in and gets bytes out.

use std::sync::OnceLock;

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// One line of the chart, e.g. one method.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Shown in the legend.
    pub name: String,
    /// Drawn in the order given; sort by x for a left-to-right line.
    pub points: Vec<Point>,
}

/// One point of a series: the error bar spans `mean - sd ..= mean + sd`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub x: f64,
    pub mean: f64,
    pub sd: f64,
}

/// What to draw. An empty `title` leaves out the title line.
#[derive(Debug, Clone, Copy)]
pub struct Chart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    /// Logarithmic x axis (all x must then be > 0).
    pub log_x: bool,
    pub series: &'a [Series],
}

/// Why a chart could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("chart has no series")]
    NoSeries,

    #[error("series {series:?} has no points")]
    EmptySeries { series: String },

    /// `field` is `x`, `mean`, `sd` or `mean +- sd` (finite parts whose sum overflows).
    #[error("series {series:?} point {index}: {field} is {value}, not a finite number")]
    NonFinite { series: String, index: usize, field: &'static str, value: f64 },

    #[error("series {series:?} point {index}: sd is {sd}, must be >= 0")]
    NegativeSd { series: String, index: usize, sd: f64 },

    #[error("series {series:?} point {index}: x = {x} cannot go on a log axis (needs x > 0)")]
    NonPositiveX { series: String, index: usize, x: f64 },

    #[error("image size {width}x{height} is outside {MIN_WIDTH}x{MIN_HEIGHT} ..= {MAX_SIDE}x{MAX_SIDE}")]
    Size { width: u32, height: u32 },

    #[error("the embedded font could not be loaded")]
    Font,

    /// plotters failed; its error types are generic over the backend, so only the message is kept.
    #[error("drawing chart: {0}")]
    Draw(String),

    #[error("encoding PNG: {0}")]
    Encode(#[from] png::EncodingError),
}

/// Smallest image [`line_chart_png`] draws: below this the axes, labels and legend no
/// longer fit.
pub const MIN_WIDTH: u32 = 240;
/// See [`MIN_WIDTH`].
pub const MIN_HEIGHT: u32 = 160;
/// Largest width or height (an RGB buffer of 8192^2 is already 200 MB).
pub const MAX_SIDE: u32 = 8192;

/// Render `chart` as an RGB PNG of `width` x `height` pixels.
///
/// Each series gets its own colour and marker shape (a line through its points, a marker
/// at each, a capped vertical bar for +-sd); the legend sits to the right of the axes so it
/// never hides data. Ticks on x are at the data's x values when there are few enough of
/// them to read (e.g. training sizes 500, 2000, 10000), otherwise at round numbers.
pub fn line_chart_png(chart: &Chart, width: u32, height: u32) -> Result<Vec<u8>, PlotError> {
    if !(MIN_WIDTH..=MAX_SIDE).contains(&width) || !(MIN_HEIGHT..=MAX_SIDE).contains(&height) {
        return Err(PlotError::Size { width, height });
    }
    let mut rgb = vec![0u8; width as usize * height as usize * 3];
    draw(chart, width, height, &mut rgb)?;
    encode_png(&rgb, width, height)
}

/// Where one error bar landed, in pixels (y grows downwards), so tests can check the bars
/// against the axes plotters actually laid out.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(test), allow(dead_code))]
struct BarPx {
    x: i32,
    top: i32,
    bottom: i32,
}

/// Registered under plotters's default family name, so every text style finds it.
const FONT_FAMILY: &str = "sans-serif";
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// plotters keeps fonts in a global table; registering once is enough for all charts.
fn register_font() -> Result<(), PlotError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err(PlotError::Font)
    }
}

/// Tableau 10: distinct in hue and still told apart by most colour-blind readers.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// Check every value before plotters sees it: it would draw NaN somewhere or panic.
fn validate(chart: &Chart) -> Result<(), PlotError> {
    if chart.series.is_empty() {
        return Err(PlotError::NoSeries);
    }
    for s in chart.series {
        if s.points.is_empty() {
            return Err(PlotError::EmptySeries { series: s.name.clone() });
        }
        for (index, p) in s.points.iter().enumerate() {
            let non_finite = |field, value| PlotError::NonFinite { series: s.name.clone(), index, field, value };
            for (field, value) in [("x", p.x), ("mean", p.mean), ("sd", p.sd)] {
                if !value.is_finite() {
                    return Err(non_finite(field, value));
                }
            }
            if p.sd < 0.0 {
                return Err(PlotError::NegativeSd { series: s.name.clone(), index, sd: p.sd });
            }
            for value in [p.mean - p.sd, p.mean + p.sd] {
                if !value.is_finite() {
                    return Err(non_finite("mean +- sd", value));
                }
            }
            if chart.log_x && p.x <= 0.0 {
                return Err(PlotError::NonPositiveX { series: s.name.clone(), index, x: p.x });
            }
        }
    }
    Ok(())
}

/// One axis in plotting coordinates (log10(x) on a log axis): range, ticks and their labels.
///
/// It is its own plotters coordinate (linear from `lo` to `hi`) because plotters's
/// `with_key_points` wrapper on f64 ranges loses the ability to format labels, which the
/// mesh requires; here the ticks are exactly `ticks` and the labels come from `label`.
#[derive(Clone)]
struct Axis {
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
    labels: Vec<String>,
}

impl Ranged for Axis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let frac = (value - self.lo) / (self.hi - self.lo);
        (limit.0 as f64 + frac * (limit.1 - limit.0) as f64).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        // Only bold grid lines, one per labelled tick; plotters asks for light ones separately.
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

impl Axis {
    fn label(&self, v: f64) -> String {
        match self.ticks.iter().position(|t| *t == v) {
            Some(i) => self.labels[i].clone(),
            None => fmt_num(v),
        }
    }
}

/// Pad the data range so markers at the ends do not sit on the frame; a single value gets
/// `zero_span_pad` either side (1 when that is 0) rather than a zero-width range.
fn padded(lo: f64, hi: f64, zero_span_pad: f64) -> (f64, f64) {
    let span = hi - lo;
    if span <= (lo.abs().max(hi.abs())) * 1e-9 {
        let pad = if zero_span_pad > 0.0 { zero_span_pad } else { 1.0 };
        (lo - pad, hi + pad)
    } else {
        (lo - 0.06 * span, hi + 0.06 * span)
    }
}

fn x_axis(chart: &Chart) -> Axis {
    let t = |x: f64| if chart.log_x { x.log10() } else { x };
    let mut xs: Vec<f64> = chart.series.iter().flat_map(|s| s.points.iter().map(|p| p.x)).collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    let (first, last) = (t(xs[0]), t(xs[xs.len() - 1]));
    let zero_span_pad = if chart.log_x { 0.5 } else { xs[0].abs() * 0.1 };
    let (lo, hi) = padded(first, last, zero_span_pad);
    // Data values make the best ticks (the sizes actually run), unless they would crowd.
    let min_gap = xs.windows(2).map(|w| t(w[1]) - t(w[0])).fold(f64::INFINITY, f64::min);
    if xs.len() <= 10 && min_gap >= (hi - lo) / 15.0 {
        return Axis { lo, hi, ticks: xs.iter().map(|x| t(*x)).collect(), labels: xs.iter().map(|x| fmt_num(*x)).collect() };
    }
    if chart.log_x {
        if let Some((ticks, labels)) = log_ticks(lo, hi) {
            return Axis { lo, hi, ticks, labels };
        }
        // Less than about a factor of 2 across: round numbers in x itself, placed on the log scale.
        let (xt, labels) = nice_ticks(10f64.powf(lo), 10f64.powf(hi), 6);
        let keep: Vec<usize> = (0..xt.len()).filter(|i| xt[*i] > 0.0).collect();
        return Axis { lo, hi, ticks: keep.iter().map(|i| xt[*i].log10()).collect(), labels: keep.iter().map(|i| labels[*i].clone()).collect() };
    }
    let (ticks, labels) = nice_ticks(lo, hi, 7);
    Axis { lo, hi, ticks, labels }
}

fn y_axis(chart: &Chart, target_ticks: usize) -> Axis {
    let bars = chart.series.iter().flat_map(|s| s.points.iter());
    let (lo, hi) = bars.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| (lo.min(p.mean - p.sd), hi.max(p.mean + p.sd)));
    let (lo, hi) = padded(lo, hi, lo.abs() * 0.1);
    let (ticks, labels) = nice_ticks(lo, hi, target_ticks);
    Axis { lo, hi, ticks, labels }
}

/// About `target` ticks at multiples of 1, 2 or 5 x 10^k, all labelled with the same number
/// of decimals (0.10, 0.15, 0.20 rather than 0.1, 0.15, 0.2).
fn nice_ticks(lo: f64, hi: f64, target: usize) -> (Vec<f64>, Vec<String>) {
    let raw = (hi - lo) / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw * (1.0 - 1e-9)).unwrap_or(10.0 * mag);
    let decimals = (-(step.log10() + 1e-9).floor()).clamp(0.0, 15.0) as usize;
    // `as i64` saturates, so even absurd ranges give a short (if useless) list, never a panic.
    let (first, last) = ((lo / step).ceil() as i64, (hi / step).floor() as i64);
    let ticks: Vec<f64> = (first..=last).take(50).map(|k| k as f64 * step).collect();
    let labels = ticks.iter().map(|v| format!("{v:.decimals$}")).collect();
    (ticks, labels)
}

/// Ticks at 1, 2, 5 x 10^k (or only 10^k when that is too many) between `lo` and `hi`
/// (log10 units); `None` when fewer than two would show.
fn log_ticks(lo: f64, hi: f64) -> Option<(Vec<f64>, Vec<String>)> {
    let decades = (lo.floor() as i32)..=(hi.ceil() as i32);
    let at = |mantissas: &[f64]| -> Vec<f64> { decades.clone().flat_map(|k| mantissas.iter().map(move |m| m * 10f64.powi(k))).filter(|x| (lo..=hi).contains(&x.log10())).collect() };
    let mut xs = at(&[1.0, 2.0, 5.0]);
    if xs.len() > 12 {
        xs = at(&[1.0]);
        let every = xs.len().div_ceil(10);
        xs = xs.into_iter().step_by(every).collect();
    }
    (xs.len() >= 2).then(|| (xs.iter().map(|x| x.log10()).collect(), xs.iter().map(|x| fmt_num(*x)).collect()))
}

/// A number for a tick label: integers as integers, others to 6 significant digits without
/// trailing zeros, so 10^log10(500) prints as 500.
fn fmt_num(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{}", if v == 0.0 { 0.0 } else { v });
    }
    let mag = v.abs().log10().floor();
    if !(-4.0..15.0).contains(&mag) {
        return format!("{v:.3e}");
    }
    let decimals = (5.0 - mag).max(0.0) as usize;
    let s = format!("{v:.decimals$}");
    let s = if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s };
    if s == "-0" {
        "0".to_string()
    } else {
        s
    }
}

fn draw_err<E: std::fmt::Display>(e: E) -> PlotError {
    PlotError::Draw(e.to_string())
}

/// Draw into `rgb` (width x height x 3) and return where each error bar went.
fn draw(chart: &Chart, width: u32, height: u32, rgb: &mut [u8]) -> Result<Vec<Vec<BarPx>>, PlotError> {
    validate(chart)?;
    register_font()?;
    // Sizes follow the image so a larger PNG is a scaled-up chart, not a smaller-looking one.
    let s = (width.min(height * 3 / 2) as f64 / 720.0).clamp(0.5, 4.0);
    let px = |v: f64| (v * s).round().max(1.0) as i32;
    let label_style = (FONT_FAMILY, px(17.0) as f64).into_font();
    let tick_style = (FONT_FAMILY, px(14.0) as f64).into_font();
    let legend_style = TextStyle::from((FONT_FAMILY, px(15.0) as f64).into_font());
    let (line_w, bar_w, marker_r, cap_w) = (px(2.0) as u32, px(2.0) as u32, px(5.0), px(5.0));

    let root = BitMapBackend::with_buffer(rgb, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;

    // The legend gets its own column right of the axes, as wide as the longest name needs
    // (up to a third of the image; longer names are cut off at the edge).
    let swatch = px(34.0);
    let name_w = chart.series.iter().map(|ser| root.estimate_text_size(&ser.name, &legend_style).map(|(w, _)| w as i32)).try_fold(0, |m, w| w.map(|w| m.max(w))).map_err(draw_err)?;
    let legend_w = (swatch + px(8.0) + name_w + px(24.0)).min(width as i32 / 3);
    let (plot_area, legend_area) = root.split_horizontally(width as i32 - legend_w);
    // A title wider than the plot column is set smaller rather than cut off at both ends.
    let mut title_px = px(22.0) as f64;
    let room = (width as i32 - legend_w - px(16.0)) as f64;
    if let Ok((w, _)) = root.estimate_text_size(chart.title, &TextStyle::from((FONT_FAMILY, title_px).into_font())) {
        if w as f64 > room && w > 0 {
            title_px = (title_px * room / w as f64).floor().max(8.0);
        }
    }
    let title_style = (FONT_FAMILY, title_px).into_font();

    let x = x_axis(chart);
    let plot_h = height as f64 - 120.0 * s;
    let y = y_axis(chart, (plot_h / (55.0 * s)).round().clamp(3.0, 10.0) as usize);
    let mut builder = ChartBuilder::on(&plot_area);
    builder.margin_top(px(12.0)).margin_right(px(8.0)).margin_left(px(8.0)).margin_bottom(px(8.0)).x_label_area_size(px(52.0)).y_label_area_size(px(70.0));
    if !chart.title.is_empty() {
        builder.caption(chart.title, title_style);
    }
    let mut ctx = builder.build_cartesian_2d(x.clone(), y.clone()).map_err(draw_err)?;
    ctx.configure_mesh()
        .x_desc(chart.x_label)
        .y_desc(chart.y_label)
        .x_label_formatter(&|v| x.label(*v))
        .y_label_formatter(&|v| y.label(*v))
        .label_style(tick_style)
        .axis_desc_style(label_style)
        .bold_line_style(RGBColor(225, 225, 225).stroke_width(1))
        .axis_style(BLACK.stroke_width(1))
        .draw()
        .map_err(draw_err)?;

    let t = |v: f64| if chart.log_x { v.log10() } else { v };
    let mut bars = Vec::with_capacity(chart.series.len());
    // Bars first, then lines, then markers, so every marker shows on top of every bar and line.
    for (i, ser) in chart.series.iter().enumerate() {
        let style = colour(i).stroke_width(bar_w);
        // Drawn by hand: plotters's ErrorBar also draws a ring at the mean, which shows round
        // the triangle and square markers.
        ctx.draw_series(ser.points.iter().map(|p| PathElement::new(vec![(t(p.x), p.mean - p.sd), (t(p.x), p.mean + p.sd)], style))).map_err(draw_err)?;
        let caps = ser.points.iter().flat_map(|p| [p.mean - p.sd, p.mean + p.sd].map(|v| (t(p.x), v)));
        ctx.draw_series(caps.map(|c| EmptyElement::at(c) + PathElement::new(vec![(-cap_w, 0), (cap_w, 0)], style))).map_err(draw_err)?;
        let px_of = |p: &Point, v: f64| ctx.backend_coord(&(t(p.x), v));
        bars.push(ser.points.iter().map(|p| BarPx { x: px_of(p, p.mean).0, top: px_of(p, p.mean + p.sd).1, bottom: px_of(p, p.mean - p.sd).1 }).collect());
    }
    for (i, ser) in chart.series.iter().enumerate() {
        ctx.draw_series(LineSeries::new(ser.points.iter().map(|p| (t(p.x), p.mean)), colour(i).stroke_width(line_w))).map_err(draw_err)?;
    }
    for (i, ser) in chart.series.iter().enumerate() {
        let (at, style) = (ser.points.iter().map(|p| (t(p.x), p.mean)), colour(i).filled());
        // Shapes as well as colours, so lines stay apart in greyscale and past 10 series.
        // (plotters's boxed elements need a 'static backend, hence a match, not a helper.)
        match i % 3 {
            0 => ctx.draw_series(at.map(|c| Circle::new(c, marker_r, style))),
            1 => ctx.draw_series(at.map(|c| TriangleMarker::new(c, marker_r * 4 / 3, style))),
            _ => ctx.draw_series(at.map(|c| EmptyElement::at(c) + Rectangle::new([(1 - marker_r, 1 - marker_r), (marker_r - 1, marker_r - 1)], style))),
        }
        .map_err(draw_err)?;
    }

    // Legend rows start level with the top of the axes.
    let top = ctx.plotting_area().get_pixel_range().1.start;
    draw_legend(&legend_area, chart.series, top, swatch, px(24.0), legend_style, (line_w, marker_r)).map_err(draw_err)?;
    root.present().map_err(draw_err)?;
    Ok(bars)
}

fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    series: &[Series],
    top: i32,
    swatch: i32,
    row_h: i32,
    style: TextStyle,
    (line_w, marker_r): (u32, i32),
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let x0 = row_h / 3;
    let text = style.color(&BLACK).pos(Pos::new(HPos::Left, VPos::Center));
    for (i, ser) in series.iter().enumerate() {
        let yc = top + row_h / 2 + i as i32 * row_h;
        area.draw(&PathElement::new(vec![(x0, yc), (x0 + swatch, yc)], colour(i).stroke_width(line_w)))?;
        let (c, style) = ((x0 + swatch / 2, yc), colour(i).filled());
        match i % 3 {
            0 => area.draw(&Circle::new(c, marker_r, style)),
            1 => area.draw(&TriangleMarker::new(c, marker_r * 4 / 3, style)),
            _ => area.draw(&Rectangle::new([(c.0 + 1 - marker_r, c.1 + 1 - marker_r), (c.0 + marker_r - 1, c.1 + marker_r - 1)], style)),
        }?;
        area.draw(&Text::new(ser.name.as_str(), (x0 + swatch + row_h / 3, yc), text.clone()))?;
    }
    Ok(())
}

/// 8-bit RGB PNG with fixed settings, so equal charts give equal bytes.
fn encode_png(rgb: &[u8], width: u32, height: u32) -> Result<Vec<u8>, PlotError> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, width, height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(png::Compression::Balanced);
        let mut writer = enc.write_header()?;
        writer.write_image_data(rgb)?;
        writer.finish()?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(x: f64, mean: f64, sd: f64) -> Point {
        Point { x, mean, sd }
    }

    /// Three methods over three training sizes. "icn" has one wide bar (at 2000) and
    /// otherwise none; "baseline" has narrow bars throughout.
    fn three_series() -> Vec<Series> {
        vec![
            Series { name: "icn".into(), points: vec![pt(500.0, 0.50, 0.0), pt(2000.0, 0.50, 0.30), pt(10000.0, 0.50, 0.0)] },
            Series { name: "baseline".into(), points: vec![pt(500.0, 0.30, 0.01), pt(2000.0, 0.30, 0.01), pt(10000.0, 0.30, 0.01)] },
            Series { name: "icn-noise".into(), points: vec![pt(500.0, 0.15, 0.05), pt(2000.0, 0.10, 0.04), pt(10000.0, 0.05, 0.02)] },
        ]
    }

    fn chart(series: &[Series]) -> Chart<'_> {
        Chart { title: "Test error vs training size", x_label: "training examples", y_label: "test error", log_x: true, series }
    }

    /// Decode to (width, height, RGB bytes).
    fn decode(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
        let mut reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.color_type, info.bit_depth), (png::ColorType::Rgb, png::BitDepth::Eight));
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    }

    fn has_colour(rgb: &[u8], c: RGBColor) -> bool {
        rgb.chunks_exact(3).any(|p| p == [c.0, c.1, c.2])
    }

    /// Topmost and bottommost rows holding colour `c` within 2 pixels of column `x`.
    fn vertical_extent(rgb: &[u8], width: u32, x: i32, c: RGBColor) -> Option<(i32, i32)> {
        let rows = rgb.len() / (width as usize * 3);
        let hit = |row: usize| (x - 2..=x + 2).any(|col| rgb[(row * width as usize + col as usize) * 3..][..3] == [c.0, c.1, c.2]);
        let hits: Vec<i32> = (0..rows).filter(|r| hit(*r)).map(|r| r as i32).collect();
        Some((*hits.first()?, *hits.last()?))
    }

    /// Realistic numbers: what the chart is for.
    fn figure3_like() -> Vec<Series> {
        vec![
            Series { name: "ICN".into(), points: vec![pt(500.0, 0.081, 0.006), pt(2000.0, 0.032, 0.004), pt(10000.0, 0.0121, 0.0012)] },
            Series { name: "CNN baseline".into(), points: vec![pt(500.0, 0.092, 0.008), pt(2000.0, 0.041, 0.003), pt(10000.0, 0.0150, 0.0015)] },
            Series { name: "ICN-noise".into(), points: vec![pt(500.0, 0.088, 0.010), pt(2000.0, 0.037, 0.005), pt(10000.0, 0.0140, 0.002)] },
        ]
    }

    #[test]
    fn renders_size_colours_and_text() {
        let series = figure3_like();
        let bytes = line_chart_png(&chart(&series), 720, 450).unwrap();
        // For looking at by eye; failing to write it is no test failure.
        let _ = std::fs::write(std::env::temp_dir().join("plot_example.png"), &bytes);
        let (w, h, rgb) = decode(&bytes);
        assert_eq!((w, h), (720, 450));
        for i in 0..series.len() {
            assert!(has_colour(&rgb, colour(i)), "series {i} colour missing");
        }
        assert_ne!(colour(0), colour(1));
        assert_ne!(colour(1), colour(2));
        // Not blank: white background, but text and axes in black and grey levels.
        let non_white = rgb.chunks_exact(3).filter(|p| *p != [255, 255, 255]).count();
        assert!(non_white > 5_000, "only {non_white} non-white pixels");
        let dark = rgb.chunks_exact(3).filter(|p| p.iter().all(|v| *v < 80)).count();
        assert!(dark > 1_000, "only {dark} dark (text/axis) pixels");
        // Same input, same bytes (charts can be stored as hashed artifacts).
        assert_eq!(bytes, line_chart_png(&chart(&series), 720, 450).unwrap());
    }

    #[test]
    fn error_bars_span_mean_plus_minus_sd() {
        let series = three_series();
        let (w, h) = (720, 450);
        let mut rgb = vec![0u8; w as usize * h as usize * 3];
        let bars = draw(&chart(&series), w, h, &mut rgb).unwrap();
        let wide = bars[0][1];
        let expected = wide.bottom - wide.top;
        assert!(expected > 150, "0.6 of a ~0.8 y range should be most of the plot height, got {expected} px");
        let (top, bottom) = vertical_extent(&rgb, w, wide.x, colour(0)).unwrap();
        assert!((top - wide.top).abs() <= 3 && (bottom - wide.bottom).abs() <= 3, "bar drawn over rows {top}..{bottom}, expected {}..{}", wide.top, wide.bottom);
        // sd = 0.01 is a few pixels: the colour spans no more than the marker.
        let narrow = bars[1][1];
        assert!(narrow.bottom - narrow.top < 10);
        let (top, bottom) = vertical_extent(&rgb, w, narrow.x, colour(1)).unwrap();
        assert!(bottom - top < 20, "narrow bar spans {top}..{bottom}");
        // The bars differ in x too (log axis: 500, 2000, 10000 evenly spaced).
        let xs: Vec<i32> = bars[2].iter().map(|b| b.x).collect();
        assert!(xs[0] < xs[1] && xs[1] < xs[2]);
        let (d1, d2) = ((xs[1] - xs[0]) as f64, (xs[2] - xs[1]) as f64);
        let ratio = (2000f64 / 500.0).log10() / (10000f64 / 2000.0).log10();
        assert!((d1 / d2 - ratio).abs() < 0.02, "log spacing {d1} / {d2}");
    }

    #[test]
    fn linear_axis_and_single_point_render() {
        let series = vec![Series { name: "only".into(), points: vec![pt(3.0, 0.0, 0.0)] }];
        let c = Chart { title: "", x_label: "x", y_label: "y", log_x: false, series: &series };
        let (w, h, rgb) = decode(&line_chart_png(&c, 400, 300).unwrap());
        assert_eq!((w, h), (400, 300));
        assert!(has_colour(&rgb, colour(0)));
        let many: Vec<Series> = (0..12).map(|i| Series { name: format!("s{i}"), points: (0..30).map(|k| pt(k as f64 * 7.0, (k * i) as f64, 1.0)).collect() }).collect();
        let c = Chart { title: "many", x_label: "x", y_label: "y", log_x: false, series: &many };
        line_chart_png(&c, 800, 500).unwrap();
        let c = Chart { log_x: true, series: &many[1..], ..c };
        assert!(matches!(line_chart_png(&c, 800, 500), Err(PlotError::NonPositiveX { index: 0, .. })));
        // Extreme but finite values: any sensible picture, but no panic.
        for (a, b) in [(0.0, 0.0), (1e300, -1e300), (f64::MAX, f64::MIN), (1e-300, 2e-300), (5e-324, 0.0), (1.0, 1.0 + 1e-15)] {
            let series = vec![Series { name: "e".into(), points: vec![pt(a, a, 0.0), pt(b, b, 0.0)] }];
            for log_x in [false, true] {
                let c = Chart { title: "", x_label: "", y_label: "", log_x, series: &series };
                let _ = line_chart_png(&c, 400, 300);
            }
        }
    }

    #[test]
    fn bad_input_is_an_error() {
        let empty: Vec<Series> = vec![];
        assert!(matches!(line_chart_png(&chart(&empty), 720, 450), Err(PlotError::NoSeries)));
        let no_points = vec![Series { name: "a".into(), points: vec![] }];
        assert!(matches!(line_chart_png(&chart(&no_points), 720, 450), Err(PlotError::EmptySeries { .. })));
        for (p, field) in [(pt(f64::NAN, 0.1, 0.0), "x"), (pt(500.0, f64::NAN, 0.0), "mean"), (pt(500.0, 0.1, f64::INFINITY), "sd"), (pt(500.0, f64::MAX, f64::MAX), "mean +- sd")] {
            let mut series = three_series();
            series[2].points[1] = p;
            let err = line_chart_png(&chart(&series), 720, 450).unwrap_err();
            assert!(matches!(err, PlotError::NonFinite { index: 1, field: f, .. } if f == field), "{err}");
            assert!(err.to_string().contains("icn-noise"), "{err}");
        }
        let mut series = three_series();
        series[0].points[0].sd = -0.1;
        assert!(matches!(line_chart_png(&chart(&series), 720, 450), Err(PlotError::NegativeSd { .. })));
        series[0].points[0] = pt(0.0, 0.1, 0.0);
        assert!(matches!(line_chart_png(&chart(&series), 720, 450), Err(PlotError::NonPositiveX { .. })));
        let series = three_series();
        assert!(matches!(line_chart_png(&chart(&series), 10, 10), Err(PlotError::Size { .. })));
        assert!(matches!(line_chart_png(&chart(&series), 720, u32::MAX), Err(PlotError::Size { .. })));
    }

    #[test]
    fn tick_labels() {
        assert_eq!(fmt_num(10f64.powf(500f64.log10())), "500");
        assert_eq!(fmt_num(10000.0), "10000");
        assert_eq!(fmt_num(0.05), "0.05");
        assert_eq!(fmt_num(-0.0), "0");
        assert_eq!(nice_ticks(0.0, 1.0, 5).1, ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
        assert_eq!(nice_ticks(0.03, 0.21, 4).1, ["0.05", "0.10", "0.15", "0.20"]);
        let (_, labels) = log_ticks(2.0, 4.3).unwrap();
        assert_eq!(labels, ["100", "200", "500", "1000", "2000", "5000", "10000"]);
    }
}
