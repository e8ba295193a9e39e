//! The `distill` binary: everything lives in the library.

#[global_allocator]
static ALLOC: distill::alloc::Hybrid = distill::alloc::Hybrid;

fn main() -> std::process::ExitCode {
    distill::model::pin_thread_count();
    distill::cli::main()
}
