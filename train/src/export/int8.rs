//! `dmue-train export --int8`: post-training static quantization of the exported graph to QDQ
//! int8, written by our own exporter (no second toolchain).
//!
//! The float32 graph of [`crate::export::onnx::build`] (BatchNorm already folded) is rewritten into
//! the layout ONNX Runtime fuses into integer kernels (QLinearConv, QLinearAdd, ...):
//! - each activation an integer kernel reads gets one `QuantizeLinear -> DequantizeLinear` pair
//!   (uint8, one scale and zero point per tensor, from calibration), shared by its consumers;
//! - convolution weights are stored as int8 with one symmetric scale per output channel (7 bits
//!   of it in dense convolutions, see [`WEIGHT_QMAX`]); biases as int32 with scale = input
//!   scale x weight scale and zero point 0, which is what integer kernels add to their int32
//!   accumulators;
//! - each convolution's bias absorbs the expected shift that rounding its weights causes
//!   (bias correction, from the channel means of its input on the calibration images);
//! - a ReLU / ReLU6 right after a convolution or an addition is folded into the quantization of
//!   that output: a range that starts at 0 clamps what the ReLU would (and a ReLU6 range ends
//!   at or below 6), as ONNX Runtime's own quantizer does;
//! - shape-only operators (MaxPool, Flatten, Reshape, Transpose, Split) reuse their input's
//!   parameters, so that a runtime can run them on the integers directly.
//!
//! The pooled features, the classifier (under 0.1 % of the multiply-adds), the logits, the
//! calibration temperature and the softmax stay float32.
//!
//! Activation ranges come from running the float32 graph (tract, with every quantized
//! activation as an output) on N crops of a dataset split, through the model's own
//! preprocessing; two methods are offered (min-max, and the 0.01 / 99.99 percentiles of a
//! histogram). [`export_int8`] measures both and keeps the one closer to float32 (or, with a
//! validation split, the more accurate one).

use crate::data::loader::{eval_batch, SplitImages};
use crate::data::manifest::{Dataset, Split};
use anyhow::{bail, Context, Result};
use dmue_deploy::engine::{self, EngineKind};
use dmue_deploy::model_card::{Int8Card, ModelCard};
use dmue_deploy::onnx::pb;
use dmue_deploy::preprocess::Preprocess;
use pb::tensor_proto::DataType;
use prost::Message;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// Percentile of the `percentile` method (and 100 minus it at the low end).
pub const PERCENTILE: f64 = 99.99;
/// Histogram bins per tensor for the percentile method.
const BINS: usize = 2048;
/// Default number of calibration crops.
pub const DEFAULT_IMAGES: usize = 200;

/// How activation ranges are chosen from what the calibration images produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum RangeMethod {
    /// The smallest and the largest value seen.
    MinMax,
    /// The 0.01st and 99.99th percentiles of the values seen: rare outliers saturate, and the
    /// common values get finer steps.
    Percentile,
}

impl RangeMethod {
    pub const ALL: [RangeMethod; 2] = [RangeMethod::MinMax, RangeMethod::Percentile];

    /// The name recorded in the model card.
    pub fn label(self) -> &'static str {
        match self {
            RangeMethod::MinMax => "minmax",
            RangeMethod::Percentile => "percentile-99.99",
        }
    }
}

/// uint8 affine quantization of one activation tensor: `x = (q - zero_point) * scale`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActivationParams {
    pub scale: f32,
    pub zero_point: u8,
}

impl ActivationParams {
    /// Parameters for values in `[lo, hi]`. The range is widened to contain 0, so that 0 (the
    /// convolutions' padding, a ReLU's floor) is represented exactly. A range of zero width
    /// (a tensor that was constant 0 on every calibration image) gets scale 1 rather than a
    /// division by zero.
    pub fn for_range(lo: f32, hi: f32) -> Self {
        let (lo, hi) = (lo.min(0.0), hi.max(0.0));
        let width = hi - lo;
        if !(width.is_finite() && width > f32::MIN_POSITIVE) {
            return Self {
                scale: 1.0,
                zero_point: 0,
            };
        }
        let scale = width / 255.0;
        let zero_point = (-lo / scale).round().clamp(0.0, 255.0) as u8;
        Self { scale, zero_point }
    }

    /// `x` quantized and dequantized again (what the int8 graph computes with).
    pub fn round_trip(self, x: f32) -> f32 {
        let q = (x / self.scale).round_ties_even() + self.zero_point as f32;
        (q.clamp(0.0, 255.0) - self.zero_point as f32) * self.scale
    }
}

/// Symmetric int8 quantization of a weight tensor with one scale per output channel (the
/// leading axis of `w`): `w = q * scale[c]`, `q` in [-qmax, qmax] (a symmetric grid). An
/// all-zero channel gets scale 1.
pub fn quantize_weights(w: &[f32], channels: usize, qmax: f32) -> (Vec<i8>, Vec<f32>) {
    let per = w.len() / channels.max(1);
    let mut q = Vec::with_capacity(w.len());
    let mut scales = Vec::with_capacity(channels);
    for row in w.chunks(per.max(1)) {
        let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = if amax > 0.0 { amax / qmax } else { 1.0 };
        scales.push(scale);
        q.extend(
            row.iter()
                .map(|v| (v / scale).round_ties_even().clamp(-qmax, qmax) as i8),
        );
    }
    (q, scales)
}

/// Bias correction (Nagel et al. 2019, "Data-free quantization", section 4.2): rounding the
/// weights shifts the expected output of channel `c` by `sum (w_q - w) * E[x]`; with `E[x]`
/// the per-channel input mean (over positions and calibration images), that shift is taken
/// out of the bias. `dims` = `[C_out, C_in / groups, kh, kw]`, `means` has `C_in` entries.
pub fn correct_bias(
    b: &mut [f32],
    w: &[f32],
    q: &[i8],
    scales: &[f32],
    dims: &[i64],
    means: &[f32],
) {
    let (cout, cin_g) = (dims[0] as usize, dims[1] as usize);
    let k: usize = dims[2..].iter().map(|d| *d as usize).product();
    let groups = (means.len() / cin_g.max(1)).max(1);
    let per_group = (cout / groups).max(1);
    for c in 0..cout {
        let g = c / per_group;
        let mut shift = 0f64;
        for i in 0..cin_g {
            let mu = means[g * cin_g + i] as f64;
            for j in 0..k {
                let at = (c * cin_g + i) * k + j;
                shift += (q[at] as f64 * scales[c] as f64 - w[at] as f64) * mu;
            }
        }
        b[c] -= shift as f32;
    }
}

