//! Procedural, anti-aliased face renderer (tiny-skia).
//!
//! Faces are drawn in the canonical 256x256 aligned frame of `dmue_deploy::face` (landmarks
//! near `TEMPLATE_256`); a similarity transform places them on any canvas, so the same code
//! renders aligned crops and "photos" with rotated, scaled, translated faces.

use super::expr::Expr;
use crate::data::manifest::Pose;
use dmue_deploy::face::TEMPLATE_256;
use image::RgbImage;
use rand::Rng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};
use tiny_skia::{
    Color, FillRule, LineCap, Mask, Paint, Path, PathBuilder, Pixmap, Rect, Stroke, Transform,
};

/// Who the face belongs to: everything that varies between people, not between expressions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    pub face_width: f32,
    pub face_height: f32,
    pub eye_spacing: f32,
    pub eye_size: f32,
    pub eye_dy: f32,
    pub mouth_dy: f32,
    pub skin: [u8; 3],
    pub hair: [u8; 3],
    pub iris: [u8; 3],
    pub clothes: [u8; 3],
    /// 0 short, 1 long (behind the face), 2 fringe, 3 bald.
    pub hair_style: u8,
    pub hairline: f32,
    pub glasses: bool,
}

const SKIN_TONES: [[u8; 3]; 8] = [
    [255, 224, 196],
    [241, 194, 160],
    [224, 172, 128],
    [198, 134, 90],
    [161, 102, 64],
    [120, 74, 45],
    [92, 56, 36],
    [234, 200, 180],
];
const HAIR_COLOURS: [[u8; 3]; 7] = [
    [30, 22, 18],
    [70, 45, 30],
    [120, 80, 40],
    [200, 160, 90],
    [150, 60, 30],
    [110, 110, 110],
    [20, 20, 25],
];
const IRIS_COLOURS: [[u8; 3]; 4] = [[60, 40, 25], [50, 90, 140], [70, 110, 60], [35, 30, 30]];

fn jitter_colour<R: Rng>(c: [u8; 3], amount: f32, rng: &mut R) -> [u8; 3] {
    c.map(|v| (v as f32 + rng.gen_range(-amount..=amount)).clamp(0.0, 255.0) as u8)
}

impl Identity {
    pub fn sample<R: Rng>(rng: &mut R) -> Self {
        Self {
            face_width: rng.gen_range(0.88..1.1),
            face_height: rng.gen_range(0.94..1.06),
            eye_spacing: rng.gen_range(0.93..1.07),
            eye_size: rng.gen_range(0.88..1.12),
            eye_dy: rng.gen_range(-4.0..4.0),
            mouth_dy: rng.gen_range(-5.0..5.0),
            skin: jitter_colour(SKIN_TONES[rng.gen_range(0..SKIN_TONES.len())], 12.0, rng),
            hair: jitter_colour(
                HAIR_COLOURS[rng.gen_range(0..HAIR_COLOURS.len())],
                15.0,
                rng,
            ),
            iris: IRIS_COLOURS[rng.gen_range(0..IRIS_COLOURS.len())],
            clothes: [rng.gen(), rng.gen(), rng.gen()],
            hair_style: rng.gen_range(0..4),
            hairline: rng.gen_range(52.0..68.0),
            glasses: rng.gen::<f32>() < 0.12,
        }
    }
}

/// Scene-wide nuisance: clutter, lighting, blur, sensor noise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Nuisance {
    pub background: [u8; 3],
    pub clutter: u32,
    /// Direction (radians) and strength (0..1) of a directional shading.
    pub light_angle: f32,
    pub light_strength: f32,
    pub brightness: f32,
    pub blur_sigma: f32,
    pub noise_sigma: f32,
}

impl Nuisance {
    pub fn sample<R: Rng>(rng: &mut R) -> Self {
        Self {
            background: [rng.gen(), rng.gen(), rng.gen()],
            clutter: rng.gen_range(2..12),
            light_angle: rng.gen_range(0.0..std::f32::consts::TAU),
            light_strength: rng.gen_range(0.0..0.5),
            brightness: rng.gen_range(0.8..1.15),
            blur_sigma: if rng.gen::<bool>() {
                rng.gen_range(0.3..1.3)
            } else {
                0.0
            },
            noise_sigma: rng.gen_range(0.0..7.0),
        }
    }
}

