use clap::Parser;

fn main() -> std::process::ExitCode {
    simplechat::cli::run(simplechat::cli::Cli::parse())
}