/// int32 bias of an integer kernel: `b = q * input_scale * weight_scale[c]`.
pub fn quantize_bias(b: &[f32], input_scale: f32, weight_scales: &[f32]) -> (Vec<i32>, Vec<f32>) {
    let scales: Vec<f32> = weight_scales.iter().map(|s| s * input_scale).collect();
    let q = b
        .iter()
        .zip(&scales)
        .map(|(v, s)| {
            (*v as f64 / *s as f64)
                .round()
                .clamp(i32::MIN as f64, i32::MAX as f64) as i32
        })
        .collect();
    (q, scales)
}

/// Largest weight magnitude in int8 steps: 7 bits ([-63, 63]) rather than 8. x86 CPUs without
/// VNNI multiply uint8 activations by int8 weights with AVX2's VPMADDUBSW, which adds two
/// products in a saturating int16: 255 x 127 x 2 overflows it, 255 x 63 x 2 does not (ONNX
/// Runtime's quantizer calls this `reduce_range`). Measured on the test networks: with 8 bits,
/// ONNX Runtime's logits departed from tract's (which does not saturate) by up to 15 % of their
/// spread; with 7 bits the two engines agree and the error against float32 is no larger.
pub const WEIGHT_QMAX: f32 = 63.0;
/// Depthwise convolutions keep the full symmetric int8 range: ONNX Runtime computes them with
/// a kernel of its own that widens before multiplying (no saturation: tested against tract),
/// and 9 weights per channel are the ones that lose most from a seventh bit. Measured on
/// MobileNetV2 at 224: agreement with float32 93.1 % -> 95.8 % of test images.
pub const DEPTHWISE_WEIGHT_QMAX: f32 = 127.0;

/// Operators whose output holds only values of their (first) input: they share its
/// quantization parameters.
const SHAPE_ONLY: [&str; 5] = ["MaxPool", "Flatten", "Reshape", "Transpose", "Split"];
/// Operators whose output stays float32 (the classifier and what follows it).
const FLOAT_TAIL: [&str; 3] = ["Gemm", "Div", "Softmax"];

/// What the rewrite does to a float32 graph, decided from its structure alone.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Tensors with their own quantization parameters (measured on calibration images), the
    /// graph input first, then in graph order.
    pub observed: Vec<String>,
    /// Tensors that reuse another (observed) tensor's parameters.
    shared: HashMap<String, String>,
    /// ReLU / Clip nodes folded into their producer: node index -> producer index.
    folded: HashMap<usize, usize>,
}

impl Plan {
    /// The observed tensor whose parameters `t` uses, if `t` is quantized.
    fn root<'a>(&'a self, t: &'a str) -> Option<&'a str> {
        if let Some(r) = self.shared.get(t) {
            return Some(r);
        }
        self.observed.iter().any(|o| o == t).then_some(t)
    }
}

fn graph(model: &pb::ModelProto) -> Result<&pb::GraphProto> {
    model.graph.as_ref().context("the model has no graph")
}

fn op(n: &pb::NodeProto) -> &str {
    n.op_type.as_deref().unwrap_or("")
}

/// Values of a float32 initializer stored as `raw_data` (how our exporter writes them).
fn f32_values(t: &pb::TensorProto) -> Option<Vec<f32>> {
    if t.data_type != Some(DataType::Float as i32) {
        return None;
    }
    let raw = t.raw_data.as_ref()?;
    Some(
        raw.chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    )
}

/// Decides which tensors are quantized and which activations are folded.
pub fn plan(model: &pb::ModelProto) -> Result<Plan> {
    let g = graph(model)?;
    let inits: HashMap<&str, &pb::TensorProto> = g
        .initializer
        .iter()
        .filter_map(|t| Some((t.name.as_deref()?, t)))
        .collect();
    let graph_outputs: HashSet<&str> = g.output.iter().filter_map(|v| v.name.as_deref()).collect();
    let mut producer: HashMap<&str, usize> = HashMap::new();
    let mut consumers: HashMap<&str, usize> = HashMap::new();
    for (i, n) in g.node.iter().enumerate() {
        for o in &n.output {
            producer.insert(o, i);
        }
        for x in &n.input {
            *consumers.entry(x).or_default() += 1;
        }
    }
    // A ReLU, or a Clip with a lower bound of exactly 0 (ReLU6), whose input is a convolution's
    // or an addition's output that nothing else reads.
    let mut folded = HashMap::new();
    for (i, n) in g.node.iter().enumerate() {
        let floor_zero = match op(n) {
            "Relu" => true,
            "Clip" => n
                .input
                .get(1)
                .and_then(|m| inits.get(m.as_str()))
                .and_then(|t| f32_values(t))
                .is_some_and(|v| v == [0.0]),
            _ => false,
        };
        let Some(x) = n.input.first() else { continue };
        if let Some(&p) = producer.get(x.as_str()) {
            if floor_zero
                && matches!(op(&g.node[p]), "Conv" | "Add")
                && consumers.get(x.as_str()) == Some(&1)
                && !graph_outputs.contains(x.as_str())
            {
                folded.insert(i, p);
            }
        }
    }
    let input = g
        .input
        .first()
        .and_then(|v| v.name.clone())
        .context("the graph has no input")?;
    let mut observed = vec![input];
    let mut shared: HashMap<String, String> = HashMap::new();
    let folded_producers: HashSet<usize> = folded.values().copied().collect();
    for (i, n) in g.node.iter().enumerate() {
        // A producer's output is named by the activation folded into it (observed there).
        if folded_producers.contains(&i) || FLOAT_TAIL.contains(&op(n)) {
            continue;
        }
        for o in &n.output {
            if graph_outputs.contains(o.as_str()) {
                continue;
            }
            if SHAPE_ONLY.contains(&op(n)) {
                let src = &n.input[0];
                let root = shared.get(src).cloned().unwrap_or_else(|| src.clone());
                shared.insert(o.clone(), root);
            } else {
                observed.push(o.clone());
            }
        }
    }
    // What only the float tail reads (through shape-only operators) stays float: the pooled
    // features of the classifier. Quantizing them and the classifier measured twice the
    // largest logit error on the demo model, for no time saved (it is < 0.1 % of the MACs).
    let feeds_only_tail = |t: &str| {
        let mut frontier = vec![t.to_string()];
        while let Some(x) = frontier.pop() {
            for n in g.node.iter().filter(|n| n.input.contains(&x)) {
                if SHAPE_ONLY.contains(&op(n)) {
                    frontier.extend(n.output.iter().cloned());
                } else if !FLOAT_TAIL.contains(&op(n)) {
                    return false;
                }
            }
        }
        true
    };
    observed.retain(|t| !feeds_only_tail(t));
    // A shape-only operator reading an unquantized tensor stays float too.
    let observed_set: HashSet<String> = observed.iter().cloned().collect();
    shared.retain(|_, root| observed_set.contains(root));
    Ok(Plan {
        observed,
        shared,
        folded,
    })
}

