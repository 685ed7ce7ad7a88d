//! `GET /api/v1/jobs/{id}/image.png`: a `mandelbrot` job's tiles assembled into one picture.
//!
//! The frame (`width × height`) is chunk 0's; every accepted tile is painted where its `tile`
//! says (clipped to the frame), and pixels of chunks not accepted yet are transparent, so the
//! picture of a running job fills in as it progresses. Colours come from the iteration counts
//! alone ([`colour`]): points that never escaped (`max_iter`) are black, the others follow a
//! palette by `ln(1 + iterations) / ln(1 + max_iter)`.
//!
//! The PNG is indexed (one byte per pixel, a 256-colour palette with index 0 transparent), so a
//! frame costs its pixel count in memory; frames are limited to [`MAX_IMAGE_PIXELS`] and at most
//! [`CONCURRENT_RENDERS`] are drawn at once. Results are read a few chunks at a time.

use std::sync::LazyLock;

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use grid_kernels::mandelbrot::{Input, Output};
use tokio::sync::Semaphore;

use crate::AppState;
use crate::auth::Caller;
use crate::error::{Error, Result};

/// The largest frame drawn: 4096 × 4096 pixels.
pub const MAX_IMAGE_PIXELS: u64 = 4096 * 4096;
/// Images drawn at once per master.
pub const CONCURRENT_RENDERS: usize = 2;
/// Finished chunks read per query (a tile's output is up to about 600 KiB of JSON).
const RESULTS_PAGE: i64 = 16;

static RENDERS: LazyLock<Semaphore> = LazyLock::new(|| Semaphore::new(CONCURRENT_RENDERS));

/// Palette index of a chunk not accepted yet (transparent).
const MISSING: u8 = 0;
/// Palette index of points inside the set.
const INSIDE: u8 = 1;
/// Palette indexes 2..=255 follow the gradient.
const GRADIENT_STEPS: u32 = 254;

/// Control points of the gradient: position in [0, 1], then RGB.
const STOPS: [(f64, [u8; 3]); 6] = [
    (0.0, [0, 7, 100]),
    (0.16, [32, 107, 203]),
    (0.42, [237, 255, 255]),
    (0.6425, [255, 170, 0]),
    (0.8575, [120, 40, 0]),
    (1.0, [40, 10, 30]),
];

/// The palette index of a pixel that took `iterations` of `max_iter`.
pub fn palette_index(iterations: u32, max_iter: u32) -> u8 {
    if max_iter == 0 || iterations >= max_iter {
        return INSIDE;
    }
    // Logarithmic: most points escape within a few iterations, a few take thousands.
    let fraction = f64::from(iterations).ln_1p() / f64::from(max_iter).ln_1p();
    let step = (fraction * f64::from(GRADIENT_STEPS - 1)).round() as u32;
    2 + step.min(GRADIENT_STEPS - 1) as u8
}

/// The RGBA colour of palette entry `index`.
pub fn palette_colour(index: u8) -> [u8; 4] {
    match index {
        MISSING => [0, 0, 0, 0],
        INSIDE => [0, 0, 0, 255],
        _ => {
            let t = f64::from(index - 2) / f64::from(GRADIENT_STEPS - 1);
            let upper = STOPS
                .iter()
                .position(|(at, _)| *at >= t)
                .unwrap_or(STOPS.len() - 1)
                .max(1);
            let (a_at, a) = STOPS[upper - 1];
            let (b_at, b) = STOPS[upper];
            let f = ((t - a_at) / (b_at - a_at)).clamp(0.0, 1.0);
            let mix = |i: usize| {
                (f64::from(a[i]) + (f64::from(b[i]) - f64::from(a[i])) * f).round() as u8
            };
            [mix(0), mix(1), mix(2), 255]
        }
    }
}

/// The RGBA colour of a pixel that took `iterations` of `max_iter` (what the PNG shows).
pub fn colour(iterations: u32, max_iter: u32) -> [u8; 4] {
    palette_colour(palette_index(iterations, max_iter))
}

/// A frame being painted: one palette index per pixel.
#[derive(Debug)]
struct Canvas {
    width: u32,
    height: u32,
    pixels: Vec<u8>,
}

impl Canvas {
    fn new(width: u32, height: u32) -> Canvas {
        Canvas {
            width,
            height,
            pixels: vec![MISSING; width as usize * height as usize],
        }
    }

    /// Paint one tile, clipped to the frame; a malformed tile (wrong number of counts) is
    /// skipped rather than trusted.
    fn paint(&mut self, output: &Output) -> bool {
        let tile = output.tile;
        if output.iterations.len() as u64 != u64::from(tile.w) * u64::from(tile.h) {
            return false;
        }
        for row in 0..tile.h {
            let y = u64::from(tile.y) + u64::from(row);
            if y >= u64::from(self.height) {
                break;
            }
            for column in 0..tile.w {
                let x = u64::from(tile.x) + u64::from(column);
                if x >= u64::from(self.width) {
                    break;
                }
                let count = output.iterations[(row * tile.w + column) as usize];
                self.pixels[(y * u64::from(self.width) + x) as usize] =
                    palette_index(count, output.max_iter);
            }
        }
        true
    }