/// Drawing with a pose (the record itself is part of the manifest's ground truth).
impl Pose {
    pub fn transform(&self) -> Transform {
        let (s, c) = self.angle_deg.to_radians().sin_cos();
        let k = self.scale;
        // x' = k(c(x-128) - s(y-128)) + cx ; y' = k(s(x-128) + c(y-128)) + cy
        Transform::from_row(
            k * c,
            k * s,
            -k * s,
            k * c,
            self.cx - k * (c * 128.0 - s * 128.0),
            self.cy - k * (s * 128.0 + c * 128.0),
        )
    }

    pub fn apply(&self, p: [f32; 2]) -> [f32; 2] {
        let t = self.transform();
        [
            t.sx * p[0] + t.kx * p[1] + t.tx,
            t.ky * p[0] + t.sy * p[1] + t.ty,
        ]
    }
}

fn paint(rgb: [u8; 3], alpha: f32) -> Paint<'static> {
    let mut p = Paint::default();
    p.set_color(Color::from_rgba8(
        rgb[0],
        rgb[1],
        rgb[2],
        (alpha.clamp(0.0, 1.0) * 255.0) as u8,
    ));
    p.anti_alias = true;
    p
}

fn shade(rgb: [u8; 3], f: f32) -> [u8; 3] {
    rgb.map(|v| (v as f32 * f).clamp(0.0, 255.0) as u8)
}

fn mix(a: [u8; 3], b: [u8; 3], t: f32) -> [u8; 3] {
    std::array::from_fn(|i| (a[i] as f32 * (1.0 - t) + b[i] as f32 * t).clamp(0.0, 255.0) as u8)
}

fn oval(cx: f32, cy: f32, rx: f32, ry: f32) -> Option<Path> {
    PathBuilder::from_oval(Rect::from_xywh(cx - rx, cy - ry, 2.0 * rx, 2.0 * ry)?)
}

struct Canvas<'a> {
    pixmap: &'a mut Pixmap,
    t: Transform,
}

impl Canvas<'_> {
    fn fill(&mut self, path: Option<Path>, rgb: [u8; 3], alpha: f32) {
        self.fill_masked(path, rgb, alpha, None);
    }

    fn fill_masked(&mut self, path: Option<Path>, rgb: [u8; 3], alpha: f32, mask: Option<&Mask>) {
        if let Some(path) = path {
            self.pixmap
                .fill_path(&path, &paint(rgb, alpha), FillRule::Winding, self.t, mask);
        }
    }

    fn stroke(&mut self, path: Option<Path>, rgb: [u8; 3], alpha: f32, width: f32) {
        if let Some(path) = path {
            let stroke = Stroke {
                width,
                line_cap: LineCap::Round,
                ..Stroke::default()
            };
            self.pixmap
                .stroke_path(&path, &paint(rgb, alpha), &stroke, self.t, None);
        }
    }

    fn mask(&self, path: &Option<Path>) -> Option<Mask> {
        let mut mask = Mask::new(self.pixmap.width(), self.pixmap.height())?;
        mask.fill_path(path.as_ref()?, FillRule::Winding, true, self.t);
        Some(mask)
    }
}

fn quad(a: [f32; 2], ctrl: [f32; 2], b: [f32; 2]) -> Option<Path> {
    let mut pb = PathBuilder::new();
    pb.move_to(a[0], a[1]);
    pb.quad_to(ctrl[0], ctrl[1], b[0], b[1]);
    pb.finish()
}

fn line(a: [f32; 2], b: [f32; 2]) -> Option<Path> {
    let mut pb = PathBuilder::new();
    pb.move_to(a[0], a[1]);
    pb.line_to(b[0], b[1]);
    pb.finish()
}