/// An initializer of `dims` (empty: a scalar) holding `raw` little-endian values.
fn tensor(name: String, dims: Vec<i64>, data_type: DataType, raw: Vec<u8>) -> pb::TensorProto {
    pb::TensorProto {
        name: Some(name),
        dims,
        data_type: Some(data_type as i32),
        raw_data: Some(raw),
        ..Default::default()
    }
}

fn qdq_node(
    op_type: &str,
    name: String,
    inputs: [&str; 3],
    output: String,
    axis: Option<i64>,
) -> pb::NodeProto {
    pb::NodeProto {
        name: Some(name),
        op_type: Some(op_type.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output],
        attribute: axis
            .map(|a| {
                vec![pb::AttributeProto {
                    name: Some("axis".into()),
                    r#type: Some(pb::attribute_proto::AttributeType::Int as i32),
                    i: Some(a),
                    ..Default::default()
                }]
            })
            .unwrap_or_default(),
        ..Default::default()
    }
}

/// A per-output-channel constant as the integer kernels read it: the stored integers
/// `{name}.int8` / `{name}.int32`, their scales and zero points (0) along axis 0, and the
/// `DequantizeLinear` that gives `{name}.dq`. `values` are little-endian `data_type` values.
fn per_channel_constant(
    name: &str,
    dims: Vec<i64>,
    data_type: DataType,
    values: Vec<u8>,
    scales: &[f32],
    inits: &mut Vec<pb::TensorProto>,
    nodes: &mut Vec<pb::NodeProto>,
) -> String {
    let channels = scales.len();
    let zero_bytes = values.len() / dims.iter().product::<i64>().max(1) as usize;
    let suffix = if data_type == DataType::Int8 {
        "int8"
    } else {
        "int32"
    };
    let (qn, sn, zn) = (
        format!("{name}.{suffix}"),
        format!("{name}.scale"),
        format!("{name}.zero_point"),
    );
    inits.push(tensor(qn.clone(), dims, data_type, values));
    inits.push(tensor(
        sn.clone(),
        vec![channels as i64],
        DataType::Float,
        scales.iter().flat_map(|v| v.to_le_bytes()).collect(),
    ));
    inits.push(tensor(
        zn.clone(),
        vec![channels as i64],
        data_type,
        vec![0; zero_bytes * channels],
    ));
    nodes.push(qdq_node(
        "DequantizeLinear",
        format!("{name}/Dequantize"),
        [&qn, &sn, &zn],
        dq_name(name),
        Some(0),
    ));
    dq_name(name)
}

fn dq_name(t: &str) -> String {
    format!("{t}.dq")
}