    fn encode(&self) -> Result<Vec<u8>, png::EncodingError> {
        let mut bytes = Vec::new();
        let mut encoder = png::Encoder::new(&mut bytes, self.width, self.height);
        encoder.set_color(png::ColorType::Indexed);
        encoder.set_depth(png::BitDepth::Eight);
        let palette: Vec<u8> = (0..=255u8)
            .flat_map(|i| {
                let [r, g, b, _] = palette_colour(i);
                [r, g, b]
            })
            .collect();
        encoder.set_palette(palette);
        // Only entry 0 is not opaque; the rest default to 255.
        encoder.set_trns(vec![0u8]);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&self.pixels)?;
        writer.finish()?;
        Ok(bytes)
    }
}

/// A picture of a `mandelbrot` job's results.
#[utoipa::path(
    get,
    operation_id = "job_image",
    path = "/api/v1/jobs/{id}/image.png",
    tag = "jobs",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "Job id")),
    responses(
        (status = 200, description = "PNG of the frame of chunk 0; tiles not accepted yet are \
            transparent. `X-Grid-Image-Complete: true` once the job is finished.",
            content_type = "image/png", body = Vec<u8>),
        (status = 401, description = "No valid bearer token", body = super::openapi::ErrorBody),
        (status = 404, description = "No such job (or not yours), or not a mandelbrot job", body = super::openapi::ErrorBody),
        (status = 413, description = "The frame is over 4096 × 4096 pixels", body = super::openapi::ErrorBody),
    )
)]
pub async fn image(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response> {
    let id: i64 = id.parse().map_err(|_| Error::NotFound("job"))?;
    let job = state
        .insights
        .job_progress(caller.0, id)
        .await?
        .ok_or(Error::NotFound("job"))?;
    if job.kernel != "mandelbrot" {
        return Err(Error::NotFound("image"));
    }
    let first = state
        .insights
        .chunk_input(id, 0)
        .await?
        .ok_or(Error::NotFound("image"))?;
    let frame: Input = serde_json::from_str(&first)
        .map_err(|error| Error::Internal(anyhow::anyhow!("job {id} chunk 0 input: {error}")))?;
    if u64::from(frame.width) * u64::from(frame.height) > MAX_IMAGE_PIXELS {
        return Err(Error::TooLarge(format!(
            "the image is {} × {} pixels; at most {MAX_IMAGE_PIXELS} pixels are drawn",
            frame.width, frame.height
        )));
    }
    let _permit = RENDERS
        .acquire()
        .await
        .map_err(|error| Error::Internal(error.into()))?;
    let mut canvas = Canvas::new(frame.width, frame.height);
    let mut after = -1;
    loop {
        let page = state
            .store
            .results_page(id, after, RESULTS_PAGE, crate::limits::RESULTS_PAGE_BYTES)
            .await?;
        let Some(last) = page.last() else { break };
        after = last.index;
        for result in &page {
            let Some(text) = &result.output else { continue };
            match serde_json::from_str::<Output>(text) {
                Ok(output) if canvas.paint(&output) => {}
                _ => tracing::warn!(job = id, chunk = result.index, "not a mandelbrot tile"),
            }
        }
    }
    let png = tokio::task::spawn_blocking(move || canvas.encode())
        .await
        .map_err(|error| Error::Internal(error.into()))?
        .map_err(|error| Error::Internal(error.into()))?;
    let complete = if job.is_finished() { "true" } else { "false" };
    Ok((
        [
            (header::CONTENT_TYPE, "image/png"),
            (header::CACHE_CONTROL, "no-store"),
            (
                header::HeaderName::from_static("x-grid-image-complete"),
                complete,
            ),
        ],
        png,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use grid_kernels::mandelbrot::Tile;

    #[test]
    fn colours_follow_the_iterations() {
        assert_eq!(colour(100, 100), [0, 0, 0, 255]);
        assert_eq!(colour(7, 0), [0, 0, 0, 255]);
        assert_eq!(colour(0, 100), [0, 7, 100, 255]);
        assert_eq!(palette_index(0, 100), 2);
        assert_eq!(palette_index(999_999, 1_000_000), 255);
        // More iterations, a later palette entry.
        let mut previous = 0;
        for iterations in 0..1000 {
            let index = palette_index(iterations, 1000);
            assert!(index >= previous && index >= 2);
            previous = index;
        }
        for i in 2..=255u8 {
            assert_eq!(palette_colour(i)[3], 255);
        }
        assert_eq!(palette_colour(MISSING), [0, 0, 0, 0]);
    }

    #[test]
    fn tiles_are_painted_and_clipped() {
        let mut canvas = Canvas::new(4, 3);
        let tile = |x, y, w, h| Tile { x, y, w, h };
        assert!(canvas.paint(&Output {
            tile: tile(2, 1, 3, 3),
            max_iter: 10,
            iterations: vec![10; 9],
        }));
        assert!(!canvas.paint(&Output {
            tile: tile(0, 0, 2, 2),
            max_iter: 10,
            iterations: vec![1; 3],
        }));
        let inside: Vec<usize> = (0..12).filter(|&i| canvas.pixels[i] == INSIDE).collect();
        assert_eq!(inside, vec![6, 7, 10, 11]);
        assert!(canvas.encode().is_ok_and(|png| png.starts_with(b"\x89PNG")));
    }
}
