//! `mandelbrot`: escape-time iteration counts for one tile of an image of
//! the Mandelbrot set.
//!
//! **Input:**
//!
//! ```json
//! {"width": u32, "height": u32,
//!  "x_min": f64, "x_max": f64, "y_min": f64, "y_max": f64,
//!  "max_iter": u32,
//!  "tile": {"x": u32, "y": u32, "w": u32, "h": u32}}
//! ```
//!
//! The full image is `width × height` pixels covering the complex rectangle
//! `[x_min, x_max] × [y_min, y_max]`, row 0 at the top (`y_max`). `tile` is
//! the rectangle of pixels this chunk computes: columns `x .. x + w`, rows
//! `y .. y + h`. Pixel `(px, py)` is the point `c = cr + ci·i` at its centre,
//! evaluated with exactly this expression order:
//!
//! ```text
//! cr = x_min + (x_max - x_min) * ((px as f64 + 0.5) / width as f64)
//! ci = y_max - (y_max - y_min) * ((py as f64 + 0.5) / height as f64)
//! ```
//!
//! Then `z = z² + c` is iterated from `z = 0` with separate multiplications
//! and additions (never a fused multiply-add):
//!
//! ```text
//! zr = 0; zi = 0; n = 0
//! while n < max_iter:
//!     zr2 = zr * zr; zi2 = zi * zi
//!     if zr2 + zi2 > 4.0: break        // escaped
//!     zi = 2.0 * zr * zi + ci          // (2.0 * zr) * zi, then + ci
//!     zr = zr2 - zi2 + cr              // (zr2 - zi2) + cr
//!     n += 1
//! count = n
//! ```
//!
//! so `count` is the number of iterations done before `|z|² > 4` was seen
//! (the smallest `n < max_iter` with `|z_n|² > 4`), or `max_iter` if the
//! point never escapes. A point with `|c| > 2` gives 1; a point of the set
//! gives `max_iter`.
//!
//! **Output:** `{"tile": {"x", "y", "w", "h"}, "max_iter": u32,
//! "iterations": [u32, ...]}`: the input's tile and `max_iter`, and the
//! `w·h` counts in row-major order (index `(py - y) * w + (px - x)`).
//!
//! **Limits:** `width` and `height` in `1..=65536`; tile inside the image
//! with `w, h >= 1` and `w·h <= 65536` pixels; `max_iter` in
//! `1..=1_000_000`; finite coordinates with `x_min < x_max`,
//! `y_min < y_max` and finite `x_max - x_min`, `y_max - y_min`.
//!
//! ```json
//! input:  {"width": 4, "height": 3,
//!          "x_min": -2.0, "x_max": 1.0, "y_min": -1.0, "y_max": 1.0,
//!          "max_iter": 20,
//!          "tile": {"x": 1, "y": 1, "w": 3, "h": 1}}
//! output: {"tile": {"x": 1, "y": 1, "w": 3, "h": 1}, "max_iter": 20,
//!          "iterations": [20, 20, 4]}
//! ```
//!
//! Only IEEE 754 `+ - * /` and comparisons are used, which every platform
//! (including wasm) evaluates identically, so the counts are bit-for-bit
//! reproducible.

use crate::KernelError;
use crate::error::{parse, to_json};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Kernel name.
pub const NAME: &str = "mandelbrot";
/// Largest allowed image width or height, in pixels.
pub const MAX_SIDE: u32 = 65_536;
/// Largest allowed tile area, in pixels.
pub const MAX_TILE_PIXELS: u64 = 65_536;
/// Largest allowed `max_iter`.
pub const MAX_ITER: u32 = 1_000_000;

/// A rectangle of pixels: columns `x .. x + w`, rows `y .. y + h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tile {
    /// Leftmost column.
    pub x: u32,
    /// Top row.
    pub y: u32,
    /// Width in pixels.
    pub w: u32,
    /// Height in pixels.
    pub h: u32,
}

/// One tile of a `width × height` image of `[x_min, x_max] × [y_min, y_max]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// Full image width in pixels.
    pub width: u32,
    /// Full image height in pixels.
    pub height: u32,
    /// Real part at the left edge.
    pub x_min: f64,
    /// Real part at the right edge.
    pub x_max: f64,
    /// Imaginary part at the bottom edge.
    pub y_min: f64,
    /// Imaginary part at the top edge.
    pub y_max: f64,
    /// Iteration cap; points that never escape get this count.
    pub max_iter: u32,
    /// The pixels to compute.
    pub tile: Tile,
}