/// Rewrites the float32 `model` into QDQ int8 with activation `ranges` (`[lo, hi]` of each
/// observed tensor). Metadata is copied unchanged (the caller sets the card).
// Long: one pass over the float graph, node by node, rewriting each kind into its QDQ form; the
// arms share the new graph, the name table and the per-tensor scales, which a split would pass
// around as one large state.
pub fn quantize(
    model: &pb::ModelProto,
    plan: &Plan,
    ranges: &Ranges,
    channel_means: Option<&HashMap<String, Vec<f32>>>,
) -> Result<pb::ModelProto> {
    let g = graph(model)?;
    let params: HashMap<&str, ActivationParams> = plan
        .observed
        .iter()
        .map(|t| {
            let (lo, hi) = ranges
                .get(t)
                .with_context(|| format!("no calibration range for {t}"))?;
            Ok((t.as_str(), ActivationParams::for_range(*lo, *hi)))
        })
        .collect::<Result<_>>()?;
    let inits: HashMap<&str, &pb::TensorProto> = g
        .initializer
        .iter()
        .filter_map(|t| Some((t.name.as_deref()?, t)))
        .collect();
    let mut new_inits: Vec<pb::TensorProto> = Vec::new();
    for t in &plan.observed {
        let p = params[t.as_str()];
        new_inits.push(tensor(
            format!("{t}.scale"),
            vec![],
            DataType::Float,
            p.scale.to_le_bytes().to_vec(),
        ));
        new_inits.push(tensor(
            format!("{t}.zero_point"),
            vec![],
            DataType::Uint8,
            vec![p.zero_point],
        ));
    }
    let mut nodes: Vec<pb::NodeProto> = Vec::new();
    // Q -> DQ of a quantized tensor `t`, with its root's parameters.
    let qdq = |t: &str, nodes: &mut Vec<pb::NodeProto>| {
        if let Some(root) = plan.root(t) {
            let (s, z) = (format!("{root}.scale"), format!("{root}.zero_point"));
            let q = format!("{t}.q");
            nodes.push(qdq_node(
                "QuantizeLinear",
                format!("{t}/Quantize"),
                [t, &s, &z],
                q.clone(),
                None,
            ));
            nodes.push(qdq_node(
                "DequantizeLinear",
                format!("{t}/Dequantize"),
                [&q, &s, &z],
                dq_name(t),
                None,
            ));
        }
    };
    let input = &plan.observed[0];
    qdq(input, &mut nodes);
    // Output renaming of producers whose activation was folded.
    let renamed: HashMap<usize, String> = plan
        .folded
        .iter()
        .map(|(&act, &p)| (p, g.node[act].output[0].clone()))
        .collect();
    for (i, n) in g.node.iter().enumerate() {
        if plan.folded.contains_key(&i) {
            continue;
        }
        let mut node = n.clone();
        for x in node.input.iter_mut() {
            if plan.root(x).is_some() {
                *x = dq_name(x);
            }
        }
        // Integer kernels: weights per output channel, bias in int32.
        let weighted = match op(n) {
            "Conv" => true,
            "Gemm" => n
                .attribute
                .iter()
                .any(|a| a.name.as_deref() == Some("transB") && a.i == Some(1)),
            _ => false,
        };
        let input_root = n.input.first().and_then(|x| plan.root(x));
        if let (true, Some(root)) = (weighted, input_root) {
            let w_name = &n.input[1];
            let w = inits
                .get(w_name.as_str())
                .and_then(|t| Some((t, f32_values(t)?)))
                .with_context(|| {
                    format!(
                        "{}: weight {w_name} is not a float initializer",
                        n.name.as_deref().unwrap_or("")
                    )
                })?;
            let channels = w.0.dims[0] as usize;
            // Depthwise convolutions (one input channel per output channel) keep all 8 bits:
            // runtimes compute them outside the saturating multiply-add (see WEIGHT_QMAX).
            let qmax = if w.0.dims.get(1) == Some(&1) && op(n) == "Conv" {
                DEPTHWISE_WEIGHT_QMAX
            } else {
                WEIGHT_QMAX
            };
            let (q, scales) = quantize_weights(&w.1, channels, qmax);
            node.input[1] = per_channel_constant(
                w_name,
                w.0.dims.clone(),
                DataType::Int8,
                q.iter().map(|v| *v as u8).collect(),
                &scales,
                &mut new_inits,
                &mut nodes,
            );
            if let Some(b_name) = n.input.get(2) {
                let mut b = inits
                    .get(b_name.as_str())
                    .and_then(|t| f32_values(t))
                    .with_context(|| {
                        format!(
                            "{}: bias {b_name} is not a float initializer",
                            n.name.as_deref().unwrap_or("")
                        )
                    })?;
                let means = channel_means.and_then(|m| m.get(&n.input[0]));
                if let (Some(mu), true) = (means, op(n) == "Conv") {
                    correct_bias(&mut b, &w.1, &q, &scales, &w.0.dims, mu);
                }
                let (qb, bs) = quantize_bias(&b, params[root].scale, &scales);
                node.input[2] = per_channel_constant(
                    b_name,
                    vec![channels as i64],
                    DataType::Int32,
                    qb.iter().flat_map(|v| v.to_le_bytes()).collect(),
                    &bs,
                    &mut new_inits,
                    &mut nodes,
                );
            }
        }
        if let Some(out) = renamed.get(&i) {
            node.output = vec![out.clone()];
        }
        let outputs = node.output.clone();
        nodes.push(node);
        for o in &outputs {
            qdq(o, &mut nodes);
        }
    }
    // Keep the initializers something still reads (the float weights and ReLU6 bounds go).
    let used: HashSet<&str> = nodes
        .iter()
        .flat_map(|n| n.input.iter().map(String::as_str))
        .collect();
    let mut initializer: Vec<pb::TensorProto> = g
        .initializer
        .iter()
        .filter(|t| t.name.as_deref().is_some_and(|n| used.contains(n)))
        .cloned()
        .collect();
    initializer.extend(
        new_inits
            .into_iter()
            .filter(|t| t.name.as_deref().is_some_and(|n| used.contains(n))),
    );
    let mut out = model.clone();
    let og = out.graph.as_mut().expect("checked above");
    og.node = nodes;
    og.initializer = initializer;
    og.doc_string = Some(format!(
        "{} ; int8 QDQ: uint8 activations (per tensor), int8 weights (per output channel), int32 biases",
        g.doc_string.as_deref().unwrap_or("")
    ));
    Ok(out)
}

/// `[lo, hi]` of each observed tensor.
pub type Ranges = HashMap<String, (f32, f32)>;

/// Per-tensor statistics of the calibration activations.
struct Observations {
    min: Vec<f32>,
    max: Vec<f32>,
    /// Counts over `[lo, hi]` (the min-max range widened to 0), `BINS` bins per tensor.
    hist: Vec<Vec<u64>>,
}

impl Observations {
    fn bounds(&self, k: usize) -> (f32, f32) {
        (self.min[k].min(0.0), self.max[k].max(0.0))
    }

    fn minmax(&self, k: usize) -> (f32, f32) {
        (self.min[k], self.max[k])
    }

    /// The `100 - PERCENTILE` and `PERCENTILE` percentiles, at bin edges (outward).
    fn percentile(&self, k: usize) -> (f32, f32) {
        let (lo, hi) = self.bounds(k);
        let h = &self.hist[k];
        let total: u64 = h.iter().sum();
        if total == 0 || hi <= lo {
            return (lo, hi);
        }
        let width = (hi - lo) / BINS as f32;
        let tail = ((1.0 - PERCENTILE / 100.0) * total as f64).floor() as u64;
        let (mut seen, mut low_bin) = (0u64, 0usize);
        for (b, c) in h.iter().enumerate() {
            seen += c;
            if seen > tail {
                low_bin = b;
                break;
            }
        }
        let (mut seen, mut high_bin) = (0u64, BINS - 1);
        for (b, c) in h.iter().enumerate().rev() {
            seen += c;
            if seen > tail {
                high_bin = b;
                break;
            }
        }
        (
            lo + width * low_bin as f32,
            lo + width * (high_bin + 1) as f32,
        )
    }

    fn add_to_histogram(&mut self, k: usize, values: &[f32]) {
        let (lo, hi) = self.bounds(k);
        if hi <= lo {
            return;
        }
        let per = BINS as f32 / (hi - lo);
        let h = &mut self.hist[k];
        for v in values {
            let b = ((v - lo) * per) as usize;
            h[b.min(BINS - 1)] += 1;
        }
    }
}

/// What the float32 graph did on the calibration images.
pub struct Calibration {
    /// Activation range of every observed tensor, for each method.
    pub ranges: HashMap<RangeMethod, Ranges>,
    /// Mean of every channel of each convolution's input (for bias correction).
    pub channel_means: HashMap<String, Vec<f32>>,
}

