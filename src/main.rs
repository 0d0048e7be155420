use std::process::ExitCode;

// Training allocates and frees buffers of tens of MB every step; the system allocator
// returns them to the OS each time, and page faults then cost several percent.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    match pipe::cli::main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            // Bad input (file, flags, names) is 2, like a usage error; anything else is 1.
            if e.chain().any(|c| c.downcast_ref::<pipe::UserError>().is_some()) {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}
