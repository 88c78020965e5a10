#![no_main]
// Image bytes (after 40 bytes of landmarks) -> decode -> align -> preprocess.
libfuzzer_sys::fuzz_target!(|data: &[u8]| dmue_deploy::fuzzing::image_path(data));