/// Activation ranges of every observed tensor of `model` on `images` (normalised NCHW crops
/// of side `crop`), for each method, and the channel means of every convolution's input: one
/// pass for min, max and means, one for the histograms.
// Long: two passes over the calibration crops (min, max and channel means; then histograms)
// through one engine plan and one set of per-tensor accumulators; the passes read best side by
// side.
pub fn calibrate(
    model: &pb::ModelProto,
    plan: &Plan,
    images: &[f32],
    crop: usize,
    threads: usize,
) -> Result<Calibration> {
    let per = 3 * crop * crop;
    let count = images.len() / per;
    if count == 0 {
        bail!("no calibration images");
    }
    // The graph input is read from the images themselves; the rest from the graph.
    let mut inner: Vec<String> = plan.observed[1..].to_vec();
    let mut conv_inputs: Vec<String> = Vec::new();
    for node in &graph(model)?.node {
        if op(node) == "Conv" && !conv_inputs.contains(&node.input[0]) {
            conv_inputs.push(node.input[0].clone());
        }
    }
    for t in &conv_inputs {
        if !plan.observed.contains(t) {
            inner.push(t.clone());
        }
    }
    let mut tract = engine::tract::TractEngine::from_bytes_with_outputs(
        "the float32 graph",
        &model.encode_to_vec(),
        &inner,
        threads,
    )?;
    // Every tensor read back, in order: the input, then `inner`.
    let names: Vec<&String> = std::iter::once(&plan.observed[0]).chain(&inner).collect();
    let mut sums: HashMap<String, Vec<f64>> = HashMap::new();
    let n = plan.observed.len();
    let mut obs = Observations {
        min: vec![f32::INFINITY; n],
        max: vec![f32::NEG_INFINITY; n],
        hist: vec![vec![0; BINS]; n],
    };
    let bar = crate::util::progress((2 * count) as u64, "int8 calibration");
    for pass in 0..2 {
        for image in images.chunks(per) {
            let outputs = engine::Engine::run(&mut tract, image, [1, 3, crop, crop])?;
            let all: Vec<(usize, &[f32])> = std::iter::once((3, image))
                .chain(
                    outputs
                        .iter()
                        .map(|(shape, v)| (shape.get(1).copied().unwrap_or(1), v.as_slice())),
                )
                .collect();
            if pass == 0 {
                for (name, (channels, values)) in names.iter().zip(&all) {
                    if conv_inputs.contains(name) {
                        let per_channel = values.len() / channels.max(&1);
                        let s = sums
                            .entry(name.to_string())
                            .or_insert_with(|| vec![0.0; *channels]);
                        for (c, chunk) in values.chunks(per_channel.max(1)).enumerate() {
                            s[c] +=
                                chunk.iter().map(|v| *v as f64).sum::<f64>() / per_channel as f64;
                        }
                    }
                }
            }
            for (k, &(_, values)) in all.iter().enumerate().take(n) {
                if pass == 0 {
                    for &v in values {
                        if !v.is_finite() {
                            bail!(
                                "the float32 model computes a non-finite value in {} on a \
                                 calibration image: it cannot be quantized",
                                plan.observed[k]
                            );
                        }
                        obs.min[k] = obs.min[k].min(v);
                        obs.max[k] = obs.max[k].max(v);
                    }
                } else {
                    obs.add_to_histogram(k, values);
                }
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let channel_means = sums
        .into_iter()
        .map(|(k, v)| {
            (
                k,
                v.into_iter().map(|s| (s / count as f64) as f32).collect(),
            )
        })
        .collect();
    let ranges = RangeMethod::ALL
        .iter()
        .map(|&m| {
            let ranges = plan
                .observed
                .iter()
                .enumerate()
                .map(|(k, t)| {
                    let r = match m {
                        RangeMethod::MinMax => obs.minmax(k),
                        RangeMethod::Percentile => obs.percentile(k),
                    };
                    (t.clone(), r)
                })
                .collect();
            (m, ranges)
        })
        .collect();
    Ok(Calibration {
        ranges,
        channel_means,
    })
}

/// `count` indices spread evenly over `0..len` (all of them when `count >= len`).
pub fn spread(len: usize, count: usize) -> Vec<usize> {
    if count >= len {
        return (0..len).collect();
    }
    (0..count).map(|k| k * len / count).collect()
}

/// Normalised centre crops (the deployment transform) of `idx` of `data`.
fn crops(data: &SplitImages, idx: &[usize], pre: &Preprocess) -> Vec<f32> {
    let mut out = Vec::with_capacity(idx.len() * 3 * (pre.crop * pre.crop) as usize);
    for chunk in idx.chunks(64) {
        out.extend(eval_batch(data, chunk, pre).images);
    }
    out
}

/// Logits `[N, C]` of `images` through a deployment engine.
fn engine_logits(e: &mut dyn engine::Engine, images: &[f32], crop: usize) -> Result<Vec<f32>> {
    let per = 3 * crop * crop;
    let mut logits = Vec::new();
    for chunk in images.chunks(8 * per) {
        let n = chunk.len() / per;
        let out = e.run(chunk, [n, 3, crop, crop])?;
        logits.extend_from_slice(&out.first().context("the model has no output")?.1);
    }
    Ok(logits)
}

/// Accuracy of the model in `path` on one split, and its logits.
#[derive(Debug, Clone, Serialize)]
pub struct Scores {
    pub accuracy: f64,
    /// Whether each image was classified correctly.
    #[serde(skip)]
    pub correct: Vec<bool>,
    #[serde(skip)]
    pub logits: Vec<f32>,
    /// The engine that ran (`auto` resolves to one).
    pub engine: &'static str,
}

fn score(
    kind: EngineKind,
    path: &Path,
    images: &[f32],
    labels: &[usize],
    crop: usize,
    classes: usize,
) -> Result<Scores> {
    let mut e = engine::load(kind, path, 1)?;
    let engine = e.name();
    let logits = engine_logits(e.as_mut(), images, crop)?;
    let correct: Vec<bool> = logits
        .chunks(classes)
        .zip(labels)
        .map(|(l, &y)| crate::util::stats::argmax(l) == y)
        .collect();
    Ok(Scores {
        accuracy: correct.iter().filter(|c| **c).count() as f64 / labels.len().max(1) as f64,
        correct,
        logits,
        engine,
    })
}

/// One range method's int8 model, measured.
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    pub method: RangeMethod,
    /// Accuracy on the selection images (the validation split, else the calibration crops;
    /// the method is chosen on this accuracy with a validation split, else on agreement).
    pub selection_accuracy: f64,
    /// Share of selection images where int8 and float32 predict the same class.
    pub selection_agreement: f64,
    /// Mean |int8 logit - float32 logit| on the selection images.
    pub selection_logit_error: f64,
    /// Accuracy on the test split (reported, never used to choose).
    pub test_accuracy: Option<f64>,
}

/// float32 against the chosen int8 model on the test split, through the same engine.
#[derive(Debug, Clone, Serialize)]
pub struct TestComparison {
    pub images: usize,
    pub fp32_accuracy: f64,
    pub int8_accuracy: f64,
    /// Share of test images where both predict the same class.
    pub agreement: f64,
    /// Largest |int8 logit - float32 logit| over the test split.
    pub max_logit_diff: f32,
    /// 95 % interval of int8 minus float32 accuracy, paired over the test images (normal
    /// approximation of the mean per-image difference).
    pub accuracy_diff_ci95: (f64, f64),
}

/// 95 % interval of the mean of `b - a` (per-image correctness, 0 or 1), paired.
pub fn paired_diff_ci95(a: &[bool], b: &[bool]) -> (f64, f64) {
    let n = a.len().min(b.len()) as f64;
    if n < 2.0 {
        return (f64::NAN, f64::NAN);
    }
    let d: Vec<f64> = a
        .iter()
        .zip(b)
        .map(|(x, y)| *y as u8 as f64 - *x as u8 as f64)
        .collect();
    let mean = d.iter().sum::<f64>() / n;
    let var = d.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    let half = 1.96 * (var / n).sqrt();
    (mean - half, mean + half)
}

/// What `export --int8` made and measured (also written to `RUN/int8.json`).
#[derive(Debug, Clone, Serialize)]
pub struct Int8Report {
    pub path: PathBuf,
    pub fp32_bytes: u64,
    pub int8_bytes: u64,
    /// Engine both models were measured with (`ort` when ONNX Runtime is present, else tract).
    pub engine: String,
    pub method: RangeMethod,
    pub calibration_split: String,
    pub calibration_images: usize,
    /// The split the method was chosen on.
    pub selected_on: String,
    pub candidates: Vec<Candidate>,
    pub test: Option<TestComparison>,
    pub quantized_tensors: usize,
}

/// Report file in the run directory.
pub const REPORT_FILE: &str = "int8.json";

/// Where the int8 model goes: `target.onnx` -> `target.int8.onnx`.
pub fn int8_path(fp32: &Path) -> PathBuf {
    let stem = fp32
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "target".into());
    fp32.with_file_name(format!("{stem}.int8.onnx"))
}

/// Options of `export --int8`.
#[derive(Debug, Clone, Copy)]
pub struct Int8Options {
    /// `None`: try every method and keep the more accurate one.
    pub method: Option<RangeMethod>,
    pub split: Split,
    pub images: usize,
    /// Engine that measures both models; `None`: `auto` (ONNX Runtime when present, else tract).
    pub engine: Option<EngineKind>,
}

/// Mean absolute difference of two logit matrices.
fn mean_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() as f64)
        .sum::<f64>()
        / a.len().max(1) as f64
}

