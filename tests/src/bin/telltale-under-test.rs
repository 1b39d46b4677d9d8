//! The `telltale` binary, built as a target of this package so that cargo rebuilds it before
//! every run of the end-to-end suites (a binary of another package would not be, and tests
//! could silently run a stale build). Same entry point as `backend/src/main.rs`.
fn main() -> std::process::ExitCode {
    telltale::cli::main()
}
