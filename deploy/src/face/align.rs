//! 5-point face alignment: the least-squares similarity transform (rotation, uniform scale,
//! translation) from detected landmarks to the canonical template, and the bilinear warp into
//! the aligned crop. One implementation, used by `dmue-train prepare` and `dmue-serve` alike.

use image::RgbImage;

/// `p' = [[a, -b], [b, a]] p + [tx, ty]`: rotation by atan2(b, a), scale hypot(a, b).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Similarity {
    pub a: f64,
    pub b: f64,
    pub tx: f64,
    pub ty: f64,
}

impl Similarity {
    pub fn apply(&self, p: [f32; 2]) -> [f32; 2] {
        let (x, y) = (p[0] as f64, p[1] as f64);
        [
            (self.a * x - self.b * y + self.tx) as f32,
            (self.b * x + self.a * y + self.ty) as f32,
        ]
    }

    pub fn scale(&self) -> f64 {
        self.a.hypot(self.b)
    }

    pub fn angle_deg(&self) -> f64 {
        self.b.atan2(self.a).to_degrees()
    }

    /// The inverse transform (`None` for a degenerate, zero-scale transform).
    pub fn inverse(&self) -> Option<Self> {
        let d = self.a * self.a + self.b * self.b;
        if !d.is_finite() || d < 1e-18 {
            return None;
        }
        let (a, b) = (self.a / d, -self.b / d);
        Some(Self {
            a,
            b,
            tx: -(a * self.tx - b * self.ty),
            ty: -(b * self.tx + a * self.ty),
        })
    }

    /// Least-squares similarity mapping `src[i]` onto `dst[i]` (Umeyama 1991, 2-D closed form):
    /// with centred points x_i, y_i, `a = sum(x_i . y_i) / sum|x_i|^2`,
    /// `b = sum(x_i cross y_i) / sum|x_i|^2`, `t = mean(y) - R mean(x)`.
    /// `None` when the source points all coincide or any point is not finite (a NaN landmark
    /// from a broken detector output must not become a silently garbage crop; found by
    /// fuzzing).
    pub fn fit(src: &[[f32; 2]], dst: &[[f32; 2]]) -> Option<Self> {
        let n = src.len().min(dst.len());
        if n < 2
            || !src[..n]
                .iter()
                .chain(&dst[..n])
                .all(|p| p[0].is_finite() && p[1].is_finite())
        {
            return None;
        }
        let mean = |pts: &[[f32; 2]]| {
            let (sx, sy) = pts[..n].iter().fold((0.0, 0.0), |(sx, sy), p| {
                (sx + p[0] as f64, sy + p[1] as f64)
            });
            (sx / n as f64, sy / n as f64)
        };
        let (mx, my) = mean(src);
        let (nx, ny) = mean(dst);
        let (mut dot, mut cross, mut var) = (0.0, 0.0, 0.0);
        for (s, d) in src[..n].iter().zip(&dst[..n]) {
            let (xs, ys) = (s[0] as f64 - mx, s[1] as f64 - my);
            let (xd, yd) = (d[0] as f64 - nx, d[1] as f64 - ny);
            dot += xs * xd + ys * yd;
            cross += xs * yd - ys * xd;
            var += xs * xs + ys * ys;
        }
        if var < 1e-12 {
            return None;
        }
        let (a, b) = (dot / var, cross / var);
        let t = Self {
            a,
            b,
            tx: nx - (a * mx - b * my),
            ty: ny - (b * mx + a * my),
        };
        [t.a, t.b, t.tx, t.ty]
            .iter()
            .all(|v| v.is_finite())
            .then_some(t)
    }
}

