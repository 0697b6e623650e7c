fn main() -> std::process::ExitCode {
    vmblob_vsc::cli::main()
}
