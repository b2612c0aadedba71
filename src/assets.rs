//! Packaging assets generated from the CLI definition (being written).

/// `dispynode __generate-assets DIR` writes the man page and completions into DIR.
pub const GENERATE_ARG: &str = "__generate-assets";

/// Entry point of `__generate-assets` (stub until packaging lands).
pub fn generate_main(_args: &[std::ffi::OsString]) -> std::process::ExitCode {
    eprintln!("dispynode: asset generation is not built in");
    std::process::ExitCode::FAILURE
}
