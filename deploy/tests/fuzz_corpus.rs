//! Replays the fuzzers' seed corpus and every regression input they found through the same
//! entry points the fuzz targets call (`dmue_deploy::fuzzing`): the normal suite keeps them
//! fixed without a nightly toolchain or cargo-fuzz.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut n = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for e in entries {
            let path = e.unwrap().path();
            if path
                .file_name()
                .is_some_and(|f| f.to_string_lossy().starts_with('.'))
            {
                continue;
            }
            run(&std::fs::read(&path).unwrap());
            n += 1;
        }
    }
    assert!(n >= 4, "{target}: only {n} inputs found under deploy/fuzz");
}

#[test]
fn the_image_path_survives_its_corpus_and_regressions() {
    replay("image_path", dmue_deploy::fuzzing::image_path);
}

#[test]
fn request_parsing_survives_its_corpus_and_regressions() {
    replay("request", dmue_deploy::fuzzing::request);
}
