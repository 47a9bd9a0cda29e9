//! Line charts for the report, drawn without a plotting stack: one layout pass turns a [`Chart`]
//! into shapes, which are written as SVG (for browsers and documents) or rasterised into a PNG
//! (for viewers that do not read SVG; labels in an 8×8 bitmap font).

use std::fmt::Write;

const WIDTH: f64 = 920.0;
const HEIGHT: f64 = 460.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 330.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 55.0;

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
const GREY: (u8, u8, u8) = (200, 200, 200);
const INK: (u8, u8, u8) = (40, 40, 40);

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

enum Anchor {
    Start,
    Middle,
    End,
}

enum Shape {
    Line { a: (f64, f64), b: (f64, f64), rgb: (u8, u8, u8), width: f64, dashed: bool },
    Dot { at: (f64, f64), r: f64, rgb: (u8, u8, u8) },
    Text { at: (f64, f64), text: String, anchor: Anchor, size: f64, vertical: bool },
}

fn nice_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| span / s <= 6.0).unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

fn fmt_tick(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    if !(1e-3..1e5).contains(&a) {
        return format!("{v:.0e}");
    }
    let s = format!("{v:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

impl Chart {
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
            let p = if hi > lo { 0.05 * (hi - lo) } else { 0.5 };
            (lo - p, hi + p)
        };
        (pad(x0, x1), pad(y0, y1))
    }

    fn layout(&self) -> Vec<Shape> {
        let ((x0, x1), (y0, y1)) = self.bounds();
        let (pw, ph) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
        let sx = |x: f64| LEFT + (x - x0) / (x1 - x0) * pw;
        let sy = |y: f64| TOP + ph - (y - y0) / (y1 - y0) * ph;
        let mut out = Vec::new();
        let text = |at, text: String, anchor, size, vertical| Shape::Text { at, text, anchor, size, vertical };
        for t in nice_ticks(x0, x1) {
            out.push(Shape::Line { a: (sx(t), TOP), b: (sx(t), TOP + ph), rgb: GREY, width: 1.0, dashed: false });
            out.push(text((sx(t), TOP + ph + 16.0), fmt_tick(t), Anchor::Middle, 11.0, false));
        }
        for t in nice_ticks(y0, y1) {
            out.push(Shape::Line { a: (LEFT, sy(t)), b: (LEFT + pw, sy(t)), rgb: GREY, width: 1.0, dashed: false });
            out.push(text((LEFT - 6.0, sy(t) + 4.0), fmt_tick(t), Anchor::End, 11.0, false));
        }
        let frame = [(LEFT, TOP), (LEFT + pw, TOP), (LEFT + pw, TOP + ph), (LEFT, TOP + ph), (LEFT, TOP)];
        for w in frame.windows(2) {
            out.push(Shape::Line { a: w[0], b: w[1], rgb: INK, width: 1.0, dashed: false });
        }
        out.push(text((WIDTH / 2.0, 24.0), self.title.clone(), Anchor::Middle, 15.0, false));
        out.push(text((LEFT + pw / 2.0, HEIGHT - 12.0), self.x_label.clone(), Anchor::Middle, 12.0, false));
        out.push(text((18.0, TOP + ph / 2.0), self.y_label.clone(), Anchor::Middle, 12.0, true));
        for &(x, color) in &self.marks {
            let rgb = PALETTE[color % PALETTE.len()];
            out.push(Shape::Line { a: (sx(x), TOP + ph), b: (sx(x), TOP + ph - 8.0), rgb, width: 2.0, dashed: false });
        }
        for (i, s) in self.series.iter().enumerate() {
            let rgb = PALETTE[s.color % PALETTE.len()];
            let pts: Vec<(f64, f64)> = s.visible(self.x_max).into_iter().map(|(x, y)| (sx(x), sy(y))).collect();
            let dashed = s.style == Style::Dashed;
            if s.style != Style::Marker {
                for w in pts.windows(2) {
                    out.push(Shape::Line { a: w[0], b: w[1], rgb, width: 2.0, dashed });
                }
            }
            let r = if s.style == Style::Marker { 6.0 } else { 2.5 };
            out.extend(pts.iter().map(|&at| Shape::Dot { at, r, rgb }));
            // Legend entry.
            let ly = TOP + 10.0 + 18.0 * i as f64;
            let lx = LEFT + pw + 14.0;
            if s.style == Style::Marker {
                out.push(Shape::Dot { at: (lx + 12.0, ly), r: 5.0, rgb });
            } else {
                out.push(Shape::Line { a: (lx, ly), b: (lx + 24.0, ly), rgb, width: 2.0, dashed });
            }
            out.push(text((lx + 30.0, ly + 4.0), s.label.clone(), Anchor::Start, 11.0, false));
        }
        out
    }

    /// The chart as an SVG document.
    pub fn svg(&self) -> String {
        let mut s = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" font-family=\"sans-serif\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
        );
        let rgb = |(r, g, b): (u8, u8, u8)| format!("rgb({r},{g},{b})");
        for shape in self.layout() {
            let _ = match shape {
                Shape::Line { a, b, rgb: c, width, dashed } => writeln!(
                    s,
                    "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"{}\" stroke-width=\"{width}\"{}/>",
                    a.0,
                    a.1,
                    b.0,
                    b.1,
                    rgb(c),
                    if dashed { " stroke-dasharray=\"6 4\"" } else { "" }
                ),
                Shape::Dot { at, r, rgb: c } => {
                    writeln!(s, "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"{r}\" fill=\"{}\"/>", at.0, at.1, rgb(c))
                }
                Shape::Text { at, text, anchor, size, vertical } => {
                    let anchor = match anchor {
                        Anchor::Start => "start",
                        Anchor::Middle => "middle",
                        Anchor::End => "end",
                    };
                    let rotate =
                        if vertical { format!(" transform=\"rotate(-90 {:.1} {:.1})\"", at.0, at.1) } else { String::new() };
                    writeln!(
                        s,
                        "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"{size}\" text-anchor=\"{anchor}\"{rotate}>{}</text>",
                        at.0,
                        at.1,
                        escape(&text)
                    )
                }
            };
        }
        s.push_str("</svg>\n");
        s
    }

    /// The chart as a PNG image.
    pub fn png(&self) -> Vec<u8> {
        let mut canvas = Canvas::new(WIDTH as usize, HEIGHT as usize);
        for shape in self.layout() {
            match shape {
                Shape::Line { a, b, rgb, width, dashed } => canvas.line(a, b, rgb, width, dashed),
                Shape::Dot { at, r, rgb } => canvas.disc(at, r, rgb),
                Shape::Text { at, text, anchor, size, vertical } => {
                    // Titles at twice the glyph size when they fit the width.
                    let fits = 16.0 * text.chars().count() as f64 <= WIDTH - 20.0;
                    let scale = if size >= 15.0 && fits { 2 } else { 1 };
                    let len = 8.0 * scale as f64 * text.chars().count() as f64;
                    let shift = match anchor {
                        Anchor::Start => 0.0,
                        Anchor::Middle => len / 2.0,
                        Anchor::End => len,
                    };
                    if vertical {
                        canvas.text((at.0 - 6.0, at.1 + shift), &text, scale, true);
                    } else {
                        canvas.text((at.0 - shift, at.1 - 8.0 * scale as f64 + 2.0), &text, scale, false);
                    }
                }
            }
        }
        canvas.encode()
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// An RGB raster.
struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    fn new(w: usize, h: usize) -> Self {
        Self { w, h, px: vec![255; w * h * 3] }
    }

    fn set(&mut self, x: i64, y: i64, (r, g, b): (u8, u8, u8)) {
        if x >= 0 && y >= 0 && (x as usize) < self.w && (y as usize) < self.h {
            let i = (y as usize * self.w + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&[r, g, b]);
        }
    }

    fn disc(&mut self, (cx, cy): (f64, f64), r: f64, rgb: (u8, u8, u8)) {
        let ri = r.ceil() as i64;
        for dy in -ri..=ri {
            for dx in -ri..=ri {
                if ((dx * dx + dy * dy) as f64) <= r * r {
                    self.set(cx.round() as i64 + dx, cy.round() as i64 + dy, rgb);
                }
            }
        }
    }

    fn line(&mut self, a: (f64, f64), b: (f64, f64), rgb: (u8, u8, u8), width: f64, dashed: bool) {
        let len = ((b.0 - a.0).powi(2) + (b.1 - a.1).powi(2)).sqrt();
        let steps = (len * 2.0).ceil().max(1.0) as usize;
        for i in 0..=steps {
            let t = i as f64 / steps as f64;
            if dashed && (t * len) % 10.0 >= 6.0 {
                continue;
            }
            let p = (a.0 + t * (b.0 - a.0), a.1 + t * (b.1 - a.1));
            if width <= 1.0 {
                self.set(p.0.round() as i64, p.1.round() as i64, rgb);
            } else {
                self.disc(p, width / 2.0, rgb);
            }
        }
    }

    fn text(&mut self, (x, y): (f64, f64), text: &str, scale: usize, vertical: bool) {
        for (i, c) in text.chars().enumerate() {
            let glyph = font8x8::legacy::BASIC_LEGACY[if (c as u32) < 128 { c as usize } else { b'?' as usize }];
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..8 {
                    if bits >> col & 1 == 0 {
                        continue;
                    }
                    for sy in 0..scale {
                        for sx in 0..scale {
                            let (u, v) = ((i * 8 + col) * scale + sx, row * scale + sy);
                            let (px, py) =
                                if vertical { (x + v as f64, y - u as f64) } else { (x + u as f64, y + v as f64) };
                            self.set(px as i64, py as i64, INK);
                        }
                    }
                }
            }
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, self.w as u32, self.h as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().expect("in-memory PNG header");
        writer.write_image_data(&self.px).expect("in-memory PNG data");
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
                label: "a".into(),
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
        let right_edge = WIDTH - RIGHT;
        for shape in chart.layout() {
            if let Shape::Line { a, b, .. } = shape {
                // Legend entries lie wholly right of the plot; no data line may cross its edge.
                let crosses = (a.0 <= right_edge + 0.5) != (b.0 <= right_edge + 0.5);
                assert!(!crosses, "a line leaves the plot: {a:?} {b:?}");
            }
        }
    }

    #[test]
    fn svg_holds_every_series_and_escapes_text() {
        let svg = chart().svg();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("t &lt;1&gt;"));
        assert_eq!(svg.matches("stroke-dasharray").count(), 2, "one dashed segment and its legend entry");
        assert_eq!(svg.matches("<circle").count(), 2, "the non-finite point is skipped");
    }

    #[test]
    fn png_decodes_to_the_chart_size_with_ink_on_it() {
        let bytes = chart().png();
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (WIDTH as u32, HEIGHT as u32));
        let (r, g, b) = PALETTE[1];
        assert!(buf.chunks(3).any(|p| p == [r, g, b]), "the series colour is drawn");
    }

    #[test]
    fn ticks_are_round_numbers_inside_the_range() {
        assert_eq!(nice_ticks(0.0, 10.0), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let t = nice_ticks(0.13, 0.71);
        assert!(t.iter().all(|&v| (0.13..=0.71).contains(&v)) && t.len() >= 3, "{t:?}");
        assert_eq!(fmt_tick(0.2), "0.2");
        assert_eq!(fmt_tick(600.0), "600");
    }
}
