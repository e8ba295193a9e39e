//! The `distill` binary: everything lives in the library.

fn main() -> std::process::ExitCode {
    distill::model::pin_thread_count();
    distill::cli::main()
}
