/// mimalloc, not the C library's allocator: the release bundle is a static
/// musl binary, and musl's allocator made every request two to five times
/// as costly as the same build on glibc (docs/performance.md, "mimalloc
/// instead of the C library's allocator"); on glibc too mimalloc is cheaper
/// per request.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    simplechat::cli::run(simplechat::cli::parse())
}