impl TestComparison {
    /// The float32 and int8 models' scores on the same test images, side by side.
    fn of(f: &Scores, q: &Scores, classes: usize) -> Self {
        Self {
            images: f.correct.len(),
            fp32_accuracy: f.accuracy,
            int8_accuracy: q.accuracy,
            agreement: agreement(&q.logits, &f.logits, classes),
            max_logit_diff: q
                .logits
                .iter()
                .zip(&f.logits)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs())),
            accuracy_diff_ci95: paired_diff_ci95(&f.correct, &q.correct),
        }
    }
}

impl Candidate {
    /// What decides between range methods, larger is better. Held-out labels decide when
    /// there are some; on the calibration crops (training labels, some of them wrong)
    /// fidelity to the float32 model decides: the same class, then the smaller logit error.
    fn rank_key(&self, selected_on: Split) -> (f64, f64, f64) {
        match selected_on {
            Split::Val => (
                self.selection_accuracy,
                self.selection_agreement,
                -self.selection_logit_error,
            ),
            _ => (
                self.selection_agreement,
                -self.selection_logit_error,
                self.selection_accuracy,
            ),
        }
    }
}

/// The crops an int8 export works on: those that set the activation ranges, those that choose
/// the range method (held-out `val` labels when the dataset has them, else the calibration
/// crops with their training labels), and the test split's.
struct Int8Images {
    calib_idx: Vec<usize>,
    calib_images: Vec<f32>,
    selected_on: Split,
    /// `None`: the calibration crops.
    sel_images: Option<Vec<f32>>,
    sel_labels: Vec<usize>,
    test_images: Vec<f32>,
    test_labels: Vec<usize>,
}

fn int8_images(ds: &Dataset, pre: &Preprocess, opts: &Int8Options) -> Result<Int8Images> {
    let calib = SplitImages::load(ds, opts.split, pre)?;
    let calib_idx = spread(calib.len(), opts.images.max(1));
    let calib_images = crops(&calib, &calib_idx, pre);
    // Selection images: held-out labels when there are some, else the calibration crops.
    let has = |s: Split| ds.split(s).next().is_some();
    let val = if has(Split::Val) {
        Some(SplitImages::load(ds, Split::Val, pre)?)
    } else {
        None
    };
    let (selected_on, sel_images, sel_labels) = if let Some(val) = val.filter(|v| !v.is_empty()) {
        let idx: Vec<usize> = (0..val.len()).collect();
        (Split::Val, Some(crops(&val, &idx, pre)), val.labels.clone())
    } else {
        let labels = calib_idx
            .iter()
            .map(|&i| calib.labels[i])
            .collect::<Vec<_>>();
        (opts.split, None, labels)
    };
    let (test_images, test_labels) = if has(Split::Test) {
        let test = SplitImages::load(ds, Split::Test, pre)?;
        let idx: Vec<usize> = (0..test.len()).collect();
        (crops(&test, &idx, pre), test.labels.clone())
    } else {
        (Vec::new(), Vec::new())
    };
    Ok(Int8Images {
        calib_idx,
        calib_images,
        selected_on,
        sel_images,
        sel_labels,
        test_images,
        test_labels,
    })
}