/// Draws one face with expression `e` and identity `id` at `pose`; returns its 5 landmarks in
/// canvas coordinates (order of `dmue_deploy::face::TEMPLATE_256`).
// Long: one face in painter's order, back to front; every part reads the same identity
// proportions and expression parameters computed at the top, and the drawing order is the
// picture (and the benchmark: a reordering changes every rendered face).
pub fn draw_face(pixmap: &mut Pixmap, e: &Expr, id: &Identity, pose: &Pose) -> [[f32; 2]; 5] {
    let mut cv = Canvas {
        pixmap,
        t: pose.transform(),
    };
    let [tl, tr, tn, ..] = TEMPLATE_256;
    let mid_x = 128.0;
    let half_eye_gap = (tr[0] - tl[0]) * 0.5 * id.eye_spacing;
    let eye_y = tl[1] + id.eye_dy;
    let eyes = [[mid_x - half_eye_gap, eye_y], [mid_x + half_eye_gap, eye_y]];
    let nose = [tn[0], tn[1] + id.eye_dy * 0.5];
    let (rx, ry) = (80.0 * id.face_width, 100.0 * id.face_height);
    let face_cy = 140.0;
    let skin = id.skin;
    let skin_dark = shade(skin, 0.78);
    let line_col = shade(skin, 0.45);

    // Long hair behind the head, shoulders, neck, ears.
    if id.hair_style == 1 {
        cv.fill(
            oval(mid_x, face_cy + 10.0, rx * 1.18, ry * 1.12),
            id.hair,
            1.0,
        );
    }
    cv.fill(oval(mid_x, 300.0, 135.0, 75.0), id.clothes, 1.0);
    cv.fill(
        Rect::from_xywh(mid_x - 34.0, 190.0, 68.0, 80.0).map(PathBuilder::from_rect),
        skin_dark,
        1.0,
    );
    for side in [-1.0, 1.0] {
        cv.fill(
            oval(mid_x + side * rx * 0.97, eye_y + 18.0, 10.0, 19.0),
            skin_dark,
            1.0,
        );
    }
    // Face oval with a slightly narrower jaw.
    let face = {
        let mut pb = PathBuilder::new();
        let top = face_cy - ry;
        let bottom = face_cy + ry;
        pb.move_to(mid_x, top);
        pb.cubic_to(
            mid_x + rx * 0.56,
            top,
            mid_x + rx,
            face_cy - ry * 0.55,
            mid_x + rx,
            face_cy - ry * 0.05,
        );
        pb.cubic_to(
            mid_x + rx,
            face_cy + ry * 0.5,
            mid_x + rx * 0.5,
            bottom,
            mid_x,
            bottom,
        );
        pb.cubic_to(
            mid_x - rx * 0.5,
            bottom,
            mid_x - rx,
            face_cy + ry * 0.5,
            mid_x - rx,
            face_cy - ry * 0.05,
        );
        pb.cubic_to(
            mid_x - rx,
            face_cy - ry * 0.55,
            mid_x - rx * 0.56,
            top,
            mid_x,
            top,
        );
        pb.close();
        pb.finish()
    };
    cv.fill(face, skin, 1.0);

    // Mouth geometry (needed by cheeks and folds).
    let mouth_y = 186.0 + id.mouth_dy + e.mouth_open * 4.0;
    let half_w = 30.0 * (0.7 + 0.6 * e.mouth_width);
    let corner_lift = e.mouth_curve * 11.0;
    let ml = [mid_x - half_w, mouth_y - corner_lift];
    let mr = [mid_x + half_w, mouth_y - corner_lift];
    let sag = e.mouth_curve * 12.0;

    // Cheeks: raised cheeks bunch up under the eyes; nasolabial folds deepen with smile/disgust.
    if e.cheek_raise > 0.05 {
        for eye in eyes {
            cv.fill(
                oval(eye[0], eye[1] + 34.0 - 8.0 * e.cheek_raise, 20.0, 12.0),
                [230, 120, 120],
                0.35 * e.cheek_raise,
            );
        }
    }
    let fold = (e.mouth_curve.max(0.0) * 0.8 + e.nose_wrinkle * 0.8 + e.cheek_raise * 0.4).min(1.0);
    if fold > 0.05 {
        for (side, corner) in [(-1.0, ml), (1.0, mr)] {
            let start = [mid_x + side * 18.0, nose[1] - 4.0];
            let end = [corner[0] + side * 6.0, corner[1] + 4.0];
            let ctrl = [mid_x + side * (half_w + 14.0), (start[1] + end[1]) * 0.5];
            cv.stroke(quad(start, ctrl, end), line_col, 0.6 * fold, 2.0);
        }
    }

    // Eyes: almond whites, iris clipped to the opening, upper lid line.
    let ew = 17.0 * id.eye_size;
    for eye in eyes {
        let upper = ew * (0.12 + 0.62 * e.eye_open);
        let lower = ew * (0.1 + 0.42 * e.eye_open) * (1.0 - 0.45 * e.cheek_raise);
        let almond = {
            let mut pb = PathBuilder::new();
            pb.move_to(eye[0] - ew, eye[1]);
            pb.quad_to(eye[0], eye[1] - 2.0 * upper, eye[0] + ew, eye[1]);
            pb.quad_to(eye[0], eye[1] + 2.0 * lower, eye[0] - ew, eye[1]);
            pb.close();
            pb.finish()
        };
        cv.fill(almond.clone(), [245, 245, 240], 1.0);
        let mask = cv.mask(&almond);
        let r = ew * 0.46;
        cv.fill_masked(
            oval(eye[0], eye[1] - (upper - lower) * 0.3, r, r),
            id.iris,
            1.0,
            mask.as_ref(),
        );
        cv.fill_masked(
            oval(eye[0], eye[1] - (upper - lower) * 0.3, r * 0.45, r * 0.45),
            [10, 10, 10],
            1.0,
            mask.as_ref(),
        );
        cv.stroke(
            quad(
                [eye[0] - ew, eye[1]],
                [eye[0], eye[1] - 2.0 * upper],
                [eye[0] + ew, eye[1]],
            ),
            [40, 30, 30],
            1.0,
            2.6,
        );
        cv.stroke(
            quad(
                [eye[0] - ew, eye[1]],
                [eye[0], eye[1] + 2.0 * lower],
                [eye[0] + ew, eye[1]],
            ),
            line_col,
            0.6,
            1.2,
        );
    }

    // Brows: raised/lowered as a whole, inner ends tilted; anger pulls them into a V.
    let brow_col = shade(id.hair, 0.8);
    for (side, eye) in [(-1.0f32, eyes[0]), (1.0, eyes[1])] {
        let base = eye[1] - 22.0 - 14.0 * e.brow_raise;
        let inner = [
            eye[0] - side * 15.0 + side * 3.0 * (e.brow_tilt.min(0.0)),
            base - 8.0 * e.brow_tilt,
        ];
        let outer = [eye[0] + side * 19.0, base + 2.0 * e.brow_tilt + 2.0];
        let arch = 6.0 * (1.0 - 0.6 * e.brow_tilt.abs());
        let ctrl = [
            (inner[0] + outer[0]) * 0.5,
            (inner[1] + outer[1]) * 0.5 - arch,
        ];
        cv.stroke(quad(inner, ctrl, outer), brow_col, 1.0, 7.0);
    }
    // Forehead lines for raised brows, frown lines for lowered inner brows.
    if e.brow_raise > 0.25 {
        let a = (e.brow_raise - 0.25) * 0.9;
        for k in 0..3 {
            let y = eye_y - 45.0 - 12.0 * e.brow_raise - 7.0 * k as f32;
            cv.stroke(
                quad(
                    [mid_x - 30.0, y + 2.0],
                    [mid_x, y - 4.0],
                    [mid_x + 30.0, y + 2.0],
                ),
                line_col,
                a,
                1.3,
            );
        }
    }
    if e.brow_tilt < -0.25 {
        let a = (-e.brow_tilt - 0.25) * 0.9;
        for dx in [-4.0, 4.0] {
            cv.stroke(
                line([mid_x + dx, eye_y - 22.0], [mid_x + dx * 0.6, eye_y - 8.0]),
                line_col,
                a,
                1.5,
            );
        }
    }

    // Nose: bridge, nostrils (flared by the wrinkle), wrinkle lines across the bridge.
    cv.stroke(
        quad(
            [mid_x - 4.0, eye_y + 8.0],
            [mid_x - 9.0, nose[1] - 14.0],
            [mid_x - 6.0, nose[1] - 2.0],
        ),
        line_col,
        0.45,
        1.6,
    );
    let flare = 9.0 + 4.0 * e.nose_wrinkle;
    for side in [-1.0, 1.0] {
        cv.stroke(
            quad(
                [mid_x + side * 3.0, nose[1] + 4.0],
                [mid_x + side * (flare + 2.0), nose[1] + 5.0],
                [mid_x + side * flare, nose[1] - 4.0],
            ),
            line_col,
            0.8,
            2.0,
        );
    }
    cv.fill(oval(nose[0], nose[1], 6.0, 4.5), shade(skin, 0.9), 0.8);
    if e.nose_wrinkle > 0.1 {
        for k in 0..3 {
            let y = eye_y + 10.0 + 6.0 * k as f32;
            cv.stroke(
                quad([mid_x - 10.0, y], [mid_x, y - 3.0], [mid_x + 10.0, y]),
                line_col,
                0.8 * e.nose_wrinkle,
                1.4,
            );
        }
    }

    // Mouth: dark opening between inner lip curves, teeth, lips (thinned by lip press).
    let up_ctrl = [
        mid_x,
        mouth_y + sag * 0.4 - e.mouth_open * 10.0 - e.nose_wrinkle * 6.0,
    ];
    let low_ctrl = [mid_x, mouth_y + sag + e.mouth_open * 44.0];
    let lip_col = mix(skin, [170, 60, 70], 0.55);
    if e.mouth_open > 0.05 {
        let opening = {
            let mut pb = PathBuilder::new();
            pb.move_to(ml[0], ml[1]);
            pb.quad_to(up_ctrl[0], up_ctrl[1], mr[0], mr[1]);
            pb.quad_to(low_ctrl[0], low_ctrl[1], ml[0], ml[1]);
            pb.close();
            pb.finish()
        };
        cv.fill(opening.clone(), [70, 20, 25], 1.0);
        let mask = cv.mask(&opening);
        let teeth_h = 5.0 + 5.0 * (e.mouth_curve.max(0.0) + e.nose_wrinkle).min(1.0);
        let top = mouth_y + sag * 0.2 - e.mouth_open * 6.0 - e.nose_wrinkle * 4.0;
        cv.fill_masked(
            Rect::from_xywh(mid_x - half_w, top - 10.0, 2.0 * half_w, teeth_h + 10.0)
                .map(PathBuilder::from_rect),
            [240, 238, 225],
            1.0,
            mask.as_ref(),
        );
    }
    let thin = 1.0 - 0.65 * e.lip_press;
    cv.stroke(quad(ml, up_ctrl, mr), lip_col, 1.0, 1.5 + 3.5 * thin);
    cv.stroke(quad(ml, low_ctrl, mr), lip_col, 1.0, 2.0 + 4.5 * thin);
    if e.mouth_open <= 0.05 {
        cv.stroke(
            quad(ml, [mid_x, mouth_y + sag * 0.7], mr),
            [80, 30, 35],
            1.0,
            1.4 + 1.2 * e.lip_press,
        );
    }

    // Hair cap over the forehead.
    if id.hair_style != 3 {
        let hl = id.hairline + if id.hair_style == 2 { 14.0 } else { 0.0 };
        let cap = {
            let mut pb = PathBuilder::new();
            let top = face_cy - ry - 8.0;
            pb.move_to(mid_x - rx * 1.04, face_cy - ry * 0.25);
            pb.cubic_to(
                mid_x - rx * 1.06,
                top - 10.0,
                mid_x + rx * 1.06,
                top - 10.0,
                mid_x + rx * 1.04,
                face_cy - ry * 0.25,
            );
            pb.line_to(mid_x + rx * 0.92, face_cy - ry * 0.3);
            pb.quad_to(mid_x + rx * 0.5, hl - 6.0, mid_x, hl);
            pb.quad_to(
                mid_x - rx * 0.5,
                hl - 6.0,
                mid_x - rx * 0.92,
                face_cy - ry * 0.3,
            );
            pb.close();
            pb.finish()
        };
        cv.fill(cap, id.hair, 1.0);
    }
    if id.glasses {
        for eye in eyes {
            cv.stroke(
                oval(eye[0], eye[1], ew + 6.0, ew * 0.8 + 3.0),
                [25, 25, 25],
                1.0,
                2.2,
            );
        }
        cv.stroke(
            line(
                [eyes[0][0] + ew + 6.0, eye_y - 2.0],
                [eyes[1][0] - ew - 6.0, eye_y - 2.0],
            ),
            [25, 25, 25],
            1.0,
            2.2,
        );
    }

    [eyes[0], eyes[1], nose, ml, mr].map(|p| pose.apply(p))
}