/// Warps `src` into a `size x size` crop: crop pixel centre `q` samples `src` at `T^-1(q)`
/// (bilinear). Where the sample falls outside the image the crop is black (the border rule of
/// OpenCV's `warpAffine` default and of insightface's `norm_crop`).
pub fn warp(src: &RgbImage, t: &Similarity, size: u32) -> Option<RgbImage> {
    let inv = t.inverse()?;
    let (w, h) = (src.width() as i64, src.height() as i64);
    let raw = src.as_raw();
    let px = |x: i64, y: i64| -> [f64; 3] {
        if x < 0 || y < 0 || x >= w || y >= h {
            return [0.0; 3];
        }
        let i = ((y * w + x) * 3) as usize;
        [raw[i] as f64, raw[i + 1] as f64, raw[i + 2] as f64]
    };
    let mut out = RgbImage::new(size, size);
    for (qx, qy, pixel) in out.enumerate_pixels_mut() {
        // Pixel centres: pixel (i, j) covers [i, i+1) x [j, j+1), centre (i + 0.5, j + 0.5).
        let p = inv.apply([qx as f32 + 0.5, qy as f32 + 0.5]);
        let (sx, sy) = (p[0] as f64 - 0.5, p[1] as f64 - 0.5);
        let (x0, y0) = (sx.floor() as i64, sy.floor() as i64);
        let (fx, fy) = (sx - x0 as f64, sy - y0 as f64);
        let (p00, p10, p01, p11) = (
            px(x0, y0),
            px(x0 + 1, y0),
            px(x0, y0 + 1),
            px(x0 + 1, y0 + 1),
        );
        let v: [u8; 3] = std::array::from_fn(|k| {
            let top = p00[k] * (1.0 - fx) + p10[k] * fx;
            let bottom = p01[k] * (1.0 - fx) + p11[k] * fx;
            (top * (1.0 - fy) + bottom * fy).round().clamp(0.0, 255.0) as u8
        });
        *pixel = image::Rgb(v);
    }
    Some(out)
}

/// Aligns the face with 5 `landmarks` (template order) into the `size x size` aligned crop of
/// [`super::template`]. Returns the crop and the transform image -> crop.
pub fn align(
    src: &RgbImage,
    landmarks: &[[f32; 2]; 5],
    size: u32,
) -> Option<(RgbImage, Similarity)> {
    let t = Similarity::fit(landmarks, &super::template(size))?;
    Some((warp(src, &t, size)?, t))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A known similarity (scale 0.6, 25 degrees, shift) is recovered exactly from 5 points.
    #[test]
    fn fit_recovers_a_known_transform() {
        let (s, th) = (0.6f64, 25f64.to_radians());
        let truth = Similarity {
            a: s * th.cos(),
            b: s * th.sin(),
            tx: 40.0,
            ty: -12.0,
        };
        let src = [
            [10.0, 20.0],
            [200.0, 30.0],
            [120.0, 140.0],
            [60.0, 220.0],
            [180.0, 210.0],
        ];
        let dst = src.map(|p| truth.apply(p));
        let fit = Similarity::fit(&src, &dst).unwrap();
        assert!((fit.scale() - 0.6).abs() < 1e-6 && (fit.angle_deg() - 25.0).abs() < 1e-4);
        assert!((fit.tx - 40.0).abs() < 1e-4 && (fit.ty + 12.0).abs() < 1e-4);
        let back = fit.inverse().unwrap();
        for p in src {
            let q = back.apply(fit.apply(p));
            assert!((q[0] - p[0]).abs() < 1e-3 && (q[1] - p[1]).abs() < 1e-3);
        }
        assert!(Similarity::fit(&[[1.0, 1.0]; 5], &dst).is_none());
        // A non-finite landmark is refused, not turned into a NaN transform (fuzzing finding).
        let mut bad = src;
        bad[2][1] = f32::NAN;
        assert!(Similarity::fit(&bad, &dst).is_none());
        bad[2][1] = f32::INFINITY;
        assert!(Similarity::fit(&bad, &dst).is_none());
    }

    /// Warping with the identity reproduces the image; outside it is black.
    #[test]
    fn identity_warp_copies_and_border_is_black() {
        let img = RgbImage::from_fn(16, 16, |x, y| {
            image::Rgb([(x * 16) as u8, (y * 16) as u8, 77])
        });
        let id = Similarity {
            a: 1.0,
            b: 0.0,
            tx: 0.0,
            ty: 0.0,
        };
        assert_eq!(warp(&img, &id, 16).unwrap(), img);
        let shifted = Similarity {
            a: 1.0,
            b: 0.0,
            tx: 20.0,
            ty: 0.0,
        };
        let out = warp(&img, &shifted, 16).unwrap();
        assert_eq!(out.get_pixel(3, 3).0, [0, 0, 0]);
    }
}
