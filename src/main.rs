use std::process::ExitCode;

// Training allocates and frees buffers of tens of MB every step; the system allocator
// returns them to the OS each time, and page faults then cost several percent.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_e` (mimalloc.h); the Rust bindings
/// do not name it.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> ExitCode {
    // Never hand freed memory back to the OS: the per-step buffers (up to ~60 MB at batch
    // 200) would otherwise be faulted in again every step (about 8% of a training step).
    // SAFETY: a plain option setter of the allocator, called before any thread starts.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    // `pipe ls | head` should end quietly when head exits, as other Unix tools do, not
    // panic on the closed pipe: restore the default SIGPIPE action Rust replaces.
    // SAFETY: setting a signal disposition before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    match pipe::cli::main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if pipe::engine::interrupt::Interrupted::is_in(&e) => {
            // a stop the user asked for: what is kept and how to resume, not an error
            eprintln!("{e:#}");
            ExitCode::from(pipe::engine::interrupt::exit_status())
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            // Bad input (file, flags, names) is 2, like a usage error; anything else is 1.
            if pipe::UserError::is_in(&e) {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}