/// Fills the canvas with a background colour, a soft gradient and random clutter shapes.
pub fn draw_background<R: Rng>(pixmap: &mut Pixmap, n: &Nuisance, rng: &mut R) {
    let (w, h) = (pixmap.width() as f32, pixmap.height() as f32);
    let bg = n.background;
    pixmap.fill(Color::from_rgba8(bg[0], bg[1], bg[2], 255));
    let mut cv = Canvas {
        pixmap,
        t: Transform::identity(),
    };
    for _ in 0..n.clutter {
        let col = mix(
            bg,
            [rng.gen(), rng.gen(), rng.gen()],
            rng.gen_range(0.3..0.9),
        );
        let (x, y) = (rng.gen_range(0.0..w), rng.gen_range(0.0..h));
        let s = rng.gen_range(0.05..0.35) * w.min(h);
        match rng.gen_range(0..3) {
            0 => cv.fill(
                Rect::from_xywh(x - s, y - s * 0.5, 2.0 * s, s).map(PathBuilder::from_rect),
                col,
                0.8,
            ),
            1 => cv.fill(oval(x, y, s, s * rng.gen_range(0.5..1.5)), col, 0.8),
            _ => cv.stroke(
                line(
                    [x, y],
                    [
                        x + rng.gen_range(-2.0..2.0) * s,
                        y + rng.gen_range(-2.0..2.0) * s,
                    ],
                ),
                col,
                0.9,
                rng.gen_range(2.0..8.0),
            ),
        }
    }
}

