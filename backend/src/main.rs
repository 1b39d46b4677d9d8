fn main() -> std::process::ExitCode {
    telltale::cli::main()
}