/// Iteration counts of one tile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    /// The input's tile.
    pub tile: Tile,
    /// The input's `max_iter`.
    pub max_iter: u32,
    /// `tile.w * tile.h` counts, row-major.
    pub iterations: Vec<u32>,
}

fn check_range(name: &str, value: u32, max: u32) -> Result<(), KernelError> {
    if value == 0 || value > max {
        return Err(KernelError::invalid(
            NAME,
            format_args!("{name} ({value}) must be in 1..={max}"),
        ));
    }
    Ok(())
}

fn check_interval(lo_name: &str, lo: f64, hi_name: &str, hi: f64) -> Result<(), KernelError> {
    for (name, v) in [(lo_name, lo), (hi_name, hi)] {
        if !v.is_finite() {
            return Err(KernelError::invalid(
                NAME,
                format_args!("{name} ({v:?}) must be finite"),
            ));
        }
    }
    if lo >= hi {
        return Err(KernelError::invalid(
            NAME,
            format_args!("{lo_name} ({lo:?}) must be < {hi_name} ({hi:?})"),
        ));
    }
    if !(hi - lo).is_finite() {
        return Err(KernelError::invalid(
            NAME,
            format_args!("{hi_name} - {lo_name} ({hi:?} - {lo:?}) is not finite"),
        ));
    }
    Ok(())
}

/// Checks the limits listed in the [module documentation](self).
pub fn validate(input: &Input) -> Result<(), KernelError> {
    check_range("width", input.width, MAX_SIDE)?;
    check_range("height", input.height, MAX_SIDE)?;
    check_range("max_iter", input.max_iter, MAX_ITER)?;
    check_interval("x_min", input.x_min, "x_max", input.x_max)?;
    check_interval("y_min", input.y_min, "y_max", input.y_max)?;
    let Tile { x, y, w, h } = input.tile;
    if w == 0 || h == 0 {
        return Err(KernelError::invalid(
            NAME,
            format_args!("tile w ({w}) and h ({h}) must be >= 1"),
        ));
    }
    let area = u64::from(w) * u64::from(h);
    if area > MAX_TILE_PIXELS {
        return Err(KernelError::invalid(
            NAME,
            format_args!("tile area w*h ({w}*{h} = {area}) must be <= {MAX_TILE_PIXELS} pixels"),
        ));
    }
    let (right, width) = (u64::from(x) + u64::from(w), input.width);
    if right > u64::from(width) {
        return Err(KernelError::invalid(
            NAME,
            format_args!("tile x + w ({x} + {w} = {right}) must be <= width ({width})"),
        ));
    }
    let (bottom, height) = (u64::from(y) + u64::from(h), input.height);
    if bottom > u64::from(height) {
        return Err(KernelError::invalid(
            NAME,
            format_args!("tile y + h ({y} + {h} = {bottom}) must be <= height ({height})"),
        ));
    }
    Ok(())
}

/// Escape-time count of `c = cr + ci·i`, as specified in the
/// [module documentation](self).
pub fn escape_count(cr: f64, ci: f64, max_iter: u32) -> u32 {
    let (mut zr, mut zi) = (0.0f64, 0.0f64);
    let mut n = 0;
    while n < max_iter {
        let zr2 = zr * zr;
        let zi2 = zi * zi;
        if zr2 + zi2 > 4.0 {
            break;
        }
        zi = 2.0 * zr * zi + ci;
        zr = zr2 - zi2 + cr;
        n += 1;
    }
    n
}

/// Computes the tile. Expects an input that passed [`validate`] (a tile
/// outside the image is still computed, from the same pixel formula).
pub fn compute(input: &Input) -> Output {
    let Tile { x, y, w, h } = input.tile;
    let width = f64::from(input.width);
    let height = f64::from(input.height);
    let dx = input.x_max - input.x_min;
    let dy = input.y_max - input.y_min;
    // The real parts of the tile's columns, shared by all rows.
    let crs: Vec<f64> = (0..w)
        .map(|i| {
            let px = u64::from(x) + u64::from(i);
            input.x_min + dx * ((px as f64 + 0.5) / width)
        })
        .collect();
    let mut iterations = Vec::with_capacity(crs.len() * h as usize);
    for j in 0..h {
        let py = u64::from(y) + u64::from(j);
        let ci = input.y_max - dy * ((py as f64 + 0.5) / height);
        iterations.extend(crs.iter().map(|&cr| escape_count(cr, ci, input.max_iter)));
    }
    Output {
        tile: input.tile,
        max_iter: input.max_iter,
        iterations,
    }
}

