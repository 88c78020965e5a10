fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (proto, out) = (&args[1], &args[2]);
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path().unwrap());
    let dir = std::path::Path::new(proto).parent().unwrap();
    prost_build::Config::new().out_dir(out).compile_protos(&[proto], &[dir]).unwrap();
}
