//! The `distill` binary: everything lives in the library.

fn main() -> std::process::ExitCode {
    distill::cli::main()
}
