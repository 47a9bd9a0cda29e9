//! Line charts for the report, drawn with `plotters`: one [`Chart`] description, written as SVG
//! (for browsers and documents) and PNG (for viewers that do not read SVG). Text is set in
//! DejaVu Sans, embedded (`assets/`, Bitstream Vera licence), so the output does not depend on the
//! fonts a machine has. The legend sits right of the plot and the image widens to hold its
//! longest entry, so no label is cut.

use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

const PLOT_WIDTH: u32 = 640;
const HEIGHT: u32 = 460;
/// Legend: line sample, gap, then text at [`LEGEND_FONT`] px.
const LEGEND_SAMPLE: i32 = 28;
const LEGEND_FONT: f64 = 13.0;
const LEGEND_ROW: i32 = 19;

/// Colour-blind-safe palette (Okabe-Ito), indexed by [`Series::color`].
const PALETTE: [(u8, u8, u8); 8] = [
    (0, 114, 178),
    (213, 94, 0),
    (0, 158, 115),
    (204, 121, 167),
    (230, 159, 0),
    (86, 180, 233),
    (0, 0, 0),
    (240, 228, 66),
];

/// The family name under which the embedded font is registered.
const FONT: &str = "sans-serif";

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../assets/DejaVuSans.ttf");
        // Cannot fail for the embedded file (a test draws with it).
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, bytes);
    });
}

/// How a series is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// Solid line with a dot at each point.
    Line,
    /// Dashed line with a dot at each point.
    Dashed,
    /// A large marker at each point, no line.
    Marker,
}

/// One named series.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// `(x, y)`; non-finite points are skipped.
    pub points: Vec<(f64, f64)>,
    /// Palette index.
    pub color: usize,
    /// Line style.
    pub style: Style,
}

/// A chart: series on shared axes, plus optional short vertical marks on the x axis (e.g. when
/// a document was seen), coloured like a series.
#[derive(Clone, Debug, Default)]
pub struct Chart {
    /// Title above the plot.
    pub title: String,
    /// X-axis label.
    pub x_label: String,
    /// Y-axis label.
    pub y_label: String,
    /// The series.
    pub series: Vec<Series>,
    /// `(x, palette index)` marks drawn along the bottom of the plot area.
    pub marks: Vec<(f64, usize)>,
    /// Zoom: lines are cut where they pass this x (the rest of a curve is off the chart).
    pub x_max: Option<f64>,
}

fn color(index: usize) -> RGBColor {
    let (r, g, b) = PALETTE[index % PALETTE.len()];
    RGBColor(r, g, b)
}

impl Series {
    /// The finite points, cut at `x_max`: a segment that crosses it ends on it.
    fn visible(&self, x_max: Option<f64>) -> Vec<(f64, f64)> {
        let finite: Vec<(f64, f64)> =
            self.points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()).collect();
        let Some(limit) = x_max else { return finite };
        let mut out = Vec::new();
        for (i, &(x, y)) in finite.iter().enumerate() {
            if x <= limit {
                out.push((x, y));
                continue;
            }
            if let Some(&(px, py)) = i.checked_sub(1).map(|j| &finite[j]).filter(|p| p.0 <= limit) {
                out.push((limit, py + (y - py) * (limit - px) / (x - px)));
            }
            break;
        }
        out
    }
}

