#![no_main]
// A POST /v1/predict body and content type -> the images the server would decode.
libfuzzer_sys::fuzz_target!(|data: &[u8]| dmue_deploy::fuzzing::request(data));
