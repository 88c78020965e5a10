//! Our ONNX writer: the deployed part of the network (shared trunk + target branch) as a
//! standard ONNX graph, built with our own small graph builder over the vendored ONNX
//! protobuf types (libtorch has no ONNX exporter).
//!
//! BatchNorm is folded into the preceding convolution; the batch dimension is symbolic (`N`);
//! opset 17, IR version 8 (read by tract and ONNX Runtime). Outputs: `logits` `[N, C]` and
//! `probabilities` = softmax(logits / T) `[N, C]`, T the card's calibration temperature (1 unless
//! `export --calibrate`). The model card goes into `metadata_props`.
//! The auxiliary branches and the uncertainty module are simply never visited.

use crate::model::face_resnet;
use crate::model::mobilenet_v2::{self, InvertedResidual};
use crate::model::resnet::{BasicBlock, Block, Bottleneck, Ibn, Layer, Norm};
use crate::model::shufflenet_v1;
use crate::model::{Branch, Conv, MultiBranchNet, Stage, Trunk, BN_EPS};
use anyhow::{bail, Context, Result};
use dmue_deploy::model_card::{ModelCard, INPUT_NAME, LOGITS_NAME, PROBABILITIES_NAME};
use dmue_deploy::onnx::pb;
use pb::attribute_proto::AttributeType;
use prost::Message;
use std::path::Path;
use tch::{nn, Kind, Tensor};

pub const OPSET: i64 = 17;
pub const IR_VERSION: i64 = 8;

/// Size of what was exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ExportStats {
    /// Parameters stored in the file (BatchNorm folded into convolution weights and biases).
    pub parameters: u64,
    /// Multiply-accumulates of one image at the card's input size (convolutions + classifier).
    pub macs: u64,
    pub nodes: usize,
}

/// Accumulates nodes and initializers; tracks `(C, H, W)` of each value to count MACs.
struct Graph {
    nodes: Vec<pb::NodeProto>,
    initializers: Vec<pb::TensorProto>,
    shapes: std::collections::HashMap<String, [i64; 3]>,
    next: usize,
    macs: u64,
    parameters: u64,
}

