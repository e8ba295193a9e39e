//! The loss curve as a PNG: train loss (blue) and validation loss (orange) against the step.
//!
//! Drawn with plotters' bitmap backend (no font features, so the few tick labels use a tiny
//! built-in pixel font) and encoded with the `png` crate.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

const W: u32 = 800;
const H: u32 = 480;
const LEFT: i32 = 70;
const RIGHT: i32 = 20;
const TOP: i32 = 30;
const BOTTOM: i32 = 40;
const TRAIN: RGBColor = RGBColor(31, 119, 180);
const EVAL: RGBColor = RGBColor(255, 127, 14);
const GRID: RGBColor = RGBColor(225, 225, 225);

/// Draws the curves and writes `path` atomically.
pub fn loss_curve(path: &Path, train: &[(u64, f64)], eval: &[(u64, f64)]) -> Result<(), String> {
    let mut buf = vec![255u8; (W * H * 3) as usize];
    {
        let area = BitMapBackend::with_buffer(&mut buf, (W, H)).into_drawing_area();
        draw(&area, train, eval).map_err(|e| e.to_string())?;
        area.present().map_err(|e| e.to_string())?;
    }
    let mut png_bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut png_bytes, W, H);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().map_err(|e| e.to_string())?;
        w.write_image_data(&buf).map_err(|e| e.to_string())?;
    }
    crate::store::write_atomic(path, &png_bytes).map_err(|e| e.to_string())
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
type DrawResult = Result<(), DrawingAreaErrorKind<<BitMapBackend<'static> as DrawingBackend>::ErrorType>>;

fn draw(area: &Area, train: &[(u64, f64)], eval: &[(u64, f64)]) -> DrawResult {
    area.fill(&WHITE)?;
    let finite = || train.iter().chain(eval).filter(|p| p.1.is_finite());
    let (mut x0, mut x1) = (u64::MAX, 0u64);
    let (mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in finite() {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return Ok(());
    }
    let (x0, x1) = (x0 as f64, (x1 as f64).max(x0 as f64 + 1.0));
    let pad = ((y1 - y0) * 0.05).max(1e-3);
    let (y0, y1) = (y0 - pad, y1 + pad);
    let (pw, ph) = ((W as i32 - LEFT - RIGHT) as f64, (H as i32 - TOP - BOTTOM) as f64);
    let px = |x: f64| LEFT + ((x - x0) / (x1 - x0) * pw).round() as i32;
    let py = |y: f64| TOP + ((y1 - y) / (y1 - y0) * ph).round() as i32;
    for k in 0..=5 {
        let y = y0 + (y1 - y0) * k as f64 / 5.0;
        area.draw(&PathElement::new(vec![(LEFT, py(y)), (W as i32 - RIGHT, py(y))], GRID))?;
        text(area, &format!("{y:.3}"), LEFT - 6, py(y) - 3, true, &BLACK)?;
        let x = x0 + (x1 - x0) * k as f64 / 5.0;
        area.draw(&PathElement::new(vec![(px(x), TOP), (px(x), H as i32 - BOTTOM)], GRID))?;
        text(area, &format!("{}", x.round() as u64), px(x) + 6, H as i32 - BOTTOM + 8, true, &BLACK)?;
    }
    area.draw(&Rectangle::new([(LEFT, TOP), (W as i32 - RIGHT, H as i32 - BOTTOM)], BLACK.stroke_width(1)))?;
    for (pts, color) in [(train, TRAIN), (eval, EVAL)] {
        let line: Vec<(i32, i32)> =
            pts.iter().filter(|p| p.1.is_finite()).map(|&(x, y)| (px(x as f64), py(y))).collect();
        area.draw(&PathElement::new(line.clone(), color.stroke_width(2)))?;
        if pts.len() < 60 {
            for p in line {
                area.draw(&Circle::new(p, 3, color.filled()))?;
            }
        }
    }
    text(area, "STEP", W as i32 / 2 + 12, H as i32 - 14, false, &BLACK)?;
    area.draw(&Rectangle::new([(LEFT + 10, 10), (LEFT + 22, 18)], TRAIN.filled()))?;
    text(area, "TRAIN LOSS", LEFT + 28, 11, false, &BLACK)?;
    area.draw(&Rectangle::new([(LEFT + 130, 10), (LEFT + 142, 18)], EVAL.filled()))?;
    text(area, "EVAL LOSS", LEFT + 148, 11, false, &BLACK)?;
    Ok(())
}

/// A 3×5 pixel font for the labels: each glyph is 5 rows of 3 bits.
fn glyph(c: char) -> [u8; 5] {
    match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        'A' => [2, 5, 7, 5, 5],
        'E' => [7, 4, 6, 4, 7],
        'I' => [7, 2, 2, 2, 7],
        'L' => [4, 4, 4, 4, 7],
        'N' => [5, 7, 7, 7, 5],
        'O' => [7, 5, 5, 5, 7],
        'P' => [7, 5, 7, 4, 4],
        'R' => [6, 5, 6, 5, 5],
        'S' => [7, 4, 7, 1, 7],
        'T' => [7, 2, 2, 2, 2],
        'V' => [5, 5, 5, 5, 2],
        _ => [0; 5],
    }
}

/// Draws `s` at 2× scale with its top-left at (x, y), or its top-right when `right_align`.
fn text(area: &Area, s: &str, x: i32, y: i32, right_align: bool, color: &RGBColor) -> DrawResult {
    const S: i32 = 2;
    let width = s.chars().count() as i32 * 4 * S;
    let x = if right_align { x - width } else { x };
    for (i, c) in s.chars().enumerate() {
        for (row, bits) in glyph(c).iter().enumerate() {
            for col in 0..3 {
                if bits & (4 >> col) != 0 {
                    let (gx, gy) = (x + (i as i32 * 4 + col) * S, y + row as i32 * S);
                    area.draw(&Rectangle::new([(gx, gy), (gx + S - 1, gy + S - 1)], color.filled()))?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_png_of_the_curves() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loss.png");
        let train: Vec<(u64, f64)> = (1..=100).map(|s| (s, 3.0 / (1.0 + s as f64 * 0.05))).collect();
        let eval = vec![(25, 1.5), (50, 1.2), (75, 1.0), (100, f64::NAN)];
        loss_curve(&path, &train, &eval).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut img = vec![0; reader.output_buffer_size().unwrap()];
        reader.next_frame(&mut img).unwrap();
        assert_eq!((reader.info().width, reader.info().height), (W, H));
        let blue = img.chunks(3).filter(|p| p == &[31, 119, 180]).count();
        let orange = img.chunks(3).filter(|p| p == &[255, 127, 14]).count();
        assert!(blue > 500 && orange > 50, "both curves drawn: {blue} {orange}");
        // No points at all is not an error: an empty frame.
        loss_curve(&path, &[], &[]).unwrap();
    }
}