/// Quantizes the float32 export `fp32` (written at `fp32_path`) of a run, writes the int8
/// model next to it and measures both.
pub fn export_int8(
    run: &Path,
    ds: &Dataset,
    pre: &Preprocess,
    fp32: &pb::ModelProto,
    fp32_path: &Path,
    card: &ModelCard,
    opts: Int8Options,
) -> Result<Int8Report> {
    if opts.split == Split::Test {
        bail!("--calibration test is refused: the test split is where the int8 model is measured");
    }
    let crop = pre.crop as usize;
    let classes = card.classes.len();
    let threads = engine::cores();
    if ds.split(opts.split).next().is_none() {
        bail!(
            "the dataset has no {} images to calibrate the int8 model on",
            opts.split
        );
    }
    let im = int8_images(ds, pre, &opts)?;
    let plan = plan(fp32)?;
    let calibration = calibrate(fp32, &plan, &im.calib_images, crop, threads)?;
    let means = Some(&calibration.channel_means);
    let sel_images = im.sel_images.as_deref().unwrap_or(&im.calib_images);
    // Both files through the same engine: ONNX Runtime when present (what int8 is for).
    let kind = opts.engine.unwrap_or(EngineKind::Auto);
    let fp32_sel = score(kind, fp32_path, sel_images, &im.sel_labels, crop, classes)?;
    // A model's scores on the test split, when the dataset has one.
    let test = |path: &Path| {
        let (images, labels) = (&im.test_images, &im.test_labels);
        (!labels.is_empty())
            .then(|| score(kind, path, images, labels, crop, classes))
            .transpose()
    };
    let fp32_test = test(fp32_path)?;
    let out = int8_path(fp32_path);
    let methods: Vec<RangeMethod> = opts.method.map_or(RangeMethod::ALL.to_vec(), |m| vec![m]);
    let mut candidates = Vec::new();
    let mut best: Option<(Candidate, pb::ModelProto, Option<Scores>)> = None;
    for m in methods {
        let mut q = quantize(fp32, &plan, &calibration.ranges[&m], means)?;
        let int8_card = ModelCard {
            int8: Some(Int8Card {
                method: m.label().into(),
                calibration_dataset: card.dataset.clone(),
                calibration_split: opts.split.to_string(),
                calibration_images: im.calib_idx.len(),
            }),
            ..card.clone()
        };
        q.metadata_props = int8_card.to_metadata_props();
        crate::export::onnx::write(&q, &out)?;
        let sel = score(kind, &out, sel_images, &im.sel_labels, crop, classes)
            .with_context(|| format!("running the int8 model with {kind:?}"))?;
        let agreement = agreement(&sel.logits, &fp32_sel.logits, classes);
        let test_scores = test(&out)?;
        let c = Candidate {
            method: m,
            selection_accuracy: sel.accuracy,
            selection_agreement: agreement,
            selection_logit_error: mean_abs_diff(&sel.logits, &fp32_sel.logits),
            test_accuracy: test_scores.as_ref().map(|s| s.accuracy),
        };
        candidates.push(c.clone());
        let key = |c: &Candidate| c.rank_key(im.selected_on);
        let better = best.as_ref().is_none_or(|(b, ..)| {
            key(&c).partial_cmp(&key(b)) == Some(std::cmp::Ordering::Greater)
        });
        if better {
            best = Some((c, q, test_scores));
        }
    }
    let (chosen, model, int8_test) = best.context("no range method")?;
    crate::export::onnx::write(&model, &out)?;
    let test_cmp = match (fp32_test, int8_test) {
        (Some(f), Some(q)) => Some(TestComparison::of(&f, &q, classes)),
        _ => None,
    };
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let report = Int8Report {
        path: out.clone(),
        fp32_bytes: size(fp32_path),
        int8_bytes: size(&out),
        engine: fp32_sel.engine.to_string(),
        method: chosen.method,
        calibration_split: opts.split.to_string(),
        calibration_images: im.calib_idx.len(),
        selected_on: im.selected_on.to_string(),
        candidates,
        test: test_cmp,
        quantized_tensors: plan.observed.len(),
    };
    crate::util::write_atomic(
        &run.join(REPORT_FILE),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    Ok(report)
}

/// Share of rows where both logit matrices pick the same class.
fn agreement(a: &[f32], b: &[f32], classes: usize) -> f64 {
    let rows = a.len() / classes.max(1);
    let same = a
        .chunks(classes)
        .zip(b.chunks(classes))
        .filter(|(x, y)| crate::util::stats::argmax(x) == crate::util::stats::argmax(y))
        .count();
    same as f64 / rows.max(1) as f64
}

impl std::fmt::Display for Int8Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mb = |b: u64| b as f64 / 1e6;
        writeln!(
            f,
            "int8 model: {} ({})",
            self.path.display(),
            self.method.label()
        )?;
        writeln!(
            f,
            "  calibration: {} {} crops; method chosen on {} ({})",
            self.calibration_images,
            self.calibration_split,
            self.selected_on,
            if self.selected_on == "val" {
                "accuracy, then agreement with float32"
            } else {
                "agreement with float32, then logit error"
            }
        )?;
        for c in &self.candidates {
            write!(
                f,
                "    {:<18} {}: accuracy {:.2} %, agrees with float32 on {:.2} %, mean logit error {:.4}",
                c.method.label(),
                self.selected_on,
                100.0 * c.selection_accuracy,
                100.0 * c.selection_agreement,
                c.selection_logit_error
            )?;
            if let Some(t) = c.test_accuracy {
                write!(f, "; test {:.2} %", 100.0 * t)?;
            }
            writeln!(f)?;
        }
        writeln!(
            f,
            "  {:<24} {:>10} {:>10}",
            format!("measured with {}", self.engine),
            "float32",
            "int8"
        )?;
        writeln!(
            f,
            "  {:<24} {:>9.2}M {:>9.2}M",
            "file size (MB)",
            mb(self.fp32_bytes),
            mb(self.int8_bytes)
        )?;
        if let Some(t) = &self.test {
            writeln!(
                f,
                "  {:<24} {:>9.2}% {:>9.2}%",
                format!("test accuracy ({} images)", t.images),
                100.0 * t.fp32_accuracy,
                100.0 * t.int8_accuracy
            )?;
            writeln!(
                f,
                "  int8 - float32: {:+.2} points (95 % interval {:+.2} to {:+.2}, paired)",
                100.0 * (t.int8_accuracy - t.fp32_accuracy),
                100.0 * t.accuracy_diff_ci95.0,
                100.0 * t.accuracy_diff_ci95.1
            )?;
            write!(
                f,
                "  same class on {:.2} % of test images; largest logit difference {:.4}",
                100.0 * t.agreement,
                t.max_logit_diff
            )?;
        } else {
            write!(
                f,
                "  (the dataset has no test split to compare accuracies on)"
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activation_params_cover_the_range_and_zero() {
        // [-1, 3]: scale 4/255, zero point round(1 / (4/255)) = round(63.75) = 64.
        let p = ActivationParams::for_range(-1.0, 3.0);
        assert!((p.scale - 4.0 / 255.0).abs() < 1e-9);
        assert_eq!(p.zero_point, 64);
        assert_eq!(p.round_trip(0.0), 0.0);
        // A ReLU range: zero point 0, values below clamp to 0, above to the top.
        let r = ActivationParams::for_range(0.0, 2.55);
        assert_eq!(r.zero_point, 0);
        assert_eq!(r.round_trip(-5.0), 0.0);
        assert!((r.round_trip(9.0) - 2.55).abs() < 1e-6);
        assert!((r.round_trip(1.004) - 1.0).abs() < 1e-6);
        // Positive-only ranges are widened to 0 (0 stays exact).
        assert_eq!(ActivationParams::for_range(2.0, 4.0).zero_point, 0);
    }

    #[test]
    fn constant_calibration_does_not_divide_by_zero() {
        for (lo, hi) in [(0.0, 0.0), (-0.0, 0.0)] {
            let p = ActivationParams::for_range(lo, hi);
            assert_eq!((p.scale, p.zero_point), (1.0, 0));
            assert_eq!(p.round_trip(0.0), 0.0);
        }
        let (q, s) = quantize_weights(&[0.0; 6], 2, 127.0);
        assert_eq!((q, s), (vec![0; 6], vec![1.0, 1.0]));
        let (qb, _) = quantize_bias(&[0.5, 0.0], 1.0, &[1.0, 1.0]);
        assert_eq!(qb, vec![1, 0]);
    }

    #[test]
    fn weights_quantize_per_channel_symmetrically() {
        // Channel 0: max |w| 1.27 -> scale 0.01; channel 1: max 254 -> scale 2.
        let w = [1.27, -0.5, 0.004, 254.0, -127.0, 3.0];
        let (q, s) = quantize_weights(&w, 2, 127.0);
        assert!(
            (s[0] - 0.01).abs() < 1e-7 && (s[1] - 2.0).abs() < 1e-6,
            "{s:?}"
        );
        assert_eq!(q, vec![127, -50, 0, 127, -64, 2]);
        // Bias: scale = input scale x weight scale.
        let (qb, bs) = quantize_bias(&[0.3, -4.0], 0.5, &s);
        assert!((bs[0] - 0.005).abs() < 1e-9 && (bs[1] - 1.0).abs() < 1e-6);
        assert_eq!(qb, vec![60, -4]);
    }

    #[test]
    fn percentile_clips_rare_outliers() {
        // 100,000 values in [0, 1) and one at 1,000: min-max keeps 1,000, the 99.99th
        // percentile lands near 1.
        let mut values: Vec<f32> = (0..100_000).map(|i| i as f32 / 100_000.0).collect();
        values.push(1000.0);
        let mut obs = Observations {
            min: vec![0.0],
            max: vec![1000.0],
            hist: vec![vec![0; BINS]],
        };
        obs.add_to_histogram(0, &values);
        assert_eq!(obs.minmax(0), (0.0, 1000.0));
        let (lo, hi) = obs.percentile(0);
        assert_eq!(lo, 0.0);
        // One bin is 1000 / 2048 wide: the top edge of the bin holding 0.9999.
        assert!(hi > 0.99 && hi < 1.0 + 1000.0 / 2048.0, "{hi}");
    }

    #[test]
    fn paired_interval_matches_a_hand_computation() {
        // Differences over 4 images: +1, 0, 0, -1 -> mean 0, sample variance 2/3, half width
        // 1.96 * sqrt(2/3 / 4) = 0.8002.
        let (lo, hi) = paired_diff_ci95(&[false, true, false, true], &[true, true, false, false]);
        assert!(
            (lo + 0.800_166).abs() < 1e-5 && (hi - 0.800_166).abs() < 1e-5,
            "{lo} {hi}"
        );
    }

    #[test]
    fn bias_correction_removes_the_expected_rounding_shift() {
        // Dense, 1 output and 2 input channels, 1x1: w = [0.5, 0.3] stored as q = [6, 2] x 0.1,
        // so rounding adds +0.1 and -0.1; with input means [2, 4] the output shifts by
        // 0.1 * 2 - 0.1 * 4 = -0.2, which the bias takes back.
        let mut b = [1.0f32];
        correct_bias(
            &mut b,
            &[0.5, 0.3],
            &[6, 2],
            &[0.1],
            &[1, 2, 1, 1],
            &[2.0, 4.0],
        );
        assert!((b[0] - 1.2).abs() < 1e-6, "{b:?}");
        // Depthwise, 2 channels: each output sees only its own input's mean.
        let mut b = [0.0f32, 0.0];
        correct_bias(
            &mut b,
            &[1.0, 1.0],
            &[1, 1],
            &[1.05, 0.9],
            &[2, 1, 1, 1],
            &[1.0, 3.0],
        );
        assert!(
            (b[0] + 0.05).abs() < 1e-6 && (b[1] - 0.3).abs() < 1e-6,
            "{b:?}"
        );
    }

    #[test]
    fn spread_picks_evenly() {
        assert_eq!(spread(10, 5), vec![0, 2, 4, 6, 8]);
        assert_eq!(spread(3, 5), vec![0, 1, 2]);
    }
}