fn ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn int(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

/// `[N, d...]` float tensor type with a symbolic batch dimension.
fn value_info(name: &str, dims: &[i64]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value as Dim, Dimension};
    let mut dim = vec![Dimension {
        value: Some(Dim::DimParam("N".into())),
        ..Default::default()
    }];
    dim.extend(dims.iter().map(|&d| Dimension {
        value: Some(Dim::DimValue(d)),
        ..Default::default()
    }));
    pb::ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: Some(pb::tensor_proto::DataType::Float as i32),
                shape: Some(pb::TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl Graph {
    fn new(input: &str, chw: [i64; 3]) -> Self {
        let mut shapes = std::collections::HashMap::new();
        shapes.insert(input.to_string(), chw);
        Self {
            nodes: Vec::new(),
            initializers: Vec::new(),
            shapes,
            next: 0,
            macs: 0,
            parameters: 0,
        }
    }

    fn shape(&self, v: &str) -> [i64; 3] {
        self.shapes[v]
    }

    fn initializer(&mut self, name: &str, t: &Tensor) -> Result<String> {
        let t = t
            .to_kind(Kind::Float)
            .to_device(tch::Device::Cpu)
            .contiguous();
        let values = Vec::<f32>::try_from(&t.flatten(0, -1)).context("tensor to f32")?;
        self.parameters += values.len() as u64;
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers.push(pb::TensorProto {
            name: Some(name.into()),
            dims: t.size(),
            data_type: Some(pb::tensor_proto::DataType::Float as i32),
            raw_data: Some(raw),
            ..Default::default()
        });
        Ok(name.to_string())
    }

    fn node(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        attrs: Vec<pb::AttributeProto>,
        out_chw: [i64; 3],
    ) -> String {
        self.next += 1;
        let out = format!("{name}_{op}_{}", self.next).to_lowercase();
        self.nodes.push(pb::NodeProto {
            name: Some(format!("{name}/{op}")),
            op_type: Some(op.into()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            attribute: attrs,
            ..Default::default()
        });
        self.shapes.insert(out.clone(), out_chw);
        out
    }

    /// BatchNorm as a per-channel affine map: `scale = g / sqrt(v + eps)`,
    /// `shift = beta - mean * scale` (f64).
    fn bn_affine(bn: &nn::BatchNorm) -> Result<(Tensor, Tensor)> {
        let gamma = bn
            .ws
            .as_ref()
            .context("BatchNorm without weight")?
            .to_kind(Kind::Double);
        let beta = bn
            .bs
            .as_ref()
            .context("BatchNorm without bias")?
            .to_kind(Kind::Double);
        let scale = gamma / (bn.running_var.to_kind(Kind::Double) + BN_EPS).sqrt();
        let shift = beta - bn.running_mean.to_kind(Kind::Double) * &scale;
        Ok((scale, shift))
    }

    /// Convolution with BatchNorm folded in: `W' = W * g / sqrt(v + eps)` per output channel,
    /// `b' = beta - mean * g / sqrt(v + eps)` (computed in f64). Stride, padding and groups
    /// come from the convolution itself.
    fn conv_bn(&mut self, x: &str, conv: &Conv, bn: &nn::BatchNorm, name: &str) -> Result<String> {
        let (scale, shift) = Self::bn_affine(bn)?;
        self.conv_affine(x, conv, &scale, &shift, name)
    }

    /// Convolution followed by a per-output-channel affine map, folded into its weights.
    fn conv_affine(
        &mut self,
        x: &str,
        conv: &Conv,
        scale: &Tensor,
        shift: &Tensor,
        name: &str,
    ) -> Result<String> {
        let w = conv.inner.ws.to_kind(Kind::Double);
        let (cout, cin_per_group, k) = (w.size()[0], w.size()[1], w.size()[2]);
        let (stride, pad, groups) = (conv.stride, conv.padding, conv.groups);
        let folded_w = &w * scale.view([cout, 1, 1, 1]);
        let mut folded_b = shift.copy();
        if let Some(b) = &conv.inner.bs {
            folded_b += b.to_kind(Kind::Double) * scale;
        }
        let wn = self.initializer(&format!("{name}.weight"), &folded_w)?;
        let bn_ = self.initializer(&format!("{name}.bias"), &folded_b)?;
        let [c, h, wd] = self.shape(x);
        if c != cin_per_group * groups {
            bail!(
                "{name}: input has {c} channels, the convolution expects {}",
                cin_per_group * groups
            );
        }
        let (ho, wo) = (
            (h + 2 * pad - k) / stride + 1,
            (wd + 2 * pad - k) / stride + 1,
        );
        self.macs += (cout * cin_per_group * k * k * ho * wo) as u64;
        let attrs = vec![
            ints("kernel_shape", &[k, k]),
            ints("strides", &[stride, stride]),
            ints("pads", &[pad; 4]),
            ints("dilations", &[1, 1]),
            int("group", groups),
        ];
        Ok(self.node("Conv", name, &[x, &wn, &bn_], attrs, [cout, ho, wo]))
    }

    /// Convolution + IBN-a: the BatchNorm half folded into the convolution, the InstanceNorm
    /// half (which a per-channel affine map before it would not commute with, because of its
    /// epsilon) left as `Split -> InstanceNormalization -> Concat`.
    fn conv_ibn(&mut self, x: &str, conv: &Conv, ibn: &Ibn, name: &str) -> Result<String> {
        let (bs, bb) = Self::bn_affine(&ibn.bn)?;
        let ones = Tensor::ones([ibn.half], (Kind::Double, tch::Device::Cpu));
        let scale = Tensor::cat(&[ones.shallow_clone(), bs], 0);
        let shift = Tensor::cat(&[ones.zeros_like(), bb], 0);
        let y = self.conv_affine(x, conv, &scale, &shift, name)?;
        let [c, h, w] = self.shape(&y);
        let sizes = format!("{name}.split");
        self.int64_initializer(&sizes, &[ibn.half, c - ibn.half]);
        let (a, b) = (format!("{name}_in_part"), format!("{name}_bn_part"));
        self.nodes.push(pb::NodeProto {
            name: Some(format!("{name}/Split")),
            op_type: Some("Split".into()),
            input: vec![y, sizes],
            output: vec![a.clone(), b.clone()],
            attribute: vec![int("axis", 1)],
            ..Default::default()
        });
        self.shapes.insert(a.clone(), [ibn.half, h, w]);
        self.shapes.insert(b.clone(), [c - ibn.half, h, w]);
        let sc = self.initializer(&format!("{name}.IN.weight"), &ibn.in_weight)?;
        let bi = self.initializer(&format!("{name}.IN.bias"), &ibn.in_bias)?;
        let eps = pb::AttributeProto {
            name: Some("epsilon".into()),
            r#type: Some(AttributeType::Float as i32),
            f: Some(BN_EPS as f32),
            ..Default::default()
        };
        let a = self.node(
            "InstanceNormalization",
            name,
            &[&a, &sc, &bi],
            vec![eps],
            [ibn.half, h, w],
        );
        Ok(self.node("Concat", name, &[&a, &b], vec![int("axis", 1)], [c, h, w]))
    }

    /// An int64 constant (shapes and split sizes), not counted as a parameter.
    fn int64_initializer(&mut self, name: &str, values: &[i64]) {
        self.initializers.push(pb::TensorProto {
            name: Some(name.into()),
            dims: vec![values.len() as i64],
            data_type: Some(pb::tensor_proto::DataType::Int64 as i32),
            raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
            ..Default::default()
        });
    }

    fn conv_norm(&mut self, x: &str, conv: &Conv, norm: &Norm, name: &str) -> Result<String> {
        match norm {
            Norm::Bn(bn) => self.conv_bn(x, conv, bn, name),
            Norm::Ibn(ibn) => self.conv_ibn(x, conv, ibn, name),
        }
    }

    fn relu(&mut self, x: &str, name: &str) -> String {
        let s = self.shape(x);
        self.node("Relu", name, &[x], vec![], s)
    }

    /// ReLU6 as `Clip(x, 0, 6)` (opset 11+ takes the bounds as inputs: two scalar
    /// initializers shared by every Clip, not counted as parameters).
    fn relu6(&mut self, x: &str, name: &str) -> Result<String> {
        const BOUNDS: [&str; 2] = ["relu6.min", "relu6.max"];
        if !self
            .initializers
            .iter()
            .any(|t| t.name.as_deref() == Some(BOUNDS[0]))
        {
            self.initializer(BOUNDS[0], &Tensor::from(0f32))?;
            self.initializer(BOUNDS[1], &Tensor::from(6f32))?;
            self.parameters -= 2;
        }
        let s = self.shape(x);
        Ok(self.node("Clip", name, &[x, BOUNDS[0], BOUNDS[1]], vec![], s))
    }

    fn max_pool(&mut self, x: &str, (k, s, p): (i64, i64, i64), name: &str) -> String {
        let [c, h, w] = self.shape(x);
        let out = [c, (h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1];
        self.node(
            "MaxPool",
            name,
            &[x],
            vec![
                ints("kernel_shape", &[k, k]),
                ints("strides", &[s, s]),
                ints("pads", &[p; 4]),
            ],
            out,
        )
    }

    fn block(&mut self, x: &str, b: &Block, name: &str) -> Result<String> {
        match b {
            Block::Basic(b) => self.basic_block(x, b, name),
            Block::Bottleneck(b) => self.bottleneck(x, b, name),
        }
    }

    fn bottleneck(&mut self, x: &str, b: &Bottleneck, name: &str) -> Result<String> {
        let y = self.conv_norm(x, &b.conv1, &b.bn1, &format!("{name}.conv1"))?;
        let y = self.relu(&y, &format!("{name}.relu1"));
        let y = self.conv_bn(&y, &b.conv2, &b.bn2, &format!("{name}.conv2"))?;
        let y = self.relu(&y, &format!("{name}.relu2"));
        let y = self.conv_bn(&y, &b.conv3, &b.bn3, &format!("{name}.conv3"))?;
        let shortcut = match &b.downsample {
            Some((c, bn)) => self.conv_bn(x, c, bn, &format!("{name}.downsample"))?,
            None => x.to_string(),
        };
        let s = self.shape(&y);
        let sum = self.node("Add", name, &[&y, &shortcut], vec![], s);
        Ok(self.relu(&sum, &format!("{name}.relu3")))
    }

    fn basic_block(&mut self, x: &str, b: &BasicBlock, name: &str) -> Result<String> {
        let y = self.conv_bn(x, &b.conv1, &b.bn1, &format!("{name}.conv1"))?;
        let y = self.relu(&y, &format!("{name}.relu1"));
        let y = self.conv_bn(&y, &b.conv2, &b.bn2, &format!("{name}.conv2"))?;
        let shortcut = match &b.downsample {
            Some((c, bn)) => self.conv_bn(x, c, bn, &format!("{name}.downsample"))?,
            None => x.to_string(),
        };
        let s = self.shape(&y);
        let sum = self.node("Add", name, &[&y, &shortcut], vec![], s);
        Ok(self.relu(&sum, &format!("{name}.relu2")))
    }

    /// Zero-pads `x` at the end of each dimension to `to` (channels, height, width); no node
    /// when it already has that shape.
    fn pad_to(&mut self, x: &str, to: [i64; 3], name: &str) -> String {
        let s = self.shape(x);
        if s == to {
            return x.to_string();
        }
        let pads = format!("{name}.pads");
        // ONNX order: every axis's start, then every axis's end (N, C, H, W).
        self.int64_initializer(
            &pads,
            &[0, 0, 0, 0, 0, to[0] - s[0], to[1] - s[1], to[2] - s[2]],
        );
        self.node("Pad", name, &[x, &pads], vec![], to)
    }

    /// A convolution followed by `face-resnet`'s trained per-channel affine map, folded.
    fn conv_face_affine(
        &mut self,
        x: &str,
        conv: &Conv,
        a: &face_resnet::Affine,
        name: &str,
    ) -> Result<String> {
        let (scale, shift) = (a.weight.to_kind(Kind::Double), a.bias.to_kind(Kind::Double));
        self.conv_affine(x, conv, &scale, &shift, name)
    }

    /// dlib's residual block: the shortcut average-pooled in a downsampling block, the sum of
    /// tensors of different sizes zero-padded as `face_resnet::add_padded`.
    fn face_block(&mut self, x: &str, b: &face_resnet::Block, name: &str) -> Result<String> {
        let y = self.conv_face_affine(x, &b.conv1, &b.affine1, &format!("{name}.conv1"))?;
        let y = self.relu(&y, &format!("{name}.relu1"));
        let y = self.conv_face_affine(&y, &b.conv2, &b.affine2, &format!("{name}.conv2"))?;
        let shortcut = if b.down {
            let [c, h, w] = self.shape(x);
            self.node(
                "AveragePool",
                &format!("{name}.shortcut"),
                &[x],
                vec![ints("kernel_shape", &[2, 2]), ints("strides", &[2, 2])],
                [c, (h - 2) / 2 + 1, (w - 2) / 2 + 1],
            )
        } else {
            x.to_string()
        };
        let (sy, ss) = (self.shape(&y), self.shape(&shortcut));
        let to = [0, 1, 2].map(|i| sy[i].max(ss[i]));
        let y = self.pad_to(&y, to, &format!("{name}.pad_residual"));
        let shortcut = self.pad_to(&shortcut, to, &format!("{name}.pad_shortcut"));
        let sum = self.node("Add", name, &[&y, &shortcut], vec![], to);
        Ok(self.relu(&sum, &format!("{name}.relu2")))
    }

    fn face_blocks(
        &mut self,
        x: &str,
        blocks: &[face_resnet::Block],
        name: &str,
    ) -> Result<String> {
        let mut y = x.to_string();
        for (i, b) in blocks.iter().enumerate() {
            y = self.face_block(&y, b, &format!("{name}.{i}"))?;
        }
        Ok(y)
    }

    fn layer(&mut self, x: &str, l: &Layer, name: &str) -> Result<String> {
        let mut y = x.to_string();
        for (i, b) in l.blocks.iter().enumerate() {
            y = self.block(&y, b, &format!("{name}.{i}"))?;
        }
        Ok(y)
    }

    fn conv_bn_act(&mut self, x: &str, l: &mobilenet_v2::ConvBn, name: &str) -> Result<String> {
        let y = self.conv_bn(x, &l.conv, &l.bn, name)?;
        if l.relu6 {
            self.relu6(&y, &format!("{name}.relu6"))
        } else {
            Ok(y)
        }
    }

    fn inverted_residual(&mut self, x: &str, b: &InvertedResidual, name: &str) -> Result<String> {
        let mut y = x.to_string();
        for (i, l) in b.layers.iter().enumerate() {
            y = self.conv_bn_act(&y, l, &format!("{name}.conv.{i}"))?;
        }
        if b.residual {
            let s = self.shape(&y);
            y = self.node("Add", name, &[&y, x], vec![], s);
        }
        Ok(y)
    }

    fn inverted_residuals(
        &mut self,
        x: &str,
        blocks: &[InvertedResidual],
        first_index: usize,
    ) -> Result<String> {
        let mut y = x.to_string();
        for (i, b) in blocks.iter().enumerate() {
            y = self.inverted_residual(&y, b, &format!("features.{}", first_index + i))?;
        }
        Ok(y)
    }

    fn trunk(&mut self, x: &str, t: &Trunk) -> Result<String> {
        match t {
            Trunk::Resnet(t) => {
                let y = self.conv_bn(x, &t.conv1, &t.bn1, "conv1")?;
                let y = if t.stem.relu() {
                    self.relu(&y, "relu")
                } else {
                    y
                };
                let y = self.max_pool(&y, t.stem.pool(), "maxpool");
                let y = self.layer(&y, &t.layer1, "layer1")?;
                let y = self.layer(&y, &t.layer2, "layer2")?;
                self.layer(&y, &t.layer3, "layer3")
            }
            Trunk::MobilenetV2(t) => {
                let y = self.conv_bn_act(x, &t.stem, "features.0")?;
                self.inverted_residuals(&y, &t.blocks, 1)
            }
            Trunk::ShufflenetV1(t) => {
                let y = self.conv_bn(x, &t.conv, &t.bn, "first_conv")?;
                let y = self.relu(&y, "first_conv.relu");
                let y = self.max_pool(&y, shufflenet_v1::STEM_POOL, "maxpool");
                self.shuffle_units(&y, &t.units, 0)
            }
            Trunk::FaceResnet(t) => {
                let y = self.conv_face_affine(x, &t.conv1, &t.affine1, "conv1")?;
                let y = self.relu(&y, "relu");
                let mut y = self.max_pool(&y, (3, 2, 0), "maxpool");
                for (l, blocks) in t.layers.iter().enumerate() {
                    y = self.face_blocks(&y, blocks, &format!("layer{}", l + 1))?;
                }
                Ok(y)
            }
        }
    }

    /// Megvii's channel shuffle: `Reshape [N, C/g, g, H, W] -> Transpose -> Reshape`.
    fn channel_shuffle(&mut self, x: &str, groups: i64, name: &str) -> String {
        let [c, h, w] = self.shape(x);
        let split = format!("{name}.shuffle_shape");
        let merged = format!("{name}.merged_shape");
        // 0 copies the (symbolic) batch dimension.
        self.int64_initializer(&split, &[0, c / groups, groups, h, w]);
        self.int64_initializer(&merged, &[0, c, h, w]);
        let y = self.node(
            "Reshape",
            &format!("{name}.split"),
            &[x, &split],
            vec![],
            [c, h, w],
        );
        let y = self.node(
            "Transpose",
            name,
            &[&y],
            vec![ints("perm", &[0, 2, 1, 3, 4])],
            [c, h, w],
        );
        self.node(
            "Reshape",
            &format!("{name}.merge"),
            &[&y, &merged],
            vec![],
            [c, h, w],
        )
    }

    fn shuffle_unit(&mut self, x: &str, u: &shufflenet_v1::Unit, name: &str) -> Result<String> {
        let y = self.conv_bn(x, &u.conv1, &u.bn1, &format!("{name}.branch_main_1.0"))?;
        let y = self.relu(&y, &format!("{name}.relu1"));
        let y = self.conv_bn(&y, &u.conv2, &u.bn2, &format!("{name}.branch_main_1.3"))?;
        let y = self.channel_shuffle(&y, shufflenet_v1::GROUPS, name);
        let y = self.conv_bn(&y, &u.conv3, &u.bn3, &format!("{name}.branch_main_2.0"))?;
        if u.stride == 1 {
            let s = self.shape(&y);
            let sum = self.node("Add", name, &[&y, x], vec![], s);
            return Ok(self.relu(&sum, &format!("{name}.relu2")));
        }
        let (k, s, p) = shufflenet_v1::SHORTCUT_POOL;
        let [cx, h, w] = self.shape(x);
        let pooled = self.node(
            "AveragePool",
            name,
            &[x],
            vec![
                ints("kernel_shape", &[k, k]),
                ints("strides", &[s, s]),
                ints("pads", &[p; 4]),
                int("count_include_pad", 1),
            ],
            [cx, (h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1],
        );
        let y = self.relu(&y, &format!("{name}.relu2"));
        let [cy, ho, wo] = self.shape(&y);
        Ok(self.node(
            "Concat",
            name,
            &[&pooled, &y],
            vec![int("axis", 1)],
            [cx + cy, ho, wo],
        ))
    }

    fn shuffle_units(
        &mut self,
        x: &str,
        units: &[shufflenet_v1::Unit],
        first_index: usize,
    ) -> Result<String> {
        let mut y = x.to_string();
        for (i, u) in units.iter().enumerate() {
            y = self.shuffle_unit(&y, u, &format!("features.{}", first_index + i))?;
        }
        Ok(y)
    }

    fn stage(&mut self, x: &str, s: &Stage) -> Result<String> {
        match s {
            Stage::Resnet(l) => self.layer(x, l, "layer4"),
            Stage::FaceResnet(t) => self.face_blocks(x, &t.blocks, "layer5"),
            Stage::ShufflenetV1(t) => self.shuffle_units(x, &t.units, shufflenet_v1::BRANCH_START),
            Stage::MobilenetV2(t) => {
                let start = mobilenet_v2::BRANCH_START;
                let y = self.inverted_residuals(x, &t.blocks, start)?;
                self.conv_bn_act(&y, &t.last, &format!("features.{}", start + t.blocks.len()))
            }
        }
    }

    /// Target branch: branch stage, global average pooling, flatten, linear classifier ->
    /// logits.
    fn branch(&mut self, x: &str, b: &Branch) -> Result<String> {
        let y = self.stage(x, &b.stage)?;
        let [c, ..] = self.shape(&y);
        let y = self.node("GlobalAveragePool", "avgpool", &[&y], vec![], [c, 1, 1]);
        let y = self.node("Flatten", "flatten", &[&y], vec![int("axis", 1)], [c, 1, 1]);
        let (classes, features) = (b.fc.ws.size()[0], b.fc.ws.size()[1]);
        let w = self.initializer("fc.weight", &b.fc.ws)?;
        // A bias-free classifier (the default) exports a zero bias: one graph shape for both.
        let zeros = Tensor::zeros([classes], (b.fc.ws.kind(), b.fc.ws.device()));
        let bias = self.initializer("fc.bias", b.fc.bs.as_ref().unwrap_or(&zeros))?;
        self.macs += (classes * features) as u64;
        Ok(self.node(
            "Gemm",
            "fc",
            &[&y, &w, &bias],
            vec![int("transB", 1)],
            [classes, 1, 1],
        ))
    }
}

/// Builds the ONNX model of `net`'s trunk + target branch for inputs of the card's size.
pub fn build(net: &MultiBranchNet, card: &ModelCard) -> Result<(pb::ModelProto, ExportStats)> {
    let crop = card.preprocess.crop as i64;
    let c = net.num_classes;
    if card.classes.len() as i64 != c {
        bail!(
            "the model card lists {} classes, the network has {c}",
            card.classes.len()
        );
    }
    let mut g = Graph::new(INPUT_NAME, [3, crop, crop]);
    let trunk = g.trunk(INPUT_NAME, &net.trunk)?;
    g.branch(&trunk, &net.target)?;
    // The classifier's output is the graph output `logits`, as the card documents.
    g.nodes.last_mut().context("empty graph")?.output = vec![LOGITS_NAME.into()];
    // `probabilities` = softmax(logits / T), the card's calibration (no Div when T = 1).
    let mut scores = LOGITS_NAME.to_string();
    if card.temperature != 1.0 {
        g.initializer("calibration.temperature", &Tensor::from(card.temperature))?;
        g.parameters -= 1;
        scores = "calibrated_logits".into();
        g.nodes.push(pb::NodeProto {
            name: Some("calibration/Div".into()),
            op_type: Some("Div".into()),
            input: vec![LOGITS_NAME.into(), "calibration.temperature".into()],
            output: vec![scores.clone()],
            ..Default::default()
        });
    }
    g.nodes.push(pb::NodeProto {
        name: Some("softmax/Softmax".into()),
        op_type: Some("Softmax".into()),
        input: vec![scores],
        output: vec![PROBABILITIES_NAME.into()],
        attribute: vec![int("axis", 1)],
        ..Default::default()
    });
    let stats = ExportStats {
        parameters: g.parameters,
        macs: g.macs,
        nodes: g.nodes.len(),
    };
    let graph = pb::GraphProto {
        name: Some("dmue_target".into()),
        node: g.nodes,
        initializer: g.initializers,
        input: vec![value_info(INPUT_NAME, &[3, crop, crop])],
        output: vec![
            value_info(LOGITS_NAME, &[c]),
            value_info(PROBABILITIES_NAME, &[c]),
        ],
        doc_string: Some(
            "DMUE target branch (shared trunk + target branch), BatchNorm folded".into(),
        ),
        ..Default::default()
    };
    let model = pb::ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import: vec![pb::OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(OPSET),
        }],
        producer_name: Some("dmue-train".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        doc_string: Some(card.crop_rule()),
        graph: Some(graph),
        metadata_props: card.to_metadata_props(),
        ..Default::default()
    };
    Ok((model, stats))
}

/// Writes the model atomically to `path`.
pub fn write(model: &pb::ModelProto, path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    crate::util::write_atomic(path, &model.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelConfig;
    use dmue_deploy::preprocess::Preprocess;

    fn card(classes: usize, crop: u32) -> ModelCard {
        ModelCard {
            classes: (0..classes).map(|i| format!("c{i}")).collect(),
            preprocess: Preprocess {
                resize: crop + crop / 7,
                crop,
                ..Default::default()
            },
            template_id: dmue_deploy::face::TEMPLATE_ID.into(),
            aligned_size: dmue_deploy::face::ALIGNED_SIZE,
            backbone: "resnet18".into(),
            dataset: "test".into(),
            run_id: "test".into(),
            version: "0".into(),
            temperature: 1.0,
            int8: None,
        }
    }

    /// torchvision documents ResNet-18 (1000 classes, 224x224) as 1.81 GFLOPS (multiply-adds)
    /// and 11,689,512 parameters; folding removes one of each BatchNorm's two vectors (the
    /// other becomes the convolution bias): 11,689,512 - 4,800 channels = 11,684,712.
    #[test]
    fn resnet18_export_has_torchvision_size() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let net = MultiBranchNet::new(&vs.root(), &ModelConfig::default(), 1000, false);
        let (_, stats) = build(&net, &card(1000, 224)).unwrap();
        assert!(
            (stats.macs as f64 / 1.814e9 - 1.0).abs() < 0.01,
            "{}",
            stats.macs
        );
        assert_eq!(stats.parameters, 11_684_712);
    }

    /// MobileNetV2 (1000 classes, 224x224): 300 M multiply-adds (Sandler et al., Table 3;
    /// torchvision 0.30 GFLOPS) and 3,504,872 parameters, of which folding removes the 17,056
    /// BatchNorm channels' second vector.
    #[test]
    fn mobilenet_v2_export_has_the_published_size() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let cfg = ModelConfig {
            backbone: crate::model::Backbone::MobilenetV2,
            ..Default::default()
        };
        let net = MultiBranchNet::new(&vs.root(), &cfg, 1000, false);
        let (m, stats) = build(&net, &card(1000, 224)).unwrap();
        assert!(
            (stats.macs as f64 / 300e6 - 1.0).abs() < 0.01,
            "{}",
            stats.macs
        );
        let bn_channels: i64 = vs
            .variables()
            .iter()
            .filter(|(n, _)| n.ends_with("running_mean"))
            .map(|(_, t)| t.numel() as i64)
            .sum();
        assert_eq!(bn_channels, 17_056);
        // Without the classifier bias (1,000 fewer), folding keeps one vector per channel.
        assert_eq!(
            stats.parameters as i64,
            3_504_872 - 1000 - bn_channels + 1000
        );
        let ops: std::collections::BTreeSet<&str> = m
            .graph
            .as_ref()
            .unwrap()
            .node
            .iter()
            .map(|n| n.op_type.as_deref().unwrap())
            .collect();
        assert!(ops.contains("Clip") && !ops.contains("Relu"), "{ops:?}");
    }

    /// ResNet-50 (1000 classes, 224x224): torchvision documents 4.09 GFLOPS (multiply-adds);
    /// IBN-a adds no convolution.
    #[test]
    fn resnet50_ibn_export_has_the_resnet50_size() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let cfg = ModelConfig {
            backbone: crate::model::Backbone::Resnet50Ibn,
            ..Default::default()
        };
        let net = MultiBranchNet::new(&vs.root(), &cfg, 1000, false);
        let (m, stats) = build(&net, &card(1000, 224)).unwrap();
        assert!(
            (stats.macs as f64 / 4.09e9 - 1.0).abs() < 0.01,
            "{}",
            stats.macs
        );
        let ops: Vec<&str> = m
            .graph
            .as_ref()
            .unwrap()
            .node
            .iter()
            .map(|n| n.op_type.as_deref().unwrap())
            .collect();
        // One IBN per block of layer1..3: 3 + 4 + 6.
        assert_eq!(
            ops.iter()
                .filter(|o| **o == "InstanceNormalization")
                .count(),
            13
        );
    }

    /// ShuffleNetV1 2.0x, groups 3 (1000 classes, 224x224): 524 M multiply-adds and 5.4 M
    /// parameters (Zhang et al., Table 2 "ShuffleNet 2x"; Megvii's release lists the same).
    #[test]
    fn shufflenet_v1_export_has_the_published_size() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let cfg = ModelConfig {
            backbone: crate::model::Backbone::ShufflenetV1,
            ..Default::default()
        };
        let net = MultiBranchNet::new(&vs.root(), &cfg, 1000, false);
        let (m, stats) = build(&net, &card(1000, 224)).unwrap();
        let params = crate::model::count_params(&vs, |_| true);
        eprintln!(
            "shufflenet_v1 2.0x: {} MACs, {params} parameters",
            stats.macs
        );
        assert!(
            (stats.macs as f64 / 524e6 - 1.0).abs() < 0.02,
            "{}",
            stats.macs
        );
        assert!((params as f64 / 5.4e6 - 1.0).abs() < 0.01, "{params}");
        let ops: Vec<&str> = m
            .graph
            .as_ref()
            .unwrap()
            .node
            .iter()
            .map(|n| n.op_type.as_deref().unwrap())
            .collect();
        // One shuffle per unit (16), one average-pooled shortcut per stage (3).
        assert_eq!(ops.iter().filter(|o| **o == "Transpose").count(), 16);
        assert_eq!(ops.iter().filter(|o| **o == "AveragePool").count(), 3);
    }

    /// "No extra cost": the export of a DMUE network equals the export of the plain baseline.
    #[test]
    fn dmue_export_equals_baseline_export() {
        let cfg = ModelConfig {
            width: Some(8),
            ..Default::default()
        };
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let dmue = MultiBranchNet::new(&vs.root(), &cfg, 7, true);
        let vs2 = nn::VarStore::new(tch::Device::Cpu);
        let base = MultiBranchNet::new(&vs2.root(), &cfg, 7, false);
        let (m, a) = build(&dmue, &card(7, 64)).unwrap();
        let (_, b) = build(&base, &card(7, 64)).unwrap();
        assert_eq!(a, b);
        let names: Vec<&str> = m
            .graph
            .as_ref()
            .unwrap()
            .initializer
            .iter()
            .map(|t| t.name.as_deref().unwrap())
            .collect();
        assert!(names
            .iter()
            .all(|n| !n.starts_with("aux") && !n.starts_with("uncertainty")));
        assert!(names.contains(&"layer4.1.conv2.weight") && names.contains(&"fc.weight"));
    }
}