impl Chart {
    /// The data range with a 4 % margin, `[0, 1]` squares when there is nothing to show.
    fn bounds(&self) -> ((f64, f64), (f64, f64)) {
        let pts: Vec<(f64, f64)> = self.series.iter().flat_map(|s| s.visible(self.x_max)).collect();
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(x, y) in &pts {
            (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
        }
        for &(x, _) in &self.marks {
            (x0, x1) = (x0.min(x), x1.max(x));
        }
        if x0 > x1 {
            return ((0.0, 1.0), (0.0, 1.0));
        }
        let pad = |lo: f64, hi: f64| {
            let span = if hi > lo { hi - lo } else { lo.abs().max(1.0) };
            (lo - 0.04 * span, hi + 0.04 * span)
        };
        (pad(x0, x1), pad(y0, y1))
    }

    /// Width of the legend column: the longest label at the legend's font size.
    fn legend_width(&self) -> u32 {
        let chars = self.series.iter().map(|s| s.label.chars().count()).max().unwrap_or(0);
        // DejaVu Sans averages under 0.62 em per character; the margin absorbs the rest.
        (LEGEND_SAMPLE as f64 + 24.0 + chars as f64 * LEGEND_FONT * 0.62).ceil() as u32
    }

    /// The image size: the plot, plus the legend column.
    pub fn size(&self) -> (u32, u32) {
        (PLOT_WIDTH + self.legend_width(), HEIGHT)
    }

    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        register_font();
        root.fill(&WHITE)?;
        let (plot, legend) = root.split_horizontally(PLOT_WIDTH);
        let ((x0, x1), (y0, y1)) = self.bounds();
        let mut chart = ChartBuilder::on(&plot)
            .caption(&self.title, (FONT, 18))
            .margin(12)
            .x_label_area_size(42)
            .y_label_area_size(58)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        chart
            .configure_mesh()
            .x_desc(&self.x_label)
            .y_desc(&self.y_label)
            .label_style((FONT, 12))
            .axis_desc_style((FONT, 13))
            .light_line_style(RGBColor(235, 235, 235))
            .bold_line_style(RGBColor(215, 215, 215))
            .draw()?;
        for s in &self.series {
            let c = color(s.color);
            let points = s.visible(self.x_max);
            match s.style {
                Style::Line => {
                    chart.draw_series(LineSeries::new(points.clone(), c.stroke_width(2)))?;
                }
                Style::Dashed => {
                    chart.draw_series(DashedLineSeries::new(points.clone(), 7, 5, c.stroke_width(2)))?;
                }
                Style::Marker => {}
            }
            let radius = if s.style == Style::Marker { 7 } else { 3 };
            chart.draw_series(points.iter().map(|&p| Circle::new(p, radius, c.filled())))?;
        }
        // Marks: short ticks rising from the bottom of the plot area.
        let tick = 0.04 * (y1 - y0);
        for &(x, c) in self.marks.iter().filter(|(x, _)| (x0..=x1).contains(x)) {
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(x, y0), (x, y0 + tick)],
                color(c).stroke_width(2),
            )))?;
        }
        // The legend column: one row per series, its line style and label.
        for (i, s) in self.series.iter().enumerate() {
            let y = 40 + i as i32 * LEGEND_ROW;
            let c = color(s.color);
            let x = 8;
            match s.style {
                Style::Line => {
                    legend.draw(&PathElement::new(vec![(x, y), (x + LEGEND_SAMPLE, y)], c.stroke_width(2)))?
                }
                Style::Dashed => {
                    for start in (0..LEGEND_SAMPLE).step_by(10) {
                        let end = (start + 6).min(LEGEND_SAMPLE);
                        legend.draw(&PathElement::new(vec![(x + start, y), (x + end, y)], c.stroke_width(2)))?;
                    }
                }
                Style::Marker => legend.draw(&Circle::new((x + LEGEND_SAMPLE / 2, y), 6, c.filled()))?,
            }
            let style = TextStyle::from((FONT, LEGEND_FONT).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
            legend.draw(&Text::new(s.label.clone(), (x + LEGEND_SAMPLE + 8, y), style))?;
        }
        root.present()
    }

    /// The chart as an SVG document.
    pub fn svg(&self) -> String {
        let mut out = String::new();
        {
            let root = SVGBackend::with_string(&mut out, self.size()).into_drawing_area();
            // Drawing into a string cannot fail.
            self.draw(&root).expect("drawing into an SVG string");
        }
        out
    }

    /// The chart as a PNG image.
    pub fn png(&self) -> Vec<u8> {
        let (w, h) = self.size();
        let mut rgb = vec![0u8; (w * h * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
            self.draw(&root).expect("drawing into an RGB buffer");
        }
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().expect("in-memory PNG header");
        writer.write_image_data(&rgb).expect("in-memory PNG data");
        drop(writer);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart() -> Chart {
        Chart {
            title: "t <1>".into(),
            x_label: "step".into(),
            y_label: "loss".into(),
            series: vec![Series {
                label: "a fairly long legend entry that must fit in the image".into(),
                points: vec![(0.0, 1.0), (10.0, 2.0), (f64::NAN, 3.0)],
                color: 1,
                style: Style::Dashed,
            }],
            marks: vec![(5.0, 1)],
            x_max: None,
        }
    }

    #[test]
    fn zoom_cuts_a_curve_where_it_leaves_the_chart() {
        let s = Series {
            label: "c".into(),
            points: vec![(0.0, 0.0), (2.0, 4.0), (6.0, 12.0)],
            color: 0,
            style: Style::Line,
        };
        assert_eq!(s.visible(Some(4.0)), vec![(0.0, 0.0), (2.0, 4.0), (4.0, 8.0)]);
        assert_eq!(s.visible(None).len(), 3);
        let chart = Chart { series: vec![s], x_max: Some(4.0), ..Default::default() };
        assert_eq!(chart.bounds().0 .1, 4.0 + 0.04 * 4.0, "the x range ends at the zoom");
    }

    #[test]
    fn svg_holds_the_text_escaped_and_every_drawn_point() {
        let svg = chart().svg();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("t &lt;1&gt;"), "the title, escaped");
        assert!(svg.contains("a fairly long legend entry"), "the legend entry");
        assert_eq!(svg.matches("<circle").count(), 2, "the non-finite point is skipped");
    }

    #[test]
    fn png_is_wide_enough_for_the_legend_and_shows_the_series_and_text() {
        let c = chart();
        let (w, h) = c.size();
        let text_px = c.series[0].label.chars().count() as f64 * LEGEND_FONT * 0.62;
        assert!(w as f64 >= PLOT_WIDTH as f64 + text_px, "legend column {w} px");
        let decoder = png::Decoder::new(std::io::Cursor::new(c.png()));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (w, h));
        let (r, g, b) = PALETTE[1];
        assert!(buf.chunks(3).any(|p| p == [r, g, b]), "the series colour is drawn");
        // Rendered glyphs leave grey anti-aliased pixels in the legend column.
        let legend_ink = (0..h as usize)
            .flat_map(|y| (PLOT_WIDTH as usize + 40..w as usize).map(move |x| (y, x)))
            .filter(|&(y, x)| {
                let p = &buf[(y * w as usize + x) * 3..][..3];
                p[0] == p[1] && p[1] == p[2] && p[0] < 200
            })
            .count();
        assert!(legend_ink > 50, "legend text is drawn ({legend_ink} dark pixels)");
    }
}
