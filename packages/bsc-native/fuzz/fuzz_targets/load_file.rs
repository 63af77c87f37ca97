//! Feeds arbitrary bytes to the loader as a file; whatever loads is exercised.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("bsc-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let path = dir.join("input.bsc");
    std::fs::write(&path, data).expect("write the input");
    bsc_native::format::fuzz_file(&path);
    // The same bytes with their checksums recomputed, as a crafted file would have them.
    let mut sealed = data.to_vec();
    bsc_native::format::reseal(&mut sealed);
    std::fs::write(&path, &sealed).expect("write the input");
    bsc_native::format::fuzz_file(&path);
});
