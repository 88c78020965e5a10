//! The `dmue-serve` binary itself: `predict` over files and directories (table and JSON lines,
//! unreadable files reported with exit code 2), a missing model card, and the server's start
//! on a free port and graceful exit on SIGTERM. The model is a tiny hand-built ONNX graph
//! (global average pool + linear layer) carrying a real model card, so this crate's tests need
//! no libtorch.

use dmue_deploy::model_card::{ModelCard, INPUT_NAME, LOGITS_NAME, PROBABILITIES_NAME};
use dmue_deploy::onnx::pb;
use dmue_deploy::preprocess::Preprocess;
use prost::Message;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};

fn ints(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.into()),
        r#type: Some(pb::attribute_proto::AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

fn tensor_type(dims: &[Option<i64>]) -> Option<pb::TypeProto> {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(d.map_or(Value::DimParam("N".into()), Value::DimValue)),
            ..Default::default()
        })
        .collect();
    Some(pb::TypeProto {
        value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
            elem_type: Some(pb::tensor_proto::DataType::Float as i32),
            shape: Some(pb::TensorShapeProto { dim }),
        })),
        ..Default::default()
    })
}

/// Classes "dark" and "bright": logit = +-(mean channel value), so a white image is "bright".
fn write_model(path: &Path, with_card: bool) {
    let node = |op: &str, i: &[&str], o: &str, attrs: Vec<pb::AttributeProto>| pb::NodeProto {
        op_type: Some(op.into()),
        input: i.iter().map(|s| s.to_string()).collect(),
        output: vec![o.into()],
        attribute: attrs,
        ..Default::default()
    };
    let w: Vec<f32> = vec![-1.0, -1.0, -1.0, 1.0, 1.0, 1.0];
    let init = |name: &str, dims: Vec<i64>, v: &[f32]| pb::TensorProto {
        name: Some(name.into()),
        dims,
        data_type: Some(pb::tensor_proto::DataType::Float as i32),
        raw_data: Some(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        ..Default::default()
    };
    let card = ModelCard {
        classes: vec!["dark".into(), "bright".into()],
        preprocess: Preprocess {
            resize: 10,
            crop: 8,
            ..Default::default()
        },
        template_id: dmue_deploy::face::TEMPLATE_ID.into(),
        aligned_size: dmue_deploy::face::ALIGNED_SIZE,
        backbone: "test".into(),
        dataset: "test".into(),
        run_id: "test".into(),
        version: "test".into(),
        temperature: 1.0,
        int8: None,
    };
    let model = pb::ModelProto {
        ir_version: Some(8),
        opset_import: vec![pb::OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        }],
        graph: Some(pb::GraphProto {
            name: Some("tiny".into()),
            node: vec![
                node("GlobalAveragePool", &[INPUT_NAME], "pooled", vec![]),
                node("Flatten", &["pooled"], "flat", vec![ints("axis", 1)]),
                node(
                    "Gemm",
                    &["flat", "w", "b"],
                    LOGITS_NAME,
                    vec![ints("transB", 1)],
                ),
                node(
                    "Softmax",
                    &[LOGITS_NAME],
                    PROBABILITIES_NAME,
                    vec![ints("axis", 1)],
                ),
            ],
            initializer: vec![init("w", vec![2, 3], &w), init("b", vec![2], &[0.0, 0.0])],
            input: vec![pb::ValueInfoProto {
                name: Some(INPUT_NAME.into()),
                r#type: tensor_type(&[None, Some(3), Some(8), Some(8)]),
                ..Default::default()
            }],
            output: vec![
                pb::ValueInfoProto {
                    name: Some(LOGITS_NAME.into()),
                    r#type: tensor_type(&[None, Some(2)]),
                    ..Default::default()
                },
                pb::ValueInfoProto {
                    name: Some(PROBABILITIES_NAME.into()),
                    r#type: tensor_type(&[None, Some(2)]),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }),
        metadata_props: if with_card {
            card.to_metadata_props()
        } else {
            Vec::new()
        },
        ..Default::default()
    };
    std::fs::write(path, model.encode_to_vec()).unwrap();
}

fn serve() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dmue-serve"));
    c.env("DMUE_LOG", "info");
    c
}

#[test]
fn predict_prints_rows_and_reports_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.onnx");
    write_model(&model, true);
    let images = dir.path().join("imgs");
    std::fs::create_dir_all(images.join("sub")).unwrap();
    image::RgbImage::from_pixel(20, 20, image::Rgb([250, 250, 250]))
        .save(images.join("white.png"))
        .unwrap();
    image::RgbImage::from_pixel(20, 20, image::Rgb([5, 5, 5]))
        .save(images.join("sub/black.jpg"))
        .unwrap();
    std::fs::write(images.join("broken.png"), b"not a png").unwrap();
    // A link back to the top: walked naively, the directory never ends.
    std::os::unix::fs::symlink(&images, images.join("sub/loop")).unwrap();

    let out = serve()
        .args([
            "--no-detect",
            "--model",
            model.to_str().unwrap(),
            "predict",
            images.to_str().unwrap(),
            "--format",
            "jsonl",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 4, "{rows:?}");
    let by_name = |n: &str| {
        rows.iter()
            .find(|r| r["image"].as_str().unwrap().ends_with(n))
            .unwrap()
    };
    assert_eq!(by_name("white.png")["faces"][0]["label"], "bright");
    // The API's face objects: ambiguity included.
    let a = by_name("white.png")["faces"][0]["ambiguity"]
        .as_f64()
        .unwrap();
    assert!((0.0..=1.0).contains(&a), "{a}");
    assert_eq!(by_name("black.jpg")["faces"][0]["label"], "dark");
    assert_eq!(by_name("broken.png")["kind"], "unsupported_media_type");
    let looped = by_name("sub/loop");
    assert!(
        looped["error"].as_str().unwrap().contains("loop"),
        "{looped}"
    );

    let out = serve()
        .args([
            "--no-detect",
            "--model",
            model.to_str().unwrap(),
            "predict",
            images.join("white.png").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.lines().next().unwrap().contains("label") && table.contains("bright"),
        "{table}"
    );
}

#[test]
fn a_model_without_a_card_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.onnx");
    write_model(&model, false);
    let out = serve()
        .args(["--model", model.to_str().unwrap(), "predict", "x.png"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("dmue-train export"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = serve()
        .args(["--model", dir.path().join("missing.onnx").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.onnx"));
}

#[test]
fn server_starts_on_a_free_port_and_stops_gracefully_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.onnx");
    write_model(&model, true);
    let mut child = serve()
        .args([
            "--no-detect",
            "--model",
            model.to_str().unwrap(),
            "--addr",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let addr = first
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("{first}"))
        .to_string();
    // A raw HTTP/1.1 request: no client library needed.
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    use std::io::Write;
    write!(
        stream,
        "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    stream.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // Bounded: a server that never exits (seen once: a task kept the state, and with it the
    // inference worker, alive) must fail the test, not hang the suite.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("dmue-serve did not exit within 20 s of SIGTERM");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(exit.success(), "exit status {exit:?}");
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(log.contains("shutting down"), "{log}");
}

/// With no flags, `auto` runs ONNX Runtime when its library is there (scripts/setup.sh links
/// it into .venv) and tract when it is not; threads default to one per core.
#[test]
fn the_default_engine_is_onnx_runtime_when_present_else_tract() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.onnx");
    write_model(&model, true);
    let bench = |ort_library: Option<&str>| -> serde_json::Value {
        let mut c = serve();
        c.arg("--model").arg(&model);
        c.args(["--no-detect", "bench", "--iters", "2", "--warmup", "0"]);
        match ort_library {
            Some(p) => c.env("ORT_DYLIB_PATH", p),
            None => c.env_remove("ORT_DYLIB_PATH"),
        };
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let without = bench(Some("/nonexistent/libonnxruntime.so"));
    assert_eq!(without["engine"], "tract");
    let cores = std::thread::available_parallelism().unwrap().get();
    assert_eq!(without["threads"], cores);
    let venv_library = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/libonnxruntime.so");
    if cfg!(feature = "ort") && venv_library.exists() {
        assert_eq!(bench(None)["engine"], "ort");
    }
}
