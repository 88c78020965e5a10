//! Writes the crowded group photo of the detection test (`dmue_e2e::group_photo`) as a JPEG, for
//! timing the photo path on it: `scripts/bench-photo.sh` with `GROUP=1`.
//!
//!   cargo run --release -p dmue-e2e --example group_photo -- OUT.jpg [WIDTH HEIGHT FACES]

use anyhow::{Context, Result};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = args
        .first()
        .context("usage: group_photo OUT.jpg [WIDTH HEIGHT FACES]")?;
    let num = |i: usize, default: u32| -> Result<u32> {
        args.get(i).map_or(Ok(default), |s| {
            s.parse().with_context(|| format!("not a number: {s}"))
        })
    };
    let (width, height, n) = (num(1, 3000)?, num(2, 2000)?, num(3, 30)? as usize);
    let dir = tempfile::tempdir()?;
    // Faces of 60 to 100 px, as in the test.
    let last = n.saturating_sub(1).max(1) as f32;
    let (photo, _) = dmue_e2e::group_photo(dir.path(), width, height, n, &|k| {
        60.0 + 40.0 * k as f32 / last
    });
    photo
        .save(out)
        .with_context(|| format!("cannot write {out}"))?;
    println!("{out}: {width}x{height}, {n} faces of 60-100 px");
    Ok(())
}
