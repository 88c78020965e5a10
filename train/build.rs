//! Link fix for libtorch (the final binary must keep libtorch_cuda as a dependency):
//! keep libtorch_cuda as a dependency of every binary even though no symbol of it is used
//! directly (otherwise `tch::Cuda::is_available()` is false on a GPU machine), and record an
//! rpath to the torch lib directory so binaries run without LD_LIBRARY_PATH.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    // The C++ shim (src/torch_shim.cpp: bf16 autocast, fused Adam), built against the same libtorch
    // headers.
    println!("cargo:rerun-if-changed=src/torch_shim.cpp");
    let include = std::path::Path::new(&lib).join("../include");
    cc::Build::new()
        .cpp(true)
        .file("src/torch_shim.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .warnings(false)
        .compile("dmue_torch_shim");
    let has_cuda = std::path::Path::new(&lib).join("libtorch_cuda.so").exists();
    if has_cuda {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-L{lib}");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-ltorch");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
