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

    // The c10d binding (src/dist_shim.cpp). torch's ProcessGroupGloo.hpp includes gloo's own
    // headers, which the wheel lacks: scripts/setup.sh extracts Debian's libgloo-dev into
    // .venv/gloo (or DMUE_GLOO_INCLUDE points at them). NCCL's header is in the wheel's
    // nvidia-nccl package, next to the CUDA headers.
    println!("cargo:rerun-if-changed=src/dist_shim.cpp");
    println!("cargo:rerun-if-env-changed=DMUE_GLOO_INCLUDE");
    let manifest = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let gloo = std::env::var("DMUE_GLOO_INCLUDE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| manifest.join("../.venv/gloo/usr/include"));
    println!("cargo:rerun-if-changed={}", gloo.display());
    let mut dist = cc::Build::new();
    dist.cpp(true)
        .file("src/dist_shim.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .warnings(false);
    if gloo.join("gloo/config.h").exists() {
        dist.include(&gloo)
            .define("DMUE_WITH_C10D", None)
            .define("USE_C10D_GLOO", None);
        // NCCL's header comes with the wheel, and so do the CUDA runtime headers the c10d NCCL
        // headers include, all but their `crt/` folder, which scripts/setup.sh adds from PyPI
        // (nvidia-cuda-crt). DMUE_CUDA_INCLUDE (or a toolkit in /usr/local/cuda) is used
        // instead when set (or when the wheel's are incomplete).
        println!("cargo:rerun-if-env-changed=DMUE_CUDA_INCLUDE");
        let nccl = std::path::Path::new(&lib).join("../../nvidia/nccl/include");
        let wheel_cuda = std::path::Path::new(&lib).join("../../nvidia/cu13/include");
        let cuda = match std::env::var("DMUE_CUDA_INCLUDE") {
            Ok(dir) => std::path::PathBuf::from(dir),
            Err(_) if wheel_cuda.join("crt/host_config.h").exists() => wheel_cuda,
            Err(_) => "/usr/local/cuda/include".into(),
        };
        if has_cuda_lib(&lib)
            && nccl.join("nccl.h").exists()
            && cuda.join("crt/host_config.h").exists()
        {
            dist.include(nccl)
                .include(cuda)
                .define("DMUE_WITH_NCCL", None)
                .define("USE_C10D_NCCL", None)
                .define("USE_CUDA", None);
        }
    } else {
        println!(
            "cargo:warning=no gloo headers at {}: dmue-train is built without multi-process \
             training (run scripts/setup.sh)",
            gloo.display()
        );
    }
    dist.compile("dmue_dist_shim");
    if has_cuda_lib(&lib) {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-L{lib}");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-ltorch");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}

fn has_cuda_lib(lib: &str) -> bool {
    std::path::Path::new(lib).join("libtorch_cuda.so").exists()
}
