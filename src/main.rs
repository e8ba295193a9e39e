//! The `distill` binary: everything lives in the library.

fn main() -> std::process::ExitCode {
    distill::model::tune_allocator();
    distill::model::pin_thread_count();
    distill::cli::main()
}