/// Directional shading and global brightness, applied over the whole canvas.
pub fn apply_lighting(pixmap: &mut Pixmap, n: &Nuisance) {
    let (w, h) = (pixmap.width() as f32, pixmap.height() as f32);
    let (s, c) = n.light_angle.sin_cos();
    let a = tiny_skia::Point::from_xy(w * 0.5 - c * w * 0.5, h * 0.5 - s * h * 0.5);
    let b = tiny_skia::Point::from_xy(w * 0.5 + c * w * 0.5, h * 0.5 + s * h * 0.5);
    let stops = vec![
        tiny_skia::GradientStop::new(
            0.0,
            Color::from_rgba(0.0, 0.0, 0.0, n.light_strength).unwrap_or(Color::TRANSPARENT),
        ),
        tiny_skia::GradientStop::new(1.0, Color::TRANSPARENT),
    ];
    if let Some(shader) = tiny_skia::LinearGradient::new(
        a,
        b,
        stops,
        tiny_skia::SpreadMode::Pad,
        Transform::identity(),
    ) {
        let paint = Paint {
            shader,
            anti_alias: false,
            ..Paint::default()
        };
        if let Some(rect) = Rect::from_xywh(0.0, 0.0, w, h) {
            pixmap.fill_rect(rect, &paint, Transform::identity(), None);
        }
    }
}

/// Converts the (opaque) canvas to RGB, then applies brightness, blur and sensor noise.
pub fn finish<R: Rng>(pixmap: &Pixmap, n: &Nuisance, rng: &mut R) -> RgbImage {
    let (w, h) = (pixmap.width(), pixmap.height());
    let mut img = RgbImage::new(w, h);
    for (dst, src) in img.pixels_mut().zip(pixmap.pixels()) {
        let c = src.demultiply();
        *dst = image::Rgb(
            [c.red(), c.green(), c.blue()].map(|v| (v as f32 * n.brightness).min(255.0) as u8),
        );
    }
    if n.blur_sigma > 0.0 {
        img = image::imageops::blur(&img, n.blur_sigma);
    }
    if n.noise_sigma > 0.0 {
        let noise = Normal::new(0.0, n.noise_sigma).expect("finite sigma");
        for v in img.iter_mut() {
            *v = (*v as f32 + noise.sample(rng)).round().clamp(0.0, 255.0) as u8;
        }
    }
    img
}