/// Parses and validates a JSON input without computing anything.
pub fn validate_json(input: &Value) -> Result<(), KernelError> {
    validate(&parse::<Input>(NAME, input)?)
}

/// Parses, validates and runs the kernel on a JSON input.
pub fn run(input: &Value) -> Result<Value, KernelError> {
    let input: Input = parse(NAME, input)?;
    validate(&input)?;
    Ok(to_json(&compute(&input)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[allow(clippy::too_many_arguments)]
    fn input(
        (width, height): (u32, u32),
        (x_min, x_max, y_min, y_max): (f64, f64, f64, f64),
        max_iter: u32,
        (x, y, w, h): (u32, u32, u32, u32),
    ) -> Input {
        Input {
            width,
            height,
            x_min,
            x_max,
            y_min,
            y_max,
            max_iter,
            tile: Tile { x, y, w, h },
        }
    }

    fn sample() -> Input {
        input((64, 48), (-2.25, 0.75, -1.125, 1.125), 200, (0, 0, 64, 48))
    }

    fn err(v: &Value) -> String {
        match validate_json(v) {
            Err(KernelError::InvalidInput(msg)) => msg,
            other => panic!("expected InvalidInput for {v}, got {other:?}"),
        }
    }

    fn sample_json() -> Value {
        json!({"width": 64, "height": 48,
               "x_min": -2.25, "x_max": 0.75, "y_min": -1.125, "y_max": 1.125,
               "max_iter": 200, "tile": {"x": 0, "y": 0, "w": 64, "h": 48}})
    }

    fn sha256_of_output(out: &Output) -> String {
        let bytes = serde_json::to_vec(out).expect("serializes");
        crate::sha256::hex_digest(&bytes)
    }

    #[test]
    fn escape_counts() {
        assert_eq!(escape_count(0.0, 0.0, 1000), 1000);
        assert_eq!(escape_count(-1.0, 0.0, 1000), 1000); // period-2 cycle
        assert_eq!(escape_count(-2.0, 0.0, 77), 77); // |z| = 2 never exceeds it
        assert_eq!(escape_count(0.25, 0.0, 500), 500); // cusp
        assert_eq!(escape_count(10.0, 10.0, 1000), 1);
        assert_eq!(escape_count(2.5, 0.0, 1000), 1);
        assert_eq!(escape_count(-2.0001, 0.0, 1000), 1);
        assert_eq!(escape_count(1.5, 0.0, 1000), 2); // z: 0, 1.5, 3.75
        // z: 0, 0.5, 0.75, 1.0625, 1.62890625, 3.1533... (|z5|² > 4).
        assert_eq!(escape_count(0.5, 0.0, 1000), 5);
        assert_eq!(escape_count(0.5, 0.0, 5), 5);
        assert_eq!(escape_count(0.5, 0.0, 4), 4);
        assert_eq!(escape_count(0.0, 1.0, 300), 300); // i: 0, i, -1+i, -i, ...
        assert_eq!(escape_count(1.0, 1.0, 1), 1);
    }

    #[test]
    fn single_pixel_at_origin_is_inside() {
        // One pixel whose centre is exactly c = 0.
        let inp = input((1, 1), (-1.0, 1.0, -1.0, 1.0), 12345, (0, 0, 1, 1));
        assert_eq!(validate(&inp), Ok(()));
        assert_eq!(compute(&inp).iterations, vec![12345]);
        let far = input((1, 1), (99.0, 101.0, 99.0, 101.0), 12345, (0, 0, 1, 1));
        assert_eq!(compute(&far).iterations, vec![1]);
    }

    #[test]
    fn pixel_mapping() {
        // 4×3 image of [-2, 1] × [-1, 1]: pixel centres are at
        // re = -2 + 3 (px + 0.5) / 4 and im = 1 - 2 (py + 0.5) / 3.
        let out = run(&json!({"width": 4, "height": 3,
            "x_min": -2.0, "x_max": 1.0, "y_min": -1.0, "y_max": 1.0,
            "max_iter": 20, "tile": {"x": 1, "y": 1, "w": 3, "h": 1}}));
        assert_eq!(
            out,
            Ok(
                json!({"tile": {"x": 1, "y": 1, "w": 3, "h": 1}, "max_iter": 20,
                      "iterations": [20, 20, 4]})
            )
        );
        // Row 0 is the top (y_max): the top-left corner is far outside.
        let corner = compute(&input((2, 2), (-4.0, 4.0, -4.0, 4.0), 50, (0, 0, 2, 2)));
        // Centres (-2, 2), (2, 2), (-2, -2), (2, -2): all escape at once.
        assert_eq!(corner.iterations, vec![1, 1, 1, 1]);
        let row = compute(&input((3, 1), (-3.0, 3.0, -1.0, 1.0), 50, (0, 0, 3, 1)));
        // Centres -2, 0, 2 on the real axis: -2 and 0 never escape, 2 gives
        // z: 0, 2, 6.
        assert_eq!(row.iterations, vec![50, 50, 2]);
    }

    #[test]
    fn output_shape_and_row_major_order() {
        let full = compute(&sample());
        assert_eq!(full.iterations.len(), 64 * 48);
        assert_eq!(full.tile, sample().tile);
        assert_eq!(full.max_iter, 200);
        // Any tile equals the matching window of the full image.
        for (x, y, w, h) in [
            (0, 0, 1, 1),
            (5, 7, 13, 3),
            (63, 47, 1, 1),
            (10, 0, 54, 48),
            (0, 20, 64, 1),
        ] {
            let mut inp = sample();
            inp.tile = Tile { x, y, w, h };
            assert_eq!(validate(&inp), Ok(()));
            let out = compute(&inp);
            assert_eq!(out.iterations.len(), (w * h) as usize);
            assert_eq!(out.tile, inp.tile);
            for j in 0..h {
                for i in 0..w {
                    let tile_val = out.iterations[(j * w + i) as usize];
                    let full_val = full.iterations[((y + j) * 64 + (x + i)) as usize];
                    assert_eq!(tile_val, full_val, "pixel ({}, {})", x + i, y + j);
                }
            }
        }
        // The image is symmetric about the real axis (rows mirror).
        for py in 0..24 {
            for px in 0..64 {
                assert_eq!(
                    full.iterations[py * 64 + px],
                    full.iterations[(47 - py) * 64 + px],
                    "({px}, {py})"
                );
            }
        }
    }

    #[test]
    fn golden_outputs() {
        // SHA-256 of serde_json::to_vec(&Output) (fields in struct order).
        // Reproduced independently with a Python implementation of the
        // documented formulas; any change in float evaluation order breaks
        // these.
        let coarse = input((64, 48), (-2.25, 0.75, -1.125, 1.125), 200, (8, 4, 40, 30));
        assert_eq!(
            sha256_of_output(&compute(&coarse)),
            "766122c3293d15d7c78d6bf78cc785592638fba2632305e2a3bddc930bd2fa2e"
        );
        let deep = input(
            (1000, 800),
            (-0.7530, -0.7330, 0.0950, 0.1110),
            5000,
            (480, 380, 32, 24),
        );
        let out = compute(&deep);
        assert_eq!(
            out.iterations.iter().map(|&n| u64::from(n)).sum::<u64>(),
            222_594
        );
        assert_eq!(
            sha256_of_output(&out),
            "cf2db0bd700fbfb168845120f805f769317ab96bbb17baaedfe4a2c8f1799292"
        );
    }

    #[test]
    fn run_matches_compute() {
        let v = sample_json();
        let out = run(&v).expect("valid");
        assert_eq!(out, crate::error::to_json(&compute(&sample())));
        let typed: Output = serde_json::from_value(out).expect("output parses");
        assert_eq!(typed.iterations.len(), 64 * 48);
    }

    #[test]
    fn validation_limits() {
        let with = |key: &str, value: Value| {
            let mut v = sample_json();
            v[key] = value;
            v
        };
        let with_tile =
            |x: u32, y: u32, w: u32, h: u32| with("tile", json!({"x": x, "y": y, "w": w, "h": h}));
        let cases = [
            (
                with("width", json!(0)),
                "mandelbrot: width (0) must be in 1..=65536",
            ),
            (
                with("width", json!(65537)),
                "mandelbrot: width (65537) must be in 1..=65536",
            ),
            (
                with("height", json!(0)),
                "mandelbrot: height (0) must be in 1..=65536",
            ),
            (
                with("max_iter", json!(0)),
                "mandelbrot: max_iter (0) must be in 1..=1000000",
            ),
            (
                with("max_iter", json!(1_000_001)),
                "mandelbrot: max_iter (1000001) must be in 1..=1000000",
            ),
            (
                with("x_min", json!(0.75)),
                "mandelbrot: x_min (0.75) must be < x_max (0.75)",
            ),
            (
                with("x_max", json!(-3)),
                "mandelbrot: x_min (-2.25) must be < x_max (-3.0)",
            ),
            (
                with("y_max", json!(-1.125)),
                "mandelbrot: y_min (-1.125) must be < y_max (-1.125)",
            ),
            (
                {
                    let mut v = with("x_min", json!(-1.7e308));
                    v["x_max"] = json!(1e308);
                    v
                },
                "mandelbrot: x_max - x_min (1e308 - -1.7e308) is not finite",
            ),
            (
                {
                    let mut v = with("y_max", json!(1.7e308));
                    v["y_min"] = json!(-0.2e308);
                    v
                },
                "mandelbrot: y_max - y_min (1.7e308 - -2e307) is not finite",
            ),
            (
                with_tile(0, 0, 0, 5),
                "mandelbrot: tile w (0) and h (5) must be >= 1",
            ),
            (
                with_tile(0, 0, 5, 0),
                "mandelbrot: tile w (5) and h (0) must be >= 1",
            ),
            (
                with_tile(60, 0, 5, 1),
                "mandelbrot: tile x + w (60 + 5 = 65) must be <= width (64)",
            ),
            (
                with_tile(0, 48, 1, 1),
                "mandelbrot: tile y + h (48 + 1 = 49) must be <= height (48)",
            ),
            (
                with_tile(u32::MAX, 0, 1, 1),
                "mandelbrot: tile x + w (4294967295 + 1 = 4294967296) must be <= width (64)",
            ),
        ];
        for (v, msg) in cases {
            assert_eq!(err(&v), msg, "{v}");
        }
        // Tile area limit, with a big enough image.
        let mut big = sample_json();
        big["width"] = json!(65536);
        big["height"] = json!(65536);
        big["tile"] = json!({"x": 0, "y": 0, "w": 65536, "h": 2});
        assert_eq!(
            err(&big),
            "mandelbrot: tile area w*h (65536*2 = 131072) must be <= 65536 pixels"
        );
        big["tile"] = json!({"x": 0, "y": 0, "w": 65536, "h": 65536});
        assert_eq!(
            err(&big),
            "mandelbrot: tile area w*h (65536*65536 = 4294967296) must be <= 65536 pixels"
        );
        // At the limits: valid (and validation does not compute).
        big["max_iter"] = json!(1_000_000);
        for tile in [
            json!({"x": 0, "y": 0, "w": 65536, "h": 1}),
            json!({"x": 65535, "y": 0, "w": 1, "h": 65536}),
            json!({"x": 65280, "y": 65280, "w": 256, "h": 256}),
        ] {
            big["tile"] = tile;
            assert_eq!(validate_json(&big), Ok(()), "{big}");
        }
        // Non-finite coordinates cannot come from JSON, but typed inputs
        // are checked too.
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let mut inp = sample();
            inp.y_min = bad;
            let msg = format!("mandelbrot: y_min ({bad}) must be finite");
            assert_eq!(validate(&inp), Err(KernelError::InvalidInput(msg)));
        }
    }

    #[test]
    fn malformed_inputs() {
        let mut extra = sample_json();
        extra["zoom"] = json!(2);
        let mut tile_extra = sample_json();
        tile_extra["tile"]["z"] = json!(0);
        let mut missing = sample_json();
        missing.as_object_mut().expect("object").remove("tile");
        let mut negative = sample_json();
        negative["width"] = json!(-1);
        let mut fractional = sample_json();
        fractional["max_iter"] = json!(2.5);
        let mut text = sample_json();
        text["x_min"] = json!("-2");
        for (v, needle) in [
            (extra, "unknown field `zoom`"),
            (tile_extra, "unknown field `z`"),
            (missing, "missing field `tile`"),
            (negative, "invalid value"),
            (fractional, "invalid type"),
            (text, "invalid type"),
            (json!(7), "input must be a JSON object, got a number"),
        ] {
            let msg = err(&v);
            assert!(msg.starts_with("mandelbrot: "), "{msg}");
            assert!(msg.contains(needle), "{msg} should contain {needle}");
            assert_eq!(run(&v), Err(KernelError::InvalidInput(msg)));
        }
        // Integers are accepted for the float coordinates.
        let mut ints = sample_json();
        ints["x_min"] = json!(-2);
        ints["x_max"] = json!(1);
        assert_eq!(validate_json(&ints), Ok(()));
    }
}
